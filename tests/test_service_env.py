"""Contract, property and determinism tests of `DiffusionServiceEnv` with the packaged bank."""

import dataclasses
import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlli_jax  # noqa: F401  (registers the gymnax ids)
from rlli_jax.env import physics
from rlli_jax.env.params import MAX_LOGIT_SCALE
from rlli_jax.env.prompts import load_prompt_bank
from rlli_jax.env.service import NUM_USER_FEATURES, DiffusionServiceEnv

NUM_USERS = 8


@functools.cache
def default_env() -> DiffusionServiceEnv:
    return DiffusionServiceEnv(num_users=NUM_USERS, horizon=4)


@functools.cache
def jitted_step_pieces():
    """One compiled function returning every quantity the property tests check."""
    env = default_env()
    params = env.default_params

    @jax.jit
    def run(key, action):
        _, state = env.reset(key, params)
        allocation = physics.map_action(physics.sanitize_action(action)[0], params)
        _, _, reward, _, _, info = env.step(key, state, action, params)
        no_share_action = action.at[3 * NUM_USERS :].set(-1.0)
        _, _, _, _, _, info_no_share = env.step(key, state, no_share_action, params)
        return allocation, reward, info, info_no_share

    return run


def test_registered_ids_make_envs():
    env, params = gymnax.make("DiffusionService-v0")
    assert isinstance(env, DiffusionServiceEnv)
    assert env.action_space(params).shape == (4 * 8,)
    probe, probe_params = gymnax.make("WaterFilling-v0")
    assert probe.action_space(probe_params).shape == (10,)


def test_observation_layout_sizes():
    env = default_env()
    obs, _ = env.reset(jax.random.key(0), env.default_params)
    # 9 per user + 28 pairs + slot fraction + budget remaining = 72 + 28 + 2 = 102.
    assert obs.shape == (102,)
    assert env.obs_dim == NUM_USER_FEATURES * NUM_USERS + NUM_USERS * (NUM_USERS - 1) // 2 + 2
    assert env.observation_space(env.default_params).shape == obs.shape
    assert obs.dtype == jnp.float32


def test_observation_fields_match_state():
    env = default_env()
    params = env.default_params
    obs, state = env.reset(jax.random.key(3), params)
    features = env.layout.user_features(obs)
    np.testing.assert_allclose(features[:, 1:6], state.traits, atol=1e-6)
    np.testing.assert_allclose(features[:, 6], state.groups.similarity, atol=1e-6)
    np.testing.assert_allclose(features[:, 7], state.groups.is_representative)
    ids = np.asarray(state.prompt_ids)
    rows, cols = np.triu_indices(NUM_USERS, k=1)
    expected_pairs = np.asarray(params.prompt_similarity)[ids[rows], ids[cols]]
    np.testing.assert_allclose(obs[env.layout.pair_similarity], expected_pairs, atol=1e-6)
    assert float(obs[env.layout.slot_fraction]) == 0.0
    assert float(obs[env.layout.budget_remaining]) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.floats(-1.0, 1.0, allow_nan=False, width=32),
        min_size=4 * NUM_USERS,
        max_size=4 * NUM_USERS,
    ),
    st.integers(0, 2**31 - 1),
)
def test_step_properties_hold_for_any_action(action, seed):
    allocation, reward, info, info_no_share = jitted_step_pieces()(
        jax.random.key(seed), jnp.asarray(action, jnp.float32)
    )
    np.testing.assert_allclose(jnp.sum(allocation.bandwidth_share), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(allocation.gpu_share), 1.0, atol=1e-5)
    assert float(info["latency_s"]) > 0
    assert 0.0 <= float(info["quality"]) <= 1.0
    assert 1.0 <= float(info["qoe"]) <= 5.0
    assert float(info["gpu_energy_j"]) <= float(info_no_share["gpu_energy_j"]) + 1e-3
    assert bool(jnp.isfinite(reward))
    assert int(info["num_invalid_actions"]) == 0


def test_step_user_level_bounds():
    # Per-user quality and QoE (not only their means) stay in range for random actions.
    env = default_env()
    params = env.default_params
    qoe_model = env.qoe_model
    keys = jax.random.split(jax.random.key(7), 256)
    actions = jax.random.uniform(jax.random.key(8), (256, 4 * NUM_USERS), minval=-1, maxval=1)
    traits = jax.random.uniform(jax.random.key(9), (256, NUM_USERS, 5))
    quality = jax.random.uniform(jax.random.key(10), (256, NUM_USERS))
    latency = jnp.exp(jax.random.uniform(jax.random.key(11), (256, NUM_USERS), minval=-3, maxval=6))
    mos = qoe_model(params.qoe_params, traits, quality, latency)
    assert float(mos.min()) >= 1.0
    assert float(mos.max()) <= 5.0
    _, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    _, _, rewards, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        keys, states, actions, params
    )
    assert bool(jnp.all(jnp.isfinite(rewards)))


def test_nan_action_is_sanitised_and_counted():
    env = default_env()
    params = env.default_params
    obs, state = env.reset(jax.random.key(0), params)
    action = jnp.full((4 * NUM_USERS,), jnp.nan).at[:3].set(jnp.array([5.0, -5.0, 0.0]))
    next_obs, next_state, reward, _, _, info = env.step(jax.random.key(1), state, action, params)
    assert bool(jnp.isfinite(reward))
    assert bool(jnp.all(jnp.isfinite(next_obs)))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(next_state))
    # 29 NaN entries + 5.0 + -5.0 are invalid; 0.0 is valid.
    assert int(info["num_invalid_actions"]) == 4 * NUM_USERS - 1


@pytest.mark.parametrize("shape", [(4 * NUM_USERS - 1,), (2, 4 * NUM_USERS), ()])
def test_step_rejects_a_wrong_action_shape(shape):
    env = default_env()
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    message = rf"invalid action shape \({', '.join(map(str, shape))},?\).*\({4 * NUM_USERS},\)"
    with pytest.raises(ValueError, match=message):
        env.step(jax.random.key(1), state, jnp.zeros(shape), params)


def test_step_accepts_integer_and_list_actions():
    env = default_env()
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    rewards = [
        env.step(jax.random.key(1), state, action, params)[2]
        for action in (
            jnp.zeros(4 * NUM_USERS),
            jnp.zeros(4 * NUM_USERS, jnp.int32),
            [0.0] * (4 * NUM_USERS),
        )
    ]
    assert float(rewards[0]) == float(rewards[1]) == float(rewards[2])


def test_step_rejects_a_complex_action():
    env = default_env()
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    action = jnp.zeros(4 * NUM_USERS, jnp.complex64) + 1j
    with pytest.raises(ValueError, match=r"invalid action dtype complex64: .*imaginary part"):
        env.step(jax.random.key(1), state, action, params)


def test_step_rejects_a_bool_action():
    env = default_env()
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    action = jnp.ones(4 * NUM_USERS, bool)
    with pytest.raises(ValueError, match=r"invalid action dtype bool: .*True into 1\.0"):
        env.step(jax.random.key(1), state, action, params)
    with pytest.raises(ValueError, match=r"invalid action dtype bool"):
        jax.jit(env.step)(jax.random.key(1), state, action, params)


def rollout(env, params, key, actions):
    """Python loop of single jitted steps; returns stacked rewards and observations."""
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset(key_reset, params)
    rewards, observations = [], []
    for step_key, action in zip(jax.random.split(key_steps, len(actions)), actions, strict=True):
        obs, state, reward, _, _, _ = env.step(step_key, state, action, params)
        rewards.append(reward)
        observations.append(obs)
    return jnp.stack(rewards), jnp.stack(observations)


def test_vmapped_step_equals_python_loop():
    env = default_env()
    params = env.default_params
    num_envs, num_steps = 3, 5
    env_keys = jax.random.split(jax.random.key(42), num_envs)
    actions = jax.random.uniform(
        jax.random.key(5), (num_envs, num_steps, 4 * NUM_USERS), minval=-1, maxval=1
    )

    @jax.jit
    def batched(keys, actions):
        def one_env(key, env_actions):
            key_reset, key_steps = jax.random.split(key)
            obs, state = env.reset(key_reset, params)

            def body(carry, inputs):
                state = carry
                step_key, action = inputs
                obs, state, reward, _, _, _ = env.step(step_key, state, action, params)
                return state, (reward, obs)

            _, (rewards, observations) = jax.lax.scan(
                body, state, (jax.random.split(key_steps, num_steps), env_actions)
            )
            return rewards, observations

        return jax.vmap(one_env)(keys, actions)

    batched_rewards, batched_obs = batched(env_keys, actions)
    for i in range(num_envs):
        loop_rewards, loop_obs = rollout(env, params, env_keys[i], actions[i])
        np.testing.assert_allclose(batched_rewards[i], loop_rewards, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched_obs[i], loop_obs, rtol=1e-5, atol=1e-5)


def test_same_key_same_trajectory_different_keys_differ():
    env = default_env()
    params = env.default_params
    actions = jax.random.uniform(jax.random.key(5), (4, 4 * NUM_USERS), minval=-1, maxval=1)
    rewards_a, obs_a = rollout(env, params, jax.random.key(1), actions)
    rewards_b, obs_b = rollout(env, params, jax.random.key(1), actions)
    rewards_c, obs_c = rollout(env, params, jax.random.key(2), actions)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.allclose(rewards_a, rewards_c)
    assert not np.allclose(obs_a, obs_c)


def test_auto_reset_at_horizon_sets_truncated_only():
    env = default_env()  # horizon 4
    params = env.default_params
    obs, state = env.reset(jax.random.key(0), params)
    action = jnp.zeros(4 * NUM_USERS)
    flags = []
    for i in range(9):
        obs, state, _, terminated, truncated, _ = env.step(jax.random.key(i), state, action, params)
        flags.append((bool(terminated), bool(truncated), int(state.time)))
    assert [f[0] for f in flags] == [False] * 9
    assert [f[1] for f in flags] == [False, False, False, True] * 2 + [False]
    # After the truncating step the state is a fresh episode at slot 0.
    assert [f[2] for f in flags] == [1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_energy_budget_forces_no_sharing_and_costs_more():
    env = default_env()
    params = env.make_params(energy_budget_j=1.0, overbudget_factor=2.0)
    _, state = env.reset(jax.random.key(0), params)
    action = jnp.concatenate([jnp.zeros(3 * NUM_USERS), jnp.ones(NUM_USERS)])  # rho = 0.9
    obs, state, _, _, _, info_first = env.step(jax.random.key(1), state, action, params)
    # The first slot is within budget; it spends more than 1 J, so the budget is gone.
    assert float(info_first["over_budget"]) == 0.0
    assert float(obs[env.layout.budget_remaining]) == 0.0
    _, _, _, _, _, info_second = env.step(jax.random.key(2), state, action, params)
    assert float(info_second["over_budget"]) == 1.0
    assert float(info_second["shared_steps"]) == 0.0
    expected = 2.0 * (info_second["gpu_energy_j"] + info_second["transmit_energy_j"])
    np.testing.assert_allclose(info_second["energy_j"], expected, rtol=1e-5)


def test_sharing_saves_energy_with_similar_prompts():
    # Every user requests the same prompt, so all are in one group and sharing saves steps.
    env = default_env()
    params = env.make_params(topic_zipf_exponent=0.0)
    _, state = env.reset(jax.random.key(0), params)
    same_prompt = jnp.zeros(NUM_USERS, jnp.int32)
    state = state.replace(prompt_ids=same_prompt, groups=physics.group_users(same_prompt, params))
    share = jnp.concatenate([jnp.zeros(3 * NUM_USERS), jnp.ones(NUM_USERS)])
    no_share = jnp.concatenate([jnp.zeros(3 * NUM_USERS), -jnp.ones(NUM_USERS)])
    _, _, _, _, _, info_share = env.step(jax.random.key(1), state, share, params)
    _, _, _, _, _, info_alone = env.step(jax.random.key(1), state, no_share, params)
    assert float(info_share["num_groups"]) == 1.0
    # T = 28 each, S = round(0.9 * 28) = 25: saves 7 * 25 steps * 20 J = 3500 J.
    np.testing.assert_allclose(
        info_alone["gpu_energy_j"] - info_share["gpu_energy_j"], 3500.0, rtol=1e-5
    )


def test_reward_uses_energy_weight():
    env = default_env()
    action = jnp.zeros(4 * NUM_USERS)
    params_free = env.make_params(energy_weight=0.0)
    params_costly = env.make_params(energy_weight=1.0)
    _, state = env.reset(jax.random.key(0), params_free)
    _, _, reward_free, _, _, info = env.step(jax.random.key(1), state, action, params_free)
    _, _, reward_costly, _, _, _ = env.step(jax.random.key(1), state, action, params_costly)
    np.testing.assert_allclose(reward_free, info["qoe"], rtol=1e-6)
    reference = NUM_USERS * 50.0 * 20.0
    np.testing.assert_allclose(reward_free - reward_costly, info["energy_j"] / reference, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"bandwidth_hz": -1.0}, r"bandwidth_hz = -1.0 .*must be > 0"),
        ({"min_total_steps": 60.0}, r"min_total_steps .* exceeds max_total_steps"),
        ({"group_threshold": 1.5}, r"group_threshold = 1.5 .*\[-1, 1\]"),
        ({"tx_power_w": float("nan")}, r"tx_power_w = nan"),
        ({"fading_correlation": 1.2}, r"fading_correlation"),
        ({"min_distance_m": 900.0}, r"min_distance_m .* exceeds max_distance_m"),
        ({"overbudget_factor": 0.5}, r"overbudget_factor = 0.5 .*>= 1"),
        ({"no_such_field": 1.0}, r"unknown EnvParams field"),
        ({"bandwidth_hz": float("inf")}, r"bandwidth_hz = inf .*must be finite"),
        ({"energy_weight": float("inf")}, r"energy_weight = inf .*must be finite"),
        ({"logit_scale": 30.5}, r"logit_scale = 30.5 .*must lie in \(0, 30\] .*underflows"),
        ({"logit_scale": 100.0}, r"logit_scale = 100.0 .*must lie in \(0, 30\]"),
        ({"logit_scale": 0.0}, r"logit_scale = 0.0 .*must lie in \(0, 30\]"),
        ({"energy_weight": "0.5"}, r"energy_weight = '0.5' is invalid: .*must be a real number"),
        ({"energy_weight": None}, r"energy_weight = None is invalid: .*must be a real number"),
        ({"energy_weight": True}, r"energy_weight = True is invalid: .*must be a real number"),
        ({"energy_weight": 0.5 + 0j}, r"energy_weight = \(0.5\+0j\) is invalid: .*real number"),
        ({"energy_weight": jnp.array([0.0, 1.0]) > 0}, r"energy_weight = .*must be a real number"),
    ],
)
def test_invalid_params_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        default_env().make_params(**overrides)


@pytest.mark.parametrize("num_users", [2, 64])
def test_max_logit_scale_keeps_step_finite(num_users):
    env = DiffusionServiceEnv(num_users=num_users, horizon=2)
    params = env.make_params(logit_scale=MAX_LOGIT_SCALE)
    one_up = jnp.array([1.0] + [-1.0] * (num_users - 1))
    longest_steps = jnp.ones(num_users)
    _, state = env.reset(jax.random.key(0), params)
    # One user at +1 and the rest at -1, and the reverse, which gives one user the smallest
    # share, about exp(-2 * MAX_LOGIT_SCALE) / num_users, on both the bandwidth and GPU blocks.
    for logits in (one_up, -one_up):
        action = jnp.concatenate([logits, logits, longest_steps, -longest_steps])
        _, _, reward, _, _, info = env.step(jax.random.key(1), state, action, params)
        assert bool(jnp.isfinite(reward))
        assert bool(jnp.isfinite(info["latency_s"]))
        assert bool(jnp.isfinite(info["qoe"]))


@pytest.mark.parametrize(
    "energy_weight",
    [1, 0.5, np.int64(1), np.float32(0.5), jnp.asarray(0.5), jnp.array([0.0, 0.5]), [0.0, 0.5]],
)
def test_params_accept_real_numbers_and_arrays(energy_weight):
    params = default_env().make_params(energy_weight=energy_weight)
    np.testing.assert_array_equal(params.energy_weight, energy_weight)


def test_invalid_similarity_in_params_raises():
    env = default_env()
    bad = np.asarray(env.default_params.prompt_similarity).copy()
    bad[0, 1] = 0.3
    bad[1, 0] = -0.3
    with pytest.raises(ValueError, match="symmetric"):
        env.make_params(prompt_similarity=jnp.asarray(bad))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_users": 0}, r"num_users = 0 is invalid"),
        ({"num_users": 2.5}, r"num_users = 2.5 is invalid"),
        ({"horizon": 0}, r"horizon = 0 is invalid"),
        ({"num_users": True}, r"num_users = True is invalid: it must be an integer >= 1"),
        ({"horizon": True}, r"horizon = True is invalid: it must be an integer >= 1"),
    ],
)
def test_invalid_env_shapes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionServiceEnv(**kwargs)


def test_unhashable_qoe_model_raises():
    @dataclasses.dataclass
    class MutableQoE:
        name: str = "mutable"

        def __call__(self, qoe_params, traits, quality, latency_s):
            return 1.0 + 4.0 * quality

        def default_params(self):
            return {}

    with pytest.raises(ValueError, match=r"qoe_model = .*MutableQoE.* must be hashable.*frozen"):
        DiffusionServiceEnv(qoe_model=MutableQoE())


class _ScaledRewardEnv(DiffusionServiceEnv):
    """A subclass whose constructor argument changes the reward, as a researcher's would."""

    def __init__(self, reward_scale: float, **kwargs):
        super().__init__(**kwargs)
        self.reward_scale = reward_scale

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = super().step_env(key, state, action, params)
        return obs, state, self.reward_scale * reward, terminated, info


def test_subclass_attributes_enter_jit_cache_key():
    # gymnax jits `step` with the environment static, so instances that compare equal share
    # one compiled program.
    env_one = _ScaledRewardEnv(1.0, num_users=2, horizon=4)
    env_ten = _ScaledRewardEnv(10.0, num_users=2, horizon=4)
    assert env_one != env_ten
    assert env_one == _ScaledRewardEnv(1.0, num_users=2, horizon=4)
    params = env_one.default_params
    _, state = env_one.reset(jax.random.key(0), params)
    action = jnp.zeros(env_one.num_actions)
    reward_one = env_one.step(jax.random.key(1), state, action, params)[2]
    reward_ten = env_ten.step(jax.random.key(1), state, action, params)[2]
    np.testing.assert_allclose(reward_ten, 10.0 * reward_one, rtol=1e-5)


def test_prompt_bank_data_enter_jit_cache_key():
    bank = load_prompt_bank()
    no_similarity = dataclasses.replace(bank, similarity=np.eye(bank.num_prompts, dtype=np.float32))
    env = DiffusionServiceEnv(num_users=NUM_USERS, horizon=4)
    env_no_similarity = DiffusionServiceEnv(
        num_users=NUM_USERS, horizon=4, prompt_bank=no_similarity
    )
    assert env == DiffusionServiceEnv(num_users=NUM_USERS, horizon=4)
    assert env != env_no_similarity
    # Without params, gymnax's step compiles the environment's default_params in.
    _, state = env.reset(jax.random.key(0))
    action = jnp.zeros(env.num_actions)
    obs = env.step(jax.random.key(1), state, action)[0]
    obs_no_similarity = env_no_similarity.step(jax.random.key(1), state, action)[0]
    assert not np.array_equal(obs, obs_no_similarity)
    # An identity similarity matrix gives 0 to a pair of users with different prompts, else 1.
    pair_similarity = obs_no_similarity[env.layout.pair_similarity]
    assert np.all(np.isin(pair_similarity, [0.0, 1.0]))


class _CachedTableEnv(DiffusionServiceEnv):
    @functools.cached_property
    def table(self):
        return (1.0, 2.0)


def test_cached_property_keeps_hash():
    # jit keeps the environment as a static argument, so its hash must not change on use.
    env = _CachedTableEnv(num_users=2, horizon=4)
    before = hash(env)
    assert env.table == (1.0, 2.0)
    assert hash(env) == before
    assert env == _CachedTableEnv(num_users=2, horizon=4)


def test_prompt_bank_file_missing_raises(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_prompt_bank(tmp_path / "missing.json", tmp_path / "missing.npy")


def test_single_user_env_works():
    env = DiffusionServiceEnv(num_users=1, horizon=2)
    params = env.default_params
    obs, state = env.reset(jax.random.key(0), params)
    assert obs.shape == (NUM_USER_FEATURES + 0 + 2,)
    _, _, reward, _, _, info = env.step(jax.random.key(1), state, jnp.zeros(4), params)
    assert bool(jnp.isfinite(reward))
    assert float(info["num_groups"]) == 1.0


def test_env_params_are_vmappable_without_recompiling():
    env = default_env()
    base = env.default_params
    bandwidths = jnp.array([1e6, 5e6, 20e6])
    stacked = jax.tree.map(lambda leaf: leaf, base)
    stacked = dataclasses.replace(stacked, bandwidth_hz=bandwidths)
    action = jnp.zeros(4 * NUM_USERS)

    def transmit_latency(params):
        _, state = env.reset(jax.random.key(0), params)
        _, _, _, _, _, info = env.step(jax.random.key(1), state, action, params)
        return info["transmit_latency_s"]

    axes = jax.tree.map(lambda _: None, base)
    axes = dataclasses.replace(axes, bandwidth_hz=0)
    latencies = jax.jit(jax.vmap(transmit_latency, in_axes=(axes,)))(stacked)
    # More bandwidth, shorter transmit time.
    assert float(latencies[0]) > float(latencies[1]) > float(latencies[2])


def test_prompt_draws_follow_topic_popularity():
    env = default_env()
    params = env.make_params(topic_zipf_exponent=1.0)
    keys = jax.random.split(jax.random.key(0), 4000)
    prompt_ids = jax.jit(jax.vmap(lambda key: env._draw_prompts(key, params)))(keys)
    topics = np.asarray(params.prompt_topics)[np.asarray(prompt_ids).ravel()]
    frequency = np.bincount(topics, minlength=env.num_topics) / topics.size
    # Topic of rank r has probability (r + 1)^-1 / H, H = sum over the 13 topics = 3.1801.
    harmonic = sum(1.0 / (rank + 1) for rank in range(env.num_topics))
    expected = np.array([1.0 / (rank + 1) / harmonic for rank in range(env.num_topics)])
    np.testing.assert_allclose(frequency, expected, atol=0.01)
    assert int(np.asarray(prompt_ids).max()) < env.num_prompts

    # Within a topic of m prompts, rank 0 (the first in bank order) has probability 1 / H_m.
    ids = np.asarray(prompt_ids).ravel()
    first_topic = np.flatnonzero(np.asarray(params.prompt_topics) == 0)
    in_first_topic = ids[np.isin(ids, first_topic)]
    harmonic_topic = sum(1.0 / (rank + 1) for rank in range(first_topic.size))
    share_of_first = np.mean(in_first_topic == first_topic[0])
    np.testing.assert_allclose(share_of_first, 1.0 / harmonic_topic, atol=0.02)


def primitive_names(jaxpr) -> set[str]:
    """Collect the primitive names of `jaxpr` and of every jaxpr nested in its equations."""
    names = set()
    for equation in jaxpr.eqns:
        names.add(equation.primitive.name)
        for value in equation.params.values():
            nested = value if isinstance(value, list | tuple) else [value]
            for item in nested:
                inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr contains its Jaxpr
                if hasattr(inner, "eqns"):
                    names |= primitive_names(inner)
    return names


@pytest.mark.parametrize("method", ["reset", "step"])
def test_env_has_no_while_loop(method):
    # Fixed-length scans only: a while loop's trip count would depend on the data, and vmap
    # turns it into a loop that runs until the slowest environment is done.
    env = default_env()
    params = env.default_params
    key = jax.random.key(0)
    _, state = env.reset(key, params)
    if method == "reset":
        jaxpr = jax.make_jaxpr(env.reset)(key, params)
    else:
        action = jnp.zeros(env.num_actions)
        jaxpr = jax.make_jaxpr(env.step)(key, state, action, params)
    names = primitive_names(jaxpr.jaxpr)
    assert "while" not in names
    assert "scan" in names  # the walk reaches nested jaxprs, so it would see a while loop


def test_make_params_rejects_a_bank_of_another_size():
    env = default_env()
    size = env.num_prompts
    with pytest.raises(ValueError, match=rf"invalid prompt_similarity shape \(10, 10\).*{size}"):
        env.make_params(prompt_similarity=jnp.eye(10))
    with pytest.raises(ValueError, match=r"invalid prompt_topics shape \(10,\)"):
        env.make_params(prompt_topics=jnp.zeros(10, jnp.int32))
    bad_topics = np.full(size, env.num_topics, np.int32)
    with pytest.raises(ValueError, match=rf"values must lie in \[0, {env.num_topics - 1}\]"):
        env.make_params(prompt_topics=bad_topics)
    # A stack of two banks of the right size keeps working (vmapped params).
    stacked = jnp.stack([env.default_params.prompt_similarity] * 2)
    assert env.make_params(prompt_similarity=stacked).prompt_similarity.shape == (2, size, size)


def test_make_params_rejects_prompt_bank_dtypes():
    env = default_env()
    size = env.num_prompts
    float_topics = np.full(size, 1.5)
    with pytest.raises(ValueError, match=r"invalid prompt_topics dtype float64: expected an int"):
        env.make_params(prompt_topics=float_topics)
    with pytest.raises(ValueError, match=r"invalid prompt_topics dtype bool"):
        env.make_params(prompt_topics=np.zeros(size, bool))
    int_similarity = np.eye(size, dtype=np.int64)
    with pytest.raises(ValueError, match=r"invalid prompt_similarity dtype int64: expected a fl"):
        env.make_params(prompt_similarity=int_similarity)
    with pytest.raises(ValueError, match=r"invalid prompt_similarity dtype bool"):
        env.make_params(prompt_similarity=np.eye(size, dtype=bool))
    # The bank's own dtypes, and NumPy's default float64 and int64, stay accepted.
    params = env.make_params(
        prompt_similarity=np.asarray(env.default_params.prompt_similarity, np.float64),
        prompt_topics=np.asarray(env.default_params.prompt_topics, np.int64),
    )
    assert params.prompt_topics.shape == (size,)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tx_power_w": 1e-30},
        {"min_distance_m": 1e12, "max_distance_m": 1e12},
        {"min_distance_m": 1e-9, "max_distance_m": 1e-9},
    ],
)
def test_observed_gain_is_the_snr_in_db(overrides):
    # Extreme constants make the linear SNR underflow float32 to 0 or overflow to inf, but its
    # dB value, and so the observation, stays finite.
    env = default_env()
    params = env.make_params(**overrides)
    obs, state = env.reset(jax.random.key(5), params)
    distance_km = np.asarray(state.distance_m, np.float64) / 1000.0
    fading_power = np.sum(np.asarray(state.fading, np.float64) ** 2, axis=-1)
    noise_dbm = -174.0 + 10.0 * np.log10(5e6) + 9.0
    power_dbm = 10.0 * np.log10(float(params.tx_power_w)) + 30.0
    expected_snr_db = (
        power_dbm
        - (128.1 + 37.6 * np.log10(distance_km))
        + np.asarray(state.shadowing_db, np.float64)
        + 10.0 * np.log10(fading_power)
        - noise_dbm
    )
    features = env.layout.user_features(obs)
    assert np.all(np.isfinite(obs))
    np.testing.assert_allclose(features[:, 0], (expected_snr_db - 20.0) / 20.0, atol=1e-4)
