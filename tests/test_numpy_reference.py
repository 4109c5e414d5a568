"""The NumPy reference environment computes the same rewards as the JAX environment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.env.numpy_reference import NumpyDiffusionServiceEnv, NumpyEnvState
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.qoe.model import SimulatorQoE

NUM_USERS = 8


def copy_state(state) -> NumpyEnvState:
    return NumpyEnvState(
        time=int(state.time),
        distance_m=np.asarray(state.distance_m, np.float64),
        shadowing_db=np.asarray(state.shadowing_db, np.float64),
        fading=np.asarray(state.fading, np.float64),
        traits=np.asarray(state.traits, np.float64),
        prompt_ids=np.asarray(state.prompt_ids),
        energy_used_j=float(state.energy_used_j),
    )


# A slot of random actions charges roughly 2,000 to 6,000 J, so a 3,000 J budget is spent after
# the first slot in some episodes and not in others, and both branches are compared.
BUDGET_OVERRIDES = {"group_threshold": 0.3, "energy_budget_j": 3000.0}


@pytest.mark.parametrize("qoe", ["simulator", "reward_net"])
@pytest.mark.parametrize("overrides", [{}, BUDGET_OVERRIDES])
def test_numpy_reference_matches_jax_rewards(qoe, overrides):
    qoe_model = SimulatorQoE() if qoe == "simulator" else None
    env = DiffusionServiceEnv(num_users=NUM_USERS, horizon=16, qoe_model=qoe_model)
    params = env.make_params(**overrides)
    reference = NumpyDiffusionServiceEnv(NUM_USERS, 16, params, qoe_name=env.qoe_model.name)
    keys = jax.random.split(jax.random.key(0), 24)
    actions = jax.random.uniform(jax.random.key(1), (24, 4 * NUM_USERS), minval=-1, maxval=1)
    step = jax.jit(env.step)
    num_grouped = 0
    num_over_budget = 0
    for i in range(24):
        _, state = env.reset(keys[i], params)
        # Two slots so the energy budget can be spent before the second.
        for slot in range(2):
            reference.state = copy_state(state)
            action = actions[(i + slot) % 24]
            _, state, reward, _, _, info = step(jax.random.key(100 + i), state, action, params)
            reference_reward, reference_info, _, _ = reference.step(np.asarray(action))
            np.testing.assert_allclose(reward, reference_reward, rtol=2e-4, atol=2e-4)
            np.testing.assert_allclose(info["qoe"], reference_info["qoe"], rtol=2e-4, atol=2e-4)
            np.testing.assert_allclose(info["quality"], reference_info["quality"], rtol=2e-4)
            np.testing.assert_allclose(info["latency_s"], reference_info["latency_s"], rtol=2e-4)
            np.testing.assert_allclose(info["energy_j"], reference_info["energy_j"], rtol=1e-4)
            num_grouped += int(float(info["num_groups"]) < NUM_USERS)
            num_over_budget += int(float(info["over_budget"]))
    # The comparison exercises sharing, not only singleton groups.
    assert num_grouped > 0
    if "energy_budget_j" in overrides:
        # Both sides of the budget are compared: some second slots over it, some not.
        assert 0 < num_over_budget < 24


def test_numpy_reference_draws_prompts_like_jax():
    env = DiffusionServiceEnv(num_users=NUM_USERS, horizon=16, qoe_model=SimulatorQoE())
    params = env.make_params(topic_zipf_exponent=0.7, prompt_zipf_exponent=1.5)
    reference = NumpyDiffusionServiceEnv(NUM_USERS, 16, params, qoe_name="simulator")
    keys = jax.random.split(jax.random.key(0), 4000)
    prompt_ids = jax.jit(jax.vmap(lambda key: env._draw_prompts(key, params)))(keys)
    ids = np.asarray(prompt_ids).ravel()
    frequency = np.bincount(ids, minlength=env.num_prompts) / ids.size
    probabilities = reference.prompt_probabilities()
    assert probabilities.shape == (env.num_prompts,)
    # 32,000 draws: the largest probability (about 0.10) has a standard error of about 0.002.
    np.testing.assert_allclose(frequency, probabilities, atol=0.01)


def test_numpy_reference_runs_episodes():
    env = DiffusionServiceEnv(num_users=NUM_USERS, horizon=3)
    reference = NumpyDiffusionServiceEnv(
        NUM_USERS, 3, env.default_params, qoe_name=env.qoe_model.name, seed=1
    )
    reference.reset()
    truncations = []
    for _ in range(6):
        reward, _, terminated, truncated = reference.step(np.zeros(4 * NUM_USERS))
        assert np.isfinite(reward)
        assert terminated is False
        truncations.append(truncated)
    assert truncations == [False, False, True] * 2
    assert jnp.isfinite(reward)
