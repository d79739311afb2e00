"""curves.png from records of 1 and 100 epochs, and what the events take
from a record; no training."""

import math

from PIL import Image
import pytest

from configs import cifar
from l2jax import events
from l2jax import outputs

GROUPS = {'Conv_0': False, 'ResidualBlock_0': True, 'Dense_0': False}


def records(num_epochs: int, eval_every: int) -> list:
  """metrics.jsonl-like records: evaluations every `eval_every` epochs and
  after the last; Δθ* undefined (None) outside L2's mask (Dense_0) and at
  the schedule's end; a group's ‖w‖ of 0 (its 1/‖w‖² undefined) once."""
  result = []
  for epoch in range(1, num_epochs + 1):
    lr = 0.05 * 0.5 * (1 + math.cos(math.pi * epoch / num_epochs))
    record = {'epoch': epoch, 'step': 10 * epoch, 'train_loss': 2 / epoch,
              'data_loss': 2 / epoch, 'train_accuracy': 1 - 0.9 / epoch,
              'weight_norm': 30 + 0.01 * epoch, 'learning_rate': lr}
    if epoch % eval_every == 0 or epoch == num_epochs:
      record.update({'val_loss': 2.1 / epoch, 'val_accuracy': 0.5,
                     'test_loss': 2.2 / epoch, 'test_accuracy': 0.5,
                     'test_accuracy_noise0.02': 0.4,
                     'test_accuracy_noise0.1': 0.2})
    for i, (group, invariant) in enumerate(GROUPS.items()):
      norm = 0.0 if (epoch, group) == (2, 'Conv_0') else 5.0 * (i + 1)
      record.update({
          f'kernel_norm/{group}': norm,
          f'effective_lr/{group}': lr / norm ** 2 if norm else None,
          f'angular_update/{group}': 0.01 / (i + epoch),
          f'angular_update_equilibrium/{group}': (
              None if group == 'Dense_0' or not lr else 1e-3 * lr),
          f'shrink/{group}': 1e-4,
          f'scale_invariant/{group}': invariant})
    record['scale_invariant_share'] = 0.5
    result.append(record)
  return result


@pytest.mark.parametrize('num_epochs, eval_every', [(1, 1), (100, 5)])
def test_curves_are_drawn_for_one_and_a_hundred_epochs(tmp_path, num_epochs,
                                                        eval_every):
  outputs.plot_curves(str(tmp_path), records(num_epochs, eval_every), 'title')
  path = tmp_path / outputs.CURVES
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with Image.open(path) as image:
    assert image.size == (1500, 1200)
  assert [p.name for p in tmp_path.iterdir()] == [outputs.CURVES]


def test_curves_are_drawn_without_rotation_measures(tmp_path):
  """A run with `rotation_every_steps=0` records no Δθ, s or Δθ*."""
  rotation = ('angular_update', 'shrink')
  plain = [{k: v for k, v in r.items() if not k.startswith(rotation)}
           for r in records(3, 1)]
  outputs.plot_curves(str(tmp_path), plain, 'title')
  assert (tmp_path / outputs.CURVES).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_events_take_a_records_numbers_but_its_step():
  record = {'epoch': 3, 'step': 30, 'train_loss': 0.5, 'test_loss': None,
            'scale_invariant/Conv_0': True, 'note': 'text', 'count': 7}
  assert events.scalars(record) == {'epoch': 3, 'train_loss': 0.5, 'count': 7}


def test_writers_started_in_one_second_keep_a_file_each(tmp_path):
  """A run resumed in the same process and second starts a new event file
  rather than overwrite the first one's."""
  config = cifar.get_config()
  for loss in (0.5, 0.25):
    with events.EventWriter(str(tmp_path), config) as writer:
      writer.write({'step': 1, 'epoch': 1, 'train_loss': loss}, [loss])
  files = sorted(tmp_path.glob('events.out.tfevents.*'))
  assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
