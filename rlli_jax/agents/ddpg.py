"""DDPG and G-DDPG: one update for any actor, with twin critics and Polyak target networks.

The two algorithms differ only in the actor, chosen by `AgentConfig.algo` from `ACTOR_FACTORIES`:
"ddpg" is a tanh MLP, "gddpg" the diffusion reverse chain of `rlli_jax.agents.diffusion`. The
critic update, actor loss, target update and exploration noise are shared, so a new actor only
needs a factory returning an `Actor`.

Static settings (shapes, sizes, T) live in the frozen `AgentConfig`; a change recompiles.
Learning rates, tau, gamma and the exploration noise live in `AgentHyperparams`, a pytree of
float32 scalars traced by `jit`, so a new value does not recompile and a population of values
can be vmapped. The learning rate scales the Adam direction after the optimiser, so it never
enters the optimiser state.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rlli_jax.agents.diffusion import check_schedule, make_diffusion_actor
from rlli_jax.agents.networks import Actor, TwinCritic, make_mlp_actor
from rlli_jax.env.params import as_float32, float32_problem


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Static agent settings; every field is part of the compiled program."""

    algo: str = "gddpg"  # actor kind, a key of ACTOR_FACTORIES: "ddpg" or "gddpg"
    actor_hidden_sizes: tuple[int, ...] = (256, 256)  # MLP actor, or the diffusion noise network
    critic_hidden_sizes: tuple[int, ...] = (256, 256)  # each of the twin critics
    encoder_hidden_sizes: tuple[int, ...] = (256,)  # diffusion state encoder, before its output
    time_embedding_dim: int = 16  # diffusion step embedding width (even, >= 4)
    diffusion_steps: int = 5  # T, denoising steps of the diffusion actor
    beta_min: float = 0.1  # VP schedule lower bound
    beta_max: float = 10.0  # VP schedule upper bound
    batch_size: int = 512  # transitions per gradient step, sampled from the replay buffer
    max_grad_norm: float | None = None  # global-norm gradient clipping per network; None is off
    # Weight of the actor's penalty in its loss. The diffusion actor's penalty is the mean
    # squared distance of its x0 predictions outside [-1, 1], before they are clipped.
    bound_loss_coef: float = 0.0

    def __post_init__(self):
        if not isinstance(self.algo, str) or self.algo not in ACTOR_FACTORIES:
            raise ValueError(
                f"invalid AgentConfig.algo = {self.algo!r}: expected one of "
                f"{sorted(ACTOR_FACTORIES)}"
            )
        for name in ("actor_hidden_sizes", "critic_hidden_sizes", "encoder_hidden_sizes"):
            # An empty encoder is allowed: the state then enters the noise network's first
            # layer through one linear map, as if the raw state were concatenated to its input.
            sizes = _hidden_sizes(
                name, getattr(self, name), allow_empty=name == "encoder_hidden_sizes"
            )
            object.__setattr__(self, name, sizes)  # lists from YAML become hashable tuples
        for name in ("time_embedding_dim", "diffusion_steps", "batch_size"):
            object.__setattr__(self, name, _integer(name, getattr(self, name)))
        for name in ("beta_min", "beta_max", "bound_loss_coef"):
            object.__setattr__(self, name, _real_number(name, getattr(self, name)))
        if self.max_grad_norm is not None:
            object.__setattr__(
                self, "max_grad_norm", _real_number("max_grad_norm", self.max_grad_norm)
            )
        if self.time_embedding_dim < 4 or self.time_embedding_dim % 2:
            raise ValueError(
                f"invalid AgentConfig.time_embedding_dim = {self.time_embedding_dim}: "
                "must be even and >= 4"
            )
        if self.diffusion_steps < 1:
            raise ValueError(
                f"invalid AgentConfig.diffusion_steps = {self.diffusion_steps}: must be >= 1"
            )
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"invalid AgentConfig.beta_min = {self.beta_min}, beta_max = {self.beta_max}: "
                "need 0 < beta_min <= beta_max"
            )
        try:
            check_schedule(self.diffusion_steps, self.beta_min, self.beta_max)
        except ValueError as error:
            message = str(error).replace("invalid beta_min", "invalid AgentConfig.beta_min")
            raise ValueError(message) from None
        if self.batch_size < 1:
            raise ValueError(f"invalid AgentConfig.batch_size = {self.batch_size}: must be >= 1")
        if self.max_grad_norm is not None:
            rounded = as_float32(self.max_grad_norm)
            if not (math.isfinite(rounded) and rounded > 0):
                raise ValueError(
                    f"invalid AgentConfig.max_grad_norm = {self.max_grad_norm}: must be a finite "
                    f"number > 0, or None for no clipping{_float32_note(self.max_grad_norm)}"
                )
        rounded = as_float32(self.bound_loss_coef)
        if not (math.isfinite(rounded) and rounded >= 0.0):
            raise ValueError(
                f"invalid AgentConfig.bound_loss_coef = {self.bound_loss_coef}: must be a "
                f"finite number >= 0{_float32_note(self.bound_loss_coef)}"
            )


def _float32_note(value: float) -> str:
    """Return a note for an error message when float32 rounding changes `value`, else ''."""
    rounded = as_float32(value)
    if not math.isfinite(value) or rounded == value:
        return ""
    return f" (float32, the type of the training program, makes it {rounded!r})"


def _is_integer(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _integer(name: str, value: Any) -> int:
    """Return an `AgentConfig` integer field as a Python int; bools and floats are invalid."""
    if not _is_integer(value):
        raise ValueError(f"invalid AgentConfig.{name} = {value!r}: expected an integer")
    return int(value)


def _real_number(name: str, value: Any) -> float:
    """Return an `AgentConfig` float field as a Python float; bools and strings are invalid."""
    if not _is_integer(value) and not isinstance(value, float | np.floating):
        raise ValueError(f"invalid AgentConfig.{name} = {value!r}: expected a real number")
    return float(value)


def _hidden_sizes(name: str, sizes: Any, allow_empty: bool) -> tuple[int, ...]:
    """Return `AgentConfig` layer widths as a tuple of positive Python ints."""
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence | np.ndarray):
        raise ValueError(
            f"invalid AgentConfig.{name} = {sizes!r}: expected a sequence of positive integers"
        )
    if not allow_empty and len(sizes) == 0:
        raise ValueError(
            f"invalid AgentConfig.{name} = {sizes!r}: expected a non-empty sequence of "
            "positive integers"
        )
    for index, size in enumerate(sizes):
        if not _is_integer(size) or size < 1:
            raise ValueError(
                f"invalid AgentConfig.{name}[{index}] = {size!r}: expected a positive integer"
            )
    return tuple(int(size) for size in sizes)


@struct.dataclass
class AgentHyperparams:
    """Traced hyperparameters, float32 scalars (or [P] arrays for a vmapped population)."""

    actor_lr: jax.Array  # Adam step size of the actor
    critic_lr: jax.Array  # Adam step size of the twin critics
    tau: jax.Array  # Polyak rate: target <- tau * online + (1 - tau) * target
    gamma: jax.Array  # discount
    exploration_std: jax.Array  # std of the Gaussian noise added to actions when exploring

    @classmethod
    def create(cls, **values: float) -> "AgentHyperparams":
        """Build from Python numbers, cast to float32 arrays so the traced types never vary."""
        return cls(**{name: jnp.asarray(value, jnp.float32) for name, value in values.items()})


# Per-algorithm defaults, tuned on the water-filling probe (tests/test_probe_learning.py). The
# diffusion actor needs a smaller step than the MLP actor. With 128-128 networks and batch 256,
# G-DDPG at actor_lr 1e-3 stalled near a 7.5% gap for 2500 updates, where 1e-4 reached 1.9%.
DEFAULT_HYPERPARAMS: dict[str, dict[str, float]] = {
    "ddpg": dict(actor_lr=1e-3, critic_lr=1e-3, tau=0.005, gamma=0.99, exploration_std=0.1),
    "gddpg": dict(actor_lr=1e-4, critic_lr=1e-3, tau=0.005, gamma=0.99, exploration_std=0.1),
}


# The rule each hyperparameter must satisfy, as (description, predicate on a finite float).
HYPERPARAM_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "actor_lr": ("must be > 0", lambda x: x > 0),
    "critic_lr": ("must be > 0", lambda x: x > 0),
    "tau": ("must lie in (0, 1]", lambda x: 0 < x <= 1),
    "gamma": ("must lie in [0, 1)", lambda x: 0 <= x < 1),
    "exploration_std": ("must be >= 0", lambda x: x >= 0),
}


def check_hyperparam(name: str, value: Any, path: str | None = None) -> None:
    """Raise ValueError unless `value` is a finite real number obeying `name`'s rule.

    A real number is a Python or NumPy int or float (not a bool), or a 0-d integer or floating
    NumPy or JAX array with a concrete value. The message names the value by `path` (default:
    `name`).
    """
    rule, predicate = HYPERPARAM_RULES[name]
    label = path or name
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"invalid {label} = {value!r}: expected a concrete real number, got a traced "
            "value; check hyperparameters outside jit"
        )
    is_scalar = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    is_scalar_array = (
        isinstance(value, np.ndarray | jax.Array)
        and value.ndim == 0
        and (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
    )
    if not (is_scalar or is_scalar_array):
        raise ValueError(
            f"invalid {label} = {value!r}: expected a real number, got {_describe_type(value)}"
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not (math.isfinite(number) and predicate(number)):
        raise ValueError(f"invalid {label} = {value!r}: {rule} (a finite number)")
    problem = float32_problem(number, predicate, rule)
    if problem is not None:
        raise ValueError(f"invalid {label} = {value!r}: {problem}")


def _describe_type(value: Any) -> str:
    """Name the type of `value` for a message, with the shape and dtype of an array."""
    if isinstance(value, np.ndarray | jax.Array):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def resolve_hyperparams(
    algo: str, overrides: dict[str, float], prefix: str = ""
) -> dict[str, float]:
    """Return every hyperparameter of `algo` as a float: its defaults, then `overrides`.

    An actor registered in `ACTOR_FACTORIES` without an entry in `DEFAULT_HYPERPARAMS` has no
    defaults, so `overrides` must then set every hyperparameter. Messages name the values as
    `prefix` + name (the config passes "hyper.").

    Raises:
        ValueError: an unknown algorithm or name, a missing value, or a value that breaks its
            rule.
    """
    if algo not in DEFAULT_HYPERPARAMS and algo not in ACTOR_FACTORIES:
        raise ValueError(f"invalid algo = {algo!r}: expected one of {sorted(ACTOR_FACTORIES)}")
    unknown = sorted(set(overrides) - set(HYPERPARAM_RULES))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {[prefix + name for name in unknown]}: expected names "
            f"from {sorted(HYPERPARAM_RULES)}"
        )
    for name, value in overrides.items():
        check_hyperparam(name, value, prefix + name)
    values = dict(DEFAULT_HYPERPARAMS.get(algo, {}))
    values.update(overrides)
    missing = [prefix + name for name in HYPERPARAM_RULES if name not in values]
    if missing:
        raise ValueError(
            f"algo = {algo!r} has no default hyperparameters (DEFAULT_HYPERPARAMS has entries "
            f"for {sorted(DEFAULT_HYPERPARAMS)}): set {missing}, or add an entry "
            f"DEFAULT_HYPERPARAMS[{algo!r}]"
        )
    return {name: float(values[name]) for name in HYPERPARAM_RULES}


def default_hyperparams(algo: str, **overrides: float) -> AgentHyperparams:
    """Return the traced hyperparameters of `algo`: its defaults with `overrides` applied.

    Raises:
        ValueError: as `resolve_hyperparams` describes.
    """
    return AgentHyperparams.create(**resolve_hyperparams(algo, overrides))


@struct.dataclass
class Transition:
    """A batch of transitions; B is the leading batch shape (`update` takes exactly one axis).

    obs [B, obs_dim] float32, action [B, action_dim] float32 in [-1, 1], reward [B] float32,
    next_obs [B, obs_dim] float32, terminated [B] float32 (1.0 when the episode ended in a
    terminal state). A truncated episode stores terminated = 0 so its bootstrap is kept.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array


@struct.dataclass
class AgentState:
    """Parameters, target parameters, Adam states and the update count of one agent."""

    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    step: jax.Array  # int32, number of updates applied
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


ActorFactory = Callable[[AgentConfig, int], Actor]

ACTOR_FACTORIES: dict[str, ActorFactory] = {
    "ddpg": lambda config, action_dim: make_mlp_actor(action_dim, config.actor_hidden_sizes),
    "gddpg": lambda config, action_dim: make_diffusion_actor(
        action_dim,
        num_steps=config.diffusion_steps,
        beta_min=config.beta_min,
        beta_max=config.beta_max,
        hidden_sizes=config.actor_hidden_sizes,
        encoder_hidden_sizes=config.encoder_hidden_sizes,
        time_embedding_dim=config.time_embedding_dim,
    ),
}


def critic_target(
    reward: jax.Array,
    terminated: jax.Array,
    next_q1: jax.Array,
    next_q2: jax.Array,
    gamma: jax.Array,
) -> jax.Array:
    """Compute the clipped double-Q target r + gamma (1 - terminated) min(Q1', Q2'), all [B]."""
    return reward + gamma * (1.0 - terminated) * jnp.minimum(next_q1, next_q2)


def polyak_update(online_params: Any, target_params: Any, tau: jax.Array) -> Any:
    """Return tau * online + (1 - tau) * target, leaf by leaf."""
    return jax.tree.map(
        lambda new, old: tau * new + (1.0 - tau) * old, online_params, target_params
    )


class Agent(NamedTuple):
    """The pure functions of one agent configuration (see `make_agent`)."""

    config: AgentConfig
    init: Callable[[jax.Array, int, int, AgentHyperparams], AgentState]
    act: Callable[..., jax.Array]
    update: Callable[
        [AgentState, Transition, jax.Array, AgentHyperparams],
        tuple[AgentState, dict[str, jax.Array]],
    ]


def make_agent(config: AgentConfig) -> Agent:
    """Bind the static config and return the agent's pure `init`, `act` and `update`.

    init(key, obs_dim, action_dim, hyper) -> AgentState.
    act(agent_state, obs [B, obs_dim], key, hyper, explore) -> action [B, action_dim] in
        [-1, 1]; explore adds N(0, exploration_std^2) noise before the clip. A Python bool
        (static under jit) compiles only the branch it selects; a 0-d bool or integer (0 or 1)
        array, traced or not, is also accepted and draws the noise either way. Other types
        raise TypeError, and a concrete integer other than 0 or 1 raises ValueError. The
        diffusion actor draws its chain noise from key either way.
    update(agent_state, batch, key, hyper) -> (agent_state, metrics): one critic step, one
        actor step and one Polyak step; metrics are float32 scalars.
    All three are pure and jittable; the caller chooses where to `jit`, `vmap` or `scan`.
    """
    critic = TwinCritic(hidden_sizes=config.critic_hidden_sizes)
    optimizer = _make_optimizer(config.max_grad_norm)

    def get_actor(action_dim: int) -> Actor:
        return ACTOR_FACTORIES[config.algo](config, action_dim)

    def init(key: jax.Array, obs_dim: int, action_dim: int, hyper: AgentHyperparams) -> AgentState:
        del hyper  # the state does not depend on traced values; kept for a uniform signature
        for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim)):
            if not _is_integer(value) or value < 1:
                raise ValueError(f"invalid {name} = {value!r}: must be a positive integer")
        obs_dim, action_dim = int(obs_dim), int(action_dim)
        key_actor, key_critic = jax.random.split(key)
        actor_params = get_actor(action_dim).init(key_actor, obs_dim)
        critic_params = critic.init(
            key_critic,
            jnp.zeros((1, obs_dim), jnp.float32),
            jnp.zeros((1, action_dim), jnp.float32),
        )
        return AgentState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_actor_params=actor_params,
            target_critic_params=critic_params,
            actor_opt_state=optimizer.init(actor_params),
            critic_opt_state=optimizer.init(critic_params),
            step=jnp.zeros((), jnp.int32),
            obs_dim=obs_dim,
            action_dim=action_dim,
        )

    def act(
        agent_state: AgentState,
        obs: jax.Array,
        key: jax.Array,
        hyper: AgentHyperparams,
        explore: bool = False,
    ) -> jax.Array:
        _check_hyper(hyper)
        if jnp.ndim(obs) != 2 or jnp.shape(obs)[1] != agent_state.obs_dim:
            raise ValueError(
                f"invalid obs shape {jnp.shape(obs)}: act expects a batch of shape "
                f"[B, {agent_state.obs_dim}]; for one observation pass obs[None]"
            )
        _check_explore(explore)
        key_policy, key_explore = jax.random.split(key)
        action = get_actor(agent_state.action_dim).apply(agent_state.actor_params, obs, key_policy)
        if isinstance(explore, bool | np.bool_) and not explore:
            return jnp.clip(action, -1.0, 1.0)
        noise_distribution = distrax.Normal(
            loc=jnp.zeros((), jnp.float32), scale=hyper.exploration_std
        )
        noise = noise_distribution.sample(seed=key_explore, sample_shape=action.shape)
        if not isinstance(explore, bool | np.bool_):
            # A 0-d array flag (traced when act is jitted without a static explore) selects the
            # noise at run time, and a nonzero integer counts as True.
            noise = jnp.where(jnp.asarray(explore) != 0, noise, 0.0)
        return jnp.clip(action + noise, -1.0, 1.0)

    def update(
        agent_state: AgentState,
        batch: Transition,
        key: jax.Array,
        hyper: AgentHyperparams,
    ) -> tuple[AgentState, dict[str, jax.Array]]:
        _check_hyper(hyper)
        _check_batch(batch, agent_state.obs_dim, agent_state.action_dim)
        actor = get_actor(agent_state.action_dim)
        key_target_action, key_actor_loss = jax.random.split(key)

        # Critic step against the target networks.
        next_action = actor.apply(
            agent_state.target_actor_params, batch.next_obs, key_target_action
        )
        next_q1, next_q2 = critic.apply(
            agent_state.target_critic_params, batch.next_obs, next_action
        )
        target = critic_target(
            batch.reward, batch.terminated.astype(jnp.float32), next_q1, next_q2, hyper.gamma
        )
        target = jax.lax.stop_gradient(target)  # [B]

        def critic_loss_fn(critic_params):
            q1, q2 = critic.apply(critic_params, batch.obs, batch.action)
            loss = jnp.mean(jnp.square(q1 - target)) + jnp.mean(jnp.square(q2 - target))
            return loss, (q1, q2)

        (critic_loss, (q1, q2)), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            agent_state.critic_params
        )
        critic_params, critic_opt_state = _apply_gradients(
            optimizer, agent_state.critic_params, agent_state.critic_opt_state,
            critic_grads, hyper.critic_lr,
        )  # fmt: skip

        # Actor step through the freshly updated critics; for the diffusion actor the gradient
        # flows through every denoising step of the chain.
        # Static: without the bound loss the penalty is not computed, and not reported.
        uses_penalty = actor.apply_with_penalty is not None and config.bound_loss_coef != 0.0

        def actor_loss_fn(actor_params):
            if not uses_penalty:
                action = actor.apply(actor_params, batch.obs, key_actor_loss)
                penalty = jnp.zeros((), jnp.float32)
            else:
                action, penalty = actor.apply_with_penalty(actor_params, batch.obs, key_actor_loss)
            q1_pi, q2_pi = critic.apply(critic_params, batch.obs, action)
            q_loss = -jnp.mean(jnp.minimum(q1_pi, q2_pi))
            return q_loss + config.bound_loss_coef * penalty, penalty

        (actor_loss, actor_penalty), actor_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            agent_state.actor_params
        )
        actor_params, actor_opt_state = _apply_gradients(
            optimizer, agent_state.actor_params, agent_state.actor_opt_state,
            actor_grads, hyper.actor_lr,
        )  # fmt: skip

        new_state = agent_state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            target_actor_params=polyak_update(
                actor_params, agent_state.target_actor_params, hyper.tau
            ),
            target_critic_params=polyak_update(
                critic_params, agent_state.target_critic_params, hyper.tau
            ),
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=agent_state.step + 1,
        )
        metrics = {
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "q_mean": jnp.mean(0.5 * (q1 + q2)),
            "target_q_mean": jnp.mean(target),
            "critic_grad_norm": optax.tree.norm(critic_grads),
            "actor_grad_norm": optax.tree.norm(actor_grads),
        }
        if uses_penalty:
            metrics["actor_penalty"] = actor_penalty
        return new_state, metrics

    return Agent(config=config, init=init, act=act, update=update)


def _check_explore(explore: Any) -> None:
    """Raise TypeError unless `explore` is a bool or a 0-d bool or integer (0 or 1) array.

    A traced integer flag has no value to check, so any nonzero value counts as True there.
    """
    if isinstance(explore, bool | np.bool_):
        return
    rule = "expected a bool, or a 0-d bool or integer (0 or 1) array such as a traced flag"
    if not isinstance(explore, np.ndarray | jax.Array):
        raise TypeError(f"invalid explore of type {type(explore).__name__}: {rule}")
    dtype = explore.dtype
    if explore.ndim != 0 or not (dtype == np.bool_ or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"invalid explore, {_describe_type(explore)}: {rule}")
    if np.issubdtype(dtype, np.integer) and not isinstance(explore, jax.core.Tracer):
        if int(explore) not in (0, 1):
            raise ValueError(f"invalid explore = {int(explore)}: {rule}")


def _check_hyper(hyper: Any) -> None:
    """Raise TypeError unless `hyper` is an `AgentHyperparams`."""
    if not isinstance(hyper, AgentHyperparams):
        raise TypeError(
            f"invalid hyper of type {type(hyper).__name__}: expected AgentHyperparams, for "
            "example default_hyperparams(algo, actor_lr=...)"
        )


def _check_batch(batch: Transition, obs_dim: int, action_dim: int) -> None:
    """Raise ValueError unless every field of `batch` has the shape `update` expects."""
    size = jnp.shape(batch.obs)[0] if jnp.ndim(batch.obs) else None
    expected = {
        "obs": (size, obs_dim),
        "action": (size, action_dim),
        "reward": (size,),
        "next_obs": (size, obs_dim),
        "terminated": (size,),
    }
    for name, shape in expected.items():
        given = jnp.shape(getattr(batch, name))
        if given != shape:
            raise ValueError(
                f"invalid batch.{name} shape {given}: update expects {shape}, with the batch "
                f"size B = {size} taken from batch.obs {jnp.shape(batch.obs)}; every field "
                "has one leading batch axis"
            )


def _make_optimizer(max_grad_norm: float | None) -> optax.GradientTransformation:
    """Adam direction without the step size, which `_apply_gradients` applies as a traced value."""
    transforms = [optax.scale_by_adam()]
    if max_grad_norm is not None:
        transforms.insert(0, optax.clip_by_global_norm(max_grad_norm))
    return optax.chain(*transforms)


def _apply_gradients(
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: optax.OptState,
    grads: Any,
    learning_rate: jax.Array,
) -> tuple[Any, optax.OptState]:
    direction, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda d: -learning_rate * d, direction)
    return optax.apply_updates(params, updates), opt_state
