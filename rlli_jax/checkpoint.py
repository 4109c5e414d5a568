"""Orbax checkpoints of a training state, with fallback past corrupt or partial checkpoints.

Each checkpoint is one step directory written by `orbax.checkpoint.CheckpointManager`
(orbax-checkpoint 0.12): the state pytree (`StandardSave`) and a JSON metadata item. Orbax
writes into a temporary directory and renames it when the write has finished, so a process
killed mid-write leaves no step directory, only a temporary one that the next manager removes.
A step directory damaged later (a truncated or deleted file) fails to restore; `restore_latest`
then reports it, renames it to `corrupt-<step>` so the resumed run can write that step again,
and falls back to the previous checkpoint. Orbax 0.12 verifies no checksum on restore, so a
changed byte inside a data file restores silently as a different value. Each save therefore
stores a CRC-32 of the state's bytes in the metadata (`state_checksum`), and a restored
state that differs from it is treated as damaged too. Checkpoints saved without one, and
every checkpoint of a multi-process run, restore unchecked. A checkpoint whose arrays differ
in shape or dtype from the restore target (a config edited after the checkpoints were
written) is skipped without reading its data, and the error names the first array that
differs. A read-only `Checkpointer` (used to evaluate a run) creates nothing and renames
nothing. A sweep's population checkpoint padded for another device count is padded again
for the current one (`restore_latest(population_size=...)`).

Saves are synchronous: `save` returns after the checkpoint is final on disk.
"""

import dataclasses
import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rlli_jax import sharding

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """A restored checkpoint, and the newer ones that failed to restore."""

    step: int
    state: Any
    metadata: dict[str, Any]
    # (step, error message) of each newer checkpoint that could not be restored.
    skipped: tuple[tuple[int, str], ...] = ()


def _drop_read_only_warning(record: logging.LogRecord) -> bool:
    """Return False for orbax's "Given directory is read only" log record, True otherwise."""
    return not str(record.msg).startswith("Given directory is read only")


class Checkpointer:
    """Synchronous orbax checkpoint manager for one run directory.

    With `read_only=True` the directory must exist; nothing is created, cleaned up, renamed or
    saved.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise ValueError(f"checkpoint directory {self.directory} not found")
        # The read-only options are those orbax would otherwise reset with a logged warning.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        # Naming the handlers up front lets `item_metadata` read a checkpoint's array shapes
        # before anything was saved or restored through this manager.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "metadata": ocp.JsonCheckpointHandler(),
        }
        # Orbax logs a warning for every read-only manager, although read-only is the request.
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(_drop_read_only_warning)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=handlers
            )
        finally:
            absl_logger.removeFilter(_drop_read_only_warning)

    def all_steps(self) -> list[int]:
        """Return the steps of the finished checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict[str, Any]) -> None:
        """Write `state` (a pytree of arrays) and JSON-serialisable `metadata` as `step`.

        The metadata is stored with the state's checksum under `CHECKSUM_KEY`, a name the
        caller must not use.
        """
        if self.read_only:
            raise ValueError(f"checkpoint directory {self.directory} was opened read-only")
        if CHECKSUM_KEY in metadata:
            raise ValueError(f"metadata key {CHECKSUM_KEY!r} is reserved for the checksum")
        checksum = state_checksum(state)
        if checksum is not None:
            metadata = {**metadata, CHECKSUM_KEY: checksum}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            metadata=ocp.args.JsonSave(metadata),
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore_latest(
        self,
        target: Any,
        check_metadata: Callable[[int, Any], str | None] | None = None,
        population_size: int | None = None,
    ) -> RestoredCheckpoint | None:
        """Restore the newest checkpoint that reads back whole, shaped like `target`.

        Args:
            target: a pytree of arrays or `jax.ShapeDtypeStruct` with the saved structure.
            check_metadata: called with a step and its JSON metadata, returns what is wrong
                with the metadata, or None when it is valid.
            population_size: the real members of a population whose every array has a leading
                population axis, padded in `target` to a multiple of the device count. A
                checkpoint whose arrays differ from `target` only in that axis (padded for
                another device count) is then read to the host, and its first
                `population_size` rows are padded again to the target's size by repeating
                the last one (`rlli_jax.sharding.pad`) and placed with the target's shardings.

        Returns:
            None when there is no checkpoint. A checkpoint that fails to restore, does not
            match `target`, or fails `check_metadata`, is logged as a warning, listed in
            `skipped`, and the next older one is tried.

        Raises:
            ValueError: checkpoints exist but none of them can be restored.
        """
        skipped = []
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        steps = self.all_steps()
        for step in reversed(steps):
            step_target = abstract
            message = self._mismatch(step, abstract)
            saved_rows = None
            if message is not None and population_size is not None:
                saved_rows = self._saved_population_rows(step, abstract, population_size)
            if saved_rows is not None:
                # NumPy leaves make orbax restore to host memory, in the saved shapes.
                step_target = jax.tree.map(
                    lambda leaf, rows=saved_rows: np.empty((rows, *leaf.shape[1:]), leaf.dtype),
                    abstract,
                )
                message = None
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(step_target),
                metadata=ocp.args.JsonRestore(),
            )
            metadata = None
            if message is None:
                try:
                    restored = self._manager.restore(step, args=args)
                except Exception as error:  # noqa: BLE001  (orbax raises many types on bad files)
                    message = _error_summary(error)
            if message is None:
                metadata = restored.metadata
                saved_checksum = None
                if isinstance(metadata, dict):
                    metadata = dict(metadata)
                    saved_checksum = metadata.pop(CHECKSUM_KEY, None)
                # Computed only when one was saved: it copies the whole state to the host.
                restored_checksum = (
                    None if saved_checksum is None else state_checksum(restored.state)
                )
                if None not in (saved_checksum, restored_checksum) and (
                    saved_checksum != restored_checksum
                ):
                    message = (
                        f"the restored arrays differ from the checksum saved with them "
                        f"({saved_checksum!r}), so a data file of the checkpoint was changed "
                        "or damaged after it was written"
                    )
            if message is None and check_metadata is not None:
                message = check_metadata(step, metadata)
            # Each process reads its own shards, so one process can fail alone; then every
            # process skips this step.
            if not _all_processes_agree(message is None) and message is None:
                message = "failed to restore on another process"
            if message is not None:
                older = "trying an older one" if step != steps[0] else "no older one is left"
                logger.warning(
                    "checkpoint %d in %s failed to restore, %s: %s",
                    step,
                    self.directory,
                    older,
                    message,
                )
                skipped.append((step, message))
                continue
            if skipped and not self.read_only:
                self._quarantine([bad_step for bad_step, _ in skipped])
            state = restored.state
            if saved_rows is not None:
                state = _repad_population(state, target, population_size)
                logger.info(
                    "checkpoint %d in %s contains %d population rows, padded for another "
                    "device count; restored its %d members and padded them to %d rows",
                    step,
                    self.directory,
                    saved_rows,
                    population_size,
                    _leading_rows(abstract),
                )
            return RestoredCheckpoint(
                step=step,
                state=state,
                metadata=dict(metadata),
                skipped=tuple(skipped),
            )
        if steps:
            details = "; ".join(f"step {step}: {message}" for step, message in skipped)
            raise ValueError(f"no checkpoint in {self.directory} could be restored ({details})")
        return None

    def _mismatch(self, step: int, abstract: Any) -> str | None:
        """Describe the first array of `step` whose shape or dtype differs from `abstract`.

        Returns None when they match, or when the checkpoint's array metadata cannot be read
        (the restore then reports that damage).
        """
        try:
            saved = _shapes(self._manager.item_metadata(step)["state"].tree)
        except Exception:  # noqa: BLE001  (damaged metadata: the restore reports it)
            return None
        expected = _shapes(abstract)
        for path in sorted(set(saved) | set(expected)):
            if saved.get(path) != expected.get(path):
                name = "/".join(path)
                # A run started from Python also depends on code outside its config.
                cause = (
                    "was the run's config.yaml edited after the checkpoint was written? For a "
                    "run started from Python: is its ACTOR_FACTORIES entry, or the environment "
                    "passed with env=, built the same way as when it was trained?"
                )
                if _differ_in_width_only(saved.get(path), expected.get(path)):
                    cause = "is jax_enable_x64 (JAX_ENABLE_X64) set differently than in the run?"
                return (
                    f"the checkpoint does not match the config: array {name} is "
                    f"{_describe(saved.get(path))} in the checkpoint and "
                    f"{_describe(expected.get(path))} for this config ({cause})"
                )
        return None

    def _saved_population_rows(self, step: int, abstract: Any, population_size: int) -> int | None:
        """Return the leading axis size that every array of `step` shares, or None.

        It is returned only when the arrays differ from `abstract` in that size alone and have
        at least `population_size` rows.
        """
        try:
            saved = _shapes(self._manager.item_metadata(step)["state"].tree)
        except Exception:  # noqa: BLE001  (damaged metadata: the restore reports it)
            return None
        expected = _shapes(abstract)
        if set(saved) != set(expected) or not saved:
            return None
        rows = set()
        for path, (shape, dtype) in saved.items():
            expected_shape, expected_dtype = expected[path]
            if not shape or not expected_shape:
                return None
            if shape[1:] != expected_shape[1:] or dtype != expected_dtype:
                return None
            rows.add(shape[0])
        if len(rows) != 1 or min(rows) < population_size:
            return None
        return rows.pop()

    def _quarantine(self, steps: list[int]) -> None:
        """Rename unreadable step directories to `corrupt-<step>[-n]`, which orbax ignores, so
        the resumed run can save those steps again; the files are kept for inspection.

        In a multi-process run every process skips the same steps (`restore_latest` agrees
        across processes), process 0 renames them, and every process waits for it before
        reloading the list of steps.
        """
        if jax.process_index() == 0:
            for step in steps:
                step_dir = self.directory / str(step)
                if not step_dir.exists():
                    continue
                target = self.directory / f"corrupt-{step}"
                suffix = 1
                while target.exists():
                    target = self.directory / f"corrupt-{step}-{suffix}"
                    suffix += 1
                step_dir.rename(target)
                logger.warning("moved unreadable checkpoint %s to %s", step_dir, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rlli_jax.checkpoint: quarantined")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


# Metadata key of the state checksum that `Checkpointer.save` stores.
CHECKSUM_KEY = "state_checksum"


def state_checksum(state: Any) -> str | None:
    """Return the CRC-32 of the dtype, shape and bytes of every array in `state`, as 8 hex
    digits, or None when some array is not fully addressable by this process.

    CRC-32 detects every change of up to 32 consecutive bits, so it finds damage, not
    deliberate edits. It runs on the host (zlib) and so reads an array on an accelerator back
    once more, because a jitted device-side sum over the 134 arrays of a training state
    compiles for seconds on a CPU. In a multi-process run each process contains only part of a
    global array, so no checksum is computed or checked there.
    """
    checksum = 0
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        array = np.ascontiguousarray(np.asarray(leaf))
        checksum = zlib.crc32(f"{array.dtype.str}{array.shape}".encode(), checksum)
        checksum = zlib.crc32(array.reshape(-1).view(np.uint8), checksum)
    return f"{checksum:08x}"


def _leading_rows(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


def _repad_population(host_state: Any, target: Any, population_size: int) -> Any:
    """Keep the first `population_size` rows of every host array, pad them to the leading size
    of `target` by repeating the last row, and place each with its `target` leaf's sharding."""
    padded = sharding.pad(sharding.unpad(host_state, population_size), _leading_rows(target))

    def place(leaf: np.ndarray, spec: Any) -> jax.Array:
        return jax.make_array_from_callback(leaf.shape, spec.sharding, lambda index: leaf[index])

    return jax.tree.map(place, padded, target)


def _shapes(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """Map each array leaf's key path, as strings, to its (shape, dtype name)."""

    def is_array(node: Any) -> bool:
        return hasattr(node, "shape") and hasattr(node, "dtype")

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_array)[0]
    return {
        tuple(_key_name(key) for key in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
        for path, leaf in leaves
        if is_array(leaf)
    }


def _key_name(key: Any) -> str:
    """Return the attribute name, dict key or index of one step of a key path."""
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _differ_in_width_only(first: Any, second: Any) -> bool:
    """Return True when two (shape, dtype) entries differ only as 32-bit and 64-bit types."""
    if first is None or second is None or first[0] != second[0]:
        return False
    return {first[1], second[1]} in ({"float32", "float64"}, {"int32", "int64"})


def _describe(entry: tuple[tuple[int, ...], str] | None) -> str:
    if entry is None:
        return "absent"
    shape, dtype = entry
    return f"{shape} {dtype}"


def _all_processes_agree(ok: bool) -> bool:
    """Return True when `ok` is True on every process; every process must call this."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# Maximum length of the error text kept in a log line or a RestoredCheckpoint.skipped entry.
MAX_ERROR_CHARS = 300


# A failed TensorStore read appends its whole JSON spec (about 60 lines) after this text; the
# text before it already names the array that failed.
TENSORSTORE_DETAILS = "See full TensorStore details"


def _error_summary(error: Exception) -> str:
    """Return the error's type and message on one line, at most MAX_ERROR_CHARS long."""
    text = str(error).split(TENSORSTORE_DETAILS)[0]
    summary = f"{type(error).__name__}: {' '.join(text.split())}"
    if len(summary) > MAX_ERROR_CHARS:
        summary = summary[: MAX_ERROR_CHARS - 3] + "..."
    return summary
