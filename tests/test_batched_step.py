"""`step_batch` returns what `jax.vmap(env.step)` returns, to float32 rounding."""

import jax
import numpy as np
import pytest

from rlli_jax.env.batched import step_batch
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.env.water_filling import WaterFillingEnv
from rlli_jax.qoe.model import SimulatorQoE

NUM_ENVS = 6


def run_both(env, params, state, num_steps, key):
    vmapped = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    batched = jax.jit(lambda k, s, a: step_batch(env, k, s, a, params))
    state_a = state_b = state
    num_resets = 0
    for i in range(num_steps):
        key_action, key_step = jax.random.split(jax.random.fold_in(key, i))
        action = jax.random.uniform(
            key_action, (NUM_ENVS, env.num_actions), minval=-1.0, maxval=1.0
        )
        keys = jax.random.split(key_step, NUM_ENVS)
        out_a = vmapped(keys, state_a, action, params)
        out_b = batched(keys, state_b, action)
        for leaf_a, leaf_b in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b), strict=True):
            # XLA fuses the two programs differently: floats agree to rounding.
            np.testing.assert_allclose(np.asarray(leaf_a), np.asarray(leaf_b), rtol=1e-5, atol=1e-6)
        state_a, state_b = out_a[1], out_b[1]
        num_resets += int(np.sum(out_a[3] | out_a[4]))
    return num_resets


@pytest.mark.parametrize("synchronised", [True, False])
def test_step_batch_matches_vmap_service(synchronised):
    env = DiffusionServiceEnv(num_users=4, horizon=3, qoe_model=SimulatorQoE())
    params = env.default_params
    _, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(0), NUM_ENVS), params
    )
    if not synchronised:
        state = state.replace(time=state.time + np.arange(NUM_ENVS) % 3)
    num_resets = run_both(env, params, state, 7, jax.random.key(1))
    # Horizon 3 over 7 slots: every environment resets at least twice.
    assert num_resets >= 2 * NUM_ENVS


def test_step_batch_matches_vmap_probe():
    env = WaterFillingEnv()
    params = env.default_params
    _, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(0), NUM_ENVS), params
    )
    assert run_both(env, params, state, 3, jax.random.key(2)) == 3 * NUM_ENVS
