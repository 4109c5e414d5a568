"""Training program: one trace per static config, determinism, resume, non-finite detection."""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.checkpoint import Checkpointer
from rlli_jax.config import load_config
from rlli_jax.runner import restore_train_state, train_key
from rlli_jax.train import (
    TrainHyperparams,
    check_chunk_memory,
    find_nonfinite,
    make_train,
    state_to_checkpoint,
    summarize_chunk,
)

TINY_OVERRIDES = [
    "env.num_users=3",
    "env.horizon=4",
    "agent.algo=ddpg",
    "agent.actor_hidden_sizes=[16]",
    "agent.critic_hidden_sizes=[16]",
    "agent.batch_size=8",
    "train.num_envs=4",
    "train.steps_per_chunk=4",
    "train.total_env_steps=64",
    "train.warmup_env_steps=8",
    "train.buffer_size=64",
    "train.updates_per_step=2",
    "train.eval_episodes=4",
]


@pytest.fixture(scope="module")
def program():
    return make_train(load_config(overrides=TINY_OVERRIDES))


def run_chunks(program, key, num_chunks, hyper=None):
    hyper = program.default_hyperparams if hyper is None else hyper
    state = program.init(key, hyper)
    metrics = []
    for _ in range(num_chunks):
        state, chunk_metrics = program.run_chunk(state, hyper)
        metrics.append(jax.device_get(chunk_metrics))
    return state, metrics


def leaves_equal(tree_a, tree_b) -> bool:
    return all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    )


def scaled_hyper(hyper: TrainHyperparams, **agent_values) -> TrainHyperparams:
    values = {name: jnp.asarray(value, jnp.float32) for name, value in agent_values.items()}
    return hyper.replace(agent=hyper.agent.replace(**values))


def test_run_chunk_traces_once(program):
    before = program.trace_counts["run_chunk"]
    state, _ = run_chunks(program, train_key(0), 3)
    # A new traced value (learning rate, lambda_E) reuses the compiled chunk.
    hyper = scaled_hyper(program.default_hyperparams, actor_lr=3e-3, gamma=0.5)
    hyper = hyper.replace(env=hyper.env.replace(energy_weight=jnp.asarray(0.7, jnp.float32)))
    program.run_chunk(state, hyper)
    assert program.trace_counts["run_chunk"] - before <= 1
    assert program.trace_counts["run_chunk"] == 1


def test_chunk_metrics_shapes_and_updates(program):
    _, metrics = run_chunks(program, train_key(0), 4)
    steps_per_chunk = program.config.train.steps_per_chunk
    for name, values in metrics[0].items():
        assert np.shape(values) == (steps_per_chunk,), name
    # Warmup is 8 env steps = 2 iterations of 4 envs; updates start at iteration 2.
    updated = np.concatenate([m["updated"] for m in metrics])
    assert updated[:2].sum() == 0
    assert updated[2:].all()
    iterations = np.concatenate([m["iteration"] for m in metrics])
    np.testing.assert_array_equal(iterations, np.arange(16))


def test_same_seed_reproduces(program):
    state_a, _ = run_chunks(program, train_key(0), 2)
    state_b, _ = run_chunks(program, train_key(0), 2)
    assert leaves_equal(state_a.agent.actor_params, state_b.agent.actor_params)
    assert leaves_equal(state_a.agent.critic_params, state_b.agent.critic_params)


def test_different_seeds_differ(program):
    state_a, _ = run_chunks(program, train_key(0), 2)
    state_b, _ = run_chunks(program, train_key(1), 2)
    assert not leaves_equal(state_a.agent.actor_params, state_b.agent.actor_params)


def test_resume_from_checkpoint_is_bit_identical(program, tmp_path):
    straight, _ = run_chunks(program, train_key(0), 4)

    hyper = program.default_hyperparams
    first_half, _ = run_chunks(program, train_key(0), 2)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(2, state_to_checkpoint(first_half), {"chunk": 2, "env_steps": 32})
    restored, metadata = restore_train_state(program, checkpointer)
    assert metadata["chunk"] == 2
    state = restored
    for _ in range(2):
        state, _ = program.run_chunk(state, hyper)
    assert leaves_equal(state.agent, straight.agent)
    assert leaves_equal(state.replay, straight.replay)
    assert leaves_equal(jax.random.key_data(state.key), jax.random.key_data(straight.key))


def test_diverging_critic_is_reported(program):
    # A huge critic step size drives the critic to infinity within a few updates.
    hyper = scaled_hyper(program.default_hyperparams, critic_lr=1e30, actor_lr=1e30)
    _, metrics = run_chunks(program, train_key(0), 4, hyper)
    found = [find_nonfinite(chunk) for chunk in metrics]
    first = next(item for item in found if item is not None)
    iteration, name, _ = first
    assert iteration >= 2  # no update runs during warmup
    assert name


@pytest.mark.slow
def test_train_matches_chunked_run(program):
    final_state, metrics = jax.jit(program.train)(train_key(0))
    chunked, _ = run_chunks(program, train_key(0), program.num_chunks)
    assert metrics["reward"].shape == (program.num_chunks, program.config.train.steps_per_chunk)
    assert int(final_state.iteration) == program.config.train.num_iterations
    # Same computation; XLA may fuse the single program differently, so allow rounding.
    for a, b in zip(
        jax.tree.leaves(final_state.agent.actor_params),
        jax.tree.leaves(chunked.agent.actor_params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_evaluate_reports_episode_metrics(program):
    state, _ = run_chunks(program, train_key(0), 1)
    per_episode = program.evaluate(state.agent, program.default_hyperparams, jax.random.key(3))
    for name in ("qoe", "reward", "energy_j", "latency_s", "quality", "shared_steps"):
        values = np.asarray(per_episode[name])
        assert values.shape == (program.config.train.eval_episodes,), name
        assert np.all(np.isfinite(values)), name
    assert np.all((np.asarray(per_episode["qoe"]) >= 1) & (np.asarray(per_episode["qoe"]) <= 5))


def test_find_nonfinite_names_first_step_and_metric():
    metrics = {
        "iteration": np.array([10, 11, 12]),
        "params_finite": np.array([1.0, 1.0, 1.0]),
        "critic_loss": np.array([1.0, np.inf, np.nan]),
        "reward": np.array([0.0, 0.0, np.nan]),
    }
    assert find_nonfinite(metrics) == (11, "critic_loss", math.inf)
    metrics["critic_loss"] = np.ones(3)
    metrics["reward"] = np.ones(3)
    assert find_nonfinite(metrics) is None
    metrics["params_finite"] = np.array([1.0, 0.0, 1.0])
    assert find_nonfinite(metrics)[:2] == (11, "actor or critic parameter")


def test_summarize_chunk_averages_by_kind():
    metrics = {
        "iteration": np.arange(4),
        "params_finite": np.ones(4),
        "updated": np.array([0.0, 0.0, 1.0, 1.0]),
        "critic_loss": np.array([0.0, 0.0, 2.0, 4.0]),
        "episodes_done": np.array([0.0, 2.0, 0.0, 1.0]),
        "episode_return": np.array([0.0, 3.0, 0.0, 6.0]),
        "reward": np.array([1.0, 2.0, 3.0, 4.0]),
    }
    summary = summarize_chunk(metrics, ("critic_loss",))
    assert summary["critic_loss"] == pytest.approx(3.0)  # mean over the 2 updating steps
    assert summary["episode_return"] == pytest.approx(4.0)  # (2 * 3 + 1 * 6) / 3 episodes
    assert summary["reward"] == pytest.approx(2.5)
    assert summary["updates"] == 2.0
    assert summary["episodes"] == 3.0


def test_make_train_rejects_env_of_other_shape():
    from rlli_jax.env.service import DiffusionServiceEnv

    config = load_config(overrides=TINY_OVERRIDES)
    with pytest.raises(ValueError, match=r"invalid env: its num_users = 4 differs .* = 3"):
        make_train(config, env=DiffusionServiceEnv(num_users=4, horizon=4))
    with pytest.raises(ValueError, match=r"invalid env: its horizon = 5 differs .* = 4"):
        make_train(config, env=DiffusionServiceEnv(num_users=3, horizon=5))


def test_make_train_rejects_oversized_networks(monkeypatch):
    # 2**30 free bytes hold the tiny replay buffer but not a critic layer of 10**8 units, which
    # XLA would fail to allocate only when `init` runs.
    monkeypatch.setattr(
        "rlli_jax.train.available_device_bytes", lambda device=None: (2**30, "a test limit")
    )
    config = load_config(overrides=[*TINY_OVERRIDES[:4], "agent.critic_hidden_sizes=[100000000]"])
    with pytest.raises(
        ValueError,
        match=r"invalid network sizes \(.*agent\.critic_hidden_sizes = \[100000000\].*\): "
        r"the networks .* need .* MiB free according to a test limit",
    ):
        make_train(config)


def test_make_train_rejects_too_many_users(monkeypatch):
    # 20000 users give about 2e8 observation entries, so 64 replay transitions need ~95 GiB.
    monkeypatch.setattr(
        "rlli_jax.train.available_device_bytes", lambda device=None: (2**30, "a test limit")
    )
    config = load_config(overrides=[*TINY_OVERRIDES[1:], "env.num_users=20000"])
    with pytest.raises(
        ValueError,
        match=r"invalid env\.num_users = 20000: observations have \d+ entries, so a replay "
        r"buffer of train\.buffer_size = 64 transitions needs .* according to a test limit",
    ):
        make_train(config)


def test_make_train_rejects_env_with_wrong_outputs():
    from rlli_jax.env.service import DiffusionServiceEnv

    class ExtraObsEnv(DiffusionServiceEnv):
        """Appends a feature to the observation but keeps the base obs_dim."""

        def get_obs(self, state, params, key=None):
            obs = super().get_obs(state, params)
            return jnp.concatenate([obs, state.energy_used_j[None]])

    class VectorRewardEnv(DiffusionServiceEnv):
        """Returns the per-user reward vector instead of a scalar."""

        def step_env(self, key, state, action, params):
            obs, state, reward, terminated, info = super().step_env(key, state, action, params)
            return obs, state, jnp.full((self.num_users,), reward), terminated, info

    class NoInfoEnv(DiffusionServiceEnv):
        """Drops the info entries that training logs."""

        def step_env(self, key, state, action, params):
            obs, state, reward, terminated, _ = super().step_env(key, state, action, params)
            return obs, state, reward, terminated, {}

    config = load_config(overrides=TINY_OVERRIDES)
    obs_dim = DiffusionServiceEnv(num_users=3, horizon=4).obs_dim
    with pytest.raises(
        ValueError,
        match=rf"ExtraObsEnv: reset_env returned an observation of shape \({obs_dim + 1},\).*"
        rf"obs_dim is {obs_dim}.*override obs_dim",
    ):
        make_train(config, env=ExtraObsEnv(num_users=3, horizon=4))
    with pytest.raises(ValueError, match=r"VectorRewardEnv: .* reward of shape \(3,\)"):
        make_train(config, env=VectorRewardEnv(num_users=3, horizon=4))
    with pytest.raises(ValueError, match=r"NoInfoEnv: the info of step_env lacks \['energy_j'"):
        make_train(config, env=NoInfoEnv(num_users=3, horizon=4))


def test_run_training_takes_a_custom_env(tmp_path):
    from rlli_jax.env.service import DiffusionServiceEnv
    from rlli_jax.qoe.model import SimulatorQoE
    from rlli_jax.runner import ENV_DATA_DIGEST_NAME, run_training

    config = load_config(overrides=TINY_OVERRIDES + ["logging.progress_bar=false"])
    env = DiffusionServiceEnv(num_users=3, horizon=4, qoe_model=SimulatorQoE())
    summary = run_training(config, tmp_path / "run", env=env, final_evaluation=False)
    assert summary["env_steps"] == 64
    assert (tmp_path / "run" / ENV_DATA_DIGEST_NAME).is_file()
    # Resuming with the configured environment (the reward network) changes the QoE model.
    with pytest.raises(ValueError, match="environment data differ"):
        run_training(config, tmp_path / "run", resume=True, final_evaluation=False)


def test_summary_times_every_segment(tmp_path):
    from rlli_jax.runner import SUMMARY_NAME, run_training

    overrides = ["logging.progress_bar=false", "train.checkpoint_every_chunks=1"]
    config = load_config(overrides=TINY_OVERRIDES + overrides)
    run_dir = tmp_path / "run"

    def stop_after_chunk_2(progress):
        if progress.chunk == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(config, run_dir, on_chunk=stop_after_chunk_2, final_evaluation=False)
    summary = run_training(config, run_dir, resume=True, final_evaluation=False)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if row["kind"] == "train"]
    steps_per_chunk = config.train.env_steps_per_chunk
    # Each metrics row times one chunk, and the summary adds the chunks of both segments.
    chunk_seconds = [steps_per_chunk / row["env_steps_per_s"] for row in rows]
    assert len(chunk_seconds) == config.train.num_chunks
    assert summary["train_s"] == pytest.approx(sum(chunk_seconds), rel=1e-6)
    assert summary["env_steps_per_s"] == pytest.approx(
        summary["env_steps"] / summary["train_s"], rel=1e-6
    )

    # Resuming the finished run keeps its timings.
    again = run_training(config, run_dir, resume=True, final_evaluation=False)
    assert again["train_s"] == summary["train_s"]
    assert again["env_steps_per_s"] == summary["env_steps_per_s"]
    assert json.loads((run_dir / SUMMARY_NAME).read_text())["train_s"] == summary["train_s"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, 2.0), (0.5, 0.5), (0, 0.0), (-1.0, None), (math.nan, None), (math.inf, None),
     (True, None), ("3", None), (None, None)],
)  # fmt: skip
def test_seconds_or_none_rejects_non_times(value, expected):
    from rlli_jax.runner import seconds_or_none

    assert seconds_or_none(value) == expected


def test_env_data_mismatch_names_custom_env(tmp_path):
    from rlli_jax.env.service import DiffusionServiceEnv
    from rlli_jax.qoe.model import SimulatorQoE
    from rlli_jax.runner import check_env_data, save_env_data_digest

    # A run started from Python with its own QoE model, then loaded with the configured one:
    # the message must point to passing that environment again, not only to changed files.
    save_env_data_digest(tmp_path, DiffusionServiceEnv(num_users=3, qoe_model=SimulatorQoE()))
    with pytest.raises(ValueError, match="environment data differ") as raised:
        check_env_data(tmp_path, DiffusionServiceEnv(num_users=3), write_missing=False)
    assert "load_trained_run(run_dir, env=env)" in str(raised.value)


def test_env_data_digest_names_custom_classes():
    import hashlib

    from rlli_jax.env.service import DiffusionServiceEnv
    from rlli_jax.runner import env_data_digest

    class BonusEnv(DiffusionServiceEnv):
        """Same data as the base environment, another reward."""

    class OtherQoE(type(DiffusionServiceEnv(num_users=3).qoe_model)):
        """Same parameters as the packaged reward network, another function."""

    base = DiffusionServiceEnv(num_users=3)
    assert env_data_digest(BonusEnv(num_users=3)) != env_data_digest(base)
    assert env_data_digest(DiffusionServiceEnv(num_users=3, qoe_model=OtherQoE())) != (
        env_data_digest(base)
    )

    # A config-built environment hashes its data only, as runs started before class names
    # were hashed did, so their digests still match.
    params = base.default_params
    data = {
        "qoe_params": params.qoe_params,
        "prompt_similarity": params.prompt_similarity,
        "prompt_topics": params.prompt_topics,
    }
    expected = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(data):
        array = np.asarray(leaf)
        expected.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}\n".encode())
        expected.update(np.ascontiguousarray(array).tobytes())
    assert env_data_digest(base) == expected.hexdigest()


def test_legacy_custom_env_digest_is_upgraded(tmp_path):
    from rlli_jax.env.service import DiffusionServiceEnv
    from rlli_jax.runner import ENV_DATA_DIGEST_NAME, check_env_data, env_data_digest

    class BonusEnv(DiffusionServiceEnv):
        """Same data as the base environment, another reward."""

    custom = BonusEnv(num_users=3)
    # The digest a run started with BonusEnv wrote before class names were hashed.
    legacy = env_data_digest(custom, include_classes=False)
    path = tmp_path / ENV_DATA_DIGEST_NAME
    path.write_text(legacy + "\n")

    check_env_data(tmp_path, custom, write_missing=False)  # loading: accepted, nothing written
    assert path.read_text().strip() == legacy
    check_env_data(tmp_path, custom, write_missing=True)  # resuming: accepted and upgraded
    assert path.read_text().strip() == env_data_digest(custom)
    with pytest.raises(ValueError, match="environment data differ"):
        check_env_data(tmp_path, DiffusionServiceEnv(num_users=3), write_missing=False)

    # The class name, not its module, enters the digest: a class defined in the script that
    # runs (module __main__) hashes as the same class imported by name.
    attributes = {"__module__": "__main__", "__qualname__": BonusEnv.__qualname__}
    renamed = type("BonusEnv", (DiffusionServiceEnv,), attributes)
    assert env_data_digest(renamed(num_users=3)) == env_data_digest(custom)


def test_actor_of_wrong_action_shape_is_named(monkeypatch):
    from rlli_jax.agents import ACTOR_FACTORIES, make_mlp_actor

    def short_actor(config, action_dim):
        return make_mlp_actor(action_dim - 1, (8,))

    monkeypatch.setitem(ACTOR_FACTORIES, "short", short_actor)
    hyper = [f"hyper.{name}=0.1" for name in ("actor_lr", "critic_lr", "tau", "gamma")]
    tiny = [text for text in TINY_OVERRIDES if not text.startswith("agent.algo=")]
    config = load_config(overrides=tiny + ["agent.algo=short", "hyper.exploration_std=0.1", *hyper])
    with pytest.raises(
        ValueError, match=r"invalid actor of agent.algo = 'short': .*\(8, 11\).*\(8, 12\); check"
    ):
        make_train(config)


def test_num_updates_matches_updates_run():
    # Warmup ends before the buffer contains a batch: 4 envs fill a batch of 16 at iteration 3.
    replaced = {"train.warmup_env_steps": "0", "agent.batch_size": "16"}
    overrides = [
        f"{key}={replaced[key]}" if key in replaced else f"{key}={value}"
        for key, value in (override.split("=", 1) for override in TINY_OVERRIDES)
    ]
    config = load_config(overrides=overrides)
    program = make_train(config)
    state, _ = run_chunks(program, jax.random.key(0), config.train.num_chunks)
    assert int(state.agent.step) == config.num_updates


def test_truncated_transitions_bootstrap_from_final_obs(program):
    # TINY_OVERRIDES: 4 envs, horizon 4 and 4 steps per chunk, so the chunk's last step
    # truncates every episode.
    hyper = program.default_hyperparams
    state, _ = program.run_chunk(program.init(jax.random.key(0), hyper), hyper)
    slot = program.env.layout.slot_fraction
    experience = jax.tree.map(lambda leaf: np.asarray(leaf[0]), state.replay.experience)
    obs = experience.obs[:16].reshape(4, 4, -1)  # [step, env, obs_dim]
    next_obs = experience.next_obs[:16].reshape(4, 4, -1)
    terminated = experience.terminated[:16].reshape(4, 4)

    # A time limit is not a terminal state, so the critic target keeps its bootstrap.
    assert np.all(terminated == 0.0)
    # next_obs is the observation that followed the action in the same environment.
    np.testing.assert_array_equal(next_obs[:-1], obs[1:])
    # At truncation it is the final observation (slot 4 of 4), not the reset one.
    np.testing.assert_allclose(next_obs[-1, :, slot], 1.0)
    np.testing.assert_allclose(np.asarray(state.obs)[:, slot], 0.0)


def test_horizon_ends_the_task_without_bootstrap():
    config = load_config(overrides=[*TINY_OVERRIDES, "train.bootstrap_at_horizon=false"])
    program = make_train(config)
    hyper = program.default_hyperparams
    state, _ = program.run_chunk(program.init(jax.random.key(0), hyper), hyper)
    terminated = np.asarray(state.replay.experience.terminated[0, :16]).reshape(4, 4)
    # Only the last slot of each episode is stored as terminal.
    np.testing.assert_array_equal(terminated[:-1], 0.0)
    np.testing.assert_array_equal(terminated[-1], 1.0)


def test_bootstrap_at_horizon_must_be_a_bool():
    with pytest.raises(ValueError, match=r"train\.bootstrap_at_horizon"):
        load_config(overrides=["train.bootstrap_at_horizon=2"])


def test_summary_times_segments_after_upgrade(tmp_path, monkeypatch):
    from rlli_jax.checkpoint import Checkpointer
    from rlli_jax.runner import TRAINING_SETTINGS_KEY, run_training

    overrides = ["logging.progress_bar=false", "train.checkpoint_every_chunks=1"]
    config = load_config(overrides=TINY_OVERRIDES + overrides)
    assert config.train.num_chunks >= 3
    run_dir = tmp_path / "run"

    def stop_after(chunk):
        def stop(progress):
            if progress.chunk == chunk:
                raise KeyboardInterrupt

        return stop

    # The first segment writes checkpoints as a version before train_s existed did.
    original_save = Checkpointer.save

    def save_without_timing(self, step, state, metadata):
        metadata = {key: value for key, value in metadata.items()
                    if key not in ("train_s", TRAINING_SETTINGS_KEY)}  # fmt: skip
        original_save(self, step, state, metadata)

    monkeypatch.setattr(Checkpointer, "save", save_without_timing)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, run_dir, on_chunk=stop_after(1), final_evaluation=False)
    monkeypatch.undo()

    # The second segment times chunk 2 only, and the third segment the rest.
    with pytest.raises(KeyboardInterrupt):
        run_training(config, run_dir, resume=True, on_chunk=stop_after(2), final_evaluation=False)
    summary = run_training(config, run_dir, resume=True, final_evaluation=False)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if row["kind"] == "train"]
    steps_per_chunk = config.train.env_steps_per_chunk
    timed_rows = [row for row in rows if row["chunk"] >= 2]
    chunk_seconds = [steps_per_chunk / row["env_steps_per_s"] for row in timed_rows]
    assert summary["train_s"] == pytest.approx(sum(chunk_seconds), rel=1e-6)
    assert summary["env_steps_per_s"] == pytest.approx(
        len(timed_rows) * steps_per_chunk / summary["train_s"], rel=1e-6
    )


class _FakeCompiled:
    """A compiled program whose memory analysis reports 3 MiB of temporaries."""

    def memory_analysis(self):
        return types.SimpleNamespace(
            temp_size_in_bytes=3 << 20, output_size_in_bytes=1 << 20, alias_size_in_bytes=1 << 20
        )


@pytest.mark.parametrize(
    ("overrides", "whole_run", "expected", "absent"),
    [
        (
            ["agent.algo=ddpg"],
            False,
            "agent.batch_size (now 8), agent.actor_hidden_sizes (now [16]), "
            "agent.critic_hidden_sizes (now [16]) or train.num_envs (now 4)",
            "encoder_hidden_sizes",
        ),
        (
            ["agent.algo=gddpg", "agent.encoder_hidden_sizes=[16]"],
            True,
            "agent.encoder_hidden_sizes (now [16]), train.buffer_size (now 64) or "
            "train.num_envs (now 4)",
            None,
        ),
    ],
)
def test_chunk_memory_error_names_values(monkeypatch, overrides, whole_run, expected, absent):
    import rlli_jax.train as train_module

    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1 << 20, "a test"))
    config = load_config(
        None, [*TINY_OVERRIDES, "train.buffer_size=64", *overrides], last_wins=True
    )
    with pytest.raises(ValueError, match="needs 3.0 MiB") as error:
        check_chunk_memory(_FakeCompiled(), config=config, whole_run=whole_run)
    assert expected in str(error.value)
    if absent is not None:
        assert absent not in str(error.value)
