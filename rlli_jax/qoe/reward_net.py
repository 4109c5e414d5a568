"""The persona reward network r_phi(traits, quality, log latency) -> MOS in [1, 5], and checkpoints.

`RewardNetQoE` implements the `QoEModel` protocol: the object is static (its hidden sizes), and
its parameters are a pytree

    {"network": flax params, "input_mean": [7], "input_std": [7]}

so the environment stores them in `EnvParams.qoe_params` and a checkpoint with the same hidden
sizes can be swapped in without recompiling.

A checkpoint is an orbax directory with two items: `params` (that pytree) and `metadata` (JSON:
format name and version, hidden sizes, input names, training config, dataset hash, metrics).
"""

import dataclasses
import functools
import glob
import json
import secrets
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.qoe.personas import TRAIT_NAMES
from rlli_jax.qoe.simulator import MIN_LATENCY_S

INPUT_NAMES = (*TRAIT_NAMES, "quality", "log_latency_s")
NUM_INPUTS = len(INPUT_NAMES)
DEFAULT_HIDDEN_SIZES = (64, 64)
CHECKPOINT_FORMAT = "rlli_jax.reward_net"
CHECKPOINT_FORMAT_VERSION = 1
# The shipped default, distilled from the shipped simulated ratings (docs/qoe.md).
DEFAULT_CHECKPOINT_NAME = "reward_net_simulated_v1"
# Top-level entries of a checkpoint directory: the two orbax items, the files orbax 0.12 writes
# beside them, and the metrics.json of scripts/distill_reward.py. An overwrite deletes the whole
# directory, so it is rejected when anything else is there.
CHECKPOINT_ENTRIES = frozenset(
    {"params", "metadata", "_CHECKPOINT_METADATA", "commit_success.txt", "metrics.json"}
)


class RewardMLP(nn.Module):
    """MLP from normalised inputs [..., 7] to MOS [...] in [1, 5] (a scaled sigmoid output)."""

    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        hidden = inputs
        for size in self.hidden_sizes:
            hidden = nn.silu(nn.Dense(size)(hidden))
        logit = nn.Dense(1)(hidden)[..., 0]
        return 1.0 + 4.0 * jax.nn.sigmoid(logit)


def reward_net_inputs(traits: jax.Array, quality: jax.Array, latency_s: jax.Array) -> jax.Array:
    """Stack the raw network inputs [..., 7]: traits [..., 5], quality [...], log latency (s)."""
    log_latency = jnp.log(jnp.maximum(latency_s, MIN_LATENCY_S))
    quality, log_latency = jnp.broadcast_arrays(quality, log_latency)
    return jnp.concatenate([traits, quality[..., None], log_latency[..., None]], axis=-1)


def validate_hidden_sizes(hidden_sizes) -> tuple[int, ...]:
    """Return `hidden_sizes` as a tuple after checking that it is a non-empty list of ints > 0.

    Raises:
        ValueError: naming the value and the rule; a string such as "64,64" is rejected whole.
    """
    rule = "hidden_sizes must be a non-empty list or tuple of positive ints"
    if not isinstance(hidden_sizes, list | tuple):
        raise ValueError(f"{rule}, got {hidden_sizes!r} of type {type(hidden_sizes).__name__}")
    sizes = tuple(hidden_sizes)
    valid = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not sizes or not valid:
        raise ValueError(f"{rule}, got {sizes!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class RewardNetQoE:
    """The distilled persona reward network as a `QoEModel`.

    `checkpoint` is the directory `default_params()` loads; None means the shipped default.
    """

    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    checkpoint: str | None = None
    name: str = "reward_net"

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", validate_hidden_sizes(self.hidden_sizes))

    @property
    def network(self) -> RewardMLP:
        return RewardMLP(hidden_sizes=self.hidden_sizes)

    def __call__(self, qoe_params, traits, quality, latency_s):
        """Return MOS [...] from traits [..., 5], quality [...] and latency in seconds [...]."""
        inputs = reward_net_inputs(traits, quality, latency_s)
        normalised = (inputs - qoe_params["input_mean"]) / qoe_params["input_std"]
        return self.network.apply({"params": qoe_params["network"]}, normalised)

    def init_params(
        self, key: jax.Array, input_mean: Any = None, input_std: Any = None
    ) -> dict[str, Any]:
        """Initialise parameters; the normalisation defaults to the identity."""
        network = self.network.init(key, jnp.zeros((1, NUM_INPUTS)))["params"]
        mean = jnp.zeros(NUM_INPUTS) if input_mean is None else input_mean
        std = jnp.ones(NUM_INPUTS) if input_std is None else input_std
        return {
            "network": network,
            "input_mean": jnp.asarray(mean, jnp.float32),
            "input_std": jnp.asarray(std, jnp.float32),
        }

    def default_params(self) -> dict[str, Any]:
        """Load the parameters of `checkpoint` (the shipped default when None); cached."""
        path = self.checkpoint if self.checkpoint is not None else str(default_checkpoint_path())
        _, params, _ = _load_cached(str(Path(path).resolve()), self.hidden_sizes)
        return params

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "RewardNetQoE":
        """Build the model whose `default_params()` are a checkpoint's, with its hidden sizes.

        Raises:
            ValueError: the checkpoint is missing, of another format version, or malformed.
        """
        model, _, _ = _load_cached(str(Path(path).resolve()), None)
        return model


def default_checkpoint_path() -> Path:
    """Return the directory of the shipped default checkpoint."""
    return Path(str(resources.files("rlli_jax.qoe") / "data" / DEFAULT_CHECKPOINT_NAME))


def _tree_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


# Characters of a checkpoint's name that its hidden save folders repeat.
HIDDEN_NAME_CHARS = 64


def save_reward_net(
    path: str | Path,
    model: RewardNetQoE,
    params: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save parameters and JSON metadata as an orbax checkpoint directory; returns its path.

    `metadata` is merged under the format fields this module writes (format, version, hidden
    sizes, input names); it must be JSON-serialisable. With `overwrite`, an existing `path` is
    replaced, but only when `check_checkpoint_destination` accepts it. The new checkpoint is
    written to a hidden folder beside `path` first and renamed into place, so a failed save
    keeps the old one and a killed save of a new path leaves nothing at `path`.

    Raises:
        ValueError: `path` exists and `overwrite` is False, `path` is something other than an
            empty directory or a reward-net checkpoint, or the params do not fit the model.
    """
    import orbax.checkpoint as ocp  # imported here: orbax is slow to import and only needed here

    path = Path(path).resolve()
    check_checkpoint_destination(path, overwrite)
    expected = _tree_shapes(jax.eval_shape(model.init_params, jax.random.key(0)))
    _check_shapes(path, _tree_shapes(params), expected, model.hidden_sizes)

    document = dict(metadata or {})
    document.update(
        format=CHECKPOINT_FORMAT,
        format_version=CHECKPOINT_FORMAT_VERSION,
        hidden_sizes=list(model.hidden_sizes),
        input_names=list(INPUT_NAMES),
    )
    params = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float32), params)
    # orbax's `force=True` deletes the old directory before writing the new one, so a failed
    # or killed save would lose it. The new checkpoint is written beside it and swapped in.
    # A new path is written the same way, so that a killed save leaves only hidden folders.
    token = secrets.token_hex(4)
    # The hidden names are cut to a prefix of the name, so a name near the file system's
    # limit (255 bytes) still fits with orbax's `.orbax-checkpoint-tmp` suffix.
    hidden_name = path.name[:HIDDEN_NAME_CHARS]
    target = path.with_name(f".partial.{hidden_name}.{token}")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(
                target,
                ocp.args.Composite(
                    params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(document)
                ),
            )
    except BaseException:
        # orbax 0.12 writes into `<target>.orbax-checkpoint-tmp` before renaming it. The name
        # is escaped because a path such as `net[1]` would otherwise be read as a pattern.
        for partial in path.parent.glob(f"{glob.escape(target.name)}*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        replaced = path.with_name(f".replaced.{hidden_name}.{token}")
        # NOTE: a kill between these two renames leaves both checkpoints under hidden names.
        path.rename(replaced)
        target.rename(path)
        shutil.rmtree(replaced)
    else:
        target.rename(path)
    return path


def check_checkpoint_destination(path: str | Path, overwrite: bool) -> None:
    """Check that a checkpoint may be written to `path` without deleting anything else.

    A missing `path` is accepted. An existing one is accepted only with `overwrite`, and only
    when it is an empty directory or a reward-net checkpoint (metadata format
    `CHECKPOINT_FORMAT`) with no top-level entries beyond `CHECKPOINT_ENTRIES`.

    Raises:
        ValueError: naming the path and why it may not be replaced.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        # Checked first, because overwrite=True would not help here.
        raise ValueError(
            f"cannot write a checkpoint to {path}: it exists and is not a directory, so it is "
            "not a reward-net checkpoint; choose another output path"
        )
    if not overwrite:
        raise ValueError(f"checkpoint directory already exists: {path}; pass overwrite=True")
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return
    metadata_file = path / "metadata" / "metadata"
    try:
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"cannot overwrite {path}: it is neither empty nor a reward-net checkpoint "
            f"({metadata_file} does not contain format {CHECKPOINT_FORMAT!r}); "
            "choose another output path"
        )
    unexpected = [name for name in entries if name not in CHECKPOINT_ENTRIES]
    if unexpected:
        raise ValueError(
            f"cannot overwrite reward-net checkpoint {path}: it also contains {unexpected}, "
            "which overwriting would delete; move them out or choose another output path"
        )


def _check_shapes(path, found: dict, expected: dict, hidden_sizes) -> None:
    problems = []
    for name in sorted(expected.keys() - found.keys()):
        problems.append(f"{name} is missing")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"{name} is unexpected")
    for name in sorted(expected.keys() & found.keys()):
        if found[name] != expected[name]:
            problems.append(f"{name} has shape {found[name]}, expected {expected[name]}")
    if problems:
        raise ValueError(
            f"reward-net checkpoint {path} does not match hidden sizes {tuple(hidden_sizes)}: "
            + "; ".join(problems)
        )


def load_reward_net(
    path: str | Path, hidden_sizes: tuple[int, ...] | None = None
) -> tuple[RewardNetQoE, dict[str, Any], dict[str, Any]]:
    """Load a checkpoint; returns (model, params, metadata).

    With `hidden_sizes`, the checkpoint must have exactly those (the environment's model is
    static, so another architecture would need a new environment).

    Raises:
        ValueError: naming the file and the problem: not found, not a reward-net checkpoint,
            metadata that is not valid JSON, another format version, hidden sizes that are
            invalid or differ from the expected ones, arrays of the wrong shape, or files
            that are missing or cut short.
    """
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if not path.is_dir():
        raise ValueError(f"reward-net checkpoint not found: {path} is not a directory")
    if not (path / "metadata").is_dir() or not (path / "params").is_dir():
        raise ValueError(
            f"{path} is not a reward-net checkpoint: expected orbax items 'params' and 'metadata'"
        )

    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        try:
            restored = checkpointer.restore(
                path, ocp.args.Composite(metadata=ocp.args.JsonRestore())
            )
        except json.JSONDecodeError as error:
            raise ValueError(
                f"reward-net checkpoint {path}: metadata file {path / 'metadata' / 'metadata'} "
                f"is not valid JSON: {error}"
            ) from None
        except (OSError, ValueError) as error:
            raise _damaged_checkpoint_error(path, "metadata", error) from None
        metadata = restored["metadata"]
        if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} is not a reward-net checkpoint: metadata format is "
                f"{metadata.get('format') if isinstance(metadata, dict) else metadata!r}, "
                f"expected {CHECKPOINT_FORMAT!r}"
            )
        version = metadata.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"reward-net checkpoint {path} has format version {version!r}, but this version "
                f"of rlli_jax reads version {CHECKPOINT_FORMAT_VERSION}; "
                "distil it again with scripts/distill_reward.py"
            )
        try:
            stored_sizes = validate_hidden_sizes(metadata.get("hidden_sizes"))
        except ValueError as error:
            raise ValueError(f"reward-net checkpoint {path}: {error}") from None
        if hidden_sizes is not None and tuple(hidden_sizes) != stored_sizes:
            raise ValueError(
                f"reward-net checkpoint {path} has hidden sizes {stored_sizes}, "
                f"expected {tuple(hidden_sizes)}"
            )
        stored_inputs = tuple(metadata.get("input_names") or ())
        if stored_inputs != INPUT_NAMES:
            raise ValueError(
                f"reward-net checkpoint {path} has inputs {stored_inputs}, expected {INPUT_NAMES}"
            )

        model = RewardNetQoE(hidden_sizes=stored_sizes, checkpoint=str(path))
        try:
            restored = checkpointer.restore(
                path, ocp.args.Composite(params=ocp.args.StandardRestore())
            )
        except (OSError, ValueError) as error:
            # A file of params/ is missing or cut short: orbax 0.12 raises FileNotFoundError
            # or TensorStore's ValueError, neither of which names the checkpoint.
            raise _damaged_checkpoint_error(path, "params", error) from None
        params = restored["params"]

    expected = _tree_shapes(jax.eval_shape(model.init_params, jax.random.key(0)))
    _check_shapes(path, _tree_shapes(params), expected, stored_sizes)
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
    return model, params, metadata


def _damaged_checkpoint_error(path: Path, item: str, error: Exception) -> ValueError:
    """Build the error for an orbax item of a checkpoint that cannot be read."""
    # TensorStore appends its whole JSON spec to the message; the text before it names the file.
    reason = str(error).split(" [tensorstore_spec=")[0]
    return ValueError(
        f"reward-net checkpoint {path} is damaged: failed to read {item} "
        f"({type(error).__name__}: {reason}); copy the checkpoint again or distil it again "
        "with scripts/distill_reward.py"
    )


def _load_cached(path: str, hidden_sizes: tuple[int, ...] | None):
    """Load a checkpoint once per version of its files.

    The cache key contains every file's size and modification time, so a checkpoint rewritten
    in place (`save_reward_net(..., overwrite=True)`) is read again.
    """
    return _load_cached_version(path, hidden_sizes, _files_version(Path(path)))


def _files_version(path: Path) -> tuple:
    """Return (relative name, size, mtime in ns) of every file under `path`, sorted."""
    if not path.is_dir():
        return ()
    entries = []
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@functools.lru_cache(maxsize=16)
def _load_cached_version(path: str, hidden_sizes: tuple[int, ...] | None, version: tuple):
    del version  # part of the cache key only
    return load_reward_net(path, hidden_sizes)
