"""Benchmark suites: they run end to end at tiny sizes and write their records.

Speed itself is never asserted; `scripts/benchmark.py` measures it and `docs/benchmarks.md`
records it.
"""

import json
import sys
from pathlib import Path

import pytest

from rlli_jax import benchmarking

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import benchmark as benchmark_script  # noqa: E402  (scripts/benchmark.py)


def check_measurement(measurement, suite: str, num_envs: int, work_per_call: int) -> None:
    assert measurement.suite == suite
    assert measurement.num_envs == num_envs
    assert measurement.work_per_call == work_per_call
    assert len(measurement.times_s) == 2
    assert all(seconds > 0 for seconds in measurement.times_s)
    assert measurement.throughput_min <= measurement.throughput_median
    assert measurement.throughput_median <= measurement.throughput_max


def test_env_suite_tiny():
    (measurement,) = benchmarking.benchmark_env([3], num_steps=2, repeats=2, num_users=3)
    check_measurement(measurement, "env", num_envs=3, work_per_call=6)


def test_act_suite_covers_mlp_and_each_diffusion_length():
    measurements = benchmarking.benchmark_act(
        [2], num_calls=2, repeats=2, diffusion_steps=(1, 3), num_users=3
    )
    assert [m.case for m in measurements] == [
        "MLP actor",
        "diffusion actor T=1",
        "diffusion actor T=3",
    ]
    for measurement in measurements:
        check_measurement(measurement, "act", num_envs=2, work_per_call=4)


def test_act_cost_analysis_counts_each_denoising_step():
    costs = benchmarking.act_cost_analysis(diffusion_steps=(1, 3), batch=4)
    assert [cost["case"] for cost in costs] == [
        "MLP actor",
        "diffusion actor T=1",
        "diffusion actor T=3",
    ]
    mlp, one_step, three_steps = (cost["flops"] for cost in costs)
    # Each extra denoising step runs the 256-256 noise network once more: at least its
    # multiply-adds (2 flops each) for an action of 32 entries (8 users).
    noise_network_flops = 2 * (32 * 256 + 256 * 256 + 256 * 32)
    assert (three_steps - one_step) / 2 >= noise_network_flops
    assert one_step > mlp > 0
    assert costs[0]["flops_over_mlp"] == 1.0
    assert costs[2]["flops_over_mlp"] == pytest.approx(three_steps / mlp)
    assert costs[2]["transcendentals"] > costs[1]["transcendentals"] > 0


def test_update_suite_records_batch_size():
    measurements = benchmarking.benchmark_update(
        num_updates=1, repeats=2, batch_sizes=(8,), num_users=3
    )
    assert sorted(m.case for m in measurements) == [
        "ddpg update batch=8",
        "gddpg update batch=8",
    ]
    for measurement in measurements:
        check_measurement(measurement, "update", num_envs=8, work_per_call=1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-envs", "0"], "--num-envs"),
        (["--num-steps", "0"], "--num-steps"),
        (["--numpy-envs", "0"], "--numpy-envs"),
        (["--train-envs", "1024", "-4"], "--train-envs"),
        (["--sweep-members", "0"], "--sweep-members"),
        (["--sweep-envs", "-1"], "--sweep-envs"),
    ],
)
def test_script_rejects_invalid_sizes(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark_script.parse_args(argv)
    assert message in capsys.readouterr().err


def test_script_writes_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    argv = ["--suite", "env", "--num-envs", "2", "--numpy-envs", "1"]
    argv += ["--num-steps", "1", "--repeats", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == 0
    record = json.loads((out / "benchmark.json").read_text())
    cases = {entry["case"] for entry in record["records"]}
    assert "NumPy reference N=8 random policy (Python loop)" in cases
    assert "jax_env_2_over_numpy" in record["ratios"]
    assert (out / "benchmark.png").stat().st_size > 0
