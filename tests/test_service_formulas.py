"""Hand-computed checks of every formula of the service model."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.env import physics
from rlli_jax.env.params import EnvParams


def small_params(similarity, **overrides) -> EnvParams:
    similarity = jnp.asarray(similarity, jnp.float32)
    topics = jnp.zeros(similarity.shape[0], jnp.int32)
    return EnvParams(prompt_similarity=similarity, prompt_topics=topics, **overrides)


ONE_PROMPT = [[1.0]]


def test_path_loss_two_distances():
    # 128.1 + 37.6 log10(1) = 128.1; 128.1 + 37.6 log10(0.1) = 128.1 - 37.6 = 90.5.
    np.testing.assert_allclose(physics.path_loss_db(jnp.array(1000.0)), 128.1, atol=1e-4)
    np.testing.assert_allclose(physics.path_loss_db(jnp.array(100.0)), 90.5, atol=1e-4)
    # 128.1 + 37.6 log10(0.5) = 128.1 - 11.3187 = 116.7813.
    np.testing.assert_allclose(physics.path_loss_db(jnp.array(500.0)), 116.7813, atol=1e-3)


def test_noise_power_default():
    # -174 dBm/Hz + 10 log10(5e6) Hz + 9 dB = -98.0103 dBm = 10^(-12.80103) W.
    params = small_params(ONE_PROMPT)
    np.testing.assert_allclose(physics.noise_power_w(params), 1.5812e-13, rtol=1e-3)


def test_rate_for_given_snr_and_share():
    # R = 0.25 * 5e6 Hz * log2(1 + 15) = 1.25e6 * 4 = 5e6 bit/s.
    params = small_params(ONE_PROMPT)
    rate = physics.downlink_rate_bps(jnp.array(0.25), jnp.array(15.0), params)
    np.testing.assert_allclose(rate, 5e6, rtol=1e-6)


def test_snr_of_known_gain():
    # Gain 1e-12 at 10 W over noise 1.5812e-13 W: SNR = 1e-11 / 1.5812e-13 = 63.24.
    params = small_params(ONE_PROMPT)
    np.testing.assert_allclose(physics.snr(jnp.array(1e-12), params), 63.24, rtol=1e-3)


def test_channel_gain_combines_terms():
    # d = 100 m, X = +3 dB, |h|^2 = 0.5: 10^((-90.5 + 3) / 10) * 0.5 = 10^-8.75 * 0.5.
    gain = physics.channel_gain(jnp.array([100.0]), jnp.array([3.0]), jnp.array([[0.5, 0.5]]))
    np.testing.assert_allclose(gain, [10**-8.75 * 0.5], rtol=1e-4)


@pytest.mark.parametrize(
    ("shared", "expected"),
    [
        # r*(0.7) = 0.2 + 0.5 * 0.7 = 0.55.
        # 5/11: sigmoid(-15 (0.45455 - 0.55)) = sigmoid(1.43182) = 0.80718
        (5.0, 0.80718),
        # 7/11: sigmoid(-15 (0.63636 - 0.55)) = sigmoid(-1.29545) = 0.21492
        (7.0, 0.21492),
        # 9/11: sigmoid(-15 (0.81818 - 0.55)) = sigmoid(-4.02273) = 0.01759
        (9.0, 0.01759),
    ],
)
def test_fidelity_at_shared_step_cases(shared, expected):
    # The Stable Diffusion observation: 5 of 11 shared steps work (about 0.8 of the quality),
    # 7 degrade (about 0.2), 9 fail (about 0.02).
    params = small_params(ONE_PROMPT)
    fidelity = physics.semantic_fidelity(jnp.array(shared), jnp.array(11.0), jnp.array(0.7), params)
    np.testing.assert_allclose(fidelity, expected, atol=1e-4)


def test_base_quality():
    # Q(8) = 1 - exp(-1) = 0.63212; Q(50) = 1 - exp(-6.25) = 0.99807.
    params = small_params(ONE_PROMPT)
    np.testing.assert_allclose(
        physics.base_quality(jnp.array([8.0, 50.0]), params), [0.63212, 0.99807], atol=1e-5
    )


def test_map_action_endpoints():
    params = small_params(ONE_PROMPT)
    num_users = 2
    # Bandwidth logits (1, -1) with scale 3: softmax(3, -3) = (1, e^-6) / (1 + e^-6).
    action = jnp.array([1.0, -1.0, 0.0, 0.0, -1.0, 1.0, -1.0, 1.0])
    allocation = physics.map_action(action, params)
    low = math.exp(-6) / (1 + math.exp(-6))
    np.testing.assert_allclose(allocation.bandwidth_share, [1 - low, low], rtol=1e-5)
    np.testing.assert_allclose(allocation.gpu_share, [0.5, 0.5])
    np.testing.assert_allclose(allocation.total_steps, [5.0, 50.0])
    np.testing.assert_allclose(allocation.share_ratio, [0.0, 0.9])
    assert allocation.total_steps.shape == (num_users,)


def test_map_action_rounds_steps():
    params = small_params(ONE_PROMPT)
    # a = 0: T = 5 + 0.5 * 45 = 27.5, which rounds half to even: 28.
    # a = -0.5: T = 5 + 0.25 * 45 = 16.25 -> 16.
    action = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.0, 0.0])
    np.testing.assert_allclose(physics.map_action(action, params).total_steps, [28.0, 16.0])


GROUPING_SIMILARITY = [
    [1.0, 0.6, 0.2, 0.3, 0.5],
    [0.6, 1.0, 0.7, 0.1, 0.2],
    [0.2, 0.7, 1.0, 0.55, 0.9],
    [0.3, 0.1, 0.55, 1.0, 0.2],
    [0.5, 0.2, 0.9, 0.2, 1.0],
]


def test_grouping_small_matrix():
    # Threshold 0.5, users take prompts 0..4 in order:
    # user 0 opens group 0; user 1 joins 0 (0.6); user 2 opens group 2 (0.2 to user 0, and
    # user 1 is no representative although their similarity is 0.7); user 3 joins 2 (0.55);
    # user 4 joins the FIRST group that accepts it, 0 (0.5), not the more similar 2 (0.9).
    params = small_params(GROUPING_SIMILARITY, group_threshold=0.5)
    groups = physics.group_users(jnp.arange(5), params)
    np.testing.assert_array_equal(groups.representative, [0, 0, 2, 2, 0])
    np.testing.assert_array_equal(groups.is_representative, [True, False, True, False, False])
    np.testing.assert_allclose(groups.similarity, [1.0, 0.6, 1.0, 0.55, 0.5])
    np.testing.assert_allclose(groups.size, [3, 0, 2, 0, 0])


def test_grouping_threshold_extremes():
    similarity = GROUPING_SIMILARITY
    everyone_alone = physics.group_users(
        jnp.arange(5), small_params(similarity, group_threshold=1.0)
    )
    assert bool(jnp.all(everyone_alone.is_representative))
    one_group = physics.group_users(jnp.arange(5), small_params(similarity, group_threshold=-1.0))
    np.testing.assert_array_equal(one_group.representative, [0, 0, 0, 0, 0])


def test_grouping_same_prompt_shares_group():
    # Two users with the same prompt always group (similarity 1).
    params = small_params(GROUPING_SIMILARITY, group_threshold=0.95)
    groups = physics.group_users(jnp.array([3, 1, 3]), params)
    np.testing.assert_array_equal(groups.representative, [0, 1, 0])


def three_user_group():
    params = small_params(np.ones((3, 3)))
    groups = physics.group_users(jnp.arange(3), params)
    # T = 10 for all, rho = 0.4: S = round(0.4 * 10) = 4.
    allocation = physics.Allocation(
        bandwidth_share=jnp.full(3, 1 / 3),
        gpu_share=jnp.full(3, 1 / 3),
        total_steps=jnp.full(3, 10.0),
        share_ratio=jnp.full(3, 0.4),
    )
    return params, groups, allocation


def test_shared_steps_group_of_three():
    params, groups, allocation = three_user_group()
    np.testing.assert_allclose(physics.shared_steps(allocation, groups), [4.0, 0.0, 0.0])


def test_gpu_energy_saved_by_group_of_three():
    # Sharing: 4 shared steps once + 3 * (10 - 4) own steps = 22 steps * 20 J = 440 J.
    # Without sharing: 30 steps = 600 J. Saved: (3 - 1) * 4 steps = 8 steps = 160 J.
    params, groups, allocation = three_user_group()
    shared = physics.shared_steps(allocation, groups)
    with_sharing = physics.gpu_energy_j(allocation, groups, shared, params)
    without_sharing = physics.gpu_energy_j(allocation, groups, jnp.zeros(3), params)
    np.testing.assert_allclose(with_sharing, 440.0)
    np.testing.assert_allclose(without_sharing, 600.0)
    np.testing.assert_allclose(without_sharing - with_sharing, 160.0)


def test_compute_latency_pooled_share():
    # c_g = 3 * 1/3 = 1: L = 4 / (1 * 40) + (10 - 4) / (1/3 * 40) = 0.1 + 0.45 = 0.55 s.
    params, groups, allocation = three_user_group()
    shared = physics.shared_steps(allocation, groups)
    latency = physics.compute_latency_s(allocation, groups, shared, params)
    np.testing.assert_allclose(latency, [0.55, 0.55, 0.55], rtol=1e-5)


def test_sanitize_action_counts_invalid():
    action = jnp.array([0.5, jnp.nan, 2.0, -3.0, -1.0, 1.0])
    clean, num_invalid = physics.sanitize_action(action)
    np.testing.assert_allclose(clean, [0.5, 0.0, 1.0, -1.0, -1.0, 1.0])
    assert int(num_invalid) == 3


def test_fading_update_is_gauss_markov():
    import jax

    params = small_params(ONE_PROMPT, fading_correlation=1.0)
    fading = jnp.array([[0.3, -0.2]])
    # rho_f = 1 keeps h unchanged; rho_f = 0 replaces it by fresh CN(0, 1) noise.
    np.testing.assert_allclose(
        physics.evolve_fading(jax.random.key(0), fading, params), fading, atol=1e-7
    )
    params_fresh = small_params(ONE_PROMPT, fading_correlation=0.0)
    fresh = physics.evolve_fading(jax.random.key(0), jnp.zeros((20000, 2)), params_fresh)
    # E|w|^2 = 1 for w ~ CN(0, 1).
    np.testing.assert_allclose(jnp.mean(jnp.sum(fresh**2, axis=-1)), 1.0, atol=0.03)
