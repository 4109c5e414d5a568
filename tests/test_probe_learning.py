"""Learning probe: DDPG and G-DDPG on the water-filling task, scored against its exact optimum.

The score is the mean gap to the water-filling sum-rate over a fixed set of fresh gain draws,
as a fraction of the mean optimal sum-rate, with the policy run without exploration noise.
Reference gaps for this metric (checked in `test_probe_reference_points`): random actions
about 24%, equal power about 21%, and equal power on the five strong channels, the best
constant allocation, about 1.1%. Only a state-dependent allocation gets below that.

The training loop is a compact off-policy program under one `jit`: each iteration resets a
batch of environments, acts with exploration noise, stores the transitions and takes one
gradient step on a replay sample, all inside `lax.scan`.
"""

import time

import jax
import jax.numpy as jnp
import pytest
from flax import struct

from rlli_jax.agents import (
    Agent,
    AgentConfig,
    AgentHyperparams,
    AgentState,
    ReplayState,
    Transition,
    check_replay_memory,
    default_hyperparams,
    estimate_replay_bytes,
    example_transition,
    make_agent,
    make_replay_buffer,
)
from rlli_jax.env.water_filling import WaterFillingEnv, WaterFillingState

NUM_EVAL_DRAWS = 2000
EVAL_SEED = 2024  # evaluation gains come from this key, apart from the training seeds
NUM_CHANNELS = 10


@struct.dataclass
class ProbeCarry:
    agent_state: AgentState
    replay_state: ReplayState
    key: jax.Array


def make_probe_train(
    agent: Agent,
    env: WaterFillingEnv,
    num_envs: int,
    num_iterations: int,
    replay_capacity: int,
):
    """Build `train(key, hyper) -> AgentState`: num_iterations of (act, store, one update)."""
    env_params = env.default_params
    replay = make_replay_buffer(replay_capacity, agent.config.batch_size, min_size=1)
    check_replay_memory(estimate_replay_bytes(replay_capacity, NUM_CHANNELS, NUM_CHANNELS))
    reset = jax.vmap(env.reset, in_axes=(0, None))
    # step_env skips gymnax's auto-reset, so next_obs is the obs of the finished episode. Every
    # water-filling step terminates, so its bootstrap is multiplied by 0.
    step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))

    def iteration(carry: ProbeCarry, hyper: AgentHyperparams) -> ProbeCarry:
        key, key_reset, key_action, key_sample, key_update = jax.random.split(carry.key, 5)
        obs, env_state = reset(jax.random.split(key_reset, num_envs), env_params)
        action = agent.act(carry.agent_state, obs, key_action, hyper, explore=True)
        next_obs, _, reward, terminated, _ = step(key_reset, env_state, action, env_params)
        transitions = Transition(
            obs=obs,
            action=action,
            reward=reward,
            next_obs=next_obs,
            terminated=terminated.astype(jnp.float32),
        )
        replay_state = replay.add(carry.replay_state, transitions)
        batch = replay.sample(replay_state, key_sample)
        agent_state, _ = agent.update(carry.agent_state, batch, key_update, hyper)
        return ProbeCarry(agent_state=agent_state, replay_state=replay_state, key=key)

    @jax.jit
    def train(key: jax.Array, hyper: AgentHyperparams) -> AgentState:
        key_init, key_loop = jax.random.split(key)
        agent_state = agent.init(key_init, NUM_CHANNELS, NUM_CHANNELS, hyper)
        replay_state = replay.init(example_transition(NUM_CHANNELS, NUM_CHANNELS))
        carry = ProbeCarry(agent_state=agent_state, replay_state=replay_state, key=key_loop)
        carry, _ = jax.lax.scan(
            lambda carry, _: (iteration(carry, hyper), None), carry, None, num_iterations
        )
        return carry.agent_state

    return train


@jax.jit
def _score_actions(gains: jax.Array, action: jax.Array) -> jax.Array:
    """Return mean(optimal rate - rate) / mean(optimal rate) for gains and actions [N, M]."""
    env = WaterFillingEnv(NUM_CHANNELS)
    env_state = WaterFillingState(gains=gains, time=jnp.zeros(gains.shape[0], jnp.int32))
    step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))
    _, _, reward, _, info = step(jax.random.key(0), env_state, action, env.default_params)
    return -jnp.mean(reward) / jnp.mean(info["optimal_rate"])


def eval_gains() -> jax.Array:
    """Return the fixed evaluation gains [NUM_EVAL_DRAWS, M]."""
    env = WaterFillingEnv(NUM_CHANNELS)
    keys = jax.random.split(jax.random.key(EVAL_SEED), NUM_EVAL_DRAWS)
    gains, _ = jax.vmap(env.reset, in_axes=(0, None))(keys, env.default_params)
    return gains


def policy_gap(agent: Agent, agent_state: AgentState, hyper: AgentHyperparams) -> float:
    """Score the policy without exploration noise on the fixed evaluation gains."""
    gains = eval_gains()
    act = jax.jit(agent.act, static_argnames="explore")
    action = act(agent_state, gains, jax.random.key(EVAL_SEED + 1), hyper, explore=False)
    return float(_score_actions(gains, action))


def train_and_score(
    algo: str,
    hidden_size: int,
    batch_size: int,
    num_updates: int,
    seed: int,
    bound_loss_coef: float = 0.0,
):
    """Train one agent on the probe and return (gap fraction, wall seconds incl. compile)."""
    config = AgentConfig(
        algo=algo,
        actor_hidden_sizes=(hidden_size, hidden_size),
        critic_hidden_sizes=(hidden_size, hidden_size),
        encoder_hidden_sizes=(hidden_size,),
        batch_size=batch_size,
        bound_loss_coef=bound_loss_coef,
    )
    agent = make_agent(config)
    hyper = default_hyperparams(algo)
    train = make_probe_train(
        agent,
        WaterFillingEnv(NUM_CHANNELS),
        num_envs=64,
        num_iterations=num_updates,
        replay_capacity=100_000,
    )
    start = time.perf_counter()
    agent_state = jax.block_until_ready(train(jax.random.key(seed), hyper))
    wall_s = time.perf_counter() - start
    return policy_gap(agent, agent_state, hyper), wall_s


def test_probe_reference_points():
    gains = eval_gains()
    num_draws = gains.shape[0]
    random_action = jax.random.uniform(
        jax.random.key(1), (num_draws, NUM_CHANNELS), minval=-1.0, maxval=1.0
    )
    equal_power = jnp.ones((num_draws, NUM_CHANNELS))
    # The first five channels are the strong ones, with gains from U(1, 2).
    strong_channels_only = jnp.tile(jnp.array([1.0] * 5 + [0.0] * 5), (num_draws, 1))

    assert 0.22 < float(_score_actions(gains, random_action)) < 0.26
    assert 0.19 < float(_score_actions(gains, equal_power)) < 0.23
    assert 0.009 < float(_score_actions(gains, strong_channels_only)) < 0.013


# Default suite: 128-128 networks, batch 256 and 1500 updates. In probe runs with this setting
# (2-core CPU shared with other jobs) DDPG reached a 1.7% gap and G-DDPG 1.9%.
@pytest.mark.parametrize("algo", ["ddpg", "gddpg"])
def test_probe_learns_within_3_percent(algo, record_property):
    gap, wall_s = train_and_score(algo, hidden_size=128, batch_size=256, num_updates=1500, seed=0)
    record_property("gap_fraction", gap)
    record_property("train_seconds", wall_s)
    print(f"{algo}: gap {gap:.4f} of the optimal sum-rate after 1500 updates, {wall_s:.1f} s")
    assert gap <= 0.03, f"{algo} gap {gap:.4f} > 0.03"


# Without the bound loss G-DDPG plateaued at a 1.2-1.3% gap from 2000 to 5000 updates (256-256,
# batch 512) and reached 1.03% after 10,000 and 1.05% after 20,000. Its five strong
# channels all sat at |a| = 1 in every state: the x0 predictions had passed the bound, where the
# clip passes no gradient, so their powers could not follow the gains. With the bound loss
# (weight 1) the same run reached 0.77% after 5000 updates.
PROBE_BOUND_LOSS_COEF = {"ddpg": 0.0, "gddpg": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ddpg", "gddpg"])
def test_probe_beats_best_constant_allocation(algo, record_property):
    gap, wall_s = train_and_score(
        algo,
        hidden_size=256,
        batch_size=512,
        num_updates=5000,
        seed=0,
        bound_loss_coef=PROBE_BOUND_LOSS_COEF[algo],
    )
    record_property("gap_fraction", gap)
    record_property("train_seconds", wall_s)
    print(f"{algo}: gap {gap:.4f} of the optimal sum-rate after 5000 updates, {wall_s:.1f} s")
    assert gap < 0.01, f"{algo} gap {gap:.4f} >= 0.01, no better than a constant allocation"
