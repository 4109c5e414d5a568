"""Big Five personas: trait sampling for the environment and for rating collection."""

import distrax
import jax
import jax.numpy as jnp

# Order of the trait axis everywhere in the package: [..., 5].
TRAIT_NAMES = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
NUM_TRAITS = len(TRAIT_NAMES)


def trait_distribution() -> distrax.Distribution:
    """Return the persona prior: each Big Five trait independent and uniform on [0, 1]."""
    return distrax.Independent(
        distrax.Uniform(low=jnp.zeros(NUM_TRAITS), high=jnp.ones(NUM_TRAITS)),
        reinterpreted_batch_ndims=1,
    )


def sample_traits(key: jax.Array, num_personas: int) -> jax.Array:
    """Sample `num_personas` personas; returns traits of shape [num_personas, 5] in [0, 1]."""
    return trait_distribution().sample(seed=key, sample_shape=(num_personas,))
