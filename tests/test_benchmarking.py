"""Benchmark suites: they run end to end at tiny sizes and write their records.

Speed itself is never asserted; `scripts/benchmark.py` measures it and `docs/benchmarks.md`
records it.
"""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from rlli_jax import benchmarking
from rlli_jax.agents.replay import ReplayMemoryError

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


HLO_SAMPLE = """\
HloModule jit_act_many, entry_computation_layout={(f32[4,8]{1,0})->f32[4,2]{1,0}}

ENTRY %main.1 (o.1: f32[4,8], k.1: u32[2]) -> f32[4,2] {
  %ynn_fusion.3 = f32[4,16]{1,0} fusion(%o.1, %w.1), kind=kCustom, calls=%fc.3, \
metadata={op_name="jit(act)/DiffusionActorNetwork.encode/state_encoder/Dense_0/dot_general"}
  %add_divide_fusion = f32[4,16]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fc.4, \
metadata={op_name="jit(act)/closed_call/DiffusionActorNetwork.predict_noise/noise_predictor/div"}
  %while.2 = (s32[], u32[4,2]{1,0}) while(%tuple.1), condition=%cond, body=%body, \
metadata={op_name="jit(act)/jit(_normal)/jit(_uniform)/while"}
  %xor.7 = u32[4,2]{1,0} xor(%a, %b), metadata={op_name="jit(act)/jit(_uniform)/xor"}
  %dot.5 = f32[1,16]{1,0} dot(%e, %w), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  %add_fusion.2 = f32[4,16]{1,0} fusion(%dot.5, %ynn_fusion.3), kind=kLoop, calls=%fc.5, \
metadata={op_name="jit(act)/closed_call/DiffusionActorNetwork.predict_noise/noise_predictor/add"}
  %copy.9 = u32[4,2]{1,0} copy(%xor.7)
  %erf_fusion = f32[4,2]{1,0} fusion(%copy.9), kind=kLoop, calls=%fc.6, \
metadata={op_name="jit(act)/jit(_normal)/jit(_normal_real)/erf_inv"}
  %copy.3 = f32[4,2]{1,0} copy(%x)
  %dot.9 = f32[4,2]{1,0} dot(%ynn_fusion.3, %w2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %reduce_fusion = f32[] fusion(%dot.9), kind=kLoop, calls=%fc.7, \
metadata={op_name="jit(act_many)/while/body/reduce_sum"}
  ROOT %clamp_fusion = f32[4,2]{1,0} fusion(%x), kind=kLoop, calls=%fc.9, \
metadata={op_name="jit(act)/jit(clip)/min"}
}
"""


def test_hlo_instruction_parts_sorts_by_part_and_kind():
    parts = benchmarking.hlo_instruction_parts(HLO_SAMPLE)
    assert parts == {
        "ynn_fusion.3": ("state encoder", "matmul"),
        "add_divide_fusion": ("noise network", "elementwise"),
        "xor.7": ("Gaussian draws", "elementwise"),
        "dot.5": ("noise network", "matmul"),  # no metadata: from its consumer
        "add_fusion.2": ("noise network", "elementwise"),
        "copy.9": ("Gaussian draws", "elementwise"),  # no metadata: from its consumer
        "erf_fusion": ("Gaussian draws", "elementwise"),
        "copy.3": ("chain, clip and loop", "elementwise"),  # no metadata, no consumer
        "dot.9": ("state encoder", "matmul"),  # consumer names no part: from its operand
        "reduce_fusion": ("chain, clip and loop", "elementwise"),
        "clamp_fusion": ("chain, clip and loop", "elementwise"),
    }  # the while loop is left out: its body's instructions carry its time


def test_hlo_module_name_read_from_header():
    assert benchmarking.hlo_module_name(HLO_SAMPLE) == "jit_act_many"
    assert benchmarking.hlo_module_name("ENTRY %main.1 () -> f32[] {\n}") is None


@pytest.mark.parametrize(
    ("intervals", "total"),
    [
        ([], 0),
        ([(0, 10)], 10),
        ([(0, 10), (5, 15)], 15),  # overlapping: counted once
        ([(0, 10), (2, 4), (20, 25)], 15),  # nested, then disjoint
        ([(20, 25), (0, 10)], 15),  # any order
    ],
)
def test_union_of_intervals(intervals, total):
    assert benchmarking._union_ns(intervals) == total


def test_act_profile_splits_each_actor_by_part(tmp_path):
    mlp, diffusion = benchmarking.act_profile(
        4, tmp_path, diffusion_steps=(2,), num_calls=2, repeats=1, num_users=3
    )
    assert (mlp["case"], diffusion["case"]) == ("MLP actor", "diffusion actor T=2")
    for record in (mlp, diffusion):
        assert record["num_envs"] == 4
        assert record["op_ns_per_action"] > 0
        assert sum(part["share"] for part in record["parts"]) == pytest.approx(1.0)
    mlp_parts = {part["part"] for part in mlp["parts"]}
    assert "MLP actor" in mlp_parts
    assert not mlp_parts & {"noise network", "state encoder", "Gaussian draws"}
    diffusion_parts = {(part["part"], part["kind"]) for part in diffusion["parts"]}
    assert {
        ("noise network", "matmul"),
        ("state encoder", "matmul"),
        ("Gaussian draws", "elementwise"),
    } <= diffusion_parts
    assert list((tmp_path / "diffusion_actor_T2").glob("**/*.xplane.pb"))


def test_act_profile_rejects_trace_without_operations(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarking, "op_times_from_trace", lambda *args: {})
    with pytest.raises(RuntimeError, match="has no events of the compiled program"):
        benchmarking.act_profile(
            2, tmp_path, diffusion_steps=(), num_calls=1, repeats=1, num_users=2
        )


def test_op_times_need_a_trace(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.xplane.pb trace"):
        benchmarking.op_times_from_trace(tmp_path, {})


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
        (["--profile-envs", "-1"], "--profile-envs"),
        (["--suite", "env", "--profile-envs", "8"], "needs the act suite"),
        (["--num-envs", str(2**31)], "--num-envs"),
        (["--profile-envs", str(2**40)], "--profile-envs"),
        (["--repeats", str(2**31)], "--repeats"),
        (["--num-envs", "64", "1", "64"], "a value is repeated"),
        (["--train-envs", "8", "8"], "a value is repeated"),
        (["--sweep-members", "1", "1"], "a value is repeated"),
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
    report = (out / "benchmark.md").read_text()
    assert "#### env" in report
    assert "| NumPy reference N=8 random policy (Python loop) | 1 |" in report
    assert "| jax_env_2_over_numpy |" in report


def test_script_prints_each_suite_at_once(tmp_path, monkeypatch, capsys):
    # A run stopped during a later suite (a time limit on a lent GPU) keeps the finished
    # suites' rows in its log.
    def fail(*args, **kwargs):
        raise RuntimeError("stopped during the update suite")

    monkeypatch.setattr(benchmarking, "benchmark_update", fail)
    argv = ["--suite", "env", "--suite", "update", "--num-envs", "2", "--numpy-envs", "1"]
    argv += ["--num-steps", "1", "--repeats", "1", "--out", str(tmp_path / "bench")]
    with pytest.raises(RuntimeError, match="update suite"):
        benchmark_script.main(argv)
    out = capsys.readouterr().out
    assert "NumPy reference N=8 random policy (Python loop)" in out
    assert "DiffusionService-v0 N=8 random policy" in out


def test_stopped_run_keeps_finished_suites(tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmarking, "benchmark_update", stop)
    out = tmp_path / "bench"
    argv = ["--suite", "update", "--suite", "env", "--num-envs", "2", "--numpy-envs", "1"]
    argv += ["--num-steps", "1", "--repeats", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == benchmark_script.INTERRUPTED
    assert f"interrupted: {out} contains the finished suites ['env']" in capsys.readouterr().err
    record = json.loads((out / "benchmark.json").read_text())
    assert record["suites_requested"] == ["env", "update"]
    assert record["suites_done"] == ["env"]
    assert {entry["suite"] for entry in record["records"]} == {"env"}
    assert "jax_env_2_over_numpy" in record["ratios"]
    report = (out / "benchmark.md").read_text()
    assert "Incomplete run: suites done ['env'] of ['env', 'update']." in report
    assert (out / "benchmark.png").stat().st_size > 0


def test_interrupt_before_first_suite_replaces_nothing(tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmarking, "benchmark_env", stop)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "benchmark.json").write_text("previous run")
    argv = ["--suite", "env", "--num-envs", "2", "--numpy-envs", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == benchmark_script.INTERRUPTED
    assert f"no suite finished, so nothing in {out} was replaced" in capsys.readouterr().err
    assert (out / "benchmark.json").read_text() == "previous run"


def test_script_prints_each_part_of_a_profile(capsys):
    profile = {
        "case": "diffusion actor T=5",
        "num_envs": 64,
        "op_ns_per_action": 100.0,
        "wall_ns_per_action": 120.0,
        "parts": [
            {"part": "noise network", "kind": "matmul", "ns_per_action": 60.0, "share": 0.6},
            {"part": "Gaussian draws", "kind": "elementwise", "ns_per_action": 40.0, "share": 0.4},
        ],
    }
    benchmark_script.print_act_profile([profile])
    lines = capsys.readouterr().out.splitlines()
    assert "diffusion actor T=5 at 64 envs: 100 ns" in lines[0]
    assert lines[1].split() == ["60.0%", "60", "ns", "noise", "network", "(matmul)"]
    assert lines[2].split()[-1] == "(elementwise)"


def test_script_survives_failed_profile(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("profiler unavailable")

    monkeypatch.setattr(benchmarking, "act_profile", fail)
    out = tmp_path / "bench"
    argv = ["--suite", "act", "--num-envs", "2", "--profile-envs", "2"]
    argv += ["--num-steps", "1", "--repeats", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == 0
    assert "act profile failed" in capsys.readouterr().err
    record = json.loads((out / "benchmark.json").read_text())
    assert record["act_profile"] == []
    assert record["act_profile_error"] == "RuntimeError: profiler unavailable"
    assert {entry["case"] for entry in record["records"]} >= {"MLP actor", "diffusion actor T=5"}


def test_script_rejects_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("not a folder")
    with pytest.raises(SystemExit):
        benchmark_script.parse_args(["--out", str(out)])
    assert "it is a file, expected a folder" in capsys.readouterr().err


def test_script_rejects_output_name_taken_by_folder(tmp_path, capsys):
    (tmp_path / "benchmark.md").mkdir()
    with pytest.raises(SystemExit):
        benchmark_script.parse_args(["--out", str(tmp_path)])
    assert "benchmark.md exists and is not a file" in capsys.readouterr().err


def test_failed_write_keeps_previous_outputs(tmp_path, monkeypatch):
    for name in benchmark_script.OUTPUT_FILES:
        (tmp_path / name).write_text("previous run")

    def fail(records, path):
        raise OSError("disk full")

    monkeypatch.setattr(benchmark_script, "plot", fail)
    document = {
        "command": "python scripts/benchmark.py",
        "time_utc": "2026-01-01T00:00:00+00:00",
        "machine": benchmarking.machine_info(),
        "records": [],
        "ratios": {},
    }
    with pytest.raises(OSError, match="disk full"):
        benchmark_script.write_outputs(tmp_path, document)
    for name in benchmark_script.OUTPUT_FILES:
        assert (tmp_path / name).read_text() == "previous run"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(benchmark_script.OUTPUT_FILES)


def test_machine_info_records_versions():
    import flax
    import jaxlib

    info = benchmarking.machine_info()
    assert info["packages"]["jaxlib"] == jaxlib.__version__
    assert info["packages"]["flax"] == flax.__version__
    assert set(info["packages"]) == set(benchmarking.TIMED_PACKAGES)
    # A CUDA jax installs the plugin of CUDA 12 or of CUDA 13, and the GPU record names either.
    for plugin in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt"):
        assert plugin in info["packages"]
    document = {
        "command": "python scripts/benchmark.py",
        "time_utc": "2026-01-01T00:00:00+00:00",
        "machine": info,
        "records": [],
        "ratios": {},
    }
    assert f"flax {info['packages']['flax']}" in benchmark_script.markdown_report(document)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_only_at_top_level(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "file.txt").write_text("one\n")
    git("add", ".")
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", "one")
    commit = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    assert benchmarking._git_commit(tmp_path) == commit
    # A folder below the top level, like site-packages inside another repository.
    assert benchmarking._git_commit(tmp_path / "package") is None
    # Untracked files count only in the code folders.
    (tmp_path / "run_output.json").write_text("{}\n")
    assert benchmarking._git_commit(tmp_path) == commit
    (tmp_path / "rlli_jax").mkdir()
    (tmp_path / "rlli_jax" / "new_module.py").write_text("VALUE = 1\n")
    assert benchmarking._git_commit(tmp_path) == f"{commit}-modified"
    (tmp_path / "rlli_jax" / "new_module.py").unlink()
    assert benchmarking._git_commit(tmp_path) == commit
    (tmp_path / "package" / "file.txt").write_text("two\n")
    assert benchmarking._git_commit(tmp_path) == f"{commit}-modified"
    assert benchmarking._git_commit(tmp_path.parent / "no-such-folder") is None


def test_outputs_store_nan_as_null(tmp_path):
    document = {
        "command": "python scripts/benchmark.py --suite act",
        "time_utc": "2026-01-01T00:00:00+00:00",
        "machine": benchmarking.machine_info(),
        "records": [],
        "ratios": {"jax_env_64_over_numpy": float("inf")},
        "act_cost_analysis": [
            {
                "case": "MLP actor",
                "batch": 1024,
                "flops": float("nan"),
                "flops_over_mlp": float("nan"),
                "transcendentals": 32.0,
                "bytes_accessed": 9376.0,
            }
        ],
    }
    benchmark_script.write_outputs(tmp_path, document)
    text = (tmp_path / "benchmark.json").read_text()
    stored = json.loads(text, parse_constant=lambda name: pytest.fail(f"JSON contains {name}"))
    assert stored["act_cost_analysis"][0]["flops"] is None
    assert stored["ratios"]["jax_env_64_over_numpy"] is None
    assert text.endswith("}\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(benchmark_script.OUTPUT_FILES)


def test_markdown_report_names_profile_failure():
    document = {
        "command": "python scripts/benchmark.py --suite act",
        "time_utc": "2026-01-01T00:00:00+00:00",
        "machine": benchmarking.machine_info(),
        "records": [],
        "ratios": {},
        "act_profile": [],
        "act_profile_error": "RuntimeError: profiler unavailable",
    }
    report = benchmark_script.markdown_report(document)
    assert "The act profile failed: RuntimeError: profiler unavailable" in report


@pytest.mark.parametrize(
    ("argv", "profile_envs"),
    [
        ([], benchmark_script.DEFAULT_PROFILE_ENVS),  # all suites, act among them
        (["--suite", "env"], 0),  # no act suite: nothing to profile
        (["--suite", "act", "--profile-envs", "0"], 0),
        (["--suite", "act", "--profile-envs", "64"], 64),
    ],
)
def test_profile_envs_default_follows_suites(argv, profile_envs, tmp_path):
    args = benchmark_script.parse_args([*argv, "--out", str(tmp_path)])
    assert args.profile_envs == profile_envs


@pytest.mark.parametrize("num_envs", [8, 4096])
def test_train_warmup_stores_a_batch_before_timing(num_envs):
    # Updates wait for batch_size stored transitions; a timed chunk before that would report
    # gradient steps that never ran.
    config, _ = benchmarking._train_program(num_envs)
    chunks = benchmarking.warmup_chunks(config)
    stored = chunks * config.train.steps_per_chunk * num_envs
    assert stored >= config.agent.batch_size
    assert chunks * config.train.steps_per_chunk >= config.train.warmup_iterations


def test_script_rejects_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        benchmark_script.main(["--suite", "env", "--out", str(tmp_path / "file" / "bench")])
    assert "file is a file, not a folder" in capsys.readouterr().err


class QueuedDevice:
    """Stand-in for asynchronous dispatch. A call only queues a chunk, and blocking on any
    result runs every queued chunk and records how many that wait ran."""

    def __init__(self):
        self.queued = 0
        self.chunks_per_wait = []

    def wait(self):
        # A second wait with nothing queued (on another output of the same call) adds no entry.
        if self.queued:
            self.chunks_per_wait.append(self.queued)
        self.queued = 0


class QueuedResult:
    def __init__(self, device):
        self.device = device
        self.waited = False

    def block_until_ready(self):
        self.device.wait()
        self.waited = True
        return self


class QueuedChunk:
    """A jitted training chunk whose compiled call queues one chunk on a `QueuedDevice`."""

    def __init__(self, device):
        self.device = device
        self.outputs = []

    def lower(self, state, hyper):
        return self

    def compile(self):
        return self

    def __call__(self, state, hyper):
        self.device.queued += 1
        outputs = (QueuedResult(self.device), QueuedResult(self.device))
        self.outputs.append(outputs)
        return outputs


def test_timed_chunks_exclude_warmup():
    # Each timed wait must run its own chunk only. Warm-up chunks left running once doubled
    # the first timing of the train and sweep suites.
    device = QueuedDevice()
    _, times = benchmarking._time_chunks(
        QueuedChunk(device), QueuedResult(device), None, repeats=3, warmup=2
    )
    assert len(times) == 3
    assert device.chunks_per_wait[-3:] == [1, 1, 1]


def test_timed_chunks_wait_for_state_and_metrics():
    # The clock stops only when every output of the timed chunk is ready: the new training
    # state as well as its metrics.
    chunk = QueuedChunk(QueuedDevice())
    benchmarking._time_chunks(chunk, QueuedResult(chunk.device), None, repeats=3, warmup=1)
    timed_outputs = chunk.outputs[-3:]
    assert all(state.waited for state, _ in timed_outputs)
    assert all(metrics.waited for _, metrics in timed_outputs)


# Modules that a benchmark run imports: the script, every suite's code and the plot backend.
BENCHMARK_IMPORTS = """
import sys
started_with = set(sys.modules)
sys.path.insert(0, "scripts")
import benchmark
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import rlli_jax.agents.ddpg, rlli_jax.benchmarking, rlli_jax.cli, rlli_jax.config
import rlli_jax.env.numpy_reference, rlli_jax.outputs, rlli_jax.train
# Every benchmark environment loads the packaged reward network, whose loader imports orbax
# only when it runs.
import rlli_jax.qoe.model
rlli_jax.qoe.model.default_qoe_model().default_params()
print("\\n".join(sorted({name.split(".")[0] for name in set(sys.modules) - started_with})))
"""


def wheel_script_packages() -> tuple[set[str], set[str]]:
    """Return (downloaded, expected on the GPU host) package names from download_wheels.sh."""
    from packaging.utils import canonicalize_name

    text = (REPO / "scripts" / "download_wheels.sh").read_text()
    names_block = text.split("names = [", 1)[1].split("]", 1)[0]
    downloaded = {canonicalize_name(name) for name in re.findall(r'"([^"]+)"', names_block)}
    host_comment = text.split("must already have", 1)[1].split(". There", 1)[0]
    host_text = " ".join(line.lstrip("# ") for line in host_comment.splitlines())
    host_list = host_text.split("these:", 1)[1]
    host = {canonicalize_name(name.strip()) for name in host_list.split(",")}
    host |= {"jax", "jaxlib"}
    return downloaded, host


def dependency_closure(names) -> set[str]:
    """Return names with every package they require, transitively, as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    closure = set()
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here, so a benchmark run here cannot import it either
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return closure


def test_wheel_list_covers_benchmark_imports():
    # A GPU host without network has only the packages the script names, so every package
    # that a benchmark run imports must be downloaded, be on that list, or be a dependency
    # of a package on it.
    from importlib import metadata

    from packaging.utils import canonicalize_name

    downloaded, host = wheel_script_packages()
    covered = set(downloaded) | dependency_closure(host)
    # Only packages that `pip install -e .` installs count. Others are imported only because
    # this Python has them, and their importers run without them: numpy.f2py tries
    # charset_normalizer. orbax-checkpoint requires uvloop but also runs without it.
    required = dependency_closure(["rlli-jax"]) - {"rlli-jax", "uvloop"}
    assert {"jax", "flax", "toolz"} <= required, required  # rlli-jax's metadata was found
    modules = subprocess.run(
        [sys.executable, "-c", BENCHMARK_IMPORTS],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    distributions = metadata.packages_distributions()
    imported = {
        canonicalize_name(distribution)
        for module in modules
        for distribution in distributions.get(module, [])
    }
    assert "jax" in imported, imported  # the import probe ran
    assert "flax" in imported, imported
    uncovered = (imported & required) - covered
    assert not uncovered, f"imported but neither downloaded nor on the host list: {uncovered}"


def test_plot_gives_each_case_its_own_style(monkeypatch):
    # A full run has about 20 cases, more than the 10 colors of matplotlib's default cycle.
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    records = [
        {
            "case": f"case {index}",
            "num_envs": 8,
            "throughput_median": 2.0,
            "throughput_min": 1.0,
            "throughput_max": 3.0,
        }
        for index in range(25)
    ]
    benchmark_script.plot(records, io.BytesIO())
    (figure,) = figures
    styles = [(line.get_color(), line.get_marker()) for line in figure.axes[0].get_lines()]
    assert len(styles) == 25
    assert len(set(styles)) == 25


OUT_OF_MEMORY_REASON = (
    "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 17179869184 bytes."
)


def out_of_memory_error(num_bytes: int = 2**34):
    """Return the error that jax 0.10.2 raises when XLA cannot allocate a buffer on CPU."""
    return jax.errors.JaxRuntimeError(
        f"RESOURCE_EXHAUSTED: Out of memory allocating {num_bytes} bytes.\n"
        "BufferAssignment OOM Debugging.\nBufferAssignment stats:"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (out_of_memory_error(), True),
        (
            jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory"
            ),
            True,
        ),
        (jax.errors.JaxRuntimeError("INTERNAL: Failed to allocate: Out of memory"), True),
        (MemoryError(), True),
        (ReplayMemoryError("replay buffer needs 9 MiB but only 1 MiB are free"), True),
        (jax.errors.JaxRuntimeError("INTERNAL: cuDNN failed"), False),
        (ValueError("invalid num_envs = 0"), False),
        (RuntimeError("RESOURCE_EXHAUSTED"), False),  # not raised by XLA
    ],
)
def test_is_out_of_memory(error, expected):
    assert benchmarking.is_out_of_memory(error) is expected


def test_skipped_case_releases_its_memory(monkeypatch):
    import weakref

    cache_clears = []
    monkeypatch.setattr(jax, "clear_caches", lambda: cache_clears.append(True))

    class Buffer:
        pass

    buffers = []

    def run_case():
        buffer = Buffer()
        buffers.append(weakref.ref(buffer))
        raise out_of_memory_error()

    result, reason = benchmarking.call_unless_out_of_memory(run_case)
    assert result is None
    assert reason == OUT_OF_MEMORY_REASON
    assert buffers[0]() is None  # the traceback no longer references the case's frame
    assert cache_clears == [True]


def fail_at(monkeypatch, failing_num_envs: dict[int, BaseException]) -> None:
    """Make the env suite raise `failing_num_envs[n]` when it builds its rollout at n envs."""
    build_rollout = benchmarking.make_env_rollout

    def make_env_rollout(env, params, num_envs, num_steps):
        if num_envs in failing_num_envs:
            raise failing_num_envs[num_envs]
        return build_rollout(env, params, num_envs, num_steps)

    monkeypatch.setattr(benchmarking, "make_env_rollout", make_env_rollout)


def test_script_skips_case_out_of_memory(tmp_path, monkeypatch, capsys):
    # A GPU run must keep every case that fits: the case at 4 envs runs out of memory, the
    # env count after it and the NumPy reference still run.
    fail_at(monkeypatch, {4: out_of_memory_error()})
    out = tmp_path / "bench"
    argv = ["--suite", "env", "--num-envs", "4", "2", "--numpy-envs", "1"]
    argv += ["--num-steps", "1", "--repeats", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == 0
    case = "DiffusionService-v0 N=8 random policy"
    reason = OUT_OF_MEMORY_REASON

    printed = capsys.readouterr().out
    assert f"skipped {'':>12} {'':>12} {'':>10}  {case} (out of memory: {reason})" in printed
    assert "jax_env_4_over_numpy: n/a" in printed
    assert "jax_env_2_over_numpy: n/a" not in printed

    record = json.loads((out / "benchmark.json").read_text())
    assert record["skipped"] == [{"suite": "env", "case": case, "num_envs": 4, "reason": reason}]
    measured = {(entry["case"], entry["num_envs"]) for entry in record["records"]}
    assert measured == {(case, 2), ("NumPy reference N=8 random policy (Python loop)", 1)}
    assert record["ratios"]["jax_env_4_over_numpy"] is None
    assert record["ratios"]["jax_env_2_over_numpy"] > 0

    report = (out / "benchmark.md").read_text()
    assert "#### skipped cases (out of memory)" in report
    assert f"| env | {case} | 4 | {reason} |" in report
    assert "| jax_env_4_over_numpy | n/a |" in report
    assert (out / "benchmark.png").stat().st_size > 0


def test_script_skips_replay_that_does_not_fit(tmp_path, monkeypatch):
    # make_train checks the replay buffer against free memory before compiling. With no free
    # memory every train and sweep case is skipped, and the run still finishes both suites.
    import rlli_jax.train as train_module
    from rlli_jax.agents import replay

    # rlli_jax.train binds the function at its import, so both names are patched. With only
    # one, the outcome depended on whether an earlier test had imported rlli_jax.train.
    for module in (replay, train_module):
        monkeypatch.setattr(module, "available_device_bytes", lambda device=None: (0, "the test"))
    out = tmp_path / "bench"
    argv = ["--suite", "train", "--suite", "sweep", "--train-envs", "8", "--sweep-members", "1"]
    argv += ["--sweep-envs", "8", "--repeats", "1", "--out", str(out)]
    assert benchmark_script.main(argv) == 0

    record = json.loads((out / "benchmark.json").read_text())
    assert record["suites_done"] == ["train", "sweep"]
    assert record["records"] == []
    skipped = [(case["suite"], case["case"], case["num_envs"]) for case in record["skipped"]]
    label = "train gddpg updates/step=32"
    assert skipped == [
        ("train", f"{label} env steps", 8),
        ("train", f"{label} gradient steps", 8),
        ("train", benchmark_script.TRAIN_PARTS_CASE, 8),
        ("sweep", "1 members x 8 envs, train chunk", 8),
    ]
    for case in record["skipped"]:
        # make_train's check of env.num_users finds the replay buffer too large first.
        assert case["reason"].startswith("ReplayMemoryError: invalid env.num_users = 8: ")
        assert "replay buffer of train.buffer_size" in case["reason"]
    assert record["ratios"] == {"train_glue_8": None}
    assert "| train_glue_8 | n/a |" in (out / "benchmark.md").read_text()


@pytest.mark.parametrize(
    "error",
    [
        jax.errors.JaxRuntimeError("INTERNAL: cuDNN failed"),  # from XLA, not out of memory
        ValueError("invalid num_envs = 2"),
        AssertionError("a bug"),
    ],
)
def test_env_suite_raises_other_errors(monkeypatch, error):
    # The case at 4 envs runs out of memory and is skipped. The next one fails for another
    # reason, which must stop the run.
    fail_at(monkeypatch, {4: out_of_memory_error(), 2: error})
    with pytest.raises(type(error), match=re.escape(str(error))):
        benchmarking.benchmark_env([4, 2], num_steps=1, repeats=1, num_users=3)


def test_ratios_of_skipped_cases_are_none():
    def measured(suite, case, num_envs, rate):
        return {"suite": suite, "case": case, "num_envs": num_envs, "throughput_median": rate}

    def skipped(suite, case, num_envs):
        return {"suite": suite, "case": case, "num_envs": num_envs, "reason": "out of memory"}

    numpy_case = "NumPy reference N=8 random policy (Python loop)"
    records = [
        measured("act", "MLP actor", 2, 100.0),
        measured("act", "diffusion actor T=5", 2, 20.0),
        measured("act", "diffusion actor T=5", 8, 10.0),
        measured("env", "DiffusionService-v0 N=8 random policy", 2, 50.0),
    ]
    cases = [
        skipped("act", "MLP actor", 8),
        skipped("act", "diffusion actor T=1", 2),
        skipped("env", numpy_case, 16),
    ]
    ratios = benchmark_script.speed_ratios(records, cases)
    assert ratios["diffusion_T5_cost_over_mlp_2"] == pytest.approx(5.0)
    assert ratios["diffusion_T5_cost_over_mlp_8"] is None  # the MLP actor was skipped
    assert ratios["diffusion_T1_cost_over_mlp_2"] is None  # the diffusion actor was skipped
    assert ratios["jax_env_2_over_numpy"] is None  # the NumPy reference was skipped
    assert len(ratios) == 4


def test_glue_ratio_of_skipped_parts_is_none():
    def chunk(num_envs):
        return {
            "suite": "train",
            "case": "train gddpg updates/step=32 env steps",
            "num_envs": num_envs,
            "work_per_call": 4 * num_envs,
            "median_s": 4.0,
        }

    parts = {8: {"act_s": 0.25, "env_step_s": 0.25, "updates_s": 0.5}}
    skipped = [
        {
            "suite": "train",
            "case": benchmark_script.TRAIN_PARTS_CASE,
            "num_envs": 16,
            "reason": "out of memory",
        }
    ]
    ratios = benchmark_script.glue_ratios([chunk(8), chunk(16)], parts, skipped)
    assert ratios == {"train_glue_8": pytest.approx(1.0), "train_glue_16": None}


@pytest.mark.parametrize("fits", ["nothing", "replay only"])
def test_make_train_memory_checks_count_as_out_of_memory(monkeypatch, fits):
    # make_train checks env.num_users and the networks against free memory, as well as the
    # replay buffer. The benchmark must count each check as out of memory, not as bad input.
    from rlli_jax import train
    from rlli_jax.agents import replay
    from rlli_jax.config import load_config

    config = load_config(overrides=["train.num_envs=8", "train.buffer_size=4096"])
    env = train.make_env(config)
    replay_bytes = replay.estimate_replay_bytes(4096, env.obs_dim, env.num_actions)
    free_bytes = 0 if fits == "nothing" else replay_bytes
    for module in (replay, train):
        monkeypatch.setattr(module, "available_device_bytes", lambda device=None: (free_bytes, "t"))
    _, reason = benchmarking.call_unless_out_of_memory(lambda: train.make_train(config))
    assert reason is not None
    assert "MemoryError" in reason
