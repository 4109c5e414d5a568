"""Multi-host start-up through JAX's own distributed runtime (`jax.distributed.initialize`).

A script calls `add_distributed_arguments(parser)` and, before any other JAX call,
`initialize_from_args(args)`. The process group comes from, in this order:

1. `--coordinator HOST:PORT --num-processes N --process-id I` (all three, or none);
2. the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
   `JAX_PROCESS_ID` (all three, or none);
3. `--auto-distributed`, or a SLURM job step with more than one task (`srun`): a bare
   `jax.distributed.initialize()`, which detects Cloud TPU pod slices, SLURM and Open MPI
   (jax 0.10);
4. otherwise a single process, and `jax.distributed` is not started.

After start-up `jax.devices()` lists the devices of every process, so a mesh built from it spans
all hosts. Every process runs the same program on the same global arrays. Network parameters
are therefore identical everywhere, because they come from one global key. Randomness that a
process draws on its own must differ per process: `process_key` folds the process index into a
key for that. Only the process for which `is_primary()` is True writes result files.
"""

import argparse
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.extend.backend
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# File name prefix of the marker that `check_shared_directory` writes and removes.
SHARED_MARKER_PREFIX = ".rlli-shared-check-"
# How long a process waits for the marker to appear, for file systems that show a new file
# on other hosts only after a delay.
SHARED_MARKER_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """The start-up method and the place of this process in its process group."""

    method: str  # "single", "flags", "environment" or "auto"
    process_id: int
    num_processes: int
    coordinator: str | None = None


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the multi-host options to a script's argument parser."""
    group = parser.add_argument_group(
        "multi-host",
        "Start one process per host with the same command and its own --process-id. "
        f"The variables {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
        "can replace the three flags.",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, where the JAX coordination service listens",
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument(
        "--process-id", type=int, metavar="I", help="index of this process, 0 to N-1"
    )
    group.add_argument(
        "--auto-distributed",
        action="store_true",
        help="call jax.distributed.initialize() without arguments, so JAX detects the "
        "Cloud TPU pod slice, SLURM job or Open MPI launch",
    )


def initialize_from_args(
    args: argparse.Namespace, on_start: Callable[[DistributedSetup], None] | None = None
) -> DistributedSetup:
    """Join the process group that `args` (from `add_distributed_arguments`) describes.

    `on_start`, if given, is called with the setup just before a multi-process start, which
    waits until every process has joined; a script uses it to say what it waits for.

    Raises:
        ValueError: only some of the three flags (or variables) are set, their values are
            invalid, or the processes disagree on the process count.
    """
    return initialize(
        coordinator=getattr(args, "coordinator", None),
        num_processes=getattr(args, "num_processes", None),
        process_id=getattr(args, "process_id", None),
        auto=getattr(args, "auto_distributed", False),
        on_start=on_start,
    )


def describe_start(setup: DistributedSetup) -> str:
    """Return a one-line message naming the process group this process is joining."""
    if setup.method == "auto":
        return (
            "starting jax.distributed with cluster auto-detection (Cloud TPU, SLURM or Open "
            "MPI); it waits until every process has started"
        )
    return (
        f"joining process group at {setup.coordinator} as process {setup.process_id} of "
        f"{setup.num_processes}; it waits until every process has started"
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    environ: dict[str, str] | None = None,
    on_start: Callable[[DistributedSetup], None] | None = None,
) -> DistributedSetup:
    """Start `jax.distributed` from explicit values, the environment or auto-detection.

    Must run before any other JAX call in the process (importing `rlli_jax` is fine). The
    module docstring lists the order in which the sources are tried. `on_start` is called with
    the setup just before a multi-process start.

    Raises:
        ValueError: invalid settings, or (after the start) processes that were given different
            process counts.
    """
    setup = resolve_setup(coordinator, num_processes, process_id, auto, environ)
    if setup.method == "single":
        return setup
    if on_start is not None:
        on_start(setup)
    # NOTE: importing gymnax (done by `import rlli_jax`) creates arrays and so starts the
    # single-process backend, which `jax.distributed.initialize` rejects. Dropping that backend
    # is safe as long as no array of this program exists yet, which is why this function must
    # run before anything else touches JAX.
    jax.extend.backend.clear_backends()
    if setup.method == "auto":
        logger.info("starting jax.distributed with cluster auto-detection")
        try:
            jax.distributed.initialize()
        except ValueError as error:
            # jax 0.10's message when no cluster was detected; other errors are passed on.
            if "coordinator_address should be defined" not in str(error):
                raise
            raise ValueError(
                f"cluster auto-detection found no process group ({error}): no Cloud TPU pod "
                "slice, SLURM job step or Open MPI launch was detected; run inside one, or pass "
                "--coordinator, --num-processes and --process-id instead of --auto-distributed"
            ) from None
        setup = dataclasses.replace(
            setup, process_id=jax.process_index(), num_processes=jax.process_count()
        )
    else:
        logger.info(
            "starting jax.distributed: process %d of %d, coordinator %s",
            setup.process_id,
            setup.num_processes,
            setup.coordinator,
        )
        jax.distributed.initialize(
            coordinator_address=setup.coordinator,
            num_processes=setup.num_processes,
            process_id=setup.process_id,
        )
        check_same_process_count(setup)
    return setup


def processes_that_differ(text: str) -> list[int]:
    """Return the indices of the processes whose `text` differs from process 0's.

    Every process must call this: it gathers a SHA-256 digest of `text` from all of them.
    """
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))  # [num_processes, 32]
    return [
        index for index in range(digests.shape[0]) if not np.array_equal(digests[index], digests[0])
    ]


def check_on_every_process(check: Callable[[], object]) -> None:
    """Run `check` on this process and raise on every process if it raised ValueError on any.

    A check against this process's own free memory may fail on one process only, and the
    others would then wait in the next collective for a process that has stopped. Every
    process must call this. With one process it simply runs `check`.

    Raises:
        ValueError: the local check's own error, or on the other processes a ValueError that
            names the processes where the check failed.
    """
    if jax.process_count() == 1:
        check()
        return
    error = None
    try:
        check()
    except ValueError as local_error:
        error = local_error
    flags = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    failed = [index for index, flag in enumerate(flags.reshape(-1)) if flag]
    if error is not None:
        raise error
    if failed:
        raise ValueError(
            f"a check before training failed on process(es) {failed}, so every process stops; "
            "the error is in their output"
        )


def check_same_process_count(setup: DistributedSetup) -> None:
    """Raise ValueError on every process unless all were given the group's process count.

    The coordination service forms the group with process 0's count, so a process started with
    another count would otherwise join and run. Every process must call this.
    """
    requested = np.asarray([setup.num_processes], np.int64)
    counts = np.asarray(multihost_utils.process_allgather(requested)).reshape(-1)
    if not np.all(counts == jax.process_count()):
        count_name = "--num-processes" if setup.method == "flags" else ENV_NUM_PROCESSES
        raise ValueError(
            f"the processes were started with different {count_name}: {counts.tolist()} "
            f"(process 0 to {len(counts) - 1}), and the group has {jax.process_count()} "
            f"processes; start every process with {count_name} {jax.process_count()}"
        )


def resolve_setup(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    environ: dict[str, str] | None = None,
) -> DistributedSetup:
    """Decide how to start, without starting anything; see the module docstring.

    Raises:
        ValueError: a partial or invalid set of flags or environment variables.
    """
    environ = os.environ if environ is None else environ
    flags = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    if any(value is not None for value in flags.values()):
        return _explicit_setup("flags", flags, coordinator, num_processes, process_id)

    variables = {
        name: environ.get(name) for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    }
    if any(value is not None for value in variables.values()):
        return _explicit_setup(
            "environment",
            variables,
            variables[ENV_COORDINATOR],
            _parse_int(variables[ENV_NUM_PROCESSES], ENV_NUM_PROCESSES),
            _parse_int(variables[ENV_PROCESS_ID], ENV_PROCESS_ID),
        )

    if auto or _slurm_tasks(environ) > 1:
        return DistributedSetup(method="auto", process_id=-1, num_processes=-1)
    return DistributedSetup(method="single", process_id=0, num_processes=1)


def _explicit_setup(
    method: str,
    given: dict[str, object],
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
) -> DistributedSetup:
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"incomplete multi-host settings: {', '.join(missing)} missing; set all of "
            f"{', '.join(given)} or none of them"
        )
    # The option or variable names, in the order coordinator, process count, process index.
    coordinator_name, count_name, index_name = given
    host, _, port = coordinator.rpartition(":")
    if "://" in coordinator or any(character.isspace() for character in coordinator):
        raise ValueError(
            f"invalid {coordinator_name} = {coordinator!r}: expected HOST:PORT without a URL "
            "scheme or spaces, such as 10.0.0.1:1234"
        )
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"invalid {coordinator_name} = {coordinator!r}: expected HOST:PORT with a port in "
            "1-65535"
        )
    if num_processes < 1:
        raise ValueError(f"invalid {count_name} = {num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"invalid {index_name} = {process_id}: must lie in 0 to {count_name} - 1 = "
            f"{num_processes - 1}"
        )
    return DistributedSetup(
        method=method, process_id=process_id, num_processes=num_processes, coordinator=coordinator
    )


def _parse_int(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {name} = {text!r}: expected an integer") from None


def _slurm_tasks(environ) -> int:
    """Return the task count of the current SLURM job step, or 0 outside `srun`."""
    if "SLURM_STEP_ID" not in environ:
        return 0
    text = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "0"
    return int(text) if text.isdigit() else 0


def is_primary() -> bool:
    """Return True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def process_key(key: jax.Array) -> jax.Array:
    """Fold the process index into `key`, for randomness that each process draws alone."""
    return jax.random.fold_in(key, jax.process_index())


def check_shared_directory(directory: str | Path) -> None:
    """Check that every process can read the files that process 0 writes in `directory`.

    Every process of a multi-process run must call this after process 0 has created
    `directory`; a single process returns at once. Process 0 writes a marker file named after a
    random token that it broadcasts, every process reads it back, and process 0 removes it.
    Without this check a directory that is not shared makes the first checkpoint save wait
    forever for files the other hosts never see.

    Raises:
        ValueError: process 0 cannot write the marker, or some process cannot read it, so
            `directory` is not shared.
    """
    if jax.process_count() == 1:
        return
    directory = Path(directory)
    token = np.int32(int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    token = int(multihost_utils.broadcast_one_to_all(token))
    marker = directory / f"{SHARED_MARKER_PREFIX}{token}"
    write_error = None
    if is_primary():
        try:
            marker.write_text(str(token))
        except OSError as error:
            # Raise only after the gather below, so the other processes do not wait forever.
            write_error = error
    multihost_utils.sync_global_devices("rlli_jax.distributed: shared marker written")
    seen = np.int32(_reads_marker(marker, token, SHARED_MARKER_WAIT_S))
    # The gather also waits until every process has tried to read the marker, so it can go now.
    flags = np.asarray(multihost_utils.process_allgather(seen)).reshape(-1)
    if is_primary():
        if write_error is not None:
            raise ValueError(
                f"failed to write {str(marker)!r} in the output directory: {write_error}"
            ) from write_error
        marker.unlink(missing_ok=True)
    blind = [index for index, flag in enumerate(flags) if not flag]
    if blind:
        raise ValueError(
            f"output directory {str(directory)!r} is not shared: processes {blind} cannot see "
            "the files that process 0 writes there; pass an --out directory on a file system "
            "that every host mounts at the same path"
        )


def _reads_marker(marker: Path, token: int, wait_s: float) -> bool:
    """Return True once `marker` can be read and contains `token`, or False after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if marker.read_text() == str(token):
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
