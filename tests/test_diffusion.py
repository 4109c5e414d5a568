"""Tests of the diffusion actor: VP schedule, reverse step, sampling chain and its networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.agents.diffusion import (
    bound_violation,
    make_diffusion_actor,
    make_schedule,
    reverse_step,
    sample_chain,
    vp_beta_schedule,
)
from rlli_jax.agents.networks import StateEncoder, mish, sinusoidal_embedding

SMALL_NETWORK = dict(hidden_sizes=(32, 32), encoder_hidden_sizes=(24,), time_embedding_dim=8)


def test_vp_schedule_hand_values():
    # T = 5, beta_min 0.1, beta_max 10: beta_t = 1 - exp(-0.02 - 0.198 (2t - 1)).
    #   t=1: 1 - exp(-0.218) = 0.195875     t=2: 1 - exp(-0.614) = 0.458818
    #   t=3: 1 - exp(-1.010) = 0.635781     t=4: 1 - exp(-1.406) = 0.754878
    #   t=5: 1 - exp(-1.802) = 0.835031
    # alpha_bar_t = exp(sum of the exponents): exp(-0.218) = 0.804125, exp(-0.832) = 0.435178,
    #   exp(-1.842) = 0.158500, exp(-3.248) = 0.038852, exp(-5.050) = 0.006409.
    betas = vp_beta_schedule(5, 0.1, 10.0)
    np.testing.assert_allclose(betas, [0.195875, 0.458818, 0.635781, 0.754878, 0.835031], atol=1e-6)

    schedule = make_schedule(5, 0.1, 10.0)
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(
        schedule.alpha_bars, [0.804125, 0.435178, 0.158500, 0.038852, 0.006409], atol=1e-6
    )
    np.testing.assert_allclose(schedule.alpha_bars_prev[0], 1.0)
    np.testing.assert_allclose(schedule.alpha_bars_prev[1:], schedule.alpha_bars[:-1])


def test_posterior_coefficients_hand_values():
    # Entry 1 (t = 2), with ab = 0.435178, ab_prev = 0.804125, beta = 0.458818:
    #   variance = 0.458818 * (1 - 0.804125) / (1 - 0.435178)            = 0.159114
    #   coef1    = 0.458818 * sqrt(0.804125) / (1 - 0.435178)            = 0.728435
    #   coef2    = (1 - 0.804125) * sqrt(1 - 0.458818) / (1 - 0.435178)  = 0.255116
    # Entry 0 (t = 1): ab_prev = 1, so variance 0, coef1 1 and coef2 0.
    schedule = make_schedule(5)
    np.testing.assert_allclose(
        schedule.posterior_variance, [0.0, 0.159114, 0.426742, 0.660907, 0.807766], atol=1e-6
    )
    np.testing.assert_allclose(
        schedule.posterior_mean_coef1, [1.0, 0.728435, 0.498410, 0.312681, 0.165654], atol=1e-6
    )
    np.testing.assert_allclose(
        schedule.posterior_mean_coef2, [0.0, 0.255116, 0.405078, 0.433466, 0.392901], atol=1e-6
    )
    # The zero variance of entry 0 is clamped to 1e-20 inside the log: log(1e-20) = -46.0517.
    np.testing.assert_allclose(schedule.posterior_log_variance_clipped[0], -46.0517, rtol=1e-6)
    expected_variance = np.array([0.159114, 0.426742, 0.660907, 0.807766])
    np.testing.assert_allclose(
        schedule.posterior_log_variance_clipped[1:], np.log(expected_variance), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("num_steps", "beta_min", "beta_max", "match"),
    [
        (0, 0.1, 10.0, "num_steps"),
        (5, 0.0, 10.0, "beta_min"),
        (5, 2.0, 1.0, "beta_min"),
    ],
)
def test_vp_schedule_rejects_invalid(num_steps, beta_min, beta_max, match):
    with pytest.raises(ValueError, match=match):
        vp_beta_schedule(num_steps, beta_min, beta_max)


@pytest.mark.parametrize(
    ("beta_min", "beta_max", "match"),
    [
        (0.1, float("inf"), "both must be finite"),
        (1e-300, 1e-300, "posterior_variance is not finite in float32"),
    ],
)
def test_make_schedule_rejects_non_finite_coefficients(beta_min, beta_max, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(5, beta_min, beta_max)


def test_make_schedule_accepts_tiny_betas():
    schedule = make_schedule(5, 1e-10, 1e-10)
    for name in ("posterior_mean_coef1", "posterior_mean_coef2", "sqrt_recip_alpha_bars"):
        assert np.all(np.isfinite(np.asarray(getattr(schedule, name)))), name


def test_reverse_step_hand_case():
    # Step 1 (t = 2): sqrt(1/ab) = 1.515886, sqrt(1/ab - 1) = 1.139259. With x = 0.5, eps = 0.2:
    #   x0   = 1.515886 * 0.5 - 1.139259 * 0.2           = 0.530091 (inside [-1, 1])
    #   mean = 0.728435 * 0.530091 + 0.255116 * 0.5      = 0.513695
    #   x_1  = mean + sqrt(0.159114) * noise, noise = 1  = 0.513695 + 0.398890 = 0.912586
    schedule = make_schedule(5)
    next_action = reverse_step(
        schedule,
        noisy_action=jnp.array([[0.5]]),
        predicted_noise=jnp.array([[0.2]]),
        step=jnp.array(1),
        noise=jnp.array([[1.0]]),
    )
    np.testing.assert_allclose(next_action, [[0.912586]], atol=2e-6)


def test_reverse_step_clips_x0():
    # Step 1 with x = 1, eps = -1: x0 = 1.515886 + 1.139259 = 2.655 is clipped to 1, so
    # mean = 0.728435 * 1 + 0.255116 * 1 = 0.983551; noise 0 adds nothing.
    schedule = make_schedule(5)
    next_action = reverse_step(
        schedule, jnp.array([[1.0]]), jnp.array([[-1.0]]), jnp.array(1), jnp.array([[0.0]])
    )
    np.testing.assert_allclose(next_action, [[0.983551]], atol=2e-6)


def test_last_reverse_step_adds_no_noise():
    # Step 0 (t = 1): coef1 = 1 and coef2 = 0, so the output is x0 whatever the noise:
    #   x0 = 1.115162 * 0.5 - 0.493545 * 0.2 = 0.458872.
    schedule = make_schedule(5)
    for noise in (0.0, 5.0, -5.0):
        next_action = reverse_step(
            schedule, jnp.array([[0.5]]), jnp.array([[0.2]]), jnp.array(0), jnp.array([[noise]])
        )
        np.testing.assert_allclose(next_action, [[0.458872]], atol=2e-6)


def test_sample_chain_matches_python_loop():
    # Reference: the same draws (x_T first, then one noise per step) fed to reverse_step in a
    # plain loop over i = T-1, ..., 0, with a fixed epsilon function of (x, i).
    schedule = make_schedule(5)
    key = jax.random.key(3)
    shape = (4, 3)

    def predict_noise(noisy_action, step):
        return 0.3 * noisy_action + 0.1 * step.astype(jnp.float32)

    action, _ = sample_chain(schedule, predict_noise, key, shape)

    draws = jax.random.normal(key, (6, *shape))
    expected = draws[0]
    for position, step in enumerate(range(4, -1, -1)):
        step = jnp.array(step)
        expected = reverse_step(
            schedule, expected, predict_noise(expected, step), step, draws[position + 1]
        )
    np.testing.assert_allclose(action, np.clip(expected, -1.0, 1.0), atol=1e-5)


def test_sample_chain_rolled_equals_unrolled():
    schedule = make_schedule(5)
    predict_noise = lambda x, step: jnp.sin(x) * (step + 1)
    unrolled, _ = sample_chain(schedule, predict_noise, jax.random.key(0), (8, 2))
    rolled, _ = sample_chain(schedule, predict_noise, jax.random.key(0), (8, 2), unroll=1)
    np.testing.assert_allclose(unrolled, rolled, atol=1e-6)


def test_sinusoidal_embedding_hand_values():
    # dim 4: frequencies 10000^(-k / 1) for k = 0, 1 are 1 and 1e-4.
    #   t = 0 -> (sin 0, sin 0, cos 0, cos 0) = (0, 0, 1, 1)
    #   t = 1 -> (sin 1, sin 1e-4, cos 1, cos 1e-4) = (0.841471, 1e-4, 0.540302, 1.0)
    embedding = sinusoidal_embedding(jnp.array([0, 1]), 4)
    np.testing.assert_allclose(embedding[0], [0.0, 0.0, 1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(embedding[1], [0.841471, 1e-4, 0.540302, 1.0], atol=1e-6)


def test_mish_matches_jax_mish():
    x = jnp.linspace(-30.0, 30.0, 2001)
    np.testing.assert_allclose(mish(x), jax.nn.mish(x), rtol=1e-5, atol=1e-6)
    grad_fast = jax.vmap(jax.grad(mish))(x)
    grad_reference = jax.vmap(jax.grad(jax.nn.mish))(x)
    np.testing.assert_allclose(grad_fast, grad_reference, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(mish(jnp.array([-1e4, 1e4]))))


@pytest.fixture(scope="module")
def small_actor():
    actor = make_diffusion_actor(3, num_steps=5, **SMALL_NETWORK)
    params = actor.init(jax.random.key(0), 7)
    return actor, params


def test_diffusion_actions_in_bounds(small_actor):
    actor, params = small_actor
    # Large observations drive the noise network far from its initial range.
    obs = 100.0 * jax.random.normal(jax.random.key(1), (256, 7))
    action = jax.jit(actor.apply)(params, obs, jax.random.key(2))
    assert action.shape == (256, 3)
    assert np.all(np.abs(np.asarray(action)) <= 1.0)


def test_state_encoder_runs_once_per_action(small_actor, monkeypatch):
    actor, params = small_actor
    obs_dim = 7  # no other dimension of the small network is 7
    obs = jnp.ones((5, obs_dim))

    num_encoder_calls = 0
    original_call = StateEncoder.__call__

    def counting_call(self, inputs):
        nonlocal num_encoder_calls
        num_encoder_calls += 1
        return original_call(self, inputs)

    monkeypatch.setattr(StateEncoder, "__call__", counting_call)
    closed_jaxpr = jax.make_jaxpr(actor.apply)(params, obs, jax.random.key(0))
    # One trace of the scan body would also count 1, so also check where the matmul sits.
    assert num_encoder_calls == 1

    def obs_matmuls(jaxpr):
        return [
            eqn
            for eqn in jaxpr.eqns
            if eqn.primitive.name == "dot_general"
            and any(getattr(v.aval, "shape", ())[-1:] == (obs_dim,) for v in eqn.invars)
        ]

    scans = [eqn for eqn in closed_jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
    assert len(scans) == 1
    assert len(obs_matmuls(closed_jaxpr.jaxpr)) == 1
    assert obs_matmuls(scans[0].params["jaxpr"].jaxpr) == []


def test_actor_gradient_reaches_every_parameter(small_actor):
    actor, params = small_actor
    obs = jax.random.uniform(jax.random.key(1), (16, 7))

    def objective(params):
        # A smooth objective away from the clip boundaries of x0 and the action.
        return jnp.sum(jnp.square(actor.apply(params, obs, jax.random.key(2)) - 0.1))

    grads = jax.jit(jax.grad(objective))(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.any(np.asarray(leaf) != 0.0), jax.tree_util.keystr(path)


def test_diffusion_actor_reproducible(small_actor):
    actor, params = small_actor
    obs = jax.random.uniform(jax.random.key(1), (16, 7))
    first = actor.apply(params, obs, jax.random.key(5))
    again = actor.apply(params, obs, jax.random.key(5))
    other = actor.apply(params, obs, jax.random.key(6))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_bound_violation_hand_values():
    # Distances outside [-1, 1]: 2, 0, 0, 0.5, so the mean of squares is (4 + 0.25) / 4.
    x0 = jnp.array([[-3.0, -0.2], [1.0, 1.5]])
    np.testing.assert_allclose(float(bound_violation(x0)), 4.25 / 4, rtol=1e-6)


def test_chain_penalty_positive_for_saturated_chain(small_actor):
    actor, params = small_actor
    key = jax.random.key(2)
    obs = 100.0 * jax.random.normal(jax.random.key(1), (64, 7))
    action, penalty = jax.jit(actor.apply_with_penalty)(params, obs, key)
    # The jitted chain and the one run op by op may round differently in the last bits.
    np.testing.assert_allclose(
        np.asarray(action), np.asarray(actor.apply(params, obs, key)), rtol=1e-5, atol=1e-6
    )
    assert float(penalty) > 0.0
