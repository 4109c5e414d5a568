"""`DiffusionServiceEnv`: an edge server serving N users' text-to-image requests per slot.

One step is one service slot. Users whose prompts are similar are grouped and share the first
denoising steps; the action allocates bandwidth, GPU share, total steps and the share ratio;
the reward is the users' mean QoE (MOS from the persona QoE model) minus an energy cost.
The system model is this project's own reconstruction (docs/system_model.md): the paper's
constants, state and action layouts are not public.

Observation layout (float32, `ObservationLayout` holds the slices):
    per_user  [N, 9] flattened user-major, columns:
        0   log channel gain, normalised: (10 log10(SNR) - 20) / 20
        1-5 persona traits (openness, conscientiousness, extraversion, agreeableness,
            neuroticism) in [0, 1]
        6   similarity of the user's prompt to its group representative's (1 for a
            representative)
        7   1 if the user is its group's representative, else 0
        8   group size / N
    pair_similarity  [N (N - 1) / 2]  upper triangle (row-major, above the diagonal) of the
        users' prompt-similarity matrix
    slot_fraction  [1]  slot index / horizon
    budget_remaining  [1]  remaining fraction of the energy budget (1 when the budget is off)

`info` (scalars, means over users or groups of the slot):
    qoe, quality, latency_s, compute_latency_s, transmit_latency_s, total_steps,
    energy_j (total energy charged this slot), gpu_energy_j, transmit_energy_j,
    shared_steps (mean S_g over groups, groups of one user included), num_groups,
    over_budget (1 when the budget was spent before this slot), num_invalid_actions (action
    entries that were NaN or outside [-1, 1] and were sanitised).
"""

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from rlli_jax.env import physics
from rlli_jax.env.params import EnvParams, dtype_of
from rlli_jax.env.prompts import PromptBank, load_prompt_bank
from rlli_jax.qoe.model import QoEModel, default_qoe_model
from rlli_jax.qoe.personas import NUM_TRAITS, sample_traits

NUM_ACTIONS_PER_USER = 4
# Log gain, the persona traits, similarity, is-representative, group size.
NUM_USER_FEATURES = 4 + NUM_TRAITS
# Offset and scale of the normalised log channel gain: (SNR_dB - offset) / scale.
SNR_DB_OFFSET = 20.0
SNR_DB_SCALE = 20.0


@struct.dataclass
class EnvState(environment.EnvState):
    """Evolving data of one environment. Shapes: N users."""

    distance_m: jnp.ndarray  # [N], fixed per episode
    shadowing_db: jnp.ndarray  # [N], fixed per episode
    fading: jnp.ndarray  # [N, 2] (Re, Im) of the Rayleigh fading coefficient h
    traits: jnp.ndarray  # [N, 5] persona traits, fixed per episode
    prompt_ids: jnp.ndarray  # [N] int32, this slot's prompts
    groups: physics.Groups  # groups of this slot's prompts
    energy_used_j: jnp.ndarray  # scalar, energy charged so far this episode


@dataclasses.dataclass(frozen=True)
class ObservationLayout:
    """Slices of the flat observation vector for `num_users` users."""

    num_users: int

    @property
    def per_user(self) -> slice:
        return slice(0, NUM_USER_FEATURES * self.num_users)

    @property
    def pair_similarity(self) -> slice:
        start = self.per_user.stop
        return slice(start, start + self.num_users * (self.num_users - 1) // 2)

    @property
    def slot_fraction(self) -> int:
        return self.pair_similarity.stop

    @property
    def budget_remaining(self) -> int:
        return self.slot_fraction + 1

    @property
    def size(self) -> int:
        return self.budget_remaining + 1

    def user_features(self, obs: jax.Array) -> jax.Array:
        """Return the per-user block [..., N, 9] of observations [..., obs_dim]."""
        block = obs[..., self.per_user]
        return block.reshape(*obs.shape[:-1], self.num_users, NUM_USER_FEATURES)


def _check_qoe_params(qoe_params: Any, expected: Any, model_name: str) -> None:
    """Raise ValueError unless `qoe_params` has the paths and leaf shapes of `expected`, with
    floating-point leaves that are finite where their values are concrete (not traced).

    A stack of parameter sets is allowed: every leaf may carry the same leading batch axes.
    """
    given_shapes = {
        jax.tree_util.keystr(path): np.shape(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(qoe_params)
    }
    batch_shape = None
    for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
        name = jax.tree_util.keystr(path)
        expected_shape = np.shape(leaf)
        if name not in given_shapes:
            raise ValueError(
                f"qoe_params{name} is missing: the QoE model {model_name!r} expects an array of "
                f"shape {expected_shape} there; pass parameters of this model, such as those of "
                "its default_params()"
            )
        given_shape = given_shapes[name]
        num_batch_axes = len(given_shape) - len(expected_shape)
        fits = num_batch_axes >= 0 and given_shape[num_batch_axes:] == expected_shape
        if fits and batch_shape is None:
            batch_shape = given_shape[:num_batch_axes]
        if not fits or given_shape[:num_batch_axes] != batch_shape:
            batch_note = f" with leading batch axes {batch_shape}" if batch_shape else ""
            raise ValueError(
                f"qoe_params{name} has shape {given_shape}, but the QoE model {model_name!r} "
                f"expects {expected_shape}{batch_note}; pass parameters of the same architecture "
                "(for a reward network, the same hidden sizes)"
            )
    expected_names = {
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(expected)
    }
    for name, given_shape in given_shapes.items():
        if name not in expected_names:
            raise ValueError(
                f"qoe_params{name} (shape {given_shape}) is not a parameter of the QoE model "
                f"{model_name!r}; pass parameters of this model, such as those of its "
                "default_params()"
            )
    for path, leaf in jax.tree_util.tree_leaves_with_path(qoe_params):
        name = jax.tree_util.keystr(path)
        dtype = dtype_of(leaf)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"qoe_params{name} has dtype {dtype or 'unknown (not an array)'}, but the QoE "
                f"model {model_name!r} expects floating-point parameters; convert them, for "
                "example with .astype(jnp.float32)"
            )
        if not isinstance(leaf, jax.core.Tracer):
            num_nonfinite = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
            if num_nonfinite:
                raise ValueError(
                    f"qoe_params{name} contains {num_nonfinite} non-finite values (NaN or inf), "
                    f"but the QoE model {model_name!r} needs finite parameters"
                )


# Attributes that `DiffusionServiceEnv.__init__` sets. The static key lists the static ones
# itself (the prompt bank through its digest), and the rest follow from `num_users`.
_BASE_ATTRIBUTES = frozenset(
    {
        "num_users",
        "horizon",
        "prompt_bank",
        "num_prompts",
        "num_topics",
        "_prompt_bank_digest",
        "qoe_model",
        "layout",
        "_upper_rows",
        "_upper_cols",
    }
)


def _static_value(value: Any) -> Any:
    """Return `value` if it is hashable, else its identity, for the environment's static key.

    An unhashable attribute (an array, a list) then makes the environment equal only to
    itself, which can cost a recompilation but never reuses a program built for other values.
    """
    try:
        hash(value)
    except TypeError:
        return ("object id", id(value))
    return value


class DiffusionServiceEnv(environment.Environment[EnvState, EnvParams]):
    """Shared-denoising diffusion image service at one edge server (gymnax 1.0 API).

    Static facts: `num_users`, `horizon` (slots per episode, then `truncated`), the prompt
    bank's size and topic count, and the QoE model. Constants live in `EnvParams`.
    """

    def __init__(
        self,
        num_users: int = 8,
        horizon: int = 16,
        prompt_bank: PromptBank | None = None,
        qoe_model: QoEModel | None = None,
    ):
        super().__init__()
        for name, value in (("num_users", num_users), ("horizon", horizon)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} = {value!r} is invalid: it must be an integer >= 1")
        self.num_users = int(num_users)
        self.horizon = int(horizon)
        self.prompt_bank = prompt_bank if prompt_bank is not None else load_prompt_bank()
        self.num_prompts = self.prompt_bank.num_prompts
        self.num_topics = self.prompt_bank.num_topics
        self.qoe_model = qoe_model if qoe_model is not None else default_qoe_model()
        # The environment is a static argument of jit and its hash includes the QoE model.
        try:
            hash(self.qoe_model)
        except TypeError as error:
            raise ValueError(
                f"qoe_model = {self.qoe_model!r} is invalid: it must be hashable, because the "
                "environment is a static argument of jit; write it as a "
                "@dataclasses.dataclass(frozen=True) whose fields are hashable "
                f"({error})"
            ) from None
        # gymnax's `step` and `reset` without params compile `default_params`, and with it the
        # bank's data, into the program. Two banks of one size must therefore compare unequal.
        self._prompt_bank_digest = hashlib.sha256(
            np.ascontiguousarray(self.prompt_bank.similarity, np.float32).tobytes()
            + np.ascontiguousarray(self.prompt_bank.topics, np.int64).tobytes()
        ).hexdigest()
        self.layout = ObservationLayout(self.num_users)
        self._upper_rows, self._upper_cols = np.triu_indices(self.num_users, k=1)

    # gymnax jits `step` and `reset` with the environment as a static argument, so it hashes
    # and compares by its static facts. Attributes that a subclass adds,
    # such as a reward weight taken by its constructor, count too, because its `step_env` may
    # read them. Without them two instances that differ there would compare equal, and jit
    # would reuse the program compiled for the first one.
    def _static_key(self) -> tuple:
        # A `functools.cached_property` stores its value in `vars(self)` on first use, which
        # would change the hash of an environment that jit already holds. It derives from
        # the other attributes, so leaving it out loses nothing.
        added = tuple(
            (name, _static_value(value))
            for name, value in sorted(vars(self).items())
            if name not in _BASE_ATTRIBUTES
            and not isinstance(getattr(type(self), name, None), functools.cached_property)
        )
        return (
            type(self),
            self.num_users,
            self.horizon,
            self.num_prompts,
            self.num_topics,
            self._prompt_bank_digest,
            self.qoe_model,
            added,
        )

    def __hash__(self) -> int:
        return hash(self._static_key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiffusionServiceEnv) and self._static_key() == other._static_key()

    @property
    def name(self) -> str:
        return "DiffusionService-v0"

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS_PER_USER * self.num_users

    @property
    def obs_dim(self) -> int:
        return self.layout.size

    @property
    def default_params(self) -> EnvParams:
        return self.make_params()

    def make_params(self, **overrides: Any) -> EnvParams:
        """Build validated `EnvParams` from the prompt bank and QoE model, with overrides.

        Raises:
            ValueError: an unknown field, or a value that breaks its field's rule.
        """
        known = {field.name for field in dataclasses.fields(EnvParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown EnvParams field(s) {unknown}; known fields: {sorted(known)}")
        values = {
            "prompt_similarity": jnp.asarray(self.prompt_bank.similarity),
            "prompt_topics": jnp.asarray(self.prompt_bank.topics),
            "qoe_params": self.qoe_model.default_params(),
        }
        if "qoe_params" in overrides:
            _check_qoe_params(overrides["qoe_params"], values["qoe_params"], self.qoe_model.name)
        self._check_prompt_bank_overrides(overrides)
        values.update(overrides)
        return EnvParams(**values).validate()

    def _check_prompt_bank_overrides(self, overrides: dict[str, Any]) -> None:
        """Raise ValueError unless overridden prompt arrays fit this environment's bank, with
        float similarities and integer topics.

        The bank's size and topic count are static facts of the environment (they size the
        compiled program), so a replacement similarity matrix or topic list must keep them.
        Leading batch axes (a vmapped stack of banks) are allowed.
        """
        size = self.num_prompts
        expected = {"prompt_similarity": (size, size), "prompt_topics": (size,)}
        # Similarities are weights in [0, 1], so they must be floats, and topics are indices,
        # so they must be integers. A bool array is neither.
        dtype_rules = {
            "prompt_similarity": (jnp.floating, "a floating-point array, such as float32"),
            "prompt_topics": (jnp.integer, "an integer array of topic ids, such as int32"),
        }
        for name, shape in expected.items():
            if name not in overrides:
                continue
            dtype = dtype_of(overrides[name])
            kind, description = dtype_rules[name]
            if dtype is None or not jnp.issubdtype(dtype, kind):
                dtype_text = dtype or "unknown (not an array)"
                raise ValueError(f"invalid {name} dtype {dtype_text}: expected {description}")
            given = jnp.shape(overrides[name])
            if given[len(given) - len(shape) :] != shape:
                raise ValueError(
                    f"invalid {name} shape {given}: this environment's prompt bank has "
                    f"{size} prompts, so it must end in {shape}; build a DiffusionServiceEnv "
                    "with prompt_bank= for a bank of another size"
                )
        topics = overrides.get("prompt_topics")
        if topics is not None and not isinstance(topics, jax.core.Tracer):
            topics = np.asarray(topics)
            if topics.size and (topics.min() < 0 or topics.max() >= self.num_topics):
                raise ValueError(
                    f"invalid prompt_topics: values must lie in [0, {self.num_topics - 1}] "
                    f"(this bank's {self.num_topics} topics), got {topics.min()} to "
                    f"{topics.max()}"
                )

    def action_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.num_actions,), jnp.float32)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.obs_dim,), jnp.float32)

    def is_truncated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.time >= self.horizon

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return jnp.array(False)

    def _draw_prompts(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """Draw one prompt per user, [N] int32: Zipf-skewed topics, then Zipf-skewed prompts
        within the topic (ranked in bank order), so popular requests repeat and groups form."""
        topic_rank = jnp.arange(self.num_topics, dtype=jnp.float32)
        topic_log_prob = -params.topic_zipf_exponent * jnp.log1p(topic_rank)
        topic_one_hot = (
            params.prompt_topics[:, None] == jnp.arange(self.num_topics)[None, :]
        ).astype(jnp.float32)  # [K, num_topics]
        # 0-based rank of each prompt among the prompts of its topic.
        rank_in_topic = jnp.sum(jnp.cumsum(topic_one_hot, axis=0) * topic_one_hot, axis=1) - 1.0
        prompt_weight = jnp.exp(-params.prompt_zipf_exponent * jnp.log1p(rank_in_topic))
        topic_total = topic_one_hot.T @ prompt_weight  # [num_topics]
        prompt_logits = (
            topic_log_prob[params.prompt_topics]
            + jnp.log(prompt_weight)
            - jnp.log(topic_total[params.prompt_topics])
        )
        # Inverse-CDF sampling: N uniforms and a binary search, instead of the N x K Gumbel
        # draws of jax.random.categorical, which dominated the step's cost.
        cdf = jnp.cumsum(jax.nn.softmax(prompt_logits))
        uniform = jax.random.uniform(key, (self.num_users,)) * cdf[-1]
        prompt_ids = jnp.searchsorted(cdf, uniform, side="right")
        return jnp.minimum(prompt_ids, self.num_prompts - 1).astype(jnp.int32)

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        key_distance, key_shadowing, key_fading, key_traits, key_prompts = jax.random.split(key, 5)
        num_users = self.num_users
        prompt_ids = self._draw_prompts(key_prompts, params)
        state = EnvState(
            time=jnp.array(0, dtype=jnp.int32),
            distance_m=jax.random.uniform(
                key_distance,
                (num_users,),
                minval=params.min_distance_m,
                maxval=params.max_distance_m,
            ),
            shadowing_db=params.shadowing_std_db * jax.random.normal(key_shadowing, (num_users,)),
            fading=jnp.sqrt(0.5) * jax.random.normal(key_fading, (num_users, 2)),
            traits=sample_traits(key_traits, num_users),
            prompt_ids=prompt_ids,
            groups=physics.group_users(prompt_ids, params),
            energy_used_j=jnp.array(0.0, dtype=jnp.float32),
        )
        return self.get_obs(state, params), state

    def step_env(
        self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, jax.Array]]:
        action = jnp.asarray(action)
        if jnp.issubdtype(action.dtype, jnp.complexfloating):
            raise ValueError(
                f"invalid action dtype {action.dtype}: step expects real numbers in [-1, 1], "
                "and casting would drop the imaginary part"
            )
        if action.dtype == jnp.bool_:
            raise ValueError(
                "invalid action dtype bool: step expects real numbers in [-1, 1], and casting "
                "would turn True into 1.0 and False into 0.0"
            )
        action = action.astype(jnp.float32)
        if action.shape != (self.num_actions,):
            raise ValueError(
                f"invalid action shape {action.shape}: step expects one environment's "
                f"action of shape ({self.num_actions},), 4 entries per user for "
                f"{self.num_users} users; for a batch of environments, vmap step (see "
                "rlli_jax.env.batched)"
            )
        key_fading, key_prompts = jax.random.split(key)
        action, num_invalid = physics.sanitize_action(action)
        allocation = physics.map_action(action, params)
        groups = state.groups

        over_budget = state.energy_used_j >= params.energy_budget_j
        group_shared = jnp.where(over_budget, 0.0, physics.shared_steps(allocation, groups))
        user_shared = group_shared[groups.representative]

        compute_latency = physics.compute_latency_s(allocation, groups, group_shared, params)
        gpu_energy = physics.gpu_energy_j(allocation, groups, group_shared, params)

        fidelity = physics.semantic_fidelity(
            user_shared, allocation.total_steps, groups.similarity, params
        )
        fidelity = jnp.where(groups.is_representative, 1.0, fidelity)
        quality = physics.base_quality(allocation.total_steps, params) * fidelity

        gain = physics.channel_gain(state.distance_m, state.shadowing_db, state.fading)
        snr = physics.snr(gain, params)
        rate = physics.downlink_rate_bps(allocation.bandwidth_share, snr, params)
        transmit_latency = params.image_bits / rate
        transmit_energy = jnp.sum(params.tx_power_w * allocation.bandwidth_share * transmit_latency)
        latency = compute_latency + transmit_latency

        qoe = self.qoe_model(params.qoe_params, state.traits, quality, latency)
        self._check_qoe_output(qoe)
        energy = (gpu_energy + transmit_energy) * jnp.where(
            over_budget, params.overbudget_factor, 1.0
        )
        reference_energy = self.num_users * params.max_total_steps * params.energy_per_step_j
        reward = jnp.mean(qoe) - params.energy_weight * energy / reference_energy

        next_prompts = self._draw_prompts(key_prompts, params)
        next_state = state.replace(
            time=state.time + 1,
            fading=physics.evolve_fading(key_fading, state.fading, params),
            prompt_ids=next_prompts,
            groups=physics.group_users(next_prompts, params),
            energy_used_j=state.energy_used_j + energy,
        )
        num_groups = jnp.sum(groups.is_representative)
        info = {
            "qoe": jnp.mean(qoe),
            "quality": jnp.mean(quality),
            "latency_s": jnp.mean(latency),
            "compute_latency_s": jnp.mean(compute_latency),
            "transmit_latency_s": jnp.mean(transmit_latency),
            "total_steps": jnp.mean(allocation.total_steps),
            "energy_j": energy,
            "gpu_energy_j": gpu_energy,
            "transmit_energy_j": transmit_energy,
            "shared_steps": jnp.sum(group_shared) / num_groups,
            "num_groups": num_groups.astype(jnp.float32),
            "over_budget": over_budget.astype(jnp.float32),
            "num_invalid_actions": num_invalid,
        }
        terminated = self.is_terminated(next_state, params)
        return self.get_obs(next_state, params), next_state, reward, terminated, info

    def _check_qoe_output(self, qoe: Any) -> None:
        """Raise ValueError unless the QoE model returned one real-valued MOS per user.

        Checked while tracing, so it costs nothing at run time. A wrong shape would otherwise
        pass silently, because the reward and `info` take its mean whatever its shape.
        Integer ratings are accepted; bool and complex values are not.
        """
        shape = np.shape(qoe)
        dtype = dtype_of(qoe)
        real = dtype is not None and (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        )
        if shape == (self.num_users,) and real:
            return
        raise ValueError(
            f"invalid output of the QoE model {self.qoe_model.name!r}: it returned shape {shape} "
            f"and dtype {dtype or 'unknown (not an array)'}, expected a real-valued MOS of "
            f"shape ({self.num_users},), one per user, for traits [{self.num_users}, "
            f"{NUM_TRAITS}] and quality and latency [{self.num_users}]"
        )

    def get_obs(self, state: EnvState, params: EnvParams, key: jax.Array | None = None):
        """Return the flat observation [obs_dim]; the layout is in the module docstring."""
        snr_db = physics.snr_db(state.distance_m, state.shadowing_db, state.fading, params)
        groups = state.groups
        group_size = groups.size[groups.representative] / self.num_users
        per_user = jnp.concatenate(
            [
                ((snr_db - SNR_DB_OFFSET) / SNR_DB_SCALE)[:, None],
                state.traits,
                groups.similarity[:, None],
                groups.is_representative.astype(jnp.float32)[:, None],
                group_size[:, None],
            ],
            axis=1,
        )  # [N, 9]
        ids = state.prompt_ids
        pair_similarity = params.prompt_similarity[
            ids[self._upper_rows], ids[self._upper_cols]
        ]  # [N (N - 1) / 2]
        slot_fraction = state.time / self.horizon
        budget_remaining = jnp.clip(1.0 - state.energy_used_j / params.energy_budget_j, 0.0, 1.0)
        return jnp.concatenate(
            [
                per_user.reshape(-1),
                pair_similarity,
                jnp.stack([slot_fraction, budget_remaining]),
            ]
        ).astype(jnp.float32)
