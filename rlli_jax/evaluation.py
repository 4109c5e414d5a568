"""Evaluation over fresh episodes, one code path for the trained agent and the baselines.

A policy is `policy(key, obs [obs_dim]) -> action [num_actions]`, the signature of
`rlli_jax.agents.baselines`. `make_agent_policy` wraps an agent in it with exploration noise
off. The diffusion actor still draws its own chain noise from the key (see
`rlli_jax.agents.diffusion`), so "deterministic" means no exploration noise on top.

Every policy evaluated with the same key meets the same episodes (positions, personas, fading
and prompts), so differences between policies are not sampling noise of the episodes.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.agents.baselines import BASELINE_NAMES, make_baseline_policy
from rlli_jax.agents.ddpg import Agent, AgentHyperparams, AgentState
from rlli_jax.agents.replay import available_device_bytes
from rlli_jax.env.params import EnvParams
from rlli_jax.env.service import DiffusionServiceEnv

Policy = Callable[[jax.Array, jax.Array], jax.Array]

# Per-slot `info` entries averaged over each episode.
EPISODE_METRICS = (
    "qoe",
    "quality",
    "latency_s",
    "energy_j",
    "shared_steps",
    "total_steps",
    "num_groups",
)


def make_agent_policy(agent: Agent, agent_state: AgentState, hyper: AgentHyperparams) -> Policy:
    """Wrap an agent as `policy(key, obs [obs_dim]) -> action`, without exploration noise."""

    def policy(key: jax.Array, obs: jax.Array) -> jax.Array:
        return agent.act(agent_state, obs[None], key, hyper, explore=False)[0]

    return policy


def run_episodes(
    env: DiffusionServiceEnv,
    env_params: EnvParams,
    policy: Policy,
    key: jax.Array,
    num_episodes: int,
) -> dict[str, jax.Array]:
    """Run `num_episodes` fresh episodes of `env.horizon` slots each, vmapped over episodes.

    Returns:
        Per-episode values [num_episodes]: `reward` (mean per slot), `episode_return` (sum over
        slots) and the per-slot mean of each entry of `EPISODE_METRICS`.
    """
    key_reset, key_episode = jax.random.split(key)
    reset_keys = jax.random.split(key_reset, num_episodes)
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(reset_keys, env_params)

    def slot(carry, slot_key):
        obs, state = carry
        key_policy, key_step = jax.random.split(slot_key)
        actions = jax.vmap(policy)(jax.random.split(key_policy, num_episodes), obs)
        step_keys = jax.random.split(key_step, num_episodes)
        obs, state, reward, _, info = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
            step_keys, state, actions, env_params
        )
        values = {name: info[name] for name in EPISODE_METRICS}
        values["reward"] = reward
        return (obs, state), values  # each value [num_episodes]

    slot_keys = jax.random.split(key_episode, env.horizon)
    _, per_slot = jax.lax.scan(slot, (obs, state), slot_keys)  # each [horizon, num_episodes]
    per_episode = {name: jnp.mean(values, axis=0) for name, values in per_slot.items()}
    per_episode["episode_return"] = jnp.sum(per_slot["reward"], axis=0)
    return per_episode


def summarize(per_episode: Mapping[str, jax.Array]) -> dict[str, float]:
    """Reduce per-episode values to `NAME` (mean) and `NAME_stderr` (standard error), floats.

    With one episode the standard error is undefined and reported as 0.0.
    """
    summary = {}
    for name, values in per_episode.items():
        values = np.asarray(values, np.float64)
        summary[name] = float(values.mean())
        stderr = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
        summary[f"{name}_stderr"] = float(stderr)
    summary["num_episodes"] = int(next(iter(per_episode.values())).shape[0])
    return summary


def evaluate_policy(
    env: DiffusionServiceEnv,
    env_params: EnvParams,
    policy: Policy,
    key: jax.Array,
    num_episodes: int,
) -> dict[str, float]:
    """Compile `run_episodes` for one policy, check its memory, run it and return its summary.

    Raises:
        ValueError: `num_episodes` < 1, or the compiled program needs more memory than the
            default device has free (checked before it runs, since all episodes run at once).
    """
    if num_episodes < 1:
        raise ValueError(f"invalid num_episodes = {num_episodes}: must be >= 1")
    run = jax.jit(lambda params, key: run_episodes(env, params, policy, key, num_episodes))
    compiled = run.lower(env_params, key).compile()
    check_evaluation_memory(compiled, num_episodes)
    return summarize(compiled(env_params, key))


def check_evaluation_memory(
    compiled: jax.stages.Compiled, num_episodes: int, num_members: int = 1
) -> None:
    """Raise ValueError if the compiled evaluation needs more than the default device's free memory.

    The need is XLA's memory analysis: arguments, outputs and temporaries, per device for a
    program split over devices (seen on CPU with jax 0.10). `num_members` > 1 names a
    population evaluated at once. A backend that reports no analysis is not checked.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return
    needed = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
    )
    free_bytes, source = available_device_bytes()
    if needed > free_bytes:
        members = f" for each of {num_members} members" if num_members > 1 else ""
        raise ValueError(
            f"evaluating num_episodes = {num_episodes} at once{members} needs "
            f"{needed / 2**20:.1f} MiB "
            f"but only {free_bytes / 2**20:.1f} MiB are free according to {source}; evaluate "
            "fewer episodes (train.eval_episodes, or --episodes of scripts/evaluate.py)"
        )


def evaluate_baselines(
    env: DiffusionServiceEnv,
    env_params: EnvParams,
    key: jax.Array,
    num_episodes: int,
    names: tuple[str, ...] = BASELINE_NAMES,
) -> dict[str, dict[str, float]]:
    """Evaluate each named baseline on the episodes that `key` draws."""
    return {
        name: evaluate_policy(
            env, env_params, make_baseline_policy(name, env, env_params), key, num_episodes
        )
        for name in names
    }
