"""Device-side preprocessing, run inside the jitted steps."""

import jax
import jax.numpy as jnp

PAD = 4


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 → float32 x / 255, in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 (N, H, W, C) → float32 (x / 255 − mean) / std, per channel."""
  return standardize(to_unit(images), mean, std)


def standardize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  return (x - mean) / std


def add_gaussian_noise(keys: jax.Array, images: jax.Array,
                       sigma) -> jax.Array:
  """uint8 (N, H, W, C) → clip(x / 255 + σ z, 0, 1), z ~ N(0, 1) per pixel
  drawn with each image's key, σ a fraction of the pixel range (as the
  Gaussian noise of Hendrycks & Dietterich's ImageNet-C, clipped to valid
  pixels). The same keys give the same z for every σ."""
  z = jax.vmap(lambda key: jax.random.normal(key, images.shape[1:]))(keys)
  return jnp.clip(to_unit(images) + sigma * z, 0.0, 1.0)


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
