"""Multi-host: two local processes on 127.0.0.1, each with 2 forced CPU devices, run one sweep
together through `jax.distributed`. Their results equal those of one process with 4 devices."""

import csv
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


def start(args: list[str], workdir: Path, num_devices: int, log_name: str, extra_env=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    log = (workdir / log_name).open("w")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", "sweep.yaml", *args],
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
    processes.append(start(["--out", "single"], tmp_path, 4, "single.log"))
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
