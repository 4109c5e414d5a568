"""Tests for the water-filling oracle and the one-step power-allocation environment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlli_jax.env.water_filling import (
    WaterFillingEnv,
    WaterFillingParams,
    action_to_powers,
    optimal_rate,
    sum_rate,
    water_filling,
)

NUM_CHANNELS = 10
NUM_DRAWS = 4096

ENV = WaterFillingEnv(NUM_CHANNELS)
PARAMS = ENV.default_params

# Module-level compiled functions, always called with the same shapes, so that each compiles
# once for the whole file.
batched_reset = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))
batched_step = jax.jit(jax.vmap(ENV.step, in_axes=(0, 0, 0, None)))
single_step = jax.jit(ENV.step)
jitted_water_filling = jax.jit(water_filling)


def reset_batch(seed: int):
    """Reset NUM_DRAWS environments; returns their keys [N], gains [N, M] and states."""
    keys = jax.random.split(jax.random.key(seed), NUM_DRAWS)
    gains, state = batched_reset(keys, PARAMS)
    return keys, gains, state


@pytest.fixture(scope="module")
def batch():
    return reset_batch(seed=0)


def reference_water_filling(gains: np.ndarray, total_power: float, noise: float) -> np.ndarray:
    """Solve sum_i max(mu - noise / g_i, 0) = P for mu by bisection in float64."""
    inverse_gains = noise / gains.astype(np.float64)
    low, high = inverse_gains.min(), inverse_gains.min() + total_power
    for _ in range(200):
        level = 0.5 * (low + high)
        if np.maximum(level - inverse_gains, 0.0).sum() > total_power:
            high = level
        else:
            low = level
    return np.maximum(0.5 * (low + high) - inverse_gains, 0.0)


# --- water_filling: hand-worked cases -------------------------------------------------------


def test_water_filling_two_of_three_active():
    # noise 1, P = 3, g = [1, 1/2, 1/4] -> inverse gains v = [1, 2, 4].
    # k = 3: mu = (3 + 1 + 2 + 4) / 3 = 3.33 < v_3 = 4, so channel 3 stays dry.
    # k = 2: mu = (3 + 1 + 2) / 2 = 3 > v_2 = 2, so two channels are active.
    # p = max(3 - v, 0) = [2, 1, 0], which sums to P = 3.
    powers = water_filling(jnp.array([1.0, 0.5, 0.25]), 3.0, 1.0)
    np.testing.assert_allclose(powers, [2.0, 1.0, 0.0], atol=1e-6)


def test_water_filling_keeps_channel_order():
    # The same gains shuffled: the powers follow their channels, not the sorted order.
    powers = water_filling(jnp.array([0.25, 1.0, 0.5]), 3.0, 1.0)
    np.testing.assert_allclose(powers, [0.0, 2.0, 1.0], atol=1e-6)


def test_water_filling_all_active():
    # noise 1, P = 10, g = [1, 1/2, 1/4] -> v = [1, 2, 4].
    # k = 3: mu = (10 + 7) / 3 = 17/3 = 5.667 > v_3 = 4, so all three are active.
    # p = 17/3 - [1, 2, 4] = [14/3, 11/3, 5/3], which sums to 30/3 = 10.
    powers = water_filling(jnp.array([1.0, 0.5, 0.25]), 10.0, 1.0)
    np.testing.assert_allclose(powers, [14 / 3, 11 / 3, 5 / 3], rtol=1e-6)


def test_water_filling_scales_with_noise():
    # noise 2, g = [2, 1, 1/2] gives the same v = noise / g = [1, 2, 4] as the first case.
    powers = water_filling(jnp.array([2.0, 1.0, 0.5]), 3.0, 2.0)
    np.testing.assert_allclose(powers, [2.0, 1.0, 0.0], atol=1e-6)


def test_water_filling_zero_gain_gets_no_power():
    # g = [0, 1, 1/2]: v = [inf, 1, 2], and the two finite channels repeat the first case.
    powers = water_filling(jnp.array([0.0, 1.0, 0.5]), 3.0, 1.0)
    np.testing.assert_allclose(powers, [0.0, 2.0, 1.0], atol=1e-6)


def test_water_filling_all_zero_gains_split_equally():
    powers = water_filling(jnp.zeros(4), 3.0, 1.0)
    np.testing.assert_allclose(powers, [0.75, 0.75, 0.75, 0.75])


def test_water_filling_single_channel_takes_all_power():
    powers = water_filling(jnp.array([0.3]), 3.0, 1.0)
    np.testing.assert_allclose(powers, [3.0], rtol=1e-6)


# --- water_filling: random draws ------------------------------------------------------------


def test_water_filling_matches_bisection(batch):
    _, gains, _ = batch
    powers = np.asarray(jitted_water_filling(gains, PARAMS.total_power, PARAMS.noise))
    for row_gains, row_powers in zip(np.asarray(gains[:200]), powers[:200], strict=True):
        expected = reference_water_filling(row_gains, PARAMS.total_power, PARAMS.noise)
        np.testing.assert_allclose(row_powers, expected, atol=2e-5)


def test_water_filling_satisfies_kkt(batch):
    _, gains, _ = batch
    powers = np.asarray(jitted_water_filling(gains, PARAMS.total_power, PARAMS.noise))
    inverse_gains = PARAMS.noise / np.asarray(gains, dtype=np.float64)

    assert np.all(powers >= 0.0)
    np.testing.assert_allclose(powers.sum(axis=-1), PARAMS.total_power, rtol=1e-5)

    # Active channels share one water level mu = p_i + v_i, and dry ones have v_i >= mu.
    is_active = powers > 0.0
    assert np.all(is_active.any(axis=-1))
    levels = np.where(is_active, powers + inverse_gains, np.nan)
    water_level = np.nanmean(levels, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        levels[is_active], np.broadcast_to(water_level, levels.shape)[is_active], rtol=1e-5
    )
    dry_inverse_gains = np.where(is_active, np.inf, inverse_gains)
    assert np.all(dry_inverse_gains >= water_level - 1e-5)


def test_water_filling_two_batch_axes(batch):
    _, gains, _ = batch
    flat = jitted_water_filling(gains, 3.0, 1.0)
    nested = jitted_water_filling(gains.reshape(2, NUM_DRAWS // 2, NUM_CHANNELS), 3.0, 1.0)
    assert nested.shape == (2, NUM_DRAWS // 2, NUM_CHANNELS)
    np.testing.assert_allclose(nested.reshape(NUM_DRAWS, NUM_CHANNELS), flat, atol=1e-6)


def test_optimal_rate_hand_case():
    # Powers [2, 1, 0] on g = [1, 1/2, 1/4]: log2(1 + 2) + log2(1 + 0.5) + log2(1) = log2(4.5).
    rate = optimal_rate(jnp.array([1.0, 0.5, 0.25]), PARAMS)
    np.testing.assert_allclose(rate, np.log2(4.5), rtol=1e-6)


def test_sum_rate_hand_case():
    # noise 2: log2(1 + 2 * 1 / 2) + log2(1 + 1 * 6 / 2) = log2(2) + log2(4) = 3.
    rate = sum_rate(jnp.array([2.0, 1.0]), jnp.array([1.0, 6.0]), 2.0)
    np.testing.assert_allclose(rate, 3.0, rtol=1e-6)


# --- action mapping -------------------------------------------------------------------------


def test_action_to_powers_hand_case():
    # |a| = [0.5, 0.5, 0], sum 1, so p = 3 * |a| / 1 = [1.5, 1.5, 0].
    powers, num_invalid = action_to_powers(jnp.array([0.5, -0.5, 0.0]), 3.0)
    np.testing.assert_allclose(powers, [1.5, 1.5, 0.0], rtol=1e-6)
    assert int(num_invalid) == 0


def test_action_to_powers_zero_action_splits_equally():
    powers, _ = action_to_powers(jnp.zeros(3), 3.0)
    np.testing.assert_allclose(powers, [1.0, 1.0, 1.0])


def test_action_to_powers_sanitises_invalid_entries():
    # NaN -> 0 and 5 -> 1 give |a| = [0, 1, 1], so p = [0, 1.5, 1.5].
    powers, num_invalid = action_to_powers(jnp.array([jnp.nan, 5.0, 1.0]), 3.0)
    np.testing.assert_allclose(powers, [0.0, 1.5, 1.5], rtol=1e-6)
    assert int(num_invalid) == 2


# --- environment: rewards -------------------------------------------------------------------


def test_optimal_action_reward_is_zero(batch):
    keys, gains, state = batch
    # Any action proportional to the optimal powers maps back onto them.
    action = jitted_water_filling(gains, PARAMS.total_power, PARAMS.noise) / PARAMS.total_power
    _, _, reward, _, _, info = batched_step(keys, state, action, PARAMS)
    np.testing.assert_allclose(reward, 0.0, atol=1e-5)
    np.testing.assert_allclose(info["gap_fraction"], 0.0, atol=1e-5)


def test_random_action_reward_is_negative(batch):
    keys, _, state = batch
    key_action = jax.random.key(22)
    action = jax.random.uniform(key_action, (NUM_DRAWS, NUM_CHANNELS), minval=-1.0, maxval=1.0)
    _, _, reward, _, _, info = batched_step(keys, state, action, PARAMS)
    assert np.all(np.asarray(reward) < 0.0)
    np.testing.assert_allclose(reward, info["rate"] - info["optimal_rate"], atol=1e-6)


# Mean gap (optimal - achieved) / optimal over 4096 draws, measured at 0.244 for random actions,
# 0.213 for equal power and 0.0104 for equal power on the 5 strong channels (key seed 0, on CPU).
GAP_CASES = {
    "random": (0.18, 0.30),
    "equal_power": (0.17, 0.25),
    "strong_channels_only": (0.005, 0.02),
}


@pytest.mark.parametrize("policy", GAP_CASES)
def test_baseline_gap_fraction(batch, policy):
    keys, _, state = batch
    if policy == "random":
        key_action = jax.random.key(31)
        action = jax.random.uniform(key_action, (NUM_DRAWS, NUM_CHANNELS), minval=-1.0, maxval=1.0)
    elif policy == "equal_power":
        action = jnp.ones((NUM_DRAWS, NUM_CHANNELS))
    else:
        is_strong = jnp.arange(NUM_CHANNELS) < NUM_CHANNELS // 2
        action = jnp.broadcast_to(is_strong.astype(jnp.float32), (NUM_DRAWS, NUM_CHANNELS))

    _, _, _, _, _, info = batched_step(keys, state, action, PARAMS)
    mean_gap = float(np.mean(info["gap_fraction"]))
    low, high = GAP_CASES[policy]
    assert low < mean_gap < high, f"{policy}: mean gap fraction {mean_gap:.4f}"


@settings(max_examples=60, deadline=None)
@given(action=hnp.arrays(np.float32, NUM_CHANNELS, elements=st.floats(-1.0, 1.0, width=32)))
def test_valid_action_reward_is_bounded(action):
    _, state = ENV.reset(jax.random.key(40), PARAMS)
    _, _, reward, _, _, info = single_step(jax.random.key(41), state, action, PARAMS)
    assert np.isfinite(reward)
    assert float(reward) <= 1e-5
    assert int(info["num_invalid_actions"]) == 0


@settings(max_examples=60, deadline=None)
@given(action=hnp.arrays(np.float32, NUM_CHANNELS, elements=st.floats(width=32)))
def test_invalid_action_is_counted_and_sanitised(action):
    _, state = ENV.reset(jax.random.key(42), PARAMS)
    _, _, reward, _, _, info = single_step(jax.random.key(43), state, action, PARAMS)
    expected_invalid = int(np.sum(np.isnan(action) | (action < -1.0) | (action > 1.0)))
    assert np.isfinite(reward)
    assert float(reward) <= 1e-5
    assert int(info["num_invalid_actions"]) == expected_invalid


def test_all_nan_action_gets_equal_power(batch):
    keys, gains, state = batch
    nan_action = jnp.full((NUM_DRAWS, NUM_CHANNELS), jnp.nan)
    _, _, reward, _, _, info = batched_step(keys, state, nan_action, PARAMS)
    _, _, _, _, _, equal_info = batched_step(keys, state, jnp.ones_like(nan_action), PARAMS)
    np.testing.assert_array_equal(info["rate"], equal_info["rate"])
    assert np.all(np.isfinite(reward))
    np.testing.assert_array_equal(info["num_invalid_actions"], NUM_CHANNELS)


# --- environment: episode contract ----------------------------------------------------------


def test_step_vmapped_episode_ends_after_one_step(batch):
    keys, gains, state = batch
    action = jnp.ones((NUM_DRAWS, NUM_CHANNELS))
    obs, next_state, reward, terminated, truncated, info = batched_step(keys, state, action, PARAMS)
    assert obs.shape == (NUM_DRAWS, NUM_CHANNELS)
    assert obs.dtype == jnp.float32
    assert reward.shape == (NUM_DRAWS,)
    assert np.all(np.asarray(terminated))
    assert not np.any(np.asarray(truncated))
    np.testing.assert_array_equal(info["final_observation"], gains)
    # The auto-reset draws fresh gains for the next episode and restarts the step count.
    assert not np.allclose(obs, gains)
    np.testing.assert_array_equal(next_state.time, 0)


def test_step_env_counts_time_and_terminates():
    obs, state = ENV.reset_env(jax.random.key(51), PARAMS)
    next_obs, next_state, _, terminated, _ = jax.jit(ENV.step_env)(
        jax.random.key(52), state, jnp.ones(NUM_CHANNELS), PARAMS
    )
    assert int(next_state.time) == 1
    assert bool(terminated)
    assert not bool(ENV.is_truncated(next_state, PARAMS))
    np.testing.assert_array_equal(next_obs, obs)


def test_same_key_same_result():
    first = reset_batch(seed=60)
    second = reset_batch(seed=60)
    np.testing.assert_array_equal(first[1], second[1])
    action = jnp.full((NUM_DRAWS, NUM_CHANNELS), 0.5)
    first_step = batched_step(first[0], first[2], action, PARAMS)
    second_step = batched_step(second[0], second[2], action, PARAMS)
    np.testing.assert_array_equal(first_step[0], second_step[0])
    np.testing.assert_array_equal(first_step[2], second_step[2])


def test_different_keys_differ(batch):
    keys, gains, state = batch
    assert len({tuple(row) for row in np.asarray(gains).tolist()}) == NUM_DRAWS
    _, other_gains, other_state = reset_batch(seed=61)
    assert not np.allclose(gains, other_gains)

    action = jnp.ones((NUM_DRAWS, NUM_CHANNELS))
    _, _, reward, _, _, _ = batched_step(keys, state, action, PARAMS)
    _, _, other_reward, _, _, _ = batched_step(keys, other_state, action, PARAMS)
    assert not np.allclose(reward, other_reward)


def test_gains_lie_in_their_bands(batch):
    _, gains, _ = batch
    strong = np.asarray(gains[:, : NUM_CHANNELS // 2])
    weak = np.asarray(gains[:, NUM_CHANNELS // 2 :])
    assert strong.min() >= 1.0
    assert strong.max() < 2.0
    assert weak.min() >= 0.0
    assert weak.max() < 1.0
    assert ENV.observation_space(PARAMS).contains(gains[0])


def test_spaces_and_metadata():
    action_space = ENV.action_space(PARAMS)
    assert action_space.shape == (NUM_CHANNELS,)
    assert action_space.low == -1.0
    assert action_space.high == 1.0
    sample = action_space.sample(jax.random.key(70))
    assert action_space.contains(sample)
    assert ENV.observation_space(PARAMS).shape == (NUM_CHANNELS,)
    assert ENV.num_actions == NUM_CHANNELS
    assert ENV.name == "WaterFilling-v0"


def test_odd_channel_count_split():
    # M = 3 has M // 2 = 1 strong channel, so the extra channel is a weak one.
    env = WaterFillingEnv(num_channels=3)
    gains, _ = env.reset(jax.random.key(71), env.default_params)
    assert gains.shape == (3,)
    assert float(gains[0]) >= 1.0
    assert float(gains[1]) < 1.0
    assert float(gains[2]) < 1.0


# --- validation -----------------------------------------------------------------------------


def test_default_params_are_valid():
    PARAMS.validate()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"total_power": 0.0}, r"total_power = 0\.0: must be > 0"),
        ({"total_power": -3.0}, r"total_power = -3\.0: must be > 0"),
        ({"noise": 0.0}, r"noise = 0\.0: must be > 0"),
        ({"noise": float("nan")}, r"noise = nan: must be a finite number"),
        ({"total_power": float("inf")}, r"total_power = inf: must be a finite number"),
        ({"gain_strong_low": 3.0}, r"gain_strong_low = 3\.0: must be <= gain_strong_high"),
        ({"gain_weak_low": 0.5, "gain_weak_high": 0.1}, r"gain_weak_low = 0\.5: must be <="),
        ({"gain_weak_low": -0.1}, r"gain_weak_low = -0\.1: must be >= 0"),
    ],
)
def test_params_validate_rejects(overrides, match):
    with pytest.raises(ValueError, match=match):
        WaterFillingParams(**overrides).validate()


@pytest.mark.parametrize("num_channels", [0, -1, 2.5, True])
def test_env_rejects_num_channels(num_channels):
    with pytest.raises(ValueError, match="num_channels"):
        WaterFillingEnv(num_channels=num_channels)


def test_step_rejects_action_shape():
    _, state = ENV.reset(jax.random.key(80), PARAMS)
    with pytest.raises(ValueError, match=r"action shape \(3,\): expected \(10,\)"):
        ENV.step(jax.random.key(81), state, jnp.ones(3), PARAMS)
