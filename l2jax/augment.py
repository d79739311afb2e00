"""Device-side preprocessing, run inside the jitted steps."""

import jax
import jax.numpy as jnp

PAD = 4


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 (N, H, W, C) → float32 (x / 255 − mean) / std, per channel."""
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def crop_and_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """One (H, W, C) image: random crop after 4-pixel zero padding, then a
  horizontal flip with probability ½."""
  crop_key, flip_key = jax.random.split(key)
  h, w, c = image.shape
  padded = jnp.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
  dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * PAD + 1)
  image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
  return jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)


def augment_batch(keys: jax.Array, images: jax.Array) -> jax.Array:
  """`crop_and_flip` for each image, each with its own key."""
  return jax.vmap(crop_and_flip)(keys, images)
