"""Throughput measurement: compile time apart, warm-up, `block_until_ready`, repeated timings.

Library code only: it returns records; `scripts/benchmark.py` prints and writes them.
"""

import dataclasses
import gc
import math
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.agents.replay import DeviceMemoryError
from rlli_jax.env.batched import step_batch
from rlli_jax.env.service import DiffusionServiceEnv


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Timing of one benchmark case. Throughput is `work_per_call` items per second."""

    suite: str
    case: str
    num_envs: int
    work_per_call: int
    compile_s: float
    times_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def throughput_median(self) -> float:
        return self.work_per_call / self.median_s

    @property
    def throughput_min(self) -> float:
        return self.work_per_call / max(self.times_s)

    @property
    def throughput_max(self) -> float:
        return self.work_per_call / min(self.times_s)

    def as_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record.update(
            median_s=self.median_s,
            throughput_median=self.throughput_median,
            throughput_min=self.throughput_min,
            throughput_max=self.throughput_max,
        )
        return record


@dataclasses.dataclass(frozen=True)
class SkippedCase:
    """A benchmark case that ran out of memory, with the error that stopped it as `reason`."""

    suite: str
    case: str
    num_envs: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Characters of an out-of-memory message kept as a skipped case's reason. XLA appends its
# buffer assignment statistics (many lines) to the first line, which names the allocation.
MAX_REASON_CHARS = 300


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether `error` means that a case did not fit in memory.

    These are XLA's RESOURCE_EXHAUSTED or "Out of memory" errors, raised at compile or at run
    time as `jax.errors.JaxRuntimeError`, a Python MemoryError, and the `DeviceMemoryError`
    that `make_train` raises before compiling (for the replay buffer, env.num_users or the
    networks). Any other error is a bug or an invalid input.
    """
    if isinstance(error, MemoryError | DeviceMemoryError):
        return True
    if isinstance(error, jax.errors.JaxRuntimeError):
        message = str(error)
        return "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower()
    return False


def call_unless_out_of_memory(function: Callable[[], Any]) -> tuple[Any, str | None]:
    """Call `function()` and return (its result, None), or (None, reason) if it ran out of
    memory as `is_out_of_memory` defines it. Any other exception propagates.

    After an out-of-memory error this frees what the call held before returning: the error's
    traceback, whose frames hold the call's arrays, jax's compiled programs and cycles left
    for the garbage collector. The reason is the error's type and first line.
    """
    try:
        return function(), None
    except (jax.errors.JaxRuntimeError, MemoryError, DeviceMemoryError) as error:
        if not is_out_of_memory(error):
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"{type(error).__name__}: {first_line}"[:MAX_REASON_CHARS]
    # Python has deleted `error` at the end of the except block, so its frames can go now.
    gc.collect()
    jax.clear_caches()
    return None, reason


def _measure_or_skip(
    suite: str, cases: list[str], num_envs: int, measure: Callable[[], list[Measurement]]
) -> list[Measurement | SkippedCase]:
    """Return `measure()`, or one SkippedCase per label of `cases` if it ran out of memory."""
    measurements, reason = call_unless_out_of_memory(measure)
    if reason is None:
        return measurements
    return [SkippedCase(suite, case, num_envs, reason) for case in cases]


def machine_info() -> dict[str, Any]:
    """Return the device, backend and library versions the numbers were measured with."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "num_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "packages": _package_versions(),
        "git_commit": _git_commit(),
    }


# Packages whose version can change the timings, recorded with every benchmark. A CUDA build of
# jax comes with a plugin and a PJRT package for CUDA 12 or for CUDA 13.
TIMED_PACKAGES = (
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "numpy",
    "rlli_jax",
)


def _package_versions() -> dict[str, str | None]:
    """Return the installed version of each of `TIMED_PACKAGES`, None for one not installed."""
    from importlib import metadata

    versions = {}
    for name in TIMED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# Folders of the checkout whose untracked files can change a benchmark's result.
CODE_FOLDERS = ("rlli_jax", "scripts", "configs")


def _git_commit(root: Path | None = None) -> str | None:
    """Return the commit of the checkout at `root` (default: where this package was imported
    from), None outside one.

    A checkout with uncommitted changes, or with untracked files in the code folders
    (`CODE_FOLDERS`), gets a "-modified" suffix. Other untracked files, such as run outputs,
    do not count. An installed copy (under site-packages) returns None even inside another
    repository, because the repository's top level must be the folder that contains the package.
    """
    import subprocess

    root = Path(__file__).resolve().parent.parent if root is None else Path(root).resolve()
    try:
        top_level, commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()  # fmt: skip
        if Path(top_level).resolve() != root:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        untracked_code = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "--",
             *CODE_FOLDERS],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return f"{commit}-modified" if status.strip() or untracked_code.strip() else commit


def _cpu_count() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def time_compiled(
    function: Callable[..., Any], args: tuple, *, repeats: int, warmup: int = 1
) -> tuple[float, tuple[float, ...]]:
    """Compile `function` (a jitted callable) on `args`, then time `repeats` calls.

    Returns (compile seconds, per-call seconds); every call is synchronised with
    `block_until_ready` so asynchronous dispatch does not hide work.
    """
    start = time.perf_counter()
    compiled = function.lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, tuple(times)


def make_env_rollout(env: DiffusionServiceEnv, params, num_envs: int, num_steps: int):
    """Return a jitted `rollout(key) -> mean reward` of `num_steps` vmapped steps of `num_envs`
    environments under a uniform random policy, the whole loop in one `lax.scan`."""
    action_dim = env.num_actions
    reset = jax.vmap(env.reset, in_axes=(0, None))

    def rollout(key):
        key_reset, key_loop = jax.random.split(key)
        _, state = reset(jax.random.split(key_reset, num_envs), params)

        def body(carry, key_slot):
            state, reward_sum = carry
            key_action, key_step = jax.random.split(key_slot)
            action = jax.random.uniform(key_action, (num_envs, action_dim), minval=-1.0, maxval=1.0)
            _, state, reward, _, _, _ = step_batch(
                env, jax.random.split(key_step, num_envs), state, action, params
            )
            return (state, reward_sum + jnp.sum(reward)), None

        (_, reward_sum), _ = jax.lax.scan(
            body, (state, jnp.float32(0.0)), jax.random.split(key_loop, num_steps)
        )
        return reward_sum / (num_envs * num_steps)

    return jax.jit(rollout)


def benchmark_env(
    num_envs_list: list[int], *, num_steps: int, repeats: int, num_users: int = 8
) -> list[Measurement | SkippedCase]:
    """Measure environment steps per second with a random policy for each env count.

    An env count that runs out of memory gives a SkippedCase, and the next one still runs.
    """
    env = DiffusionServiceEnv(num_users=num_users)
    params = env.default_params
    case = f"DiffusionService-v0 N={num_users} random policy"

    def measure(num_envs: int) -> list[Measurement]:
        rollout = make_env_rollout(env, params, num_envs, num_steps)
        compile_s, times = time_compiled(rollout, (jax.random.key(0),), repeats=repeats)
        return [Measurement("env", case, num_envs, num_envs * num_steps, compile_s, times)]

    measurements = []
    for num_envs in num_envs_list:
        measurements += _measure_or_skip(
            "env", [case], num_envs, lambda num_envs=num_envs: measure(num_envs)
        )
    return measurements


def benchmark_numpy_reference(
    num_envs: int, *, num_steps: int, repeats: int, num_users: int = 8
) -> Measurement | SkippedCase:
    """Measure the NumPy reference (a Python loop over environment objects) with the same
    default QoE model and a uniform random policy, for a side-by-side ratio.

    Returns a SkippedCase if the environments do not fit in memory.
    """
    case = f"NumPy reference N={num_users} random policy (Python loop)"
    (result,) = _measure_or_skip(
        "env",
        [case],
        num_envs,
        lambda: [_time_numpy_reference(case, num_envs, num_steps, repeats, num_users)],
    )
    return result


def _time_numpy_reference(
    case: str, num_envs: int, num_steps: int, repeats: int, num_users: int
) -> Measurement:
    from rlli_jax.env.numpy_reference import NumpyDiffusionServiceEnv

    env = DiffusionServiceEnv(num_users=num_users)
    params = env.default_params
    environments = [
        NumpyDiffusionServiceEnv(num_users, env.horizon, params, env.qoe_model.name, seed=i)
        for i in range(num_envs)
    ]
    for reference in environments:
        reference.reset()
    rng = np.random.default_rng(0)

    def rollout():
        for _ in range(num_steps):
            for reference in environments:
                reference.step(rng.uniform(-1.0, 1.0, env.num_actions))

    rollout()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rollout()
        times.append(time.perf_counter() - start)
    return Measurement("env", case, num_envs, num_envs * num_steps, 0.0, tuple(times))


ACT_DIFFUSION_STEPS = (1, 3, 5, 10, 20)
# configs/default.yaml of a source checkout; an installed package falls back to the defaults of
# the config dataclasses.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
UPDATE_BATCH_SIZES = (256, 512, 1024)


def _agent_for(algo: str, obs_dim: int, action_dim: int, **config_overrides):
    from rlli_jax.agents.ddpg import AgentConfig, default_hyperparams, make_agent

    agent = make_agent(AgentConfig(algo=algo, **config_overrides))
    hyper = default_hyperparams(algo)
    agent_state = agent.init(jax.random.key(0), obs_dim, action_dim, hyper)
    return agent, agent_state, hyper


def _act_many(agent, hyper, num_calls: int):
    """Return act_many(agent_state, obs, key): `num_calls` deterministic `act` calls in one
    `lax.scan`, summing the actions so that none is optimised away."""

    def act_many(agent_state, obs, key):
        def body(total, inputs):
            key_call, offset = inputs
            # A per-call offset keeps XLA from hoisting a key-free actor (the MLP) out of the
            # loop and computing it once for all calls.
            action = agent.act(agent_state, obs + offset, key_call, hyper, explore=False)
            return total + jnp.sum(action), None

        inputs = (jax.random.split(key, num_calls), 1e-3 * jnp.arange(num_calls))
        total, _ = jax.lax.scan(body, jnp.float32(0.0), inputs)
        return total

    return act_many


def benchmark_act(
    num_envs_list: list[int],
    *,
    num_calls: int,
    repeats: int,
    diffusion_steps: tuple[int, ...] = ACT_DIFFUSION_STEPS,
    num_users: int = 8,
) -> list[Measurement | SkippedCase]:
    """Measure policy actions per second (deterministic `act`) of the MLP actor and of the
    diffusion actor at each number of denoising steps T, on service-environment shapes.

    An actor and env count that runs out of memory gives a SkippedCase, and the next one
    still runs.
    """
    env = DiffusionServiceEnv(num_users=num_users)
    cases = [("ddpg", {}, "MLP actor")] + [
        ("gddpg", {"diffusion_steps": steps}, f"diffusion actor T={steps}")
        for steps in diffusion_steps
    ]
    measurements = []
    for algo, overrides, label in cases:
        agent, agent_state, hyper = _agent_for(algo, env.obs_dim, env.num_actions, **overrides)
        act_many = jax.jit(_act_many(agent, hyper, num_calls))

        def measure(num_envs: int, label=label, agent_state=agent_state, act_many=act_many):
            obs = jax.random.normal(jax.random.key(1), (num_envs, env.obs_dim))
            compile_s, times = time_compiled(
                act_many, (agent_state, obs, jax.random.key(2)), repeats=repeats
            )
            return [Measurement("act", label, num_envs, num_envs * num_calls, compile_s, times)]

        for num_envs in num_envs_list:
            measurements += _measure_or_skip(
                "act", [label], num_envs, lambda num_envs=num_envs: measure(num_envs)
            )
    return measurements


# Batch at which `act_cost_analysis` compiles one `act` call. The per-action figures barely
# depend on it, because only the weights' bytes are spread over the batch.
COST_ANALYSIS_BATCH = 1024


def _per_action_cost(compiled, batch: int) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    # jax documents the result as nested dicts, lists or tuples, or None, so take the first
    # dict of a list.
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {
        key: float(analysis.get(name, float("nan"))) / batch
        for key, name in (
            ("flops", "flops"),
            ("transcendentals", "transcendentals"),
            ("bytes_accessed", "bytes accessed"),
        )
    }


def act_cost_analysis(
    *,
    diffusion_steps: tuple[int, ...] = ACT_DIFFUSION_STEPS,
    num_users: int = 8,
    batch: int = COST_ANALYSIS_BATCH,
) -> list[dict[str, Any]]:
    """Return XLA's cost analysis of one deterministic `act` call per actor, per action.

    There is one record per actor: the MLP actor, then the diffusion actor at each T. Each has
    the compiled program's floating-point operations, transcendental operations (exp, log, sin
    and the like) and bytes accessed, each divided by `batch`, and `flops_over_mlp`. Unlike
    timings these do not depend on the machine's load. On a backend whose compiler reports no
    cost analysis the figures are NaN.
    """
    env = DiffusionServiceEnv(num_users=num_users)
    cases = [("ddpg", {}, "MLP actor")] + [
        ("gddpg", {"diffusion_steps": steps}, f"diffusion actor T={steps}")
        for steps in diffusion_steps
    ]
    obs = jnp.zeros((batch, env.obs_dim))
    records = []
    for algo, overrides, label in cases:
        agent, agent_state, hyper = _agent_for(algo, env.obs_dim, env.num_actions, **overrides)

        def act(agent_state, obs, key, agent=agent, hyper=hyper):
            return agent.act(agent_state, obs, key, hyper, explore=False)

        compiled = jax.jit(act).lower(agent_state, obs, jax.random.key(0)).compile()
        records.append({"case": label, "batch": batch, **_per_action_cost(compiled, batch)})
    mlp_flops = records[0]["flops"]
    for record in records:
        record["flops_over_mlp"] = record["flops"] / mlp_flops
    return records


# Parts of the actor that the profile splits an `act` call's time into, each with its markers.
# An HLO instruction belongs to the first part whose marker occurs in its `op_name` metadata,
# which contains the Flax module path and the jax function names. The rest is the chain's own
# arithmetic, the output clip and the benchmark loop's input offset and sum of actions.
ACT_PROFILE_PARTS = (
    ("Gaussian draws", ("_normal", "_uniform", "threefry", "random_bits")),
    ("state encoder", ("DiffusionActorNetwork.encode",)),
    ("time embedding", ("DiffusionActorNetwork.embed_time",)),
    ("noise network", ("DiffusionActorNetwork.predict_noise",)),
    ("MLP actor", ("MLPActor",)),
)
ACT_PROFILE_OTHER = "chain, clip and loop"

_HLO_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(?:\(.*?\)|\S+)\s+([\w\-]+)\((.*)$"
)
_HLO_OPERAND = re.compile(r"%([\w.\-]+)")
_HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')
_HLO_MODULE = re.compile(r"^HloModule\s+([\w.\-]+)", re.MULTILINE)
# Control-flow instructions are not counted, because the instructions of their bodies carry
# their time.
_HLO_CONTROL_FLOW = ("while", "call", "conditional")


def hlo_module_name(hlo_text: str) -> str | None:
    """Return the module name from the `HloModule` header of HLO text, or None without one."""
    match = _HLO_MODULE.search(hlo_text)
    return match.group(1) if match else None


def hlo_instruction_parts(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Map each instruction of a compiled module's HLO text to (part, kind).

    part comes from `ACT_PROFILE_PARTS`, matched against the instruction's `op_name`
    metadata. XLA leaves that metadata off some instructions it creates (batch-1 dots,
    copies). Such an instruction takes the `op_name` of an instruction that consumes it, or,
    when that names no part, the part of its first operand that has one.
    kind is "matmul" for a dot, or for a fusion whose root is one (its `op_name` ends in
    `dot_general`), and "elementwise" otherwise. Control-flow instructions (while, call,
    conditional) are left out, because the instructions of their bodies carry their time.
    """
    instructions = []
    for line in hlo_text.splitlines():
        match = _HLO_INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode, rest = match.groups()
        operands = _HLO_OPERAND.findall(rest.split(")", 1)[0])
        op_name_match = _HLO_OP_NAME.search(rest)
        op_name = op_name_match.group(1) if op_name_match else ""
        instructions.append((name, opcode, op_name, operands))

    # HLO text lists consumers after their operands, so one pass in reverse order carries an
    # op_name down a chain of instructions that have none.
    op_names = {name: op_name for name, _, op_name, _ in instructions}
    for name, _, _, operands in reversed(instructions):
        for operand in operands:
            if operand in op_names and not op_names[operand]:
                op_names[operand] = op_names[name]

    parts = {name: _part_of(op_name) for name, op_name in op_names.items()}
    # When the consumer is the benchmark loop (a batch-1 dot feeding the sum of actions), the
    # operands tell more: take the part of the first operand that has one.
    for name, _, own_op_name, operands in instructions:
        if not own_op_name and parts[name] == ACT_PROFILE_OTHER:
            known = [
                parts[operand]
                for operand in operands
                if parts.get(operand, ACT_PROFILE_OTHER) != ACT_PROFILE_OTHER
            ]
            parts[name] = known[0] if known else ACT_PROFILE_OTHER

    table = {}
    for name, opcode, own_op_name, _ in instructions:
        if opcode in _HLO_CONTROL_FLOW:
            continue
        matmul = opcode in ("dot", "convolution") or own_op_name.endswith("dot_general")
        table[name] = (parts[name], "matmul" if matmul else "elementwise")
    return table


def _part_of(op_name: str) -> str:
    """Return the first part of `ACT_PROFILE_PARTS` whose marker occurs in `op_name`."""
    for label, markers in ACT_PROFILE_PARTS:
        if any(marker in op_name for marker in markers):
            return label
    return ACT_PROFILE_OTHER


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    """Return the total length of the union of [start, end) intervals, in their unit."""
    total, covered_until = 0, None
    for start, end in sorted(intervals):
        if covered_until is None or start > covered_until:
            total += end - start
            covered_until = end
        elif end > covered_until:
            total += end - covered_until
            covered_until = end
    return total


def op_times_from_trace(
    trace_dir: Path, instructions: dict[str, Any], module: str | None = None
) -> dict[str, int]:
    """Return nanoseconds per HLO instruction in the newest `jax.profiler` trace under
    `trace_dir`, counting only events of `instructions`' names.

    An event names its instruction in its `hlo_op` statistic (or, on some backends, in its
    own name). With `module`, an event whose `hlo_module` statistic names another compiled
    program is skipped, since programs share instruction names. The time of one instruction
    is the union of its events' intervals, so a CPU matmul split over worker threads counts
    once, not once per thread. When a device plane (a GPU) has such events, only device
    planes count, so the host's launch events are not added to the kernels' time.
    """
    files = sorted(Path(trace_dir).glob("**/*.xplane.pb"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
    profile = jax.profiler.ProfileData.from_file(str(files[-1]))
    by_plane: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                name = stats.get("hlo_op", event.name)
                if module is not None and stats.get("hlo_module", module) != module:
                    continue
                if name in instructions:
                    spans = by_plane.setdefault(plane.name, {}).setdefault(name, [])
                    spans.append((event.start_ns, event.start_ns + event.duration_ns))
    device_planes = [name for name in by_plane if name.startswith("/device:")]
    planes = device_planes or list(by_plane)
    merged: dict[str, list[tuple[int, int]]] = {}
    for plane_name in planes:
        for name, spans in by_plane[plane_name].items():
            merged.setdefault(name, []).extend(spans)
    return {name: _union_ns(spans) for name, spans in merged.items()}


def act_profile(
    num_envs: int,
    trace_dir: Path,
    *,
    diffusion_steps: tuple[int, ...] = (5,),
    num_calls: int = 8,
    repeats: int = 5,
    num_users: int = 8,
) -> list[dict[str, Any]]:
    """Profile deterministic `act` calls with `jax.profiler` and split their time by part.

    For the MLP actor and the diffusion actor at each T, this compiles the `act` suite's
    program: `num_calls` calls on `num_envs` observations in one `lax.scan`. It runs the
    program once to warm up, then traces `repeats` runs into `trace_dir/<case>`, which
    TensorBoard or Perfetto can open. Returns one record per actor: `case`, `num_envs`,
    `op_ns_per_action` (summed time of its HLO instructions per action),
    `wall_ns_per_action` (wall time of the traced runs per action) and `parts`, a list of
    {part, kind, ns_per_action, share} sorted by time, where part is from
    `ACT_PROFILE_PARTS` and kind is "matmul" or "elementwise". Raises RuntimeError when the
    trace has no events of the compiled program.

    Instructions that run at the same time on different threads each count in full, so on
    a multi-core CPU `op_ns_per_action` can exceed the wall time per action.
    """
    env = DiffusionServiceEnv(num_users=num_users)
    cases = [("ddpg", {}, "MLP actor")] + [
        ("gddpg", {"diffusion_steps": steps}, f"diffusion actor T={steps}")
        for steps in diffusion_steps
    ]
    obs = jax.random.normal(jax.random.key(1), (num_envs, env.obs_dim))
    # The first trace in a process pays the profiler's start-up cost, which inflated the
    # first actor's wall time per action. A throwaway trace takes that cost.
    with tempfile.TemporaryDirectory() as warmup_dir, jax.profiler.trace(warmup_dir):
        jax.block_until_ready(obs + 1.0)
    records = []
    for algo, overrides, label in cases:
        agent, agent_state, hyper = _agent_for(algo, env.obs_dim, env.num_actions, **overrides)
        act_many = jax.jit(_act_many(agent, hyper, num_calls))
        compiled = act_many.lower(agent_state, obs, jax.random.key(0)).compile()
        hlo_text = compiled.as_text()
        instructions = hlo_instruction_parts(hlo_text)
        module = hlo_module_name(hlo_text)
        # Split the keys before tracing, so no other program runs inside the trace.
        keys = list(jax.random.split(jax.random.key(2), repeats + 1))
        jax.block_until_ready(compiled(agent_state, obs, keys[0]))
        case_dir = Path(trace_dir) / label.replace(" ", "_").replace("=", "")
        shutil.rmtree(case_dir, ignore_errors=True)  # the newest trace must be this run's
        with jax.profiler.trace(str(case_dir)):
            start = time.perf_counter()
            for key in keys[1:]:
                jax.block_until_ready(compiled(agent_state, obs, key))
            wall_s = time.perf_counter() - start
        totals: dict[tuple[str, str], int] = {}
        for name, nanoseconds in op_times_from_trace(case_dir, instructions, module).items():
            totals[instructions[name]] = totals.get(instructions[name], 0) + nanoseconds
        total = sum(totals.values())
        if total == 0:
            raise RuntimeError(
                f"the jax.profiler trace in {case_dir} has no events of the compiled program "
                f"{module!r}: this backend's profiler does not record XLA operations"
            )
        actions = repeats * num_calls * num_envs
        parts = [
            {
                "part": part,
                "kind": kind,
                "ns_per_action": nanoseconds / actions,
                "share": nanoseconds / total,
            }
            for (part, kind), nanoseconds in sorted(totals.items(), key=lambda item: -item[1])
        ]
        records.append(
            {
                "case": label,
                "num_envs": num_envs,
                "op_ns_per_action": total / actions,
                "wall_ns_per_action": wall_s * 1e9 / actions,
                "parts": parts,
            }
        )
    return records


def benchmark_update(
    *,
    num_updates: int,
    repeats: int,
    batch_sizes: tuple[int, ...] = UPDATE_BATCH_SIZES,
    num_users: int = 8,
) -> list[Measurement | SkippedCase]:
    """Measure gradient steps per second of DDPG and G-DDPG (default T) at each batch size, on
    service-environment shapes. `num_envs` in the records contains the batch size.

    A batch size that runs out of memory gives a SkippedCase, and the next one still runs.
    """
    from rlli_jax.agents.ddpg import Transition

    env = DiffusionServiceEnv(num_users=num_users)
    measurements = []
    for algo in ("ddpg", "gddpg"):
        agent, agent_state, hyper = _agent_for(algo, env.obs_dim, env.num_actions)

        def measure(batch_size: int, label: str, agent=agent, agent_state=agent_state, hyper=hyper):
            keys = jax.random.split(jax.random.key(3), 3)
            batch = Transition(
                obs=jax.random.normal(keys[0], (batch_size, env.obs_dim)),
                action=jax.random.uniform(keys[1], (batch_size, env.num_actions), minval=-1),
                reward=jax.random.normal(keys[2], (batch_size,)),
                next_obs=jax.random.normal(keys[0], (batch_size, env.obs_dim)) + 0.1,
                terminated=jnp.zeros((batch_size,)),
            )

            def update_many(agent_state, batch, key, agent=agent, hyper=hyper):
                def body(agent_state, key_update):
                    agent_state, metrics = agent.update(agent_state, batch, key_update, hyper)
                    return agent_state, metrics["critic_loss"]

                return jax.lax.scan(body, agent_state, jax.random.split(key, num_updates))

            compile_s, times = time_compiled(
                jax.jit(update_many), (agent_state, batch, jax.random.key(4)), repeats=repeats
            )
            return [Measurement("update", label, batch_size, num_updates, compile_s, times)]

        for batch_size in batch_sizes:
            label = f"{algo} update batch={batch_size}"
            measurements += _measure_or_skip(
                "update",
                [label],
                batch_size,
                lambda batch_size=batch_size, label=label: measure(batch_size, label),
            )
    return measurements


def _train_program(num_envs: int, overrides: tuple[str, ...] = ()):
    """Build the default config's training program at `num_envs`, with a warmup just long
    enough to store one batch, so every iteration of the chunks after `warmup_chunks(config)`
    runs its gradient steps. Returns (config, program)."""
    from rlli_jax.train import make_train

    config = _train_config(num_envs, overrides)
    return config, make_train(config)


def _train_config(num_envs: int, overrides: tuple[str, ...] = ()):
    """Return the config that `_train_program` builds its program from."""
    from rlli_jax.config import load_config

    config = load_config(
        DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None,
        (
            f"train.num_envs={num_envs}",
            "train.steps_per_chunk=4",
            f"train.total_env_steps={num_envs * 4 * 4}",
            f"train.buffer_size={max(4 * 4 * num_envs, 4096)}",
            *overrides,
        ),
    )
    # Updates wait for batch_size stored transitions, and a few envs take several chunks to
    # collect them. The warm-up takes random actions until then, so every timed chunk updates.
    warmup = max(num_envs, config.agent.batch_size)
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, warmup_env_steps=warmup)
    )


def warmup_chunks(config) -> int:
    """Return how many chunks of `config` pass before every iteration runs gradient steps."""
    return math.ceil(config.train.warmup_iterations / config.train.steps_per_chunk)


def _time_chunks(
    run_chunk, state, hyper, repeats: int, warmup: int = 1
) -> tuple[float, tuple[float, ...]]:
    """Compile a training-chunk function, run `warmup` untimed chunks, then time `repeats`
    chunks, each continuing from the previous state. Returns (compile seconds, per-chunk
    seconds)."""
    start = time.perf_counter()
    compiled = run_chunk.lower(state, hyper).compile()
    compile_s = time.perf_counter() - start
    for _ in range(max(warmup, 1)):  # at least one, which also warms up the compiled call
        state, _ = compiled(state, hyper)
    # Dispatch is asynchronous, so without this wait the first timed chunk would also carry
    # the warm-up chunks still running.
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, hyper)
        # Wait for the new state too, not only the metrics, so no part of the chunk's work
        # can still be running when the clock stops.
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return compile_s, tuple(times)


def benchmark_train(
    num_envs_list: list[int], *, repeats: int, overrides: tuple[str, ...] = ()
) -> list[Measurement | SkippedCase]:
    """Measure the end-to-end training chunk (act, env step, replay add, gradient steps) of the
    default config: env steps/s, and gradient steps/s as a second record per case.

    An env count that runs out of memory (its replay buffer included) gives a SkippedCase for
    each of the two records, and the next env count still runs.
    """
    from rlli_jax.train import make_train

    def measure(config, labels: list[str]) -> list[Measurement]:
        program = make_train(config)
        hyper = program.default_hyperparams
        state = program.init(jax.random.key(0), hyper)
        compile_s, times = _time_chunks(
            program.run_chunk, state, hyper, repeats, warmup_chunks(config)
        )
        num_envs, steps = config.train.num_envs, config.train.steps_per_chunk
        updates = steps * config.train.updates_per_step
        return [
            Measurement("train", labels[0], num_envs, num_envs * steps, compile_s, times),
            Measurement("train", labels[1], num_envs, updates, compile_s, times),
        ]

    measurements = []
    for num_envs in num_envs_list:
        config = _train_config(num_envs, overrides)
        label = f"train {config.agent.algo} updates/step={config.train.updates_per_step}"
        labels = [label + " env steps", label + " gradient steps"]
        measurements += _measure_or_skip(
            "train", labels, num_envs, lambda config=config, labels=labels: measure(config, labels)
        )
    return measurements


def benchmark_train_parts(num_envs: int, *, repeats: int) -> dict[str, float]:
    """Time the parts of one training iteration alone at `num_envs`, for the glue ratio:
    seconds per iteration of exploring `act`, of `step_batch`, and of the gradient steps."""
    from rlli_jax.agents.ddpg import Transition

    config, program = _train_program(num_envs)
    hyper = program.default_hyperparams
    env, agent = program.env, program.agent
    agent_state = agent.init(jax.random.key(0), env.obs_dim, env.num_actions, hyper.agent)
    obs = jax.random.normal(jax.random.key(1), (num_envs, env.obs_dim))
    _, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(2), num_envs), hyper.env
    )
    batch_size = config.agent.batch_size
    batch = Transition(
        obs=obs[:1].repeat(batch_size, 0),
        action=jnp.zeros((batch_size, env.num_actions)),
        reward=jnp.ones((batch_size,)),
        next_obs=obs[:1].repeat(batch_size, 0),
        terminated=jnp.zeros((batch_size,)),
    )
    updates = config.train.updates_per_step

    def act(agent_state, obs, key):
        return agent.act(agent_state, obs, key, hyper.agent, explore=True)

    def step(env_state, action, key):
        return step_batch(env, jax.random.split(key, num_envs), env_state, action, hyper.env)[2]

    def update_many(agent_state, key):
        def body(agent_state, key_update):
            return agent.update(agent_state, batch, key_update, hyper.agent)[0], None

        agent_state = jax.lax.scan(body, agent_state, jax.random.split(key, updates))[0]
        # Return values that depend on every update, so XLA cannot drop them as dead code.
        return jax.tree.map(jnp.sum, (agent_state.actor_params, agent_state.critic_params))

    action = jnp.zeros((num_envs, env.num_actions))
    parts = {
        "act_s": (jax.jit(act), (agent_state, obs, jax.random.key(3))),
        "env_step_s": (jax.jit(step), (env_state, action, jax.random.key(4))),
        "updates_s": (jax.jit(update_many), (agent_state, jax.random.key(5))),
    }
    result = {}
    for name, (function, args) in parts.items():
        _, times = time_compiled(function, args, repeats=repeats)
        result[name] = statistics.median(times)
    return result


def benchmark_sweep(
    num_members_list: list[int], *, num_envs: int, repeats: int
) -> list[Measurement | SkippedCase]:
    """Measure members x env steps/s of the default training chunk vmapped over a population of
    seeds (one compiled program per population size).

    A population size that runs out of memory gives a SkippedCase, and the next one still runs.
    """

    def measure(num_members: int, label: str) -> list[Measurement]:
        config, program = _train_program(num_envs)
        hyper = program.default_hyperparams
        keys = jax.random.split(jax.random.key(0), num_members)
        state = jax.vmap(program.init, in_axes=(0, None))(keys, hyper)
        chunk = jax.jit(jax.vmap(program.run_chunk, in_axes=(0, None)))
        compile_s, times = _time_chunks(chunk, state, hyper, repeats, warmup_chunks(config))
        work = num_members * num_envs * config.train.steps_per_chunk
        return [Measurement("sweep", label, num_envs, work, compile_s, times)]

    measurements = []
    for num_members in num_members_list:
        label = f"{num_members} members x {num_envs} envs, train chunk"
        measurements += _measure_or_skip(
            "sweep",
            [label],
            num_envs,
            lambda num_members=num_members, label=label: measure(num_members, label),
        )
    return measurements
