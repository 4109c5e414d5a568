"""Big Five personas: trait sampling for the environment and for rating collection."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

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


# Words for a trait value, by fifths of [0, 1]: low to high.
_TRAIT_LEVELS = ("very low", "low", "moderate", "high", "very high")

# Descriptions of a high, a middle and a low value of each trait for a user of an image service,
# in TRAIT_NAMES order. The adjectives follow the usual Big Five facet descriptions.
_TRAIT_POLES = (
    (
        "curious, imaginative and demanding about artistic quality",
        "open to new ideas but not especially demanding about artistic quality",
        "conventional and practical",
    ),
    (
        "organised, careful and attentive to detail",
        "fairly careful without being a perfectionist",
        "easy-going and casual about detail",
    ),
    (
        "outgoing, talkative and enthusiastic",
        "neither very outgoing nor reserved",
        "reserved and quiet",
    ),
    (
        "patient, trusting and forgiving",
        "reasonably patient but willing to complain",
        "critical, sceptical and quick to complain",
    ),
    (
        "anxious, easily frustrated and impatient",
        "usually calm but sometimes impatient",
        "calm and emotionally stable",
    ),
)


def describe_persona(traits) -> str:
    """Describe a persona in English from its traits [5] in [0, 1], for an LLM prompt.

    The text depends only on the traits rounded to two decimals, so the same persona always gets
    the same description.

    Raises:
        ValueError: traits is not 5 finite numbers in [0, 1].
    """
    values = np.asarray(traits, dtype=np.float64)
    if values.shape != (NUM_TRAITS,):
        raise ValueError(f"traits must have shape ({NUM_TRAITS},), got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0.0) or np.any(values > 1.0):
        raise ValueError(f"traits must be finite and in [0, 1], got {values.tolist()}")

    sentences = []
    for name, value, (high, middle, low) in zip(TRAIT_NAMES, values, _TRAIT_POLES, strict=True):
        rounded = round(float(value), 2)
        level = _TRAIT_LEVELS[min(int(rounded * len(_TRAIT_LEVELS)), len(_TRAIT_LEVELS) - 1)]
        if rounded >= 0.6:
            manner = high
        elif rounded < 0.4:
            manner = low
        else:
            manner = middle
        sentences.append(f"Your {name} is {level} ({rounded:.2f} of 1), so you are {manner}.")
    return " ".join(sentences)
