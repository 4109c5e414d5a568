"""Constants of the diffusion service environment (`EnvParams`) and their validation.

Every physical constant is a traced leaf, so a sweep can vmap over it without recompiling.
Shapes (number of users, prompt bank size, horizon) are static facts on the environment object.
Defaults follow this project's system model (docs/system_model.md); the paper does not publish
its constants.
"""

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from rlli_jax.env.prompts import validate_similarity


@struct.dataclass
class EnvParams:
    """Constants of one service environment. Units are in the field names."""

    # Prompt bank: [K, K] cosine similarity and [K] topic index of each prompt.
    prompt_similarity: jnp.ndarray
    prompt_topics: jnp.ndarray
    # Parameters of the QoE model (a pytree; empty for the analytic simulator).
    qoe_params: Any = struct.field(default_factory=dict)

    # Topic popularity: the topic of rank r (0-based) has probability proportional to
    # (r + 1) ** -topic_zipf_exponent. 0 is uniform.
    topic_zipf_exponent: float = 1.0
    # Within a topic, the prompt of rank r (0-based, bank order) has probability proportional to
    # (r + 1) ** -prompt_zipf_exponent. 0 is uniform within the topic.
    prompt_zipf_exponent: float = 1.0
    # A user joins the first group whose representative's prompt similarity is >= this.
    group_threshold: float = 0.5

    # Action mapping.
    logit_scale: float = 3.0  # bandwidth and GPU shares are softmax(action * logit_scale)
    min_total_steps: float = 5.0  # T_min
    max_total_steps: float = 50.0  # T_max
    max_share_ratio: float = 0.9  # rho_max

    # Shared denoising on the edge server.
    server_steps_per_s: float = 40.0  # F: denoising steps per second at full GPU share
    energy_per_step_j: float = 20.0  # e_step: GPU energy of one denoising step

    # Quality q = (1 - exp(-T / tau_q)) * fidelity.
    quality_tau_steps: float = 8.0
    fidelity_sharpness: float = 15.0  # kappa
    fidelity_ratio_low: float = 0.2  # r_lo: tolerated shared fraction at similarity 0
    fidelity_ratio_high: float = 0.7  # r_hi: tolerated shared fraction at similarity 1

    # Wireless downlink (OFDMA, 3GPP TR 36.814 urban macro path loss).
    bandwidth_hz: float = 5e6
    tx_power_w: float = 10.0
    noise_psd_dbm_per_hz: float = -174.0
    noise_figure_db: float = 9.0
    shadowing_std_db: float = 8.0
    fading_correlation: float = 0.9  # rho_f of the Gauss-Markov Rayleigh fading
    min_distance_m: float = 100.0
    max_distance_m: float = 800.0
    image_bits: float = 2.4e6  # D: about a 300 KB 1024x1024 JPEG

    # Reward = mean QoE - energy_weight * energy / E_ref, E_ref = N * T_max * e_step.
    energy_weight: float = 0.25  # lambda_E

    # Per-episode energy budget of the edge server (J); inf turns it off. Once spent, no steps
    # are shared and every joule costs overbudget_factor times as much.
    energy_budget_j: float = math.inf
    overbudget_factor: float = 3.0

    def validate(self) -> "EnvParams":
        """Raise ValueError naming the first invalid field, its value and the rule; else return
        self. Skips leaves that are traced (inside jit or vmap)."""
        validate_env_params(self)
        return self


# Upper bound of logit_scale. The smallest bandwidth or GPU share, with one user's logit at -1
# and the rest at +1, is about exp(-2 * logit_scale) / num_users. Above
# (87.3 - ln num_users) / 2 it is below the smallest normal float32 (1.2e-38), XLA on CPU flushes
# it to 0, and latency is inf: in one check with a script not kept here, such actions broke
# 2 users at 44 and 30 users at 42.
# At 30 the share stays normal for num_users < 7e11, and the latency (about 1e26 s) is finite.
MAX_LOGIT_SCALE = 30.0

# Smallest normal float32. XLA on CPU flushes smaller (subnormal) float32 values to 0.
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float32(value: float) -> float:
    """Return `value` as the training program computes with it: rounded to float32, with an
    overflow giving +-inf and a subnormal result giving 0.

    A value can pass a rule in float64 and break it in float32, such as 1e39 (inf) or a
    learning rate of 1e-40 (0), so traced constants are checked in both.
    """
    with np.errstate(over="ignore", under="ignore"):
        rounded = float(np.float32(value))
    if abs(rounded) < _FLOAT32_TINY:
        return math.copysign(0.0, rounded)
    return rounded


def float32_problem(value: float, predicate: Callable[[float], bool], rule: str) -> str | None:
    """Describe how `value`, which obeys `rule` as a Python float, breaks it in float32.

    Returns None when the float32 value still obeys `predicate`. The text completes an error
    message that has already named the field and the value.
    """
    rounded = as_float32(value)
    if math.isinf(rounded):
        return (
            f"it exceeds the float32 range (max {_FLOAT32_MAX:.4g}) of the training program, "
            f"which would make it {rounded!r}"
        )
    if not predicate(rounded):
        return (
            f"it becomes {rounded!r} in float32, the type of the training program, and {rule} there"
        )
    return None


# (field, rule text, predicate on a float). Checked in this order; NaN fails every rule.
_SCALAR_RULES: tuple[tuple[str, str, Any], ...] = (
    ("topic_zipf_exponent", "must be >= 0", lambda x: x >= 0),
    ("prompt_zipf_exponent", "must be >= 0", lambda x: x >= 0),
    ("group_threshold", "must lie in [-1, 1]", lambda x: -1 <= x <= 1),
    (
        "logit_scale",
        f"must lie in (0, {MAX_LOGIT_SCALE:g}] because the smallest bandwidth or GPU share is "
        "about exp(-2 * logit_scale) / num_users, and well above that bound it underflows "
        "float32 and latency becomes inf",
        lambda x: 0 < x <= MAX_LOGIT_SCALE,
    ),
    ("min_total_steps", "must be >= 1", lambda x: x >= 1),
    ("max_total_steps", "must be >= 1", lambda x: x >= 1),
    ("max_share_ratio", "must lie in [0, 1]", lambda x: 0 <= x <= 1),
    ("server_steps_per_s", "must be > 0", lambda x: x > 0),
    ("energy_per_step_j", "must be > 0", lambda x: x > 0),
    ("quality_tau_steps", "must be > 0", lambda x: x > 0),
    ("fidelity_sharpness", "must be > 0", lambda x: x > 0),
    ("fidelity_ratio_low", "must lie in [0, 1]", lambda x: 0 <= x <= 1),
    ("fidelity_ratio_high", "must lie in [0, 1]", lambda x: 0 <= x <= 1),
    ("bandwidth_hz", "must be > 0", lambda x: x > 0),
    ("tx_power_w", "must be > 0", lambda x: x > 0),
    ("noise_psd_dbm_per_hz", "must be finite", math.isfinite),
    ("noise_figure_db", "must be >= 0", lambda x: x >= 0),
    ("shadowing_std_db", "must be >= 0", lambda x: x >= 0),
    ("fading_correlation", "must lie in [0, 1]", lambda x: 0 <= x <= 1),
    ("min_distance_m", "must be > 0", lambda x: x > 0),
    ("max_distance_m", "must be > 0", lambda x: x > 0),
    ("image_bits", "must be > 0", lambda x: x > 0),
    ("energy_weight", "must be >= 0", lambda x: x >= 0),
    ("energy_budget_j", "must be > 0 (inf turns the budget off)", lambda x: x > 0),
    ("overbudget_factor", "must be >= 1", lambda x: x >= 1),
)

# Fields where infinity is meaningful: an infinite budget turns the energy budget off.
_INFINITE_ALLOWED = ("energy_budget_j",)

# (smaller field, larger field): the first must not exceed the second.
_ORDER_RULES = (
    ("min_total_steps", "max_total_steps"),
    ("fidelity_ratio_low", "fidelity_ratio_high"),
    ("min_distance_m", "max_distance_m"),
)


def _concrete_scalars(value: Any) -> np.ndarray | None:
    """Return the value as a float array, or None if it is traced (not known in Python)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except Exception:  # noqa: BLE001  (jax tracers raise several error types here)
        return None


def dtype_of(value: Any) -> np.dtype | None:
    """Return the dtype of an array, tracer, number or nested list, or None for a ragged list."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype)
    try:
        return np.asarray(value).dtype
    except (TypeError, ValueError):  # a ragged or mixed nested sequence
        return None


def _has_real_dtype(value: Any) -> bool:
    """Return whether `value` (a number, array or jax tracer) contains integers or floats.

    Bools, complex numbers, strings and None count as invalid, although NumPy converts some of
    them to floats.
    """
    dtype = dtype_of(value)
    if dtype is None:
        return False
    return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


def validate_env_params(params: EnvParams) -> None:
    """Check every constant of `params` against its rule; see `EnvParams.validate`.

    A field may hold a batch of values (a sweep stacks them); each value is checked.
    """
    for name, rule, predicate in _SCALAR_RULES:
        value = getattr(params, name)
        if not _has_real_dtype(value):
            raise ValueError(
                f"EnvParams.{name} = {value!r} is invalid: {name} must be a real number (an int "
                "or a float), or an array of them"
            )
        values = _concrete_scalars(value)
        if values is None:
            continue
        for value in np.atleast_1d(values).ravel():
            infinite_allowed = name in _INFINITE_ALLOWED
            if math.isnan(value) or not predicate(float(value)):
                raise ValueError(f"EnvParams.{name} = {float(value)!r} is invalid: {name} {rule}")
            if math.isinf(value) and not infinite_allowed:
                raise ValueError(
                    f"EnvParams.{name} = {float(value)!r} is invalid: {name} must be finite"
                )
            if math.isinf(value):
                continue
            problem = float32_problem(float(value), predicate, f"{name} {rule}")
            if problem is not None:
                raise ValueError(f"EnvParams.{name} = {float(value)!r} is invalid: {problem}")

    for low_name, high_name in _ORDER_RULES:
        low = _concrete_scalars(getattr(params, low_name))
        high = _concrete_scalars(getattr(params, high_name))
        if low is None or high is None:
            continue
        if np.any(low > high):
            raise ValueError(
                f"EnvParams.{low_name} = {low.tolist()!r} exceeds {high_name} = "
                f"{high.tolist()!r}: {low_name} must be <= {high_name}"
            )

    similarity = _concrete_scalars(params.prompt_similarity)
    if similarity is not None:
        # A sweep may stack banks: [..., K, K]. Each matrix is checked.
        for matrix in similarity.reshape(-1, *similarity.shape[-2:]):
            validate_similarity(matrix, "EnvParams.prompt_similarity")
        topics = np.asarray(params.prompt_topics)
        if topics.shape[-1:] != similarity.shape[-1:]:
            raise ValueError(
                f"EnvParams.prompt_topics has shape {topics.shape}, expected "
                f"({similarity.shape[-1]},): one topic per prompt"
            )
        if topics.size and topics.min() < 0:
            raise ValueError(f"EnvParams.prompt_topics has a negative topic id {topics.min()}")
