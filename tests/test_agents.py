"""Tests of the DDPG / G-DDPG agent (targets, Polyak update, bounds, tracing) and the replay."""

import dataclasses
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.agents import (
    ACTOR_FACTORIES,
    Actor,
    AgentConfig,
    Transition,
    TwinCritic,
    available_device_bytes,
    check_replay_memory,
    critic_target,
    default_hyperparams,
    estimate_replay_bytes,
    make_agent,
    make_mlp_actor,
    make_replay,
    make_replay_buffer,
    polyak_update,
    replay_size,
)
from rlli_jax.agents import replay as replay_module

OBS_DIM = 6
ACTION_DIM = 3
BATCH_SIZE = 32
ALGOS = ("ddpg", "gddpg")


def small_config(algo: str, **overrides) -> AgentConfig:
    values = dict(
        algo=algo,
        actor_hidden_sizes=(32, 32),
        critic_hidden_sizes=(32, 32),
        encoder_hidden_sizes=(16,),
        time_embedding_dim=8,
        batch_size=BATCH_SIZE,
    )
    values.update(overrides)
    return AgentConfig(**values)


def trees_close(tree_a, tree_b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
    return all(np.allclose(a, b) for a, b in zip(leaves_a, leaves_b, strict=True))


def random_batch(key, terminated=None, batch_size=BATCH_SIZE) -> Transition:
    key_obs, key_action, key_reward, key_next_obs, key_done = jax.random.split(key, 5)
    if terminated is None:
        terminated = jax.random.bernoulli(key_done, 0.5, (batch_size,)).astype(jnp.float32)
    return Transition(
        obs=jax.random.normal(key_obs, (batch_size, OBS_DIM)),
        action=jax.random.uniform(key_action, (batch_size, ACTION_DIM), minval=-1.0, maxval=1.0),
        reward=jax.random.normal(key_reward, (batch_size,)),
        next_obs=jax.random.normal(key_next_obs, (batch_size, OBS_DIM)),
        terminated=terminated,
    )


@pytest.fixture(scope="module", params=ALGOS)
def compiled_agent(request):
    """One agent per algorithm with its jitted act and update, shared by the tests below."""
    agent = make_agent(small_config(request.param))
    hyper = default_hyperparams(request.param)
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    act = jax.jit(agent.act, static_argnames="explore")
    update = jax.jit(agent.update)
    return agent, hyper, agent_state, act, update


def test_critic_target_hand_worked():
    # gamma 0.9:
    #   r = 1.0, not terminated, min(2.0, 1.5) = 1.5  -> 1.0 + 0.9 * 1.5    = 2.35
    #   r = 0.5, terminated,     bootstrap zeroed     -> 0.5
    #   r = -1., not terminated, min(-4.0, -2.0) = -4 -> -1.0 + 0.9 * -4.0  = -4.6
    target = critic_target(
        reward=jnp.array([1.0, 0.5, -1.0]),
        terminated=jnp.array([0.0, 1.0, 0.0]),
        next_q1=jnp.array([2.0, 3.0, -4.0]),
        next_q2=jnp.array([1.5, 5.0, -2.0]),
        gamma=jnp.float32(0.9),
    )
    np.testing.assert_allclose(target, [2.35, 0.5, -4.6], rtol=1e-6)


@pytest.fixture(scope="module")
def compiled_ddpg():
    """The DDPG agent with its jitted update, for tests that need one algorithm only."""
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(1), OBS_DIM, ACTION_DIM, hyper)
    return agent, agent_state, jax.jit(agent.update)


def test_update_target_uses_target_networks(compiled_ddpg):
    # Rebuild the critic target of a DDPG update from the target networks by hand. The target
    # Q mean of the update must match, and terminated = 1 must leave the reward alone.
    agent, agent_state, update = compiled_ddpg
    hyper = default_hyperparams("ddpg", gamma=0.9)
    # Make the target networks differ from the online ones, so using the wrong ones fails.
    agent_state = agent_state.replace(
        target_actor_params=jax.tree.map(lambda p: 0.5 * p, agent_state.target_actor_params),
        target_critic_params=jax.tree.map(lambda p: 1.5 * p, agent_state.target_critic_params),
    )
    terminated = jnp.array([1.0, 0.0] * (BATCH_SIZE // 2))
    batch = random_batch(jax.random.key(2), terminated=terminated)

    actor = make_mlp_actor(ACTION_DIM, agent.config.actor_hidden_sizes)
    critic = TwinCritic(agent.config.critic_hidden_sizes)
    next_action = actor.apply(agent_state.target_actor_params, batch.next_obs, None)
    next_q1, next_q2 = critic.apply(agent_state.target_critic_params, batch.next_obs, next_action)
    expected = batch.reward + 0.9 * (1.0 - terminated) * np.minimum(next_q1, next_q2)

    _, metrics = update(agent_state, batch, jax.random.key(3), hyper)
    np.testing.assert_allclose(metrics["target_q_mean"], np.mean(expected), rtol=1e-5)


def test_update_terminated_zeroes_bootstrap(compiled_ddpg):
    # With every transition terminated, the target is the reward alone for any gamma.
    _, agent_state, update = compiled_ddpg
    hyper = default_hyperparams("ddpg", gamma=0.99)
    batch = random_batch(jax.random.key(2), terminated=jnp.ones((BATCH_SIZE,)))
    _, metrics = update(agent_state, batch, jax.random.key(3), hyper)
    np.testing.assert_allclose(metrics["target_q_mean"], np.mean(batch.reward), rtol=1e-5)


def test_polyak_update_hand_worked():
    # tau 0.1: 0.1 * [1, 2] + 0.9 * [0, 4] = [0.1, 3.8]; 0.1 * -3 + 0.9 * 7 = 6.0
    online = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(-3.0)}
    target = {"w": jnp.array([0.0, 4.0]), "b": jnp.array(7.0)}
    updated = polyak_update(online, target, jnp.float32(0.1))
    np.testing.assert_allclose(updated["w"], [0.1, 3.8], rtol=1e-6)
    np.testing.assert_allclose(updated["b"], 6.0, rtol=1e-6)


def test_update_moves_targets_by_tau(compiled_agent):
    agent, _, agent_state, _, update = compiled_agent
    algo = agent.config.algo
    batch = random_batch(jax.random.key(2))

    hyper = default_hyperparams(algo, tau=1.0)
    new_state, _ = update(agent_state, batch, jax.random.key(3), hyper)
    chex.assert_trees_all_close(new_state.target_actor_params, new_state.actor_params)
    chex.assert_trees_all_close(new_state.target_critic_params, new_state.critic_params)

    # tau = 0 (frozen targets) breaks the config rule; set it directly to test the update.
    hyper = default_hyperparams(algo).replace(tau=jnp.float32(0.0))
    new_state, _ = update(agent_state, batch, jax.random.key(3), hyper)
    chex.assert_trees_all_equal(new_state.target_actor_params, agent_state.target_actor_params)
    chex.assert_trees_all_equal(new_state.target_critic_params, agent_state.target_critic_params)
    assert int(new_state.step) == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tau": 0.0}, r"invalid tau = 0\.0: must lie in \(0, 1\]"),
        ({"gamma": 1.0}, r"invalid gamma = 1\.0: must lie in \[0, 1\)"),
        ({"actor_lr": float("nan")}, r"invalid actor_lr = nan: must be > 0"),
        (
            {"exploration_std": "0.1"},
            r"invalid exploration_std = '0\.1': expected a real number, got str",
        ),
        ({"critic_lr": True}, r"invalid critic_lr = True: expected a real number, got bool"),
        ({"actor_lr": 10**400}, r"invalid actor_lr = 1000.*: must be > 0 \(a finite number\)"),
        ({"actor_lr": jnp.array(-1e-3)}, r"invalid actor_lr = Array\(-0\.001.*: must be > 0"),
        (
            {"actor_lr": jnp.array([1e-3, 1e-3])},
            r"expected a real number, got an array of shape \(2,\) and dtype float32",
        ),
        (
            {"gamma": np.array(True)},
            r"invalid gamma = array\(True\): expected a real number, got an array of shape \(\)",
        ),
    ],
)
def test_default_hyperparams_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        default_hyperparams("gddpg", **overrides)


def test_default_hyperparams_accepts_0d_arrays():
    hyper = default_hyperparams(
        "gddpg", actor_lr=jnp.array(1e-3), critic_lr=np.array(2e-3), tau=np.float32(0.25)
    )
    np.testing.assert_allclose(hyper.actor_lr, 1e-3)
    np.testing.assert_allclose(hyper.critic_lr, 2e-3)
    np.testing.assert_allclose(hyper.tau, 0.25)


def test_default_hyperparams_rejects_traced_value():
    with pytest.raises(ValueError, match=r"invalid actor_lr = .*: expected a concrete real number"):
        jax.jit(lambda lr: default_hyperparams("gddpg", actor_lr=lr).actor_lr)(1e-3)


@pytest.mark.parametrize("algo", ["ddpg", "gddpg"])
def test_act_rejects_an_unbatched_observation(algo):
    agent = make_agent(small_config(algo))
    hyper = default_hyperparams(algo)
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    with pytest.raises(ValueError, match=rf"invalid obs shape \({OBS_DIM},\).*obs\[None\]"):
        agent.act(agent_state, jnp.zeros((OBS_DIM,)), jax.random.key(1), hyper)


def test_actions_in_bounds(compiled_agent):
    _, _, agent_state, act, _ = compiled_agent
    obs = 50.0 * jax.random.normal(jax.random.key(1), (128, OBS_DIM))
    for explore in (False, True):
        for std in (0.1, 5.0):
            hyper = default_hyperparams("ddpg", exploration_std=std)
            action = act(agent_state, obs, jax.random.key(2), hyper, explore=explore)
            assert action.shape == (128, ACTION_DIM)
            assert np.all(np.abs(np.asarray(action)) <= 1.0), (explore, std)


def test_exploration_noise_has_configured_std(compiled_ddpg):
    # The DDPG policy is deterministic, so explore=True adds only the clipped noise. Actions at
    # init are near 0, so with std 0.05 clipping is rare and the sample std is about 0.05.
    agent, agent_state, _ = compiled_ddpg
    act = jax.jit(agent.act, static_argnames="explore")
    hyper = default_hyperparams("ddpg", exploration_std=0.05)
    obs = jax.random.normal(jax.random.key(1), (4096, OBS_DIM))
    greedy = act(agent_state, obs, jax.random.key(2), hyper, explore=False)
    noisy = act(agent_state, obs, jax.random.key(2), hyper, explore=True)
    np.testing.assert_allclose(np.std(np.asarray(noisy - greedy)), 0.05, rtol=0.05)


def test_update_changes_params_and_reports_metrics(compiled_agent):
    _, hyper, agent_state, _, update = compiled_agent
    new_state, metrics = update(
        agent_state, random_batch(jax.random.key(4)), jax.random.key(5), hyper
    )
    expected_metrics = {
        "critic_loss",
        "actor_loss",
        "q_mean",
        "target_q_mean",
        "critic_grad_norm",
        "actor_grad_norm",
    }
    assert set(metrics) == expected_metrics
    for name, value in metrics.items():
        assert value.shape == (), name
        assert np.isfinite(value), name
    assert not trees_close(new_state.actor_params, agent_state.actor_params)
    assert not trees_close(new_state.critic_params, agent_state.critic_params)


def test_bound_loss_adds_weighted_penalty():
    hyper = default_hyperparams("gddpg")
    batch = random_batch(jax.random.key(4))
    losses, penalties = [], []
    for coef in (0.0, 2.0):
        agent = make_agent(small_config("gddpg", bound_loss_coef=coef))
        agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
        _, metrics = jax.jit(agent.update)(agent_state, batch, jax.random.key(5), hyper)
        losses.append(float(metrics["actor_loss"]))
        penalties.append(float(metrics.get("actor_penalty", np.nan)))
    # Without the bound loss the penalty is not computed, so it is not reported as 0.
    assert np.isnan(penalties[0])
    assert penalties[1] > 0.0
    np.testing.assert_allclose(losses[1] - losses[0], 2.0 * penalties[1], rtol=1e-4)


def test_same_seed_reproduces(compiled_agent):
    agent, hyper, _, act, update = compiled_agent
    batch = random_batch(jax.random.key(4))
    results = []
    for _ in range(2):
        agent_state = agent.init(jax.random.key(11), OBS_DIM, ACTION_DIM, hyper)
        agent_state, metrics = update(agent_state, batch, jax.random.key(12), hyper)
        action = act(agent_state, batch.obs, jax.random.key(13), hyper, explore=True)
        results.append((agent_state, metrics, action))
    chex.assert_trees_all_equal(results[0], results[1])


def test_different_seeds_differ(compiled_agent):
    agent, hyper, _, act, _ = compiled_agent
    obs = jax.random.normal(jax.random.key(4), (8, OBS_DIM))
    state_a = agent.init(jax.random.key(1), OBS_DIM, ACTION_DIM, hyper)
    state_b = agent.init(jax.random.key(2), OBS_DIM, ACTION_DIM, hyper)
    assert not trees_close(state_a.actor_params, state_b.actor_params)
    assert not trees_close(state_a.critic_params, state_b.critic_params)
    action_a = act(state_a, obs, jax.random.key(3), hyper, explore=True)
    action_b = act(state_a, obs, jax.random.key(4), hyper, explore=True)
    assert not np.allclose(action_a, action_b)


@pytest.mark.parametrize("algo", ALGOS)
def test_jit_traces_once_across_hyperparams(algo):
    # chex counts traces per function code object, which both algorithms' closures share.
    chex.clear_trace_counter()
    agent = make_agent(small_config(algo))
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, default_hyperparams(algo))
    batch = random_batch(jax.random.key(1))
    update = jax.jit(chex.assert_max_traces(agent.update, n=1))
    act = jax.jit(chex.assert_max_traces(agent.act, n=1), static_argnames="explore")

    for step, scale in enumerate((1.0, 0.5, 2.0)):
        hyper = default_hyperparams(
            algo,
            actor_lr=1e-4 * scale,
            critic_lr=1e-3 * scale,
            tau=0.01 * scale,
            gamma=0.9 + 0.01 * scale,
            exploration_std=0.1 * scale,
        )
        agent_state, _ = update(agent_state, batch, jax.random.key(step), hyper)
        act(agent_state, batch.obs, jax.random.key(step), hyper, explore=True)


def test_hyperparams_vmap_over_population():
    # A population of 3 learning rates in one program: each member's update differs.
    algo = "ddpg"
    agent = make_agent(small_config(algo))
    hyper = jax.tree.map(lambda value: jnp.stack([value] * 3), default_hyperparams(algo)).replace(
        actor_lr=jnp.array([0.0, 1e-3, 1e-2], jnp.float32)
    )
    single_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, default_hyperparams(algo))
    agent_states = jax.tree.map(lambda leaf: jnp.stack([leaf] * 3), single_state)
    batch = random_batch(jax.random.key(1))
    new_states, metrics = jax.jit(jax.vmap(agent.update, in_axes=(0, None, None, 0)))(
        agent_states, batch, jax.random.key(2), hyper
    )
    assert metrics["actor_loss"].shape == (3,)
    first_layer = jax.tree.leaves(new_states.actor_params)[0]
    initial_layer = jax.tree.leaves(agent_states.actor_params)[0]
    np.testing.assert_array_equal(first_layer[0], initial_layer[0])  # lr 0 leaves it unchanged
    step_small = np.abs(first_layer[1] - initial_layer[1]).max()
    step_large = np.abs(first_layer[2] - initial_layer[2]).max()
    np.testing.assert_allclose(step_large, 10.0 * step_small, rtol=1e-3)


def test_new_actor_needs_no_update_change(monkeypatch):
    # A linear tanh actor registered under a new name trains through the unchanged update.
    def make_linear_actor(config, action_dim):
        def init(key, obs_dim):
            return {"w": 0.1 * jax.random.normal(key, (obs_dim, action_dim))}

        def apply(params, obs, key):
            del key
            return jnp.tanh(obs @ params["w"])

        return Actor(init=init, apply=apply)

    monkeypatch.setitem(ACTOR_FACTORIES, "linear", make_linear_actor)
    agent = make_agent(small_config("linear"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    new_state, metrics = agent.update(
        agent_state, random_batch(jax.random.key(1)), jax.random.key(2), hyper
    )
    assert np.isfinite(metrics["actor_loss"])
    assert not np.allclose(new_state.actor_params["w"], agent_state.actor_params["w"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(algo="sac"), "AgentConfig.algo"),
        (dict(actor_hidden_sizes=()), "AgentConfig.actor_hidden_sizes"),
        (dict(critic_hidden_sizes=(32, 0)), "AgentConfig.critic_hidden_sizes"),
        (dict(time_embedding_dim=7), "AgentConfig.time_embedding_dim"),
        (dict(diffusion_steps=0), "AgentConfig.diffusion_steps"),
        (dict(beta_min=0.0), "AgentConfig.beta_min"),
        (dict(beta_min=5.0, beta_max=1.0), "AgentConfig.beta_min"),
        (dict(batch_size=0), "AgentConfig.batch_size"),
        (dict(max_grad_norm=-1.0), "AgentConfig.max_grad_norm"),
        (dict(bound_loss_coef=-1.0), "AgentConfig.bound_loss_coef"),
        (dict(bound_loss_coef=float("inf")), "AgentConfig.bound_loss_coef"),
        (dict(algo=["ddpg"]), r"AgentConfig\.algo = \['ddpg'\]"),
        (dict(time_embedding_dim=16.0), r"time_embedding_dim = 16\.0: expected an integer"),
        (dict(diffusion_steps=None), r"diffusion_steps = None: expected an integer"),
        (dict(diffusion_steps=True), r"diffusion_steps = True: expected an integer"),
        (dict(batch_size="8"), r"batch_size = '8': expected an integer"),
        (dict(actor_hidden_sizes=(True,)), r"actor_hidden_sizes\[0\] = True: expected a positive"),
        (dict(actor_hidden_sizes=(8, 8.0)), r"actor_hidden_sizes\[1\] = 8\.0: expected a"),
        (dict(actor_hidden_sizes=8), r"actor_hidden_sizes = 8: expected a sequence"),
        (dict(critic_hidden_sizes="64"), r"critic_hidden_sizes = '64': expected a sequence"),
        (dict(beta_min="0.1"), r"beta_min = '0\.1': expected a real number"),
        (dict(beta_max=None), r"beta_max = None: expected a real number"),
        (dict(bound_loss_coef=False), r"bound_loss_coef = False: expected a real number"),
        (dict(max_grad_norm="1"), r"max_grad_norm = '1': expected a real number"),
    ],
)
def test_config_rejects_invalid(overrides, match):
    values = dataclasses.asdict(small_config("gddpg"))
    values.update(overrides)
    with pytest.raises(ValueError, match=match):
        AgentConfig(**values)


def test_empty_encoder_is_linear_state_map():
    # No encoder layers: the state enters the noise network's first layer linearly.
    agent = make_agent(
        AgentConfig(algo="gddpg", actor_hidden_sizes=(16, 16), encoder_hidden_sizes=())
    )
    hyper = default_hyperparams("gddpg")
    agent_state = agent.init(jax.random.key(0), 6, 3, hyper)
    encoder_params = agent_state.actor_params["params"]["state_encoder"]
    assert list(jax.tree.leaves(jax.tree.map(jnp.shape, encoder_params))) == [16, 6, 16]
    action = agent.act(agent_state, jnp.ones((4, 6)), jax.random.key(1), hyper)
    assert action.shape == (4, 3)
    assert bool(jnp.all(jnp.abs(action) <= 1.0))


def test_config_lists_become_tuples():
    config = AgentConfig(algo="ddpg", actor_hidden_sizes=[64, 64])
    assert config.actor_hidden_sizes == (64, 64)
    hash(config)  # usable as a static jit argument


def test_config_normalises_numpy_numbers():
    config = AgentConfig(
        algo="gddpg",
        actor_hidden_sizes=[np.int64(8)],
        encoder_hidden_sizes=np.array([8]),
        diffusion_steps=np.int32(3),
        beta_min=1,
        beta_max=np.float32(5.0),
        max_grad_norm=np.float64(1.0),
    )
    assert config.actor_hidden_sizes == (8,)
    assert config.encoder_hidden_sizes == (8,)
    assert all(type(size) is int for size in config.actor_hidden_sizes)
    assert type(config.diffusion_steps) is int
    assert type(config.beta_min) is float
    assert type(config.beta_max) is float
    assert type(config.max_grad_norm) is float
    assert config == dataclasses.replace(config, actor_hidden_sizes=(8,))


def test_init_accepts_numpy_integer_sizes():
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(0), np.int64(OBS_DIM), np.int32(ACTION_DIM), hyper)
    assert type(agent_state.obs_dim) is int
    assert type(agent_state.action_dim) is int
    action = agent.act(agent_state, jnp.zeros((2, OBS_DIM)), jax.random.key(1), hyper)
    assert action.shape == (2, ACTION_DIM)


@pytest.mark.parametrize("obs_dim", [True, 6.0, "6", 0])
def test_init_rejects_invalid_obs_dim(obs_dim):
    agent = make_agent(small_config("ddpg"))
    with pytest.raises(ValueError, match=rf"invalid obs_dim = {obs_dim!r}: must be a positive"):
        agent.init(jax.random.key(0), obs_dim, ACTION_DIM, default_hyperparams("ddpg"))


def test_default_hyperparams_per_algo():
    ddpg = default_hyperparams("ddpg")
    gddpg = default_hyperparams("gddpg")
    assert float(gddpg.actor_lr) < float(ddpg.actor_lr)
    assert ddpg.actor_lr.dtype == jnp.float32
    with pytest.raises(ValueError, match="invalid algo"):
        default_hyperparams("sac")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        default_hyperparams("ddpg", learning_rate=1e-3)


def test_grad_clipping_bounds_update(compiled_ddpg):
    # Adam's first second-moment estimate is (1 - b2) g^2 of the gradient after clipping, so a
    # tiny max_grad_norm leaves it near 0 while the unclipped critic's is far from it.
    _, agent_state, update = compiled_ddpg
    batch = random_batch(jax.random.key(1))
    hyper = default_hyperparams("ddpg")
    clipped_agent = make_agent(small_config("ddpg", max_grad_norm=1e-6))
    clipped_state = clipped_agent.init(jax.random.key(1), OBS_DIM, ACTION_DIM, hyper)

    unclipped_state, _ = update(agent_state, batch, jax.random.key(2), hyper)
    clipped_state, _ = jax.jit(clipped_agent.update)(clipped_state, batch, jax.random.key(2), hyper)

    def second_moment_sum(state):
        adam_state = state.critic_opt_state[-1]
        return sum(float(jnp.sum(leaf)) for leaf in jax.tree.leaves(adam_state.nu))

    assert second_moment_sum(clipped_state) < 1e-12
    assert second_moment_sum(unclipped_state) > 1e-6


# Replay buffer


def test_replay_add_sample_and_wraparound():
    replay, state = make_replay(capacity=10, batch_size=8, obs_dim=2, action_dim=1, min_size=1)
    sample_many = jax.jit(jax.vmap(replay.sample, in_axes=(None, 0)))  # 16 draws of 8
    add = jax.jit(replay.add)

    def batch_of(values):
        values = jnp.asarray(values, jnp.float32)
        return Transition(
            obs=jnp.stack([values, values], axis=-1),
            action=values[:, None],
            reward=values,
            next_obs=jnp.stack([values, values], axis=-1),
            terminated=jnp.zeros_like(values),
        )

    assert not replay.can_sample(state)
    state = add(state, batch_of(np.arange(6)))
    assert int(replay_size(state)) == 6
    assert replay.can_sample(state)
    sample = replay.sample(state, jax.random.key(0))
    assert sample.obs.shape == (8, 2)
    assert sample.action.shape == (8, 1)
    assert sample.reward.shape == (8,)
    np.testing.assert_array_equal(sample.obs[:, 0], sample.reward)  # fields stay aligned
    np.testing.assert_array_equal(sample.action[:, 0], sample.reward)
    samples = sample_many(state, jax.random.split(jax.random.key(0), 16))
    assert set(np.asarray(samples.reward).ravel().tolist()) == set(range(6))

    # 6 + 8 = 14 > capacity 10: entries 0..3 are overwritten, 4..13 remain.
    state = add(state, batch_of(np.arange(6, 14)))
    assert int(replay_size(state)) == 10
    samples = sample_many(state, jax.random.split(jax.random.key(1), 16))
    assert set(np.asarray(samples.reward).ravel().tolist()) == set(range(4, 14))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(capacity=0, batch_size=1), "capacity"),
        (dict(capacity=10, batch_size=11), "batch_size"),
        (dict(capacity=10, batch_size=4, min_size=11), "min_size"),
    ],
)
def test_replay_rejects_invalid_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_replay_buffer(**kwargs)


def test_estimate_replay_bytes_hand_worked():
    # (2 * 10 obs floats + 4 action floats + reward + terminated) * 4 bytes = 104 bytes each.
    assert estimate_replay_bytes(1000, obs_dim=10, action_dim=4) == 104_000


def test_replay_estimate_matches_allocation():
    _, state = make_replay(capacity=100, batch_size=8, obs_dim=5, action_dim=2)
    experience_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.experience))
    assert experience_bytes == estimate_replay_bytes(100, obs_dim=5, action_dim=2)


class FakeDevice:
    """A device whose memory_stats() reports a fixed limit and usage."""

    platform = "gpu"
    id = 0

    def __init__(self, bytes_limit, bytes_in_use):
        self._stats = {"bytes_limit": bytes_limit, "bytes_in_use": bytes_in_use}

    def memory_stats(self):
        return self._stats


def test_check_replay_memory_reports_both_numbers():
    device = FakeDevice(bytes_limit=1000, bytes_in_use=400)
    check_replay_memory(600, device)  # exactly fits
    with pytest.raises(ValueError, match=r"needs .*\(601 bytes\).*\(600 bytes\).*buffer_size"):
        check_replay_memory(601, device)


def test_check_replay_memory_uses_meminfo_on_cpu(monkeypatch):
    monkeypatch.setattr(replay_module, "_meminfo_available_bytes", lambda: 2048)
    cpu = jax.devices("cpu")[0]
    check_replay_memory(2048, cpu)
    with pytest.raises(ValueError, match="MemAvailable"):
        check_replay_memory(2049, cpu)


def test_free_memory_without_meminfo_uses_psutil(monkeypatch, tmp_path):
    # macOS and Windows have no /proc/meminfo, and their CPU devices report no memory_stats().
    import types

    import psutil

    monkeypatch.setattr(replay_module, "MEMINFO_PATH", str(tmp_path / "no-meminfo"))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4096))
    cpu = jax.devices("cpu")[0]
    assert available_device_bytes(cpu) == (4096, "psutil.virtual_memory().available")
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    with pytest.raises(ValueError, match="psutil is not installed; install it with pip"):
        available_device_bytes(cpu)


@pytest.mark.parametrize("text", ["MemTotal: 1000 kB\n", "MemAvailable: none kB\n", None])
def test_free_memory_unreadable_meminfo_uses_psutil(monkeypatch, tmp_path, text):
    # Linux before 3.14 has no MemAvailable line, and a sandbox may deny reading the file.
    import types

    import psutil

    meminfo = tmp_path / "meminfo"
    if text is None:
        meminfo.mkdir()  # exists, but open() fails
    else:
        meminfo.write_text(text)
    monkeypatch.setattr(replay_module, "MEMINFO_PATH", str(meminfo))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4096))
    cpu = jax.devices("cpu")[0]
    assert available_device_bytes(cpu) == (4096, "psutil.virtual_memory().available")


def test_make_replay_checks_before_allocating(monkeypatch):
    def fail_init(*args, **kwargs):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr(replay_module, "available_device_bytes", lambda device=None: (10, "test"))
    monkeypatch.setattr(replay_module, "example_transition", fail_init)
    with pytest.raises(ValueError, match="reduce buffer_size or num_envs"):
        make_replay(capacity=1000, batch_size=8, obs_dim=4, action_dim=2)


def test_registered_actor_without_defaults_needs_every_hyperparameter(monkeypatch):
    from rlli_jax.config import load_config

    monkeypatch.setitem(
        ACTOR_FACTORIES, "linear", lambda config, action_dim: make_mlp_actor(action_dim, (8,))
    )
    with pytest.raises(ValueError, match=r"algo = 'linear' has no default hyperparameters"):
        default_hyperparams("linear")
    with pytest.raises(ValueError, match=r"set \['hyper\.tau', 'hyper\.gamma'"):
        load_config(None, ["agent.algo=linear", "hyper.actor_lr=1e-3", "hyper.critic_lr=1e-3",
                           "hyper.exploration_std=0.1"])  # fmt: skip
    values = dict(actor_lr=1e-3, critic_lr=1e-3, tau=0.01, gamma=0.5, exploration_std=0.1)
    config = load_config(
        None, ["agent.algo=linear"] + [f"hyper.{k}={v}" for k, v in values.items()]
    )
    np.testing.assert_allclose(config.hyperparams.gamma, 0.5)
    hyper = default_hyperparams("linear", **values)
    agent = make_agent(small_config("linear"))
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    new_state, metrics = agent.update(
        agent_state, random_batch(jax.random.key(1)), jax.random.key(2), hyper
    )
    assert int(new_state.step) == 1
    assert np.isfinite(float(metrics["critic_loss"]))


@pytest.mark.parametrize("algo", ALGOS)
def test_act_accepts_a_traced_explore_flag(algo):
    agent = make_agent(small_config(algo))
    hyper = default_hyperparams(algo, exploration_std=0.5)
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    obs = jax.random.normal(jax.random.key(1), (16, OBS_DIM))
    traced = jax.jit(agent.act)
    for explore in (False, True):
        expected = agent.act(agent_state, obs, jax.random.key(2), hyper, explore=explore)
        got = traced(agent_state, obs, jax.random.key(2), hyper, jnp.asarray(explore))
        np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    "explore, match",
    [
        ("no", r"invalid explore of type str: expected a bool, or a 0-d bool or integer"),
        ("", r"invalid explore of type str"),
        (None, r"invalid explore of type NoneType"),
        (1, r"invalid explore of type int"),
        (np.int64(1), r"invalid explore of type int64"),
        (jnp.array([True, False]), r"invalid explore, an array of shape \(2,\) and dtype bool"),
        (np.array(1.0), r"invalid explore, an array of shape \(\) and dtype float64"),
    ],
)
def test_act_rejects_bad_explore(explore, match):
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    obs = jnp.zeros((2, OBS_DIM))
    with pytest.raises(TypeError, match=match):
        agent.act(agent_state, obs, jax.random.key(1), hyper, explore)


def test_act_takes_integer_explore_flag():
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg", exploration_std=0.5)
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    obs = jax.random.normal(jax.random.key(1), (4, OBS_DIM))
    traced = jax.jit(agent.act)
    for flag in (0, 1):
        expected = agent.act(agent_state, obs, jax.random.key(2), hyper, bool(flag))
        concrete = agent.act(agent_state, obs, jax.random.key(2), hyper, np.array(flag))
        got = traced(agent_state, obs, jax.random.key(2), hyper, jnp.asarray(flag, jnp.int32))
        np.testing.assert_allclose(concrete, expected, atol=1e-6)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"invalid explore = 2: expected a bool"):
        agent.act(agent_state, obs, jax.random.key(2), hyper, jnp.array(2))


def test_update_rejects_mismatched_batch_fields():
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    batch = random_batch(jax.random.key(1))
    for name, shape in (("reward", (1,)), ("terminated", (1,)), ("action", (4, ACTION_DIM))):
        bad = batch.replace(**{name: jnp.zeros(shape)})
        with pytest.raises(ValueError, match=rf"invalid batch\.{name} shape \({shape[0]},"):
            agent.update(agent_state, bad, jax.random.key(2), hyper)


def test_act_and_update_reject_a_dict_as_hyper():
    agent = make_agent(small_config("ddpg"))
    hyper = default_hyperparams("ddpg")
    agent_state = agent.init(jax.random.key(0), OBS_DIM, ACTION_DIM, hyper)
    as_dict = {"actor_lr": 1e-3}
    with pytest.raises(TypeError, match=r"invalid hyper of type dict: expected AgentHyperparams"):
        agent.act(agent_state, jnp.zeros((2, OBS_DIM)), jax.random.key(1), as_dict)
    with pytest.raises(TypeError, match=r"invalid hyper of type dict"):
        agent.update(agent_state, random_batch(jax.random.key(1)), jax.random.key(2), as_dict)
