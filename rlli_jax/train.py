"""The training program: `make_train(config)` builds one pure, jittable DDPG / G-DDPG run.

One iteration steps all `num_envs` environments once (vmapped), writes their transitions to
the replay buffer and then runs `updates_per_step` gradient steps. A chunk is `lax.scan` over
`steps_per_chunk` iterations under one `jit`; the whole run `train(key)` is a scan over chunks.
Python drives chunks one at a time (`run_chunk`) so that a script can log, checkpoint and
evaluate between them. `train(key)` runs the same computation in one program; XLA fuses it
differently, so its floats can differ from the chunked form's in the last bits. The chunked
form is bit-reproducible on CPU: the same state and hyperparameters give the same next state.

Static values (shapes, network sizes, T, batch and buffer sizes, chunk length) are closed
over, so a new value means a new compiled program. Traced values (agent hyperparameters and
every `EnvParams` constant, including the energy weight lambda_E) enter as the `TrainHyperparams`
argument, so changing them reuses the compiled program, and `jax.vmap(program.train)` over a
batch of keys and `TrainHyperparams` runs a population in one compile.

Episodes: environments are stepped with `step_env` and reset together, only when at least
one of them is done. In a single run every environment has the same fixed horizon, so the
reset runs once per episode instead of once per slot as with gymnax's auto-reset `step`.
Under a `vmap` over a population the condition is batched, so the reset runs every slot
(correct, slower).
"""

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlli_jax.agents.ddpg import Agent, AgentHyperparams, AgentState, Transition, make_agent
from rlli_jax.agents.replay import (
    DeviceMemoryError,
    Replay,
    ReplayMemoryError,
    ReplayState,
    available_device_bytes,
    check_replay_memory,
    estimate_replay_bytes,
    example_transition,
    make_replay_buffer,
)
from rlli_jax.config import Config
from rlli_jax.env.params import EnvParams
from rlli_jax.env.service import (
    NUM_ACTIONS_PER_USER,
    DiffusionServiceEnv,
    EnvState,
    ObservationLayout,
)
from rlli_jax.evaluation import EPISODE_METRICS, make_agent_policy, run_episodes

# Per-slot `info` entries logged as training metrics (means over environments).
ENV_METRICS = ("qoe", "quality", "latency_s", "energy_j", "shared_steps", "total_steps")


@struct.dataclass
class TrainHyperparams:
    """Traced values of a run: agent hyperparameters and environment constants."""

    agent: AgentHyperparams
    env: EnvParams


@struct.dataclass
class TrainState:
    """Everything a run carries between iterations; a checkpoint stores all of it."""

    agent: AgentState
    replay: ReplayState
    env_state: EnvState  # batched over [num_envs]
    obs: jax.Array  # [num_envs, obs_dim] float32
    episode_return: jax.Array  # [num_envs] float32, reward summed since the last reset
    iteration: jax.Array  # int32 scalar, vectorised steps done
    key: jax.Array  # typed PRNG key


class _Static(NamedTuple):
    """The static parts of a run that the step functions close over."""

    env: DiffusionServiceEnv
    agent: Agent
    replay: Replay
    num_envs: int
    warmup_iterations: int
    updates_per_step: int
    update_metric_names: tuple[str, ...]
    bootstrap_at_horizon: bool


def make_env(config: Config) -> DiffusionServiceEnv:
    """Build the environment of `config.env`, with its reward network checkpoint if it names one.

    Raises:
        ValueError: naming env.reward_net, when the checkpoint cannot be loaded (wrong format,
            version or shapes, metadata that is not valid JSON, or damaged files).
    """
    qoe_model = None
    if config.env.reward_net is not None:
        from rlli_jax.qoe.reward_net import RewardNetQoE

        try:
            qoe_model = RewardNetQoE.from_checkpoint(Path(config.env.reward_net).expanduser())
        except ValueError as error:
            raise ValueError(
                f"invalid env.reward_net = {config.env.reward_net!r}: {error}"
            ) from None
    return DiffusionServiceEnv(
        num_users=config.env.num_users, horizon=config.env.horizon, qoe_model=qoe_model
    )


def make_hyperparams(config: Config, env: DiffusionServiceEnv | None = None) -> TrainHyperparams:
    """Build the traced values of `config` (validated, as float32 leaves)."""
    env = make_env(config) if env is None else env
    env_params = env.make_params(**config.env.param_overrides)
    return TrainHyperparams(
        agent=config.hyperparams,
        env=jax.tree.map(_strongly_typed, env_params),
    )


def _strongly_typed(leaf: Any) -> Any:
    """Turn a Python float into a float32 array, so a jnp replacement value has the same
    abstract type and does not retrace the program (Python floats trace as weak types)."""
    if isinstance(leaf, float):
        return jnp.asarray(leaf, jnp.float32)
    if isinstance(leaf, int) and not isinstance(leaf, bool):
        return jnp.asarray(leaf, jnp.int32)
    return leaf


def _select(condition: jax.Array, when_true: Any, when_false: Any) -> Any:
    """Pick per environment: condition [num_envs], trees with leading axis [num_envs]."""

    def pick(a, b):
        mask = condition.reshape(condition.shape + (1,) * (a.ndim - 1))
        return jnp.where(mask, a, b)

    return jax.tree.map(pick, when_true, when_false)


def _reset_all(static: _Static, key: jax.Array, env_params: EnvParams):
    keys = jax.random.split(key, static.num_envs)
    return jax.vmap(static.env.reset_env, in_axes=(0, None))(keys, env_params)


def collect_step(
    static: _Static, state: TrainState, hyper: TrainHyperparams, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Act in every environment, step it, store the transitions and reset finished episodes."""
    key_act, key_step, key_reset = jax.random.split(key, 3)
    num_actions = static.env.num_actions

    def explore(_):
        action = static.agent.act(state.agent, state.obs, key_act, hyper.agent, explore=True)
        chex.assert_shape(action, (static.num_envs, num_actions))  # `make_train` checked it
        return action

    def warmup(_):
        return jax.random.uniform(key_act, (static.num_envs, num_actions), minval=-1.0, maxval=1.0)

    in_warmup = state.iteration < static.warmup_iterations
    action = jax.lax.cond(in_warmup, warmup, explore, None)  # [num_envs, num_actions]

    step_keys = jax.random.split(key_step, static.num_envs)
    next_obs, env_state, reward, terminated, info = jax.vmap(
        static.env.step_env, in_axes=(0, 0, 0, None)
    )(step_keys, state.env_state, action, hyper.env)
    truncated = jax.vmap(static.env.is_truncated, in_axes=(0, None))(env_state, hyper.env)
    done = terminated | truncated  # [num_envs]
    # The critic target bootstraps unless the stored transition is terminal. With
    # bootstrap_at_horizon off, the horizon ends the task (the slot index is observed).
    stored_terminated = terminated if static.bootstrap_at_horizon else done

    replay_state = static.replay.add(
        state.replay,
        Transition(
            obs=state.obs,
            action=action,
            reward=reward,
            next_obs=next_obs,
            terminated=stored_terminated.astype(jnp.float32),
        ),
    )

    def reset_done(_):
        reset_obs, reset_state = _reset_all(static, key_reset, hyper.env)
        return _select(done, reset_obs, next_obs), _select(done, reset_state, env_state)

    obs, env_state = jax.lax.cond(jnp.any(done), reset_done, lambda _: (next_obs, env_state), None)

    episode_return = state.episode_return + reward
    num_done = jnp.sum(done)
    metrics = {name: jnp.mean(info[name]) for name in ENV_METRICS}
    metrics["reward"] = jnp.mean(reward)
    metrics["episodes_done"] = num_done.astype(jnp.float32)
    # Mean return of the episodes that ended this step; 0 when none did.
    metrics["episode_return"] = jnp.sum(jnp.where(done, episode_return, 0.0)) / jnp.maximum(
        num_done, 1
    )
    new_state = state.replace(
        replay=replay_state,
        env_state=env_state,
        obs=obs,
        episode_return=jnp.where(done, 0.0, episode_return),
    )
    return new_state, metrics


def update_step(
    static: _Static, state: TrainState, hyper: TrainHyperparams, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Run `updates_per_step` gradient steps once warmup is over; metrics are their means."""

    def run_updates(agent_state: AgentState):
        def one_update(agent_state, update_key):
            key_sample, key_update = jax.random.split(update_key)
            batch = static.replay.sample(state.replay, key_sample)
            return static.agent.update(agent_state, batch, key_update, hyper.agent)

        update_keys = jax.random.split(key, static.updates_per_step)
        agent_state, metrics = jax.lax.scan(one_update, agent_state, update_keys)
        metrics = {name: jnp.mean(values) for name, values in metrics.items()}
        metrics["updated"] = jnp.ones((), jnp.float32)
        return agent_state, metrics

    def skip(agent_state: AgentState):
        metrics = {name: jnp.zeros((), jnp.float32) for name in static.update_metric_names}
        metrics["updated"] = jnp.zeros((), jnp.float32)
        return agent_state, metrics

    ready = (state.iteration >= static.warmup_iterations) & static.replay.can_sample(state.replay)
    agent_state, metrics = jax.lax.cond(ready, run_updates, skip, state.agent)
    return state.replace(agent=agent_state), metrics


def train_iteration(
    static: _Static, state: TrainState, hyper: TrainHyperparams
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Run one vectorised environment step, then the gradient steps."""
    key, key_collect, key_update = jax.random.split(state.key, 3)
    state, collect_metrics = collect_step(static, state, hyper, key_collect)
    state, update_metrics = update_step(static, state, hyper, key_update)
    params = (state.agent.actor_params, state.agent.critic_params)
    params_finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)])
    )
    metrics = {**collect_metrics, **update_metrics}
    metrics["params_finite"] = params_finite.astype(jnp.float32)
    metrics["iteration"] = state.iteration
    return state.replace(key=key, iteration=state.iteration + 1), metrics


@dataclasses.dataclass(frozen=True, eq=False)
class TrainProgram:
    """The pure functions of one run configuration, built by `make_train`.

    Calling the program runs the whole training: `program(key, hyper)` is `train`.
    `trace_counts` counts how often each function was traced, for tests and benchmarks.
    """

    config: Config
    env: DiffusionServiceEnv
    agent: Agent
    replay: Replay
    default_hyperparams: TrainHyperparams
    update_metric_names: tuple[str, ...]
    init: Callable[[jax.Array, TrainHyperparams], TrainState]
    run_chunk: Callable[[TrainState, TrainHyperparams], tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[[AgentState, TrainHyperparams, jax.Array], dict[str, jax.Array]]
    trace_counts: dict[str, int]

    def train(
        self, key: jax.Array, hyper: TrainHyperparams | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """Run all chunks in one `lax.scan`; pure and jittable.

        Returns the final state and metrics [num_chunks, steps_per_chunk] per name.
        """
        hyper = self.default_hyperparams if hyper is None else hyper
        state = self.init(key, hyper)

        def chunk(state, _):
            return self.run_chunk(state, hyper)

        return jax.lax.scan(chunk, state, None, length=self.config.train.num_chunks)

    def __call__(self, key: jax.Array, hyper: TrainHyperparams | None = None):
        return self.train(key, hyper)

    @property
    def num_chunks(self) -> int:
        return self.config.train.num_chunks


def make_train(
    config: Config, check_memory: bool = True, env: DiffusionServiceEnv | None = None
) -> TrainProgram:
    """Build the training program of `config`; validates everything, compiles nothing.

    `init` and `run_chunk` are jitted (compiled on first call); `train` is pure and can be
    wrapped in `jax.jit` or `jax.vmap`. `env` replaces the environment `config.env` describes
    (for example one with another QoE model); its shapes must match `config.env`.

    Raises:
        ValueError: an invalid environment constant, an `env` whose users or horizon differ
            from `config.env`, or a replay buffer that does not fit in free memory (when
            `check_memory`), networks or `env.num_users` too large for free memory (when
            `check_memory`). The memory errors are `DeviceMemoryError`, a ValueError subclass.
    """
    if env is None:
        if check_memory:
            check_users_memory(config)
        env = make_env(config)
    check_env_shape(env, config)
    hyper = make_hyperparams(config, env)
    check_env_outputs(env, hyper.env)
    agent = make_agent(config.agent)
    train_config = config.train
    replay = make_replay_buffer(
        capacity=train_config.buffer_size,
        batch_size=config.agent.batch_size,
        min_size=config.agent.batch_size,
    )
    if check_memory:
        replay_bytes = estimate_replay_bytes(train_config.buffer_size, env.obs_dim, env.num_actions)
        check_replay_memory(replay_bytes)
        check_network_memory(config, agent, env, hyper.agent, replay_bytes)

    update_metric_names = _update_metric_names(agent, env, hyper, config.agent.batch_size)
    static = _Static(
        env=env,
        agent=agent,
        replay=replay,
        num_envs=train_config.num_envs,
        warmup_iterations=train_config.warmup_iterations,
        updates_per_step=train_config.updates_per_step,
        update_metric_names=update_metric_names,
        bootstrap_at_horizon=train_config.bootstrap_at_horizon,
    )
    trace_counts = {"init": 0, "run_chunk": 0, "evaluate": 0}

    def init(key: jax.Array, hyper: TrainHyperparams) -> TrainState:
        trace_counts["init"] += 1
        key_agent, key_reset, key_run = jax.random.split(key, 3)
        agent_state = agent.init(key_agent, env.obs_dim, env.num_actions, hyper.agent)
        obs, env_state = _reset_all(static, key_reset, hyper.env)
        return TrainState(
            agent=agent_state,
            replay=replay.init(example_transition(env.obs_dim, env.num_actions)),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros((train_config.num_envs,), jnp.float32),
            iteration=jnp.zeros((), jnp.int32),
            key=key_run,
        )

    def run_chunk(state: TrainState, hyper: TrainHyperparams):
        trace_counts["run_chunk"] += 1

        def body(state, _):
            return train_iteration(static, state, hyper)

        return jax.lax.scan(body, state, None, length=train_config.steps_per_chunk)

    def evaluate(agent_state: AgentState, hyper: TrainHyperparams, key: jax.Array):
        trace_counts["evaluate"] += 1
        policy = make_agent_policy(agent, agent_state, hyper.agent)
        return run_episodes(env, hyper.env, policy, key, train_config.eval_episodes)

    return TrainProgram(
        config=config,
        env=env,
        agent=agent,
        replay=replay,
        default_hyperparams=hyper,
        update_metric_names=update_metric_names,
        init=jax.jit(init),
        run_chunk=jax.jit(run_chunk, donate_argnums=0),
        evaluate=jax.jit(evaluate),
        trace_counts=trace_counts,
    )


def check_env_shape(env: DiffusionServiceEnv, config: Config) -> None:
    """Raise ValueError if the users or horizon of `env` differ from `config.env`."""
    for name in ("num_users", "horizon"):
        if getattr(env, name) != getattr(config.env, name):
            raise ValueError(
                f"invalid env: its {name} = {getattr(env, name)} differs from config env.{name}"
                f" = {getattr(config.env, name)}; build the environment from the same values"
            )


def check_users_memory(config: Config) -> None:
    """Raise ValueError if the replay buffer for `config.env.num_users` users cannot fit in
    free memory, before the environment builds its user-pair index arrays.

    The observation has num_users * (num_users - 1) / 2 pair similarities, so its size and the
    environment's host arrays grow with the square of num_users.
    NOTE: those host arrays take about 9 * num_users**2 bytes (numpy.triu_indices), which this
    check covers only when train.buffer_size >= 2.
    """
    num_users = config.env.num_users
    obs_dim = ObservationLayout(num_users).size
    replay_bytes = estimate_replay_bytes(
        config.train.buffer_size, obs_dim, NUM_ACTIONS_PER_USER * num_users
    )
    free_bytes, source = available_device_bytes()
    if replay_bytes > free_bytes:
        raise ReplayMemoryError(
            f"invalid env.num_users = {num_users}: observations have {obs_dim} entries, so a "
            f"replay buffer of train.buffer_size = {config.train.buffer_size} transitions needs "
            f"{replay_bytes / 2**20:.1f} MiB but only {free_bytes / 2**20:.1f} MiB are free "
            f"according to {source}; reduce env.num_users or train.buffer_size"
        )


def check_network_memory(
    config: Config,
    agent: Agent,
    env: DiffusionServiceEnv,
    agent_hyper: AgentHyperparams,
    replay_bytes: int,
) -> None:
    """Raise DeviceMemoryError (a ValueError) if the agent state and the replay buffer do not
    fit in free memory.

    The agent state (both networks, their target copies and Adam moments) is sized with
    `jax.eval_shape`, which compiles and allocates nothing. Without this check an oversized
    hidden layer failed only when `init` ran, with an out-of-memory error from XLA.
    """
    shapes = jax.eval_shape(
        lambda key: agent.init(key, env.obs_dim, env.num_actions, agent_hyper),
        jax.random.key(0),
    )
    network_bytes = sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(shapes)
    )
    free_bytes, source = available_device_bytes()
    if network_bytes + replay_bytes <= free_bytes:
        return
    agent_config = config.agent
    sizes = ", ".join(
        f"agent.{name} = {list(getattr(agent_config, name))}"
        for name in ("actor_hidden_sizes", "critic_hidden_sizes", "encoder_hidden_sizes")
    )
    raise DeviceMemoryError(
        f"invalid network sizes ({sizes}): the networks with their target copies and Adam "
        f"moments need {network_bytes / 2**20:.1f} MiB, and with the replay buffer "
        f"({replay_bytes / 2**20:.1f} MiB) more than the {free_bytes / 2**20:.1f} MiB free "
        f"according to {source}; reduce the hidden sizes, or train.buffer_size if the "
        "replay buffer is most of it"
    )


def check_chunk_memory(
    compiled: jax.stages.Compiled,
    num_members: int = 1,
    config: Config | None = None,
    whole_run: bool = False,
    resumed: bool = False,
) -> None:
    """Raise DeviceMemoryError (a ValueError) if a compiled training program needs more than
    the free memory.

    The need is what the program allocates beyond its arguments: XLA's temporaries and the
    outputs that do not reuse a donated argument. For a chunk the training state is an
    argument already on the device. A whole run compiled as one program (the study) has the
    state among its temporaries and outputs. The checks before compiling
    (`check_network_memory`, the sweep's `estimate_member_memory`) count only the state. With
    configs/quick.yaml at num_envs 64, buffer_size 4096, batch_size 1024 and hidden sizes 256,
    a population of 4 members had 291 MiB of chunk temporaries against a 39 MiB state
    estimate (XLA memory analysis, CPU, jax 0.10.2). `num_members` > 1 names a population
    trained at once. With `config`, the message gives the values of the fields to reduce.
    `whole_run` names train.buffer_size too, because there the replay buffer is a temporary.
    `resumed` marks a run that keeps its saved config, so the fix is a new run or more memory.
    A backend that reports no analysis is not checked.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return
    needed = (
        analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    )
    free_bytes, source = available_device_bytes()
    if needed <= free_bytes:
        return
    members = f" of {num_members} members" if num_members > 1 else ""
    raise DeviceMemoryError(
        f"the compiled training{members} needs {needed / 2**20:.1f} MiB beyond its arguments, "
        f"but only {free_bytes / 2**20:.1f} MiB are free according to {source}; reduce "
        + _chunk_memory_fields(config, whole_run)
        + (", or the number of members" if num_members > 1 else "")
        + (
            " in a new run, because a resumed run keeps its saved config; or free memory on "
            "the device and resume again"
            if resumed
            else ""
        )
    )


def _chunk_memory_fields(config: Config | None, whole_run: bool) -> str:
    """Return the config fields that size a training program's temporaries, as message text."""
    names = ["agent.batch_size", "agent.actor_hidden_sizes", "agent.critic_hidden_sizes"]
    if config is None or config.agent.algo == "gddpg":
        names.append("agent.encoder_hidden_sizes")
    if whole_run:
        names.append("train.buffer_size")
    names.append("train.num_envs")
    if config is None:
        items = names
    else:
        items = []
        for name in names:
            section, field = name.split(".")
            value = getattr(getattr(config, section), field)
            if isinstance(value, tuple):
                value = list(value)
            items.append(f"{name} (now {value})")
    return ", ".join(items[:-1]) + " or " + items[-1]


def check_env_outputs(env: DiffusionServiceEnv, env_params: EnvParams) -> None:
    """Check by abstract evaluation that `reset_env` and `step_env` return what training reads.

    A subclass that changes the observation must change `obs_dim` with it, because the
    networks, the replay buffer and `observation_space` are sized from it. Without this check
    the mismatch would surface later as a shape error inside the actor. Training and
    evaluation also read a scalar float reward and the `info` entries of the service
    environment.

    Raises:
        ValueError: naming the environment class and what it returned.
    """
    name = type(env).__qualname__
    key = jax.random.key(0)
    obs, state = jax.eval_shape(env.reset_env, key, env_params)
    action = jax.ShapeDtypeStruct((env.num_actions,), jnp.float32)
    next_obs, _, reward, _, info = jax.eval_shape(env.step_env, key, state, action, env_params)
    for method, returned in (("reset_env", obs), ("step_env", next_obs)):
        if returned.shape != (env.obs_dim,) or returned.dtype != jnp.float32:
            raise ValueError(
                f"invalid environment {name}: {method} returned an observation of shape "
                f"{returned.shape} and dtype {returned.dtype}, but its obs_dim is {env.obs_dim} "
                "and training expects float32; a subclass that changes get_obs must override "
                "obs_dim to match"
            )
    space_shape = env.observation_space(env_params).shape
    if tuple(space_shape) != (env.obs_dim,):
        raise ValueError(
            f"invalid environment {name}: observation_space has shape {space_shape}, but obs_dim "
            f"is {env.obs_dim}; make the two agree"
        )
    if reward.shape != () or not jnp.issubdtype(reward.dtype, jnp.floating):
        raise ValueError(
            f"invalid environment {name}: step_env returned a reward of shape {reward.shape} and "
            f"dtype {reward.dtype}, expected a floating-point scalar"
        )
    missing = sorted(set(ENV_METRICS + EPISODE_METRICS) - set(info))
    if missing:
        raise ValueError(
            f"invalid environment {name}: the info of step_env lacks {missing}, which training "
            "and evaluation log; keep the entries of DiffusionServiceEnv's info"
        )


def _update_metric_names(
    agent: Agent, env: DiffusionServiceEnv, hyper: TrainHyperparams, batch_size: int
) -> tuple[str, ...]:
    """Names of the metrics `agent.update` returns, found by abstract evaluation.

    Raises:
        ValueError: the actor returns actions of another shape than the environment's.
    """

    def one_act(key):
        agent_state = agent.init(key, env.obs_dim, env.num_actions, hyper.agent)
        observations = jnp.zeros((batch_size, env.obs_dim), jnp.float32)
        return agent.act(agent_state, observations, key, hyper.agent)

    # A custom actor (an ACTOR_FACTORIES entry) that returns another shape would otherwise
    # fail inside the critic with a message about parameter shapes.
    action = jax.eval_shape(one_act, jax.random.key(0))
    if action.shape != (batch_size, env.num_actions):
        raise ValueError(
            f"invalid actor of agent.algo = {agent.config.algo!r}: it returned actions of "
            f"shape {action.shape} for {batch_size} observations, expected "
            f"{(batch_size, env.num_actions)}; check its ACTOR_FACTORIES entry"
        )

    def one_update(key):
        agent_state = agent.init(key, env.obs_dim, env.num_actions, hyper.agent)
        batch = jax.tree.map(
            lambda leaf: jnp.zeros((batch_size,) + leaf.shape, leaf.dtype),
            example_transition(env.obs_dim, env.num_actions),
        )
        return agent.update(agent_state, batch, key, hyper.agent)[1]

    shapes = jax.eval_shape(one_update, jax.random.key(0))
    return tuple(sorted(shapes))


def state_to_checkpoint(state: TrainState) -> TrainState:
    """Replace the typed PRNG key by its raw uint32 data, which orbax can store."""
    return state.replace(key=jax.random.key_data(state.key))


def state_from_checkpoint(state: TrainState) -> TrainState:
    """Undo `state_to_checkpoint`."""
    return state.replace(key=jax.random.wrap_key_data(jnp.asarray(state.key)))


def find_nonfinite(metrics: dict[str, Any]) -> tuple[int, str, float] | None:
    """Return (iteration, metric, value) of the first non-finite metric of a chunk, else None.

    Args:
        metrics: host arrays [steps_per_chunk] per name, as returned by `run_chunk`.
    """
    iterations = np.asarray(metrics["iteration"])
    for index in range(iterations.shape[0]):
        if float(metrics["params_finite"][index]) < 1.0:
            return int(iterations[index]), "actor or critic parameter", math.nan
        for name, values in metrics.items():
            value = float(np.asarray(values)[index])
            if not math.isfinite(value):
                return int(iterations[index]), name, value
    return None


def summarize_chunk(
    metrics: dict[str, Any], update_metric_names: tuple[str, ...]
) -> dict[str, float]:
    """Reduce one chunk's metrics [steps_per_chunk] to floats for logging.

    Update metrics average over the iterations that ran updates; `episode_return` averages
    over finished episodes; the rest average over all iterations.
    """
    metrics = {name: np.asarray(values, np.float64) for name, values in metrics.items()}
    updated = metrics["updated"] > 0
    episodes = metrics["episodes_done"]
    summary = {}
    for name, values in metrics.items():
        if name in ("iteration", "updated", "params_finite", "episodes_done"):
            continue
        if name == "episode_return":
            total = episodes.sum()
            summary[name] = float((values * episodes).sum() / total) if total else math.nan
        elif name in update_metric_names:
            summary[name] = float(values[updated].mean()) if updated.any() else math.nan
        else:
            summary[name] = float(values.mean())
    summary["updates"] = float(updated.sum())
    summary["episodes"] = float(episodes.sum())
    return summary
