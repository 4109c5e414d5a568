"""Multi-host: two local processes on 127.0.0.1, each with 2 forced CPU devices, run one sweep,
and then one training run, together through `jax.distributed`. Their results equal those of one
process with 4 devices."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "sweep.py"

TINY_BASE = """
env: {num_users: 3, horizon: 4}
agent: {algo: ddpg, actor_hidden_sizes: [16], critic_hidden_sizes: [16], batch_size: 8}
hyper: {actor_lr: 1.0e-3, critic_lr: 1.0e-3, tau: 0.01, gamma: 0.0}
train: {num_envs: 4, steps_per_chunk: 4, total_env_steps: 48, warmup_env_steps: 8,
        buffer_size: 64, updates_per_step: 1, eval_episodes: 4, checkpoint_every_chunks: 2}
logging: {progress_bar: false}
"""

# 3 learning rates x 2 seeds = 6 members, padded to 8 over the 4 devices.
TINY_SWEEP = """
base: base.yaml
num_seeds: 2
grid:
  hyper.actor_lr: [1.0e-4, 1.0e-3, 1.0e-2]
baselines: false
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(
    args: list[str],
    workdir: Path,
    num_devices: int,
    log_name: str,
    extra_env=None,
    script: Path = SCRIPT,
):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    log = (workdir / log_name).open("w")
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    (tmp_path / "sweep.yaml").write_text(TINY_SWEEP)
    port = free_port()
    coordinator = f"127.0.0.1:{port}"
    # Bind the coordination service to loopback only (the default binds every interface).
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = [
        start(
            [
                "--config",
                "sweep.yaml",
                "--out",
                "multi",
                "--coordinator",
                coordinator,
                "--num-processes",
                "2",
                "--process-id",
                str(index),
            ],
            tmp_path,
            2,
            f"process{index}.log",
            loopback,
        )  # fmt: skip
        for index in range(2)
    ]
    single_args = ["--config", "sweep.yaml", "--out", "single"]
    processes.append(start(single_args, tmp_path, 4, "single.log"))
    try:
        for process in processes:
            process.wait(timeout=900)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    logs = {name: (tmp_path / name).read_text()[-3000:]
            for name in ("process0.log", "process1.log", "single.log")}  # fmt: skip
    assert [process.returncode for process in processes] == [0, 0, 0], logs

    assert "4 devices (2 processes)" in logs["process0.log"]
    assert "qoe mean" in logs["process0.log"]  # process 0 prints the ranked table
    assert "qoe mean" not in logs["process1.log"]  # process 1 writes and prints no results

    multi = read_results(tmp_path / "multi" / "results.csv")
    single = read_results(tmp_path / "single" / "results.csv")
    assert [row["member"] for row in multi] == [str(i) for i in range(6)]
    assert len(multi) == len(single)
    eval_columns = [name for name in single[0] if name.startswith("eval_")]
    assert "eval_qoe" in eval_columns
    for got, expected in zip(multi, single, strict=True):
        assert got["status"] == expected["status"] == "ok"
        assert (got["seed"], got["hyper.actor_lr"]) == (
            expected["seed"],
            expected["hyper.actor_lr"],
        )
        for name in eval_columns:
            np.testing.assert_allclose(
                float(got[name]), float(expected[name]), rtol=1e-5, atol=1e-6, err_msg=name
            )


TRAIN_SCRIPT = REPO / "scripts" / "train.py"


def start_train(args: list[str], workdir: Path, num_devices: int, log_name: str, extra_env=None):
    return start(args, workdir, num_devices, log_name, extra_env, script=TRAIN_SCRIPT)


def run_two_processes(tmp_path: Path, args: list[str], tag: str):
    """Run train.py as process 0 and 1 of one run (2 devices each); return their logs."""
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = [
        start_train(
            [
                *args,
                "--coordinator",
                coordinator,
                "--num-processes",
                "2",
                "--process-id",
                str(index),
            ],
            tmp_path,
            2,
            f"{tag}{index}.log",
            loopback,
        )  # fmt: skip
        for index in range(2)
    ]
    wait_all(processes)
    logs = [(tmp_path / f"{tag}{index}.log").read_text() for index in range(2)]
    assert [process.returncode for process in processes] == [0, 0], [log[-3000:] for log in logs]
    return logs


def wait_all(processes) -> None:
    try:
        for process in processes:
            process.wait(timeout=900)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def policy_evaluation(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())["evaluation"]["policy"]


@pytest.mark.slow
def test_one_run_over_two_processes(tmp_path):
    """One training run whose 4 environments are split over 2 processes x 2 devices matches the
    same run on one process with 4 devices and on one device, and it resumes across processes."""
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    multi_args = ["--config", "base.yaml", "--out", "multi"]
    single = start_train(["--config", "base.yaml", "--out", "single"], tmp_path, 4, "single.log")
    one_device = start_train(["--config", "base.yaml", "--out", "one"], tmp_path, 1, "one.log")
    logs = run_two_processes(tmp_path, multi_args, "process")
    wait_all([single, one_device])
    assert single.returncode == 0, (tmp_path / "single.log").read_text()[-3000:]
    assert one_device.returncode == 0, (tmp_path / "one.log").read_text()[-3000:]

    assert "4 visible devices in 2 process(es)" in logs[0]
    assert '"qoe"' in logs[0]  # process 0 prints the summary
    assert '"qoe"' not in logs[1]  # process 1 reports nothing
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert multi["num_devices"] == 4
    assert multi["num_processes"] == 2
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["num_devices"] == 4
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["num_devices"] == 1

    # Every training row is written once, by process 0 only.
    rows = [json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").open()]
    train_steps = [row["env_step"] for row in rows if row["kind"] == "train"]
    assert train_steps == sorted(set(train_steps))
    assert len(train_steps) == 3

    expected = policy_evaluation(tmp_path / "single")
    for reference in (expected, policy_evaluation(tmp_path / "one")):
        for name, value in policy_evaluation(tmp_path / "multi").items():
            np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-5, err_msg=name)

    # Corrupt the final checkpoint's array data: both processes must skip it together and
    # resume from the one before it, and process 0 alone moves it aside.
    checkpoints = tmp_path / "multi" / "checkpoints"
    final_step = max(int(path.name) for path in checkpoints.iterdir() if path.name.isdigit())
    for path in (checkpoints / str(final_step) / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])
    first = policy_evaluation(tmp_path / "multi")
    (tmp_path / "multi" / "summary.json").unlink()
    run_two_processes(tmp_path, ["--resume", "multi"], "resume")
    resumed = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert resumed["resumed_from"]["chunk"] == final_step - 1
    assert resumed["evaluation"]["policy"] == first
    assert (checkpoints / f"corrupt-{final_step}").is_dir()


@pytest.mark.slow
def test_processes_with_different_configs_fail(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = []
    for index, extra in enumerate([[], ["--set", "hyper.actor_lr=0.1"]]):
        args = ["--config", "base.yaml", "--out", "run", *extra, "--coordinator", coordinator]
        args += ["--num-processes", "2", "--process-id", str(index)]
        processes.append(start_train(args, tmp_path, 2, f"mismatch{index}.log", loopback))
    wait_all(processes)
    logs = [(tmp_path / f"mismatch{index}.log").read_text() for index in range(2)]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 1, log[-3000:]
        assert "started with a different config" in log
    assert not (tmp_path / "run").exists()


def test_processes_with_different_counts_fail(tmp_path):
    # The coordinator forms the group with process 0's count, so process 1's 3 would go unseen.
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = []
    for index, count in enumerate(["2", "3"]):
        args = ["--config", "base.yaml", "--out", "run", "--coordinator", coordinator]
        args += ["--num-processes", count, "--process-id", str(index)]
        processes.append(start_train(args, tmp_path, 1, f"count{index}.log", loopback))
    wait_all(processes)
    logs = [(tmp_path / f"count{index}.log").read_text() for index in range(2)]
    for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 2, log[-3000:]
        assert f"joining process group at {coordinator} as process {index} of" in log
        assert "started with different --num-processes: [2, 3]" in log
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_processes_with_different_sweeps_fail(tmp_path):
    # Same shapes, other learning rates: without the check process 1 would train its members
    # with its own values while process 0 reports its values for them.
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    (tmp_path / "sweep.yaml").write_text(TINY_SWEEP)
    (tmp_path / "other.yaml").write_text(TINY_SWEEP.replace("1.0e-2", "5.0e-1"))
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = []
    for index, config in enumerate(["sweep.yaml", "other.yaml"]):
        args = ["--config", config, "--out", "multi", "--coordinator", coordinator]
        args += ["--num-processes", "2", "--process-id", str(index)]
        processes.append(start(args, tmp_path, 2, f"sweep_mismatch{index}.log", loopback))
    wait_all(processes)
    logs = [(tmp_path / f"sweep_mismatch{index}.log").read_text() for index in range(2)]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 1, log[-3000:]
        assert "processes [1] were started with a different sweep config" in log
    assert not (tmp_path / "multi").exists()


@pytest.mark.parametrize(
    ("local_fails", "flags"), [(False, [0, 0]), (False, [0, 1]), (True, [1, 0])]
)
def test_check_on_every_process_agrees(monkeypatch, local_fails, flags):
    import jax
    from jax.experimental import multihost_utils

    import rlli_jax.distributed as distributed

    def check():
        if local_fails:
            raise ValueError("the local check failed")

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: np.asarray(flags))
    if local_fails:
        with pytest.raises(ValueError, match="the local check failed"):
            distributed.check_on_every_process(check)
    elif any(flags):
        with pytest.raises(ValueError, match=r"failed on process\(es\) \[1\], so every"):
            distributed.check_on_every_process(check)
    else:
        distributed.check_on_every_process(check)


# Wrapper that runs train.py with the chunk memory check failing on process 1 only, as when
# that host has less free memory.
SHORT_MEMORY_WRAPPER = """
import runpy
import sys

import rlli_jax.runner as runner
from rlli_jax.agents.replay import DeviceMemoryError

if sys.argv[sys.argv.index("--process-id") + 1] == "1":

    def short_of_memory(*args, **kwargs):
        raise DeviceMemoryError("the compiled training needs more memory (a test)")

    runner.check_chunk_memory = short_of_memory
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_memory_check_failing_on_one_process_stops_all(tmp_path):
    # Without agreement, process 0 would wait in the first chunk for process 1, which stopped.
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    wrapper = tmp_path / "short_memory.py"
    wrapper.write_text(SHORT_MEMORY_WRAPPER)
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = []
    for index in range(2):
        args = [str(TRAIN_SCRIPT), "--config", "base.yaml", "--out", "run"]
        args += ["--coordinator", coordinator, "--num-processes", "2", "--process-id", str(index)]
        processes.append(start(args, tmp_path, 2, f"memory{index}.log", loopback, script=wrapper))
    wait_all(processes)

    logs = [(tmp_path / f"memory{index}.log").read_text() for index in range(2)]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 1, log[-3000:]
    assert "needs more memory (a test)" in logs[1]
    assert "failed on process(es) [1], so every process stops" in logs[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# Wrapper that runs a script with process 1 unable to read what process 0 writes in the output
# directory, as on a host whose --out path is a local directory instead of a shared one.
BLIND_PROCESS_WRAPPER = """
import runpy
import sys

import rlli_jax.distributed as distributed

if sys.argv[sys.argv.index("--process-id") + 1] == "1":
    distributed._reads_marker = lambda marker, token, wait_s: False
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", [TRAIN_SCRIPT, SCRIPT], ids=["train", "sweep"])
def test_unshared_output_directory_fails(tmp_path, script):
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    (tmp_path / "sweep.yaml").write_text(TINY_SWEEP)
    wrapper = tmp_path / "blind_process.py"
    wrapper.write_text(BLIND_PROCESS_WRAPPER)
    config = "base.yaml" if script == TRAIN_SCRIPT else "sweep.yaml"
    coordinator = f"127.0.0.1:{free_port()}"
    loopback = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}
    processes = []
    for index in range(2):
        args = [str(script), "--config", config, "--out", "run", "--coordinator", coordinator]
        args += ["--num-processes", "2", "--process-id", str(index)]
        processes.append(start(args, tmp_path, 2, f"blind{index}.log", loopback, script=wrapper))
    wait_all(processes)

    logs = [(tmp_path / f"blind{index}.log").read_text() for index in range(2)]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 1, log[-3000:]
        assert "is not shared: processes [1] cannot see" in log
    assert list((tmp_path / "run").glob(".rlli-shared-check-*")) == []
    if script == TRAIN_SCRIPT:
        assert not (tmp_path / "run").exists()
