"""Analytic persona model: the simulated stand-in for LLM raters.

Every output of this module is simulated, not an LLM rating. Reference definition, with traits
(O, C, E, A, N) = (openness, conscientiousness, extraversion, agreeableness, neuroticism):

    q0  = 0.65 + 0.3 O                      quality the persona expects
    l0  = 2 + 8 (1 - N)(0.5 + 0.5 A)        waiting time (s) the persona finds normal
    w_q = 5 + 7 O                           weight on quality
    w_l = 1 + 2 N + 0.5 C                   weight on log waiting time
    MOS = clip(1 + 4 sigmoid(w_q (q - q0) - w_l ln(L / l0)) + 0.3 (E - 0.5), 1, 5)

A rating is clip(round(MOS + eps), 1, 5) with eps ~ N(0, 0.5 (1 - 0.5 C)).
This model is this project's own; the paper's LLM prompt and ratings are not public.
"""

import jax
import jax.numpy as jnp

# Latency floor (s) inside the logarithm, so a zero or negative latency cannot produce -inf.
MIN_LATENCY_S = 1e-6


def simulated_mos(traits: jax.Array, quality: jax.Array, latency_s: jax.Array) -> jax.Array:
    """Compute the noise-free simulated MOS in [1, 5].

    Args:
        traits: [..., 5] Big Five traits in [0, 1].
        quality: [...] image quality in [0, 1].
        latency_s: [...] waiting time in seconds.
    Returns:
        [...] mean opinion score.
    """
    openness, conscientiousness, extraversion, agreeableness, neuroticism = jnp.moveaxis(
        traits, -1, 0
    )
    quality_expected = 0.65 + 0.3 * openness
    latency_normal_s = 2.0 + 8.0 * (1.0 - neuroticism) * (0.5 + 0.5 * agreeableness)
    quality_weight = 5.0 + 7.0 * openness
    latency_weight = 1.0 + 2.0 * neuroticism + 0.5 * conscientiousness
    latency_s = jnp.maximum(latency_s, MIN_LATENCY_S)
    score = quality_weight * (quality - quality_expected) - latency_weight * jnp.log(
        latency_s / latency_normal_s
    )
    mos = 1.0 + 4.0 * jax.nn.sigmoid(score) + 0.3 * (extraversion - 0.5)
    return jnp.clip(mos, 1.0, 5.0)


def simulated_rating_noise_std(traits: jax.Array) -> jax.Array:
    """Return the rating noise standard deviation 0.5 (1 - 0.5 C), shape [...] from [..., 5]."""
    return 0.5 * (1.0 - 0.5 * traits[..., 1])


def sample_simulated_ratings(
    key: jax.Array, traits: jax.Array, quality: jax.Array, latency_s: jax.Array
) -> jax.Array:
    """Sample integer ratings in {1, ..., 5} (as float32) around the simulated MOS."""
    mos = simulated_mos(traits, quality, latency_s)
    noise = simulated_rating_noise_std(traits) * jax.random.normal(key, mos.shape)
    return jnp.clip(jnp.round(mos + noise), 1.0, 5.0)
