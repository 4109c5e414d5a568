"""rlli_jax: RLLI (reinforcement learning with LLM interaction) in JAX."""
__version__ = "0.1.0"
