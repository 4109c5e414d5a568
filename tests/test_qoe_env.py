"""The reward network inside the service environment: same QoE as outside, swappable params."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.qoe.reward_net import RewardNetQoE, load_reward_net, save_reward_net
from rlli_jax.qoe.simulator import simulated_mos

NUM_STEPS = 4
# Compiled once per environment (a static argument) and shared by all tests.
reset_jit = jax.jit(DiffusionServiceEnv.reset, static_argnums=0)
step_jit = jax.jit(DiffusionServiceEnv.step, static_argnums=0)


def rollout_one_user(env, params, key):
    """Step a one-user environment NUM_STEPS times with random actions.

    With one user each `info` mean is that user's own value, so the QoE can be recomputed from
    the traits, quality and latency outside the environment.
    """
    key_reset, key_steps = jax.random.split(key)
    _, state = reset_jit(env, key_reset, params)
    rows = []
    for key_step in jax.random.split(key_steps, NUM_STEPS):
        key_action, key_env = jax.random.split(key_step)
        action = jax.random.uniform(key_action, (env.num_actions,), minval=-1, maxval=1)
        traits = state.traits
        _, state, reward, _, _, info = step_jit(env, key_env, state, action, params)
        rows.append((traits, info["quality"], info["latency_s"], info["qoe"], reward))
    return rows


@pytest.fixture(scope="module")
def env():
    return DiffusionServiceEnv(num_users=1, horizon=NUM_STEPS + 1)


def test_env_default_qoe_is_reward_net(env):
    assert isinstance(env.qoe_model, RewardNetQoE)
    params = env.default_params
    shipped = env.qoe_model.default_params()
    for a, b in zip(jax.tree.leaves(params.qoe_params), jax.tree.leaves(shipped), strict=True):
        np.testing.assert_array_equal(a, b)


def test_env_qoe_equals_network_outside(env):
    params = env.default_params
    rows = rollout_one_user(env, params, jax.random.key(0))
    for traits, quality, latency, qoe, _ in rows:
        outside = env.qoe_model(params.qoe_params, traits, quality[None], latency[None])
        np.testing.assert_allclose(qoe, outside[0], rtol=1e-5)
    # The network is not the simulator: the two differ somewhere along the rollout.
    simulated = [simulated_mos(t, q[None], lat[None])[0] for t, q, lat, _, _ in rows]
    assert not np.allclose([row[3] for row in rows], simulated, atol=1e-6)


def custom_params(model: RewardNetQoE, shipped: dict) -> dict:
    """Return a differently trained stand-in: fresh weights with the shipped normalisation."""
    return model.init_params(
        jax.random.key(123), input_mean=shipped["input_mean"], input_std=shipped["input_std"]
    )


def test_custom_checkpoint_changes_rewards(env, tmp_path):
    params = env.default_params
    model = env.qoe_model
    path = save_reward_net(tmp_path / "custom", model, custom_params(model, params.qoe_params))
    _, loaded, _ = load_reward_net(path, hidden_sizes=model.hidden_sizes)
    custom_env_params = env.make_params(qoe_params=loaded)

    default_rows = rollout_one_user(env, params, jax.random.key(1))
    custom_rows = rollout_one_user(env, custom_env_params, jax.random.key(1))
    default_rewards = np.array([row[4] for row in default_rows])
    custom_rewards = np.array([row[4] for row in custom_rows])
    assert not np.allclose(default_rewards, custom_rewards)
    # Same physics: only the QoE term moved.
    np.testing.assert_allclose([r[1] for r in default_rows], [r[1] for r in custom_rows])
    np.testing.assert_allclose([r[2] for r in default_rows], [r[2] for r in custom_rows])
    for traits, quality, latency, qoe, _ in custom_rows:
        outside = model(loaded, traits, quality[None], latency[None])
        np.testing.assert_allclose(qoe, outside[0], rtol=1e-5)


def test_env_from_checkpoint_model(tmp_path):
    base = RewardNetQoE()
    path = save_reward_net(tmp_path / "custom", base, custom_params(base, base.default_params()))
    env = DiffusionServiceEnv(num_users=1, qoe_model=RewardNetQoE.from_checkpoint(path))
    _, loaded, _ = load_reward_net(path)
    for a, b in zip(
        jax.tree.leaves(env.default_params.qoe_params), jax.tree.leaves(loaded), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_qoe_params_vmap_in_one_compile():
    env = DiffusionServiceEnv(num_users=8, horizon=4)
    params = env.default_params
    stacked = jax.tree.map(
        lambda a, b: jnp.stack([a, b]),
        params.qoe_params,
        custom_params(env.qoe_model, params.qoe_params),
    )
    key_reset, key_step = jax.random.split(jax.random.key(2))
    _, state = env.reset(key_reset, params)
    action = jnp.zeros(env.num_actions)

    @jax.jit
    @jax.vmap
    def step_with(qoe_params):
        _, _, reward, _, _, info = env.step(
            key_step, state, action, params.replace(qoe_params=qoe_params)
        )
        return reward, info["qoe"]

    rewards, qoe = step_with(stacked)
    assert rewards.shape == (2,)
    assert float(rewards[0]) != float(rewards[1])
    _, _, single_reward, _, _, single_info = env.step(key_step, state, action, params)
    np.testing.assert_allclose(rewards[0], single_reward, rtol=1e-5)
    np.testing.assert_allclose(qoe[0], single_info["qoe"], rtol=1e-5)


def test_make_params_rejects_other_hidden_sizes(env):
    narrow = RewardNetQoE(hidden_sizes=(32,)).init_params(jax.random.key(0))
    message = (
        r"qoe_params\['network'\]\['Dense_0'\]\['bias'\] has shape \(32,\), "
        r"but the QoE model 'reward_net' expects \(64,\)"
    )
    with pytest.raises(ValueError, match=message):
        env.make_params(qoe_params=narrow)


def test_make_params_rejects_missing_qoe_params(env):
    with pytest.raises(ValueError, match=r"qoe_params\['input_mean'\] is missing: .*\(7,\)"):
        env.make_params(qoe_params={})


def test_make_params_rejects_extra_qoe_params(env):
    qoe_params = dict(env.qoe_model.default_params(), extra=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"qoe_params\['extra'\] \(shape \(3,\)\) is not a"):
        env.make_params(qoe_params=qoe_params)


def test_make_params_rejects_integer_qoe_params(env):
    qoe_params = jax.tree.map(lambda leaf: leaf.astype(jnp.int32), env.qoe_model.default_params())
    with pytest.raises(ValueError, match=r"qoe_params\['input_mean'\] has dtype int32, but the"):
        env.make_params(qoe_params=qoe_params)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_make_params_rejects_nonfinite_qoe_params(env, bad_value):
    qoe_params = dict(env.qoe_model.default_params())
    qoe_params["input_std"] = qoe_params["input_std"].at[2].set(bad_value)
    with pytest.raises(ValueError, match=r"qoe_params\['input_std'\] contains 1 non-finite value"):
        env.make_params(qoe_params=qoe_params)


def test_make_params_accepts_stacked_qoe_params(env):
    shipped = env.qoe_model.default_params()
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), shipped)
    params = env.make_params(qoe_params=stacked)
    assert params.qoe_params["input_mean"].shape == (2, 7)
    ragged = dict(stacked, input_std=shipped["input_std"])
    with pytest.raises(ValueError, match=r"qoe_params\['input_std'\] .*leading batch axes \(2,\)"):
        env.make_params(qoe_params=ragged)


@dataclasses.dataclass(frozen=True)
class _BroadcastQoE:
    """A QoE model with a broadcasting bug: MOS [N, N] instead of [N]."""

    name: str = "broadcast"

    def __call__(self, qoe_params, traits, quality, latency_s):
        return 1.0 + 4.0 * quality[:, None] * jnp.exp(-latency_s[None, :] / 10.0)

    def default_params(self):
        return {}


@dataclasses.dataclass(frozen=True)
class _BoolQoE:
    """A QoE model that returns whether each user is satisfied, not a MOS."""

    name: str = "bool"

    def __call__(self, qoe_params, traits, quality, latency_s):
        return quality > 0.5

    def default_params(self):
        return {}


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_BroadcastQoE(), r"'broadcast': it returned shape \(3, 3\) and dtype float32"),
        (_BoolQoE(), r"'bool': it returned shape \(3,\) and dtype bool"),
    ],
)
def test_step_rejects_wrong_qoe_output(model, match):
    env = DiffusionServiceEnv(num_users=3, horizon=4, qoe_model=model)
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    expected = r", expected a real-valued MOS of shape \(3,\)"
    with pytest.raises(ValueError, match=match + expected):
        env.step(jax.random.key(1), state, jnp.zeros(env.num_actions), params)
