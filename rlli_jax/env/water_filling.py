"""Water-filling power allocation: a one-step probe environment with a known optimum.

Each episode draws M channel gains, the agent splits a total power budget P over the channels,
and the reward is its sum-rate minus the water-filling sum-rate for the same gains. The best
possible reward is therefore 0, so a learning agent can be judged by how close it gets to 0.

The sum-rate of powers p [M] on gains g [M] is sum_i log2(1 + g_i * p_i / noise) bit/s/Hz.
Water-filling maximises it under sum_i p_i = P and p_i >= 0: the KKT conditions give
p_i = max(mu - noise / g_i, 0), with the water level mu chosen so that the powers sum to P.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

DEFAULT_NUM_CHANNELS = 10


@struct.dataclass
class WaterFillingParams:
    """Constants of the water-filling task; the first M // 2 channels are the strong ones."""

    total_power: float = 3.0  # P, the power budget, in the same unit as noise
    noise: float = 1.0  # noise power per channel
    gain_strong_low: float = 1.0  # strong-channel gains are drawn from U(low, high)
    gain_strong_high: float = 2.0
    gain_weak_low: float = 0.0  # weak-channel gains are drawn from U(low, high)
    gain_weak_high: float = 1.0

    def validate(self) -> None:
        """Check every field on concrete values, so bad params fail before compiling.

        The environment never calls this because its params may be traced; call it wherever
        params are built from user input.

        Raises:
            ValueError: a field is NaN or infinite, total_power or noise is not positive, a gain
                bound is negative, or a low gain bound exceeds its high bound.
        """
        for field_name in (
            "total_power",
            "noise",
            "gain_strong_low",
            "gain_strong_high",
            "gain_weak_low",
            "gain_weak_high",
        ):
            value = np.asarray(getattr(self, field_name))
            if not np.all(np.isfinite(value)):
                _raise_invalid(field_name, value, "must be a finite number")

        for field_name in ("total_power", "noise"):
            value = np.asarray(getattr(self, field_name))
            if not np.all(value > 0):
                _raise_invalid(field_name, value, "must be > 0")

        for prefix in ("gain_strong", "gain_weak"):
            low = np.asarray(getattr(self, f"{prefix}_low"))
            high = np.asarray(getattr(self, f"{prefix}_high"))
            if not np.all(low >= 0):
                _raise_invalid(
                    f"{prefix}_low", low, "must be >= 0 because channel gains are power gains"
                )
            if not np.all(low <= high):
                _raise_invalid(f"{prefix}_low", low, f"must be <= {prefix}_high = {high.tolist()}")


def _raise_invalid(field_name: str, value: np.ndarray, rule: str) -> None:
    raise ValueError(f"invalid WaterFillingParams.{field_name} = {value.tolist()}: {rule}")


@struct.dataclass
class WaterFillingState(environment.EnvState):
    """The gains [M] float32 drawn at reset and the step count (0 at reset, 1 after the step)."""

    gains: jax.Array
    time: int


def water_filling(gains: jax.Array, total_power: Any, noise: Any) -> jax.Array:
    """Compute the sum-rate-maximising powers [..., M] for gains [..., M], in closed form.

    Sort the inverse gains v = noise / g ascending. If the first k channels are active, the
    water level is mu_k = (P + v_(1) + ... + v_(k)) / k. The active count K is the largest k
    with mu_k > v_(k), taken as a max over all k at once, and p_i = max(mu_K - v_i, 0). The
    powers sum to P up to float32 rounding.

    total_power and noise are scalars or arrays that broadcast against gains[..., 0]. A channel
    with gain 0 gets no power. When every gain is 0 (or so small that P vanishes next to
    noise / g in float32) any split has rate 0, and the power is split equally.
    """
    gains = jnp.asarray(gains, dtype=jnp.float32)
    total_power = jnp.expand_dims(jnp.asarray(total_power, dtype=jnp.float32), -1)
    noise = jnp.expand_dims(jnp.asarray(noise, dtype=jnp.float32), -1)
    num_channels = gains.shape[-1]

    # A zero gain gives v = inf, so mu_k > v_(k) fails for it and its power is max(-inf, 0) = 0.
    inverse_gains = noise / gains  # [..., M]
    sorted_inverse_gains = jnp.sort(inverse_gains, axis=-1)  # [..., M], ascending
    counts = jnp.arange(1, num_channels + 1, dtype=jnp.int32)  # [M], k = 1..M
    candidate_levels = (total_power + jnp.cumsum(sorted_inverse_gains, axis=-1)) / counts
    is_feasible = candidate_levels > sorted_inverse_gains  # [..., M]
    num_active = jnp.max(jnp.where(is_feasible, counts, 0), axis=-1, keepdims=True)  # [..., 1]

    level_index = jnp.maximum(num_active, 1) - 1
    water_level = jnp.take_along_axis(candidate_levels, level_index, axis=-1)  # [..., 1]
    powers = jnp.maximum(water_level - inverse_gains, 0.0)

    equal_powers = jnp.broadcast_to(total_power / num_channels, powers.shape)
    return jnp.where(num_active > 0, powers, equal_powers)


def sum_rate(gains: jax.Array, powers: jax.Array, noise: Any) -> jax.Array:
    """Compute sum_i log2(1 + g_i p_i / noise) in bit/s/Hz, reducing the last axis of [..., M]."""
    noise = jnp.expand_dims(jnp.asarray(noise, dtype=jnp.float32), -1)
    return jnp.sum(jnp.log2(1.0 + gains * powers / noise), axis=-1)


def optimal_rate(gains: jax.Array, params: WaterFillingParams) -> jax.Array:
    """Compute the water-filling sum-rate [...] for gains [..., M]."""
    powers = water_filling(gains, params.total_power, params.noise)
    return sum_rate(gains, powers, params.noise)


def action_to_powers(action: jax.Array, total_power: Any) -> tuple[jax.Array, jax.Array]:
    """Map an action [..., M] to powers P * |a| / sum |a| and count its invalid entries.

    NaN entries become 0 and the rest are clipped to [-1, 1], so an invalid action never yields
    a NaN power. An all-zero action splits the power equally.

    Returns:
        The powers [..., M] float32 and the number of NaN or out-of-range entries [...] int32.
    """
    action = jnp.asarray(action, dtype=jnp.float32)
    is_invalid = jnp.isnan(action) | (action < -1.0) | (action > 1.0)
    num_invalid = jnp.sum(is_invalid, axis=-1, dtype=jnp.int32)

    magnitudes = jnp.abs(jnp.clip(jnp.where(jnp.isnan(action), 0.0, action), -1.0, 1.0))
    total_magnitude = jnp.sum(magnitudes, axis=-1, keepdims=True)
    is_zero = total_magnitude == 0.0
    safe_total_magnitude = jnp.where(is_zero, 1.0, total_magnitude)
    total_power = jnp.expand_dims(jnp.asarray(total_power, dtype=jnp.float32), -1)

    num_channels = action.shape[-1]
    powers = jnp.where(
        is_zero,
        total_power / num_channels,
        total_power * magnitudes / safe_total_magnitude,
    )
    return powers, num_invalid


class WaterFillingEnv(environment.Environment[WaterFillingState, WaterFillingParams]):
    """One-step power allocation over M channels, scored against the water-filling optimum.

    Observation: the gains [M] float32. Action: [M] in [-1, 1], mapped to powers
    P * |a| / sum |a|. Reward: sum-rate of those powers minus the water-filling sum-rate, so it
    is <= 0 up to float32 rounding. Every episode ends with terminated=True after one step.
    """

    def __init__(self, num_channels: int = DEFAULT_NUM_CHANNELS):
        super().__init__()
        if not isinstance(num_channels, int) or isinstance(num_channels, bool):
            raise ValueError(f"invalid num_channels = {num_channels!r}: must be an int >= 1")
        if num_channels < 1:
            raise ValueError(f"invalid num_channels = {num_channels}: must be >= 1")
        self.num_channels = num_channels
        self.num_strong_channels = num_channels // 2
        self.obs_shape = (num_channels,)

    @property
    def default_params(self) -> WaterFillingParams:
        return WaterFillingParams()

    def _gain_bounds(self, params: WaterFillingParams) -> tuple[jax.Array, jax.Array]:
        """Return the per-channel lower and upper gain bounds, each [M] float32."""
        is_strong = jnp.arange(self.num_channels) < self.num_strong_channels
        low = jnp.where(is_strong, params.gain_strong_low, params.gain_weak_low)
        high = jnp.where(is_strong, params.gain_strong_high, params.gain_weak_high)
        return low.astype(jnp.float32), high.astype(jnp.float32)

    def reset_env(
        self, key: jax.Array, params: WaterFillingParams
    ) -> tuple[jax.Array, WaterFillingState]:
        """Draw fresh gains, uniform between each channel's bounds."""
        low, high = self._gain_bounds(params)
        gains = jax.random.uniform(
            key, (self.num_channels,), dtype=jnp.float32, minval=low, maxval=high
        )
        state = WaterFillingState(gains=gains, time=0)
        return gains, state

    def step_env(
        self,
        key: jax.Array,
        state: WaterFillingState,
        action: int | float | jax.Array,
        params: WaterFillingParams,
    ) -> tuple[jax.Array, WaterFillingState, jax.Array, jax.Array, dict[str, jax.Array]]:
        """Score the action's power split against the water-filling optimum and end the episode.

        Raises:
            ValueError: the action shape is not (num_channels,); raised while tracing.
        """
        del key  # the step is deterministic given the gains
        action = jnp.asarray(action)
        if action.shape != self.obs_shape:
            raise ValueError(
                f"invalid action shape {action.shape}: expected ({self.num_channels},)"
            )

        powers, num_invalid = action_to_powers(action, params.total_power)
        rate = sum_rate(state.gains, powers, params.noise)
        best_rate = optimal_rate(state.gains, params)
        reward = rate - best_rate
        # best_rate is 0 only when every gain is 0, and then no split loses anything.
        has_rate = best_rate > 0
        safe_best_rate = jnp.where(has_rate, best_rate, 1.0)
        gap_fraction = jnp.where(has_rate, -reward / safe_best_rate, 0.0)

        state = state.replace(time=state.time + 1)
        info = {
            "optimal_rate": best_rate,
            "rate": rate,
            "gap_fraction": gap_fraction,
            "num_invalid_actions": num_invalid,
        }
        return state.gains, state, reward, self.is_terminated(state, params), info

    def is_terminated(self, state: WaterFillingState, params: WaterFillingParams) -> jax.Array:
        """Return True once the single step has been taken."""
        return jnp.asarray(state.time >= 1)

    def is_truncated(self, state: WaterFillingState, params: WaterFillingParams) -> jax.Array:
        """Return False because the one-step end is a natural termination, not a time limit."""
        return jnp.zeros_like(state.time, dtype=jnp.bool_)

    @property
    def name(self) -> str:
        return "WaterFilling-v0"

    @property
    def num_actions(self) -> int:
        """Action dimension M."""
        return self.num_channels

    def action_space(self, params: WaterFillingParams | None = None) -> spaces.Box:
        return spaces.Box(low=-1.0, high=1.0, shape=(self.num_channels,), dtype=jnp.float32)

    def observation_space(self, params: WaterFillingParams | None = None) -> spaces.Box:
        if params is None:
            params = self.default_params
        low, high = self._gain_bounds(params)
        return spaces.Box(low=low, high=high, shape=(self.num_channels,), dtype=jnp.float32)

    def state_space(self, params: WaterFillingParams | None = None) -> spaces.Dict:
        return spaces.Dict(
            {
                "gains": self.observation_space(params),
                "time": spaces.Discrete(2),
            }
        )
