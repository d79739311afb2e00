"""l2jax.cpu.configure's settings hold in this process (conftest applies them
as l2jax.main does)."""

import os

import jax
from jax import lax
import jax.numpy as jnp
import jaxlib
import pytest

from l2jax import cpu
from l2jax.cpu import settings

NEW_ENOUGH = tuple(map(int, jaxlib.__version__.split('.')[:2])) >= (0, 9)


@pytest.mark.skipif(not NEW_ENOUGH, reason='jaxlib before 0.9 has no YNNPACK')
def test_convolutions_and_dots_compile_to_ynnpack():
  x = jax.ShapeDtypeStruct((8, 16, 16, 64), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32)
  conv = jax.jit(lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  hlo = conv.lower(x, kernel).compile().as_text()
  assert 'ynn' in hlo, hlo


def test_configure_is_idempotent():
  before = os.environ.get('XLA_FLAGS', '')
  cpu.configure()
  assert os.environ.get('XLA_FLAGS', '') == before
  if NEW_ENOUGH:
    assert before.count(settings.YNN_FLAG) == 1, before

