"""Baseline policies, each a pure `policy(key, obs) -> action` usable under `jit` and `vmap`.

- `random`: uniform actions in [-1, 1].
- `equal_split`: equal bandwidth and GPU shares, a fixed number of total steps, no sharing
  (water filling: equal power on every channel).
- `greedy`: a hand-written heuristic. Service env: rebuild the prompt groups from the observed
  pairwise similarities with the environment's own rule, share in each group the largest
  fraction of steps that every member tolerates minus a safety margin, split bandwidth in
  inverse proportion to each user's spectral efficiency (equal transmit times, except where a
  user's efficiency is more than e^3 = 20 times off the geometric mean, because the bandwidth
  action is clipped to [-1, 1]), split the GPU equally, fixed total steps. Water filling:
  power proportional to the channel gain.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rlli_jax.env import physics
from rlli_jax.env.params import EnvParams
from rlli_jax.env.service import SNR_DB_OFFSET, SNR_DB_SCALE, DiffusionServiceEnv

Policy = Callable[[jax.Array, jax.Array], jax.Array]
BASELINE_NAMES = ("random", "equal_split", "greedy")
# Total denoising steps the fixed-step baselines request.
BASELINE_TOTAL_STEPS = 25.0
# How far below the tolerated shared fraction r*(s) the greedy heuristic requests. The environment
# rounds the shared steps, which adds up to 0.5 / 25 = 0.02 to the fraction, so with the default
# fidelity sharpness 15 sharing keeps at least sigmoid(15 * 0.24) = 0.973 of the quality.
GREEDY_SHARE_MARGIN = 0.26


def make_baseline_policy(name: str, env, params) -> Policy:
    """Return the baseline `name` for `env` (a DiffusionServiceEnv or WaterFillingEnv).

    Raises:
        ValueError: an unknown baseline name or environment type.
    """
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {list(BASELINE_NAMES)}")
    num_actions = env.action_space(params).shape[0]
    if name == "random":
        return lambda key, obs: jax.random.uniform(key, (num_actions,), minval=-1.0, maxval=1.0)
    if isinstance(env, DiffusionServiceEnv):
        if name == "equal_split":
            return lambda key, obs: _service_equal_split(env, params)
        return lambda key, obs: _service_greedy(env, params, obs)
    if env.name == "WaterFilling-v0":
        if name == "equal_split":
            return lambda key, obs: jnp.ones((num_actions,), jnp.float32)
        return lambda key, obs: obs / jnp.max(obs)
    raise ValueError(f"no baselines for environment {env.name!r}")


def _steps_action(total_steps: float, params: EnvParams) -> jax.Array:
    """Invert the total-steps mapping: the action entry that requests `total_steps`."""
    span = params.max_total_steps - params.min_total_steps
    fraction = jnp.where(span > 0, (total_steps - params.min_total_steps) / span, 0.0)
    return jnp.clip(2.0 * fraction - 1.0, -1.0, 1.0)


def _service_equal_split(env: DiffusionServiceEnv, params: EnvParams) -> jax.Array:
    num_users = env.num_users
    steps = jnp.full((num_users,), _steps_action(BASELINE_TOTAL_STEPS, params))
    return jnp.concatenate(
        [jnp.zeros(num_users), jnp.zeros(num_users), steps, -jnp.ones(num_users)]
    ).astype(jnp.float32)


def _service_greedy(env: DiffusionServiceEnv, params: EnvParams, obs: jax.Array) -> jax.Array:
    num_users = env.num_users
    layout = env.layout
    features = layout.user_features(obs)  # [N, 9]

    # Rebuild the [N, N] user similarity matrix from its observed upper triangle.
    upper = obs[layout.pair_similarity]
    rows, cols = jnp.triu_indices(num_users, k=1)
    similarity = jnp.eye(num_users).at[rows, cols].set(upper).at[cols, rows].set(upper)
    groups = _group_from_similarity(similarity, params.group_threshold)

    # Each group shares the fraction its least similar member tolerates, minus a margin.
    tolerated = params.fidelity_ratio_low + (
        params.fidelity_ratio_high - params.fidelity_ratio_low
    ) * jnp.maximum(groups.similarity, 0.0)
    tolerated = jnp.where(groups.is_representative, jnp.inf, tolerated)
    group_ratio = jnp.min(jnp.where(groups.membership, tolerated[None, :], jnp.inf), axis=1)
    group_ratio = jnp.where(jnp.isfinite(group_ratio), group_ratio - GREEDY_SHARE_MARGIN, 0.0)
    user_ratio = jnp.clip(group_ratio[groups.representative], 0.0, params.max_share_ratio)
    share_action = jnp.where(
        params.max_share_ratio > 0, 2.0 * user_ratio / params.max_share_ratio - 1.0, -1.0
    )

    # Bandwidth in inverse proportion to spectral efficiency log2(1 + SNR).
    snr_db = features[:, 0] * SNR_DB_SCALE + SNR_DB_OFFSET
    spectral_efficiency = jnp.log2(1.0 + 10.0 ** (snr_db / 10.0))
    log_share = -jnp.log(jnp.maximum(spectral_efficiency, 1e-6))
    bandwidth_action = jnp.clip((log_share - jnp.mean(log_share)) / params.logit_scale, -1, 1)

    steps = jnp.full((num_users,), _steps_action(BASELINE_TOTAL_STEPS, params))
    return jnp.concatenate(
        [bandwidth_action, jnp.zeros(num_users), steps, jnp.clip(share_action, -1.0, 1.0)]
    ).astype(jnp.float32)


def _group_from_similarity(similarity: jax.Array, threshold: jax.Array) -> physics.Groups:
    """Apply the environment's greedy grouping to a user similarity matrix [N, N]."""
    num_users = similarity.shape[0]
    params_like = _SimilarityParams(similarity, threshold)
    return physics.group_users(jnp.arange(num_users), params_like)


class _SimilarityParams:
    """The two fields `physics.group_users` reads, with user indices as prompt ids."""

    def __init__(self, prompt_similarity: jax.Array, group_threshold: jax.Array):
        self.prompt_similarity = prompt_similarity
        self.group_threshold = group_threshold
