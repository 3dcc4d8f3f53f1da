"""aple-jax: CLIP prompt learning (APLe and its baselines) in JAX/Flax."""
