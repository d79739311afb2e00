"""l2jax: L2 regularization and weight decay for image classification in JAX."""
