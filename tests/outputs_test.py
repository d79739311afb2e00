"""What the TensorBoard events take from a record."""

from l2jax import events


def test_events_take_a_records_numbers_but_its_step():
  record = {'epoch': 3, 'step': 30, 'train_loss': 0.5, 'test_loss': None,
            'scale_invariant/Conv_0': True, 'note': 'text', 'count': 7}
  assert events.scalars(record) == {'epoch': 3, 'train_loss': 0.5, 'count': 7}
