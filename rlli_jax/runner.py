"""The Python loop around the compiled training program: chunks, metrics, checkpoints, summary.

`run_training` owns a run directory:
    config.yaml        resolved config (read back by `--resume` and `scripts/evaluate.py`)
    env_data.sha256    digest of the reward network and prompt bank at the first start
    metrics.jsonl/csv  one training row per chunk, evaluation rows in the JSONL
    checkpoints/       orbax checkpoints of the whole `TrainState`
    summary.json       final evaluation of the policy and of the baselines, timings
                       (train_s and env_steps_per_s cover every segment of a resumed run,
                       from the first one that stored train_s in its checkpoints)
    summary-<N>.json   the summary of an earlier end at N environment steps, kept when a
                       finished run is extended or resumed from an older checkpoint
    curves.png         learning curves
    tensorboard/       TensorBoard event files, with `logging.tensorboard: true`
    .lock              locked while a single-process run trains there (POSIX systems)

A resumed run restores the newest readable checkpoint, drops metric rows written after it and
continues; on CPU it reaches bit-identical parameters to a run that was never interrupted,
because every chunk is the same compiled program applied to the same state.

With several devices (or several processes joined by `rlli_jax.distributed`) the run shards its
environment axis over all of them (`rlli_jax.sharding.env_axis_shardings`): environment
states, observations and returns are split, parameters, optimiser states and the replay buffer
are replicated. It is still one run with one set of parameters, initialised from one key, and
every environment, on whichever process, draws its own key from it. In a multi-process run
every process calls this function with the same config and run directory (a file system all
hosts share), every process takes part in checkpointing, and only process 0 writes the config,
metrics, summary and plot.

This module never prints; progress goes to the `on_chunk` callback.
"""

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

try:
    import fcntl
except ImportError:  # Windows has no flock, so runs there are not locked
    fcntl = None

from rlli_jax import sharding
from rlli_jax.checkpoint import Checkpointer
from rlli_jax.config import Config, check_gradient_steps, load_config, save_config
from rlli_jax.distributed import (
    check_on_every_process,
    check_shared_directory,
    processes_that_differ,
)
from rlli_jax.env.params import EnvParams
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.evaluation import check_evaluation_memory, evaluate_baselines, summarize
from rlli_jax.metrics import (
    CSV_NAME,
    JSONL_NAME,
    TENSORBOARD_DIR,
    MetricsWriter,
    plot_learning_curves,
)
from rlli_jax.outputs import write_json_atomic, write_text_atomic
from rlli_jax.qoe.reward_net import RewardNetQoE
from rlli_jax.train import (
    TrainProgram,
    TrainState,
    check_chunk_memory,
    find_nonfinite,
    make_train,
    state_from_checkpoint,
    state_to_checkpoint,
    summarize_chunk,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
# The file that marks a sweep's output directory, and the folder of its groups (see
# `rlli_jax.population`).
SWEEP_CONFIG_NAME = "sweep.yaml"
SWEEP_GROUPS_DIR = "groups"
SUMMARY_NAME = "summary.json"
CURVES_NAME = "curves.png"
CHECKPOINT_DIR = "checkpoints"
LOCK_NAME = ".lock"
# Config keys that may change between two starts of a run without changing its training:
# the run's length, how often it evaluates and checkpoints, logging, and the reward network's
# path, whose data `ENV_DATA_DIGEST_NAME` checks.
RESUME_EDITABLE_KEYS = frozenset(
    {
        "env.reward_net",
        "train.total_env_steps",
        "train.eval_episodes",
        "train.eval_every_chunks",
        "train.checkpoint_every_chunks",
        "train.max_checkpoints",
        "logging.tensorboard",
        "logging.progress_bar",
    }
)
# Checkpoint metadata key of the first chunk that the stored `train_s` covers. It is not 0
# when the run was resumed from a checkpoint written before the runner stored `train_s`.
TRAIN_S_FROM_CHUNK_KEY = "train_s_from_chunk"
# Checkpoint metadata key of `training_settings`, compared on resume.
TRAINING_SETTINGS_KEY = "training_settings"
# SHA-256 of the environment data read from files (reward network weights, prompt bank).
ENV_DATA_DIGEST_NAME = "env_data.sha256"
# Files, then folders, that a new run writes in its directory before its first chunk.
_NEW_RUN_PATHS = (
    CONFIG_NAME,
    ENV_DATA_DIGEST_NAME,
    JSONL_NAME,
    CSV_NAME,
    CHECKPOINT_DIR,
    TENSORBOARD_DIR,
)


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, metric or parameter."""


@dataclasses.dataclass(frozen=True)
class ChunkProgress:
    """What `on_chunk` receives after every chunk."""

    chunk: int  # 1-based index of the chunk just finished
    num_chunks: int
    env_steps: int  # environment transitions collected so far
    env_steps_per_s: float  # throughput of this chunk, compile time excluded
    metrics: dict[str, float]


def train_key(seed: int) -> jax.Array:
    """Return the key of the training run of `seed`."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def eval_key(seed: int) -> jax.Array:
    """Return the key of the final evaluation; the same for the policy and the baselines."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def env_data_digest(env: DiffusionServiceEnv, include_classes: bool = True) -> str:
    """Return the SHA-256 of the environment data that the config names only by path.

    That is the QoE model's parameters (the reward network's weights, from `env.reward_net`
    or the packaged checkpoint) and the prompt bank's similarity matrix and topics. An
    environment from Python (`run_training(..., env=env)`) whose class is not
    `DiffusionServiceEnv`, or whose QoE model is not a `RewardNetQoE`, also adds those classes'
    names (`__qualname__`, without the module, which differs between a class defined in the
    script that runs and the same class imported), unless `include_classes` is False. So
    evaluating or resuming such a run with the configured environment fails. A config-built
    environment adds nothing, so its digest depends on the data files only.
    """
    # NOTE: only the class names are hashed, not their code or module, so editing a custom
    # class between two starts of a run, or another class of the same name, goes unnoticed.
    custom_classes = []
    if include_classes and type(env) is not DiffusionServiceEnv:
        custom_classes.append(f"environment class {type(env).__qualname__}")
    if include_classes and type(env.qoe_model) is not RewardNetQoE:
        custom_classes.append(f"QoE model class {type(env.qoe_model).__qualname__}")
    params = env.default_params
    data = {
        "qoe_params": params.qoe_params,
        "prompt_similarity": params.prompt_similarity,
        "prompt_topics": params.prompt_topics,
    }
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(data):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for name in custom_classes:
        digest.update(f"{name}\n".encode())
    return digest.hexdigest()


def save_env_data_digest(folder: Path, env: DiffusionServiceEnv) -> None:
    """Write the digest of `env`'s data files to `folder` (replacing an older one)."""
    path = folder / ENV_DATA_DIGEST_NAME
    if path.is_dir():
        raise ValueError(f"{path} is a folder; remove it so the run can write its digest")
    write_text_atomic(path, env_data_digest(env) + "\n")


def check_env_data(folder: Path, env: DiffusionServiceEnv, write_missing: bool) -> None:
    """Compare `env`'s data with the digest saved in `folder` when the run started.

    A run reads its reward network and prompt bank from files at every start, so a file
    replaced between the first start and a resume or evaluation would silently change the
    rewards. A folder without a digest (written before digests were saved) passes, and gets
    the current digest when `write_missing` is True.

    Raises:
        ValueError: the saved digest is damaged, or differs from the current data's.
    """
    path = folder / ENV_DATA_DIGEST_NAME
    if not path.exists() and not path.is_symlink():
        if write_missing:
            save_env_data_digest(folder, env)
        return
    damaged = (
        f"{path} is damaged ({{}}); delete it to accept the current reward network and prompt "
        "bank, or restore it from a copy"
    )
    if not path.is_file():
        raise ValueError(damaged.format("it is not a readable file"))
    saved = path.read_text(encoding="utf-8", errors="replace").strip()
    if len(saved) != 64 or any(character not in "0123456789abcdef" for character in saved):
        raise ValueError(damaged.format(f"expected 64 hexadecimal digits, got {saved[:80]!r}"))
    if saved == env_data_digest(env):
        return
    if saved == env_data_digest(env, include_classes=False):
        # A run started with a custom environment before class names were hashed. The same
        # environment passed again is accepted, and a writing run upgrades the digest.
        if write_missing:
            save_env_data_digest(folder, env)
        return
    raise ValueError(
        f"the environment data differ from those {str(folder)!r} was started with "
        f"({path} contains the digest of the originals). Either the reward network "
        "(env.reward_net, or the packaged one) or the prompt bank changed since, so restore "
        "those files to continue or start a new run. Or the run was started from Python "
        "with its own environment (run_training(..., env=env)), which the run directory "
        "does not record, so pass that environment again: load_trained_run(run_dir, "
        "env=env) or run_training(..., resume=True, env=env)"
    )


def check_outside_checkpoints(path: Path, label: str) -> None:
    """Raise ValueError if `path` is, or lies inside, the checkpoint folder of a training run,
    where orbax would read a numbered folder as a checkpoint step. `label` names the path."""
    # resolve() follows symbolic links, so a link to a checkpoint folder is caught too.
    absolute = path.resolve()
    for folder in (absolute, *absolute.parents):
        if folder.name == CHECKPOINT_DIR and (folder.parent / CONFIG_NAME).is_file():
            raise ValueError(
                f"{label} {str(path)!r} is invalid: it is, or lies inside, the checkpoint folder "
                f"of the run {str(folder.parent)!r}; choose a folder outside that run"
            )


def check_outside_sweeps(path: Path, label: str) -> None:
    """Raise ValueError if `path` lies inside the folder of a sweep, whose groups and member
    folders the sweep writes. `label` names the path.

    A sweep folder contains both the saved sweep file and the groups folder. A sweep file alone
    is not enough, because users may keep their own sweep file under the same name.
    """
    for folder in path.resolve().parents:
        if (folder / SWEEP_CONFIG_NAME).is_file() and (folder / SWEEP_GROUPS_DIR).is_dir():
            raise ValueError(
                f"{label} {str(path)!r} is invalid: it lies inside the sweep in "
                f"{str(folder)!r}; choose a folder outside that sweep"
            )


def check_not_a_run_file(out: Path, run_dir: Path, example: str, option: str = "--out") -> None:
    """Raise ValueError if the output file `out` would replace a file that the training run in
    `run_dir` reads or writes. `example` names a free file in the run directory for the hint."""
    run_files = [
        CONFIG_NAME,
        ENV_DATA_DIGEST_NAME,
        LOCK_NAME,
        JSONL_NAME,
        CSV_NAME,
        SUMMARY_NAME,
        CURVES_NAME,
    ]
    protected = [run_dir / name for name in run_files]
    target = out.resolve()
    inside_checkpoints = (run_dir / CHECKPOINT_DIR).resolve() in target.parents
    if inside_checkpoints or any(target == path.resolve() for path in protected):
        raise ValueError(
            f"{option} = {str(out)!r} is invalid: it is a file of the run {str(run_dir)!r}; "
            f"choose another path, such as {example} in the run directory"
        )


def check_run_location(run_dir: Path) -> None:
    """Raise ValueError unless `run_dir` may hold a training run: it must not be a sweep's
    folder or one of its group folders, nor lie inside another run's checkpoints."""
    if (run_dir / SWEEP_CONFIG_NAME).exists():
        raise ValueError(
            f"{str(run_dir)!r} contains a sweep ({SWEEP_CONFIG_NAME}), not a training run; "
            "choose a new output directory for the run"
        )
    sweep_dir = run_dir.absolute().parent.parent
    if (
        run_dir.absolute().parent.name == SWEEP_GROUPS_DIR
        and (sweep_dir / SWEEP_CONFIG_NAME).exists()
    ):
        raise ValueError(
            f"{str(run_dir)!r} is a group of the sweep in {str(sweep_dir)!r}, not a training "
            "run: scripts/sweep.py on the sweep's folder resumes the sweep, and it writes each "
            "member's final evaluation to the group's results.json"
        )
    check_outside_checkpoints(run_dir, "run directory")


def load_run_config(run_dir: str | Path) -> Config:
    """Load the resolved config saved in a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ValueError(f"{str(run_dir)!r} is a file, not a run directory")
    # A sweep file alone may be the user's own sweep definition, as in `check_outside_sweeps`.
    is_sweep = (Path(run_dir) / SWEEP_CONFIG_NAME).is_file() and (
        Path(run_dir) / SWEEP_GROUPS_DIR
    ).is_dir()
    if not path.is_file() and is_sweep:
        raise ValueError(
            f"{str(run_dir)!r} contains a sweep ({SWEEP_CONFIG_NAME}), not a training run: "
            "its results.csv has one row of results per member, and rerunning scripts/sweep.py "
            "with this --out continues the sweep"
        )
    if not path.is_file():
        raise ValueError(f"{str(path)!r} not found: {str(run_dir)!r} is not a run directory")
    return load_config(path)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The device placement of a run's arrays, and the compiled entry points that keep it.

    `init(key_data, hyper)` takes the raw data of the training key (`jax.random.key_data`) and
    `run_chunk(state, hyper)` donates its state. Call both with the `key_data` and `hyper`
    fields, which are already on the run's devices.
    """

    init: Callable[[Any, Any], TrainState]
    run_chunk: Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]
    hyper: Any  # the program's default TrainHyperparams, on the devices of the run
    key_data: Any  # raw data of the training key, on the devices of the run
    restore_target: Any  # checkpoint-shaped TrainState of ShapeDtypeStruct, with shardings
    num_devices: int  # devices the environment axis is split over (1: not sharded)


def should_shard_envs(num_envs: int) -> bool:
    """Decide whether one run splits its environments over every visible device.

    A multi-process run always splits them, and `num_envs` must then be a multiple of the
    device count. A single process with several devices splits them when `num_envs` is a
    multiple of the device count. Otherwise the run stays on the default device, and a
    warning is logged when devices are left idle.
    """
    num_devices = jax.device_count()
    if jax.process_count() > 1:
        return True
    if num_devices > 1 and num_envs % num_devices:
        logger.warning(
            "train.num_envs = %d is not a multiple of the %d devices; the run uses one device",
            num_envs,
            num_devices,
        )
        return False
    return num_devices > 1


def make_placement(program: TrainProgram, shard_envs: bool) -> Placement:
    """Place the run of `program` on the default device, or shard its environment axis.

    Raises:
        ValueError: `shard_envs` is True and `train.num_envs` is not a multiple of the device
            count.
    """
    hyper = program.default_hyperparams
    key = train_key(program.config.train.seed)
    abstract = jax.eval_shape(program.init, key, hyper)
    checkpoint_shapes = jax.eval_shape(state_to_checkpoint, abstract)

    def init_from_data(key_data, hyper):
        return program.init(jax.random.wrap_key_data(key_data), hyper)

    if not shard_envs:
        # An explicit device, because without one orbax restores each array with the sharding
        # it was saved with, and rejects a checkpoint written on another device count.
        on_default_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return Placement(
            init=init_from_data,
            run_chunk=program.run_chunk,
            hyper=hyper,
            key_data=jax.random.key_data(key),
            restore_target=jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(
                    leaf.shape, leaf.dtype, sharding=on_default_device
                ),
                checkpoint_shapes,
            ),
            num_devices=1,
        )

    mesh = sharding.make_mesh(sharding.ENV_AXIS)
    replicated = sharding.replicated_sharding(mesh)
    state_shardings = sharding.env_axis_shardings(abstract, mesh, program.config.train.num_envs)

    # The key leaf's sharding (replicated) fits its raw uint32 data in a checkpoint too.
    restore_target = jax.tree.map(
        lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=leaf_sharding
        ),
        checkpoint_shapes,
        state_shardings,
    )
    return Placement(
        init=jax.jit(
            init_from_data, in_shardings=(replicated, replicated), out_shardings=state_shardings
        ),
        run_chunk=jax.jit(
            program.run_chunk,
            in_shardings=(state_shardings, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        ),
        hyper=sharding.place(sharding.to_host(hyper), replicated),
        key_data=sharding.place(np.asarray(jax.random.key_data(key)), replicated),
        restore_target=restore_target,
        num_devices=mesh.devices.size,
    )


def restore_train_state(
    program: TrainProgram, checkpointer: Checkpointer, placement: Placement | None = None
) -> tuple[TrainState, dict[str, Any]] | None:
    """Restore the newest readable checkpoint as a `TrainState`, or None if there is none.

    With a sharded `placement` the arrays come back with its shardings.
    """
    if placement is None:
        placement = make_placement(program, shard_envs=False)
    per_chunk = program.config.train.env_steps_per_chunk
    restored = checkpointer.restore_latest(
        placement.restore_target,
        lambda step, metadata: run_metadata_problem(step, metadata, per_chunk),
    )
    if restored is None:
        return None
    metadata = dict(restored.metadata)
    metadata["skipped_checkpoints"] = [list(item) for item in restored.skipped]
    return state_from_checkpoint(restored.state), metadata


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run directory's newest readable checkpoint, loaded for evaluation or deployment."""

    config: Config
    program: TrainProgram
    state: TrainState
    metadata: dict[str, Any]  # chunk, env_steps, timings and skipped_checkpoints

    @property
    def env_params(self) -> EnvParams:
        """The run's environment parameters, with its `env.params` overrides.

        `program.env.default_params` lacks those overrides, so stepping with it would run
        another environment than the one the run trained and was evaluated on.
        """
        return self.program.default_hyperparams.env

    def act(self, obs: jax.Array, key: jax.Array, explore: bool = False) -> jax.Array:
        """Return the trained policy's actions [B, action_dim] for observations [B, obs_dim]."""
        hyper = self.program.default_hyperparams.agent
        return self.program.agent.act(self.state.agent, obs, key, hyper, explore)


def load_trained_run(
    run_dir: str | Path,
    config: Config | None = None,
    env: DiffusionServiceEnv | None = None,
) -> TrainedRun:
    """Load the newest readable checkpoint of `run_dir` without changing the directory.

    Args:
        config: replaces the run's saved config, for example with other evaluation settings;
            its network and replay shapes must match the checkpoint's.
        env: the environment the run was trained with, when it was not built from the config
            (see `run_training`).
    Raises:
        ValueError: `run_dir` is not a run directory, has no readable checkpoint, or its
            environment data changed since the run started (see `check_env_data`).
    """
    run_dir = Path(run_dir)
    check_run_location(run_dir)
    config = load_run_config(run_dir) if config is None else config
    program = make_train(config, check_memory=False, env=env)
    check_env_data(run_dir, program.env, write_missing=False)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if not checkpoint_dir.is_dir():
        raise ValueError(f"no checkpoint found in {checkpoint_dir}")
    # Read-only: loading leaves the run as it was, unreadable checkpoints included.
    restored = restore_train_state(program, Checkpointer(checkpoint_dir, read_only=True))
    if restored is None:
        raise ValueError(f"no checkpoint found in {checkpoint_dir}")
    state, metadata = restored
    return TrainedRun(config=config, program=program, state=state, metadata=metadata)


def run_metadata_problem(step: int, metadata: Any, env_steps_per_chunk: int) -> str | None:
    """Say what is wrong with the JSON metadata of a run's checkpoint `step`, or return None.

    A run saves chunk c as step c with env_steps = c * env_steps_per_chunk; metadata that
    disagrees would make a resume start from the wrong chunk.
    """
    if not isinstance(metadata, dict):
        return f"invalid metadata {metadata!r}: expected a mapping with chunk and env_steps"
    for name in ("chunk", "env_steps"):
        value = metadata.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"invalid metadata {name} = {value!r}: expected an integer >= 0"
    if metadata["chunk"] != step:
        return f"invalid metadata chunk = {metadata['chunk']}: the checkpoint is step {step}"
    expected = step * env_steps_per_chunk
    if metadata["env_steps"] != expected:
        return (
            f"invalid metadata env_steps = {metadata['env_steps']}: chunk {step} ends at "
            f"{expected} environment steps"
        )
    return None


def evaluate_policy(program: TrainProgram, agent_state, seed: int) -> dict[str, float]:
    """Evaluate the policy of `agent_state` on the fresh episodes of `seed`, without noise.

    Sharded or multi-process parameters are first copied to the host, so every process runs
    the evaluation alone on its default device and no process waits for another.

    Raises:
        ValueError: the compiled evaluation needs more memory than the device has free.
    """
    agent_state = check_policy_evaluation_memory(program, agent_state, seed)
    return summarize(program.evaluate(agent_state, program.default_hyperparams, eval_key(seed)))


def check_policy_evaluation_memory(program: TrainProgram, agent_state, seed: int):
    """Compile the policy evaluation and raise ValueError if it needs more than free memory.

    Returns `agent_state` as the evaluation takes it: copied to the host if it is sharded. jax
    caches the trace and the executable, so a later `program.evaluate` call on the same
    shapes reuses this compilation.
    """
    if any(isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1
           for leaf in jax.tree.leaves(agent_state)):  # fmt: skip
        agent_state = sharding.to_host(agent_state)
    hyper = program.default_hyperparams
    compiled = program.evaluate.lower(agent_state, hyper, eval_key(seed)).compile()
    check_evaluation_memory(compiled, program.config.train.eval_episodes)
    return agent_state


def evaluate_run(program: TrainProgram, agent_state, seed: int) -> dict[str, Any]:
    """Evaluate the policy of `agent_state` and every baseline on the same fresh episodes.

    Returns:
        {"policy": metrics, "baselines": {name: metrics}}. Each metrics dict maps every
        episode metric (qoe, reward, ...) to its mean over the `train.eval_episodes`
        episodes, plus `<metric>_stderr` and `num_episodes`.
    """
    config = program.config
    hyper = program.default_hyperparams
    key = eval_key(seed)
    policy = evaluate_policy(program, agent_state, seed)
    baselines = evaluate_baselines(program.env, hyper.env, key, config.train.eval_episodes)
    return {"policy": policy, "baselines": baselines}


def run_training(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    final_evaluation: bool = True,
    shard_envs: bool | None = None,
    env: DiffusionServiceEnv | None = None,
) -> dict[str, Any]:
    """Train `config` in `run_dir`, or continue the run there when `resume` is True.

    Args:
        shard_envs: split the environments over every device (see `make_placement`); None
            decides with `should_shard_envs`.
        env: an environment that replaces the one `config.env` describes, for example with
            a custom QoE model (see `make_train`). A resume must pass an equal one: its data
            are checked against the digest saved at the first start.

    Returns:
        The summary also written to `summary.json` (by process 0).

    Raises:
        ValueError: the warm-up leaves no gradient step (`check_gradient_steps`), the
            newest checkpoint lies past the run's last chunk, `run_dir` already contains a
            run and `resume` is False, another process is training in `run_dir`,
            `run_dir` cannot be created or written, the
            environments cannot be split over the devices, or in a multi-process run some
            process cannot see the files of `run_dir` (it is not shared).
        NonFiniteError: a loss, metric or parameter became NaN or infinite; the newest
            checkpoint is the last good state.
    """
    check_gradient_steps(config)
    run_dir = Path(run_dir)
    check_run_location(run_dir)
    if not (run_dir / CONFIG_NAME).exists():  # a new run, not one started before this check
        check_outside_sweeps(run_dir, "run directory")
    # One process owns the run directory while it trains, so a second run started on the same
    # --out is rejected instead of mixing its metrics and checkpoints into the first one's.
    lock = RunDirectoryLock(run_dir) if jax.process_count() == 1 else None
    try:
        return _run_training(
            config, run_dir, resume, on_chunk, final_evaluation, shard_envs, lock is not None, env
        )
    finally:
        if lock is not None:
            lock.release()


def check_no_run_files(run_dir: Path) -> None:
    """Raise ValueError if `run_dir`, without a config, contains files that a new run writes.

    Such files come from a run whose config.yaml was removed, or belong to the user. A new
    run would truncate the metrics files and mix its checkpoints with the ones found.
    Folders that are empty or contain only hidden files (such as .DS_Store) are allowed, and
    so is a lone env_data.sha256, which the new run rewrites from its own data. Earlier
    code wrote it before config.yaml, so a start killed between the two left it alone.
    """
    found = []
    for name in (*_NEW_RUN_PATHS, SUMMARY_NAME, CURVES_NAME):
        path = run_dir / name
        if name == ENV_DATA_DIGEST_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            if any(not entry.name.startswith(".") for entry in path.iterdir()):
                found.append(name)
        elif path.exists() or path.is_symlink():
            found.append(name)
    if found:
        raise ValueError(
            f"{str(run_dir)!r} contains {', '.join(found)} but no {CONFIG_NAME}, so it is not a "
            "run that --resume can continue, and a new run would overwrite these files; "
            "choose a new output directory or move them away"
        )


class RunDirectoryLock:
    """An exclusive `flock` on `LOCK_NAME` in a run directory, held while a run trains.

    Sweeps and studies lock their output directories the same way. Creating the lock creates
    the directory (and its parents) if needed. The operating system drops the lock when the
    process ends, however it ends, so a killed run leaves no stale lock. When a start fails
    before writing `marker` (the run's config), `release` removes what the lock added: the
    lock file, if it created it, and the folders it created, while they are empty.

    Args:
        label: names the directory in messages, such as "run directory".
        holder: names the process that holds the lock, such as "training process".

    Raises:
        ValueError: the path is a file or cannot be created or written, or another process
            holds the lock.
    """

    def __init__(
        self,
        run_dir: Path,
        marker: str = CONFIG_NAME,
        label: str = "run directory",
        holder: str = "training process",
    ):
        self.run_dir = run_dir
        self.marker = marker
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"{label} {str(run_dir)!r} is invalid: it is a file")
        # The folders this lock creates, deepest first, so a failed start can remove them.
        self.created_dirs = [
            folder for folder in (run_dir, *run_dir.absolute().parents) if not folder.exists()
        ]
        self.created_file = not (run_dir / LOCK_NAME).exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / LOCK_NAME, "a")  # noqa: SIM115  (held until release)
        except OSError as error:
            raise ValueError(
                f"{label} {str(run_dir)!r} cannot be created or written: {error}"
            ) from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ValueError(
                f"{label} {str(run_dir)!r} is in use by another {holder}; wait for it to end "
                "or choose another output directory"
            ) from None

    def release(self) -> None:
        """Drop the lock, and remove what it added to a run that never started."""
        if self.created_file and not (self.run_dir / self.marker).exists():
            # Removed while the lock is still held, so a later start creates a fresh file.
            # NOTE: a process that opened the file just before this unlink can still lock the
            # old file while a third one locks the new file; the window is this one call.
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
        self._file.close()
        for folder in self.created_dirs:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def _run_training(
    config: Config,
    run_dir: Path,
    resume: bool,
    on_chunk: Callable[[ChunkProgress], None] | None,
    final_evaluation: bool,
    shard_envs: bool | None,
    locked: bool,
    env: DiffusionServiceEnv | None,
) -> dict[str, Any]:
    """Train as `run_training` describes. `locked` is True when this process holds the run
    directory's lock, so the directory exists already."""
    if jax.process_count() > 1:
        check_same_run_on_every_process(config, run_dir, resume)
    if not resume and (run_dir / CONFIG_NAME).exists():
        raise ValueError(
            f"{str(run_dir)!r} already contains a run; pass --resume to continue it or choose "
            "a new output directory"
        )
    if not resume:
        check_no_run_files(run_dir)
    # Build (and so validate) the program and its placement before writing anything, so a
    # failed start leaves no run directory that would block the retry.
    program = make_train(config, env=env)
    if shard_envs is None:
        shard_envs = should_shard_envs(config.train.num_envs)
    placement = make_placement(program, shard_envs)
    primary = jax.process_index() == 0
    if jax.process_count() > 1:
        # Every process has checked run_dir above before process 0 writes to it.
        multihost_utils.sync_global_devices("rlli_jax.runner: run directory checked")
    created = primary and not run_dir.exists()
    if primary and not locked:
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_shared_directory(run_dir)
    except ValueError:
        if created:
            run_dir.rmdir()  # still empty: leave nothing that would block the retry
        raise
    if resume:
        check_env_data(run_dir, program.env, write_missing=primary)

    train_config = config.train
    hyper = placement.hyper
    new_run = primary and not resume
    # Run files already in run_dir, left by a user or an earlier run, which a failed start keeps.
    found_before = {name for name in _NEW_RUN_PATHS if (run_dir / name).exists()}
    checkpointer = None
    writer = None
    try:
        try:
            if new_run:
                # The config first: a kill between the two writes then leaves a run that
                # --resume continues (it writes the missing digest). A digest alone would
                # block both a new run (`check_no_run_files`) and --resume.
                save_config(config, run_dir / CONFIG_NAME)
                save_env_data_digest(run_dir, program.env)
            checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, train_config.max_checkpoints)
            writer = (MetricsWriter(run_dir, tensorboard=config.logging.tensorboard) if primary
                      else _NoMetricsWriter())  # fmt: skip
            state, start_chunk, resumed_from = _initial_state(
                program, placement, checkpointer, writer, resume
            )
            # Training seconds of the chunks from timed_from_chunk to start_chunk, from
            # earlier segments of the run. A checkpoint written before the runner stored them
            # has none, so the summary then times the chunks from start_chunk only, and
            # later checkpoints store that first timed chunk with the seconds.
            earlier_train_s, timed_from_chunk = _earlier_timing(resumed_from, start_chunk)
            compile_start = time.perf_counter()
            run_chunk = placement.run_chunk.lower(state, hyper).compile()
            if start_chunk < train_config.num_chunks:
                # A resumed finished run trains no chunk, so its memory does not matter.
                check_on_every_process(
                    lambda: check_chunk_memory(run_chunk, config=config, resumed=resume)
                )
            compile_s = time.perf_counter() - compile_start
            if train_config.eval_episodes and (final_evaluation or train_config.eval_every_chunks):
                # Before the first chunk, so an evaluation too large for memory stops the run
                # now and not after its last chunk, where it would leave no summary.
                check_on_every_process(
                    lambda: check_policy_evaluation_memory(program, state.agent, train_config.seed)
                )
        except BaseException:
            if new_run:
                # No chunk has run, so a retry with a corrected config may reuse run_dir.
                _remove_unstarted_run(run_dir, keep=found_before)
            raise

        if primary and start_chunk < train_config.num_chunks:
            _keep_earlier_summary(run_dir)
        train_seconds = earlier_train_s
        for chunk in range(start_chunk, train_config.num_chunks):
            chunk_start = time.perf_counter()
            state, metrics = run_chunk(state, hyper)
            metrics = sharding.to_host(metrics)  # blocks until the chunk has finished
            seconds = time.perf_counter() - chunk_start
            train_seconds += seconds
            env_steps = (chunk + 1) * train_config.env_steps_per_chunk

            nonfinite = find_nonfinite(metrics)
            if nonfinite is not None:
                iteration, name, value = nonfinite
                raise NonFiniteError(
                    f"non-finite {name} = {value} at iteration {iteration} (environment step "
                    f"{(iteration + 1) * train_config.num_envs}, chunk {chunk + 1}); training "
                    f"stopped; {_last_good_state(checkpointer)}"
                )
            row = summarize_chunk(metrics, program.update_metric_names)
            row["chunk"] = chunk + 1
            row["env_steps_per_s"] = train_config.env_steps_per_chunk / seconds
            writer.write(row, env_steps)

            is_last = chunk + 1 == train_config.num_chunks
            every = train_config.eval_every_chunks
            if every and train_config.eval_episodes and (chunk + 1) % every == 0:
                evaluation = evaluate_policy(program, state.agent, config.train.seed)
                writer.write(evaluation, env_steps, prefix="eval")
            if is_last or (chunk + 1) % train_config.checkpoint_every_chunks == 0:
                checkpointer.save(
                    chunk + 1,
                    state_to_checkpoint(state),
                    {
                        "chunk": chunk + 1,
                        "env_steps": env_steps,
                        "train_s": train_seconds,
                        TRAIN_S_FROM_CHUNK_KEY: timed_from_chunk,
                        TRAINING_SETTINGS_KEY: training_settings(config),
                    },
                )
            if on_chunk is not None:
                on_chunk(
                    ChunkProgress(
                        chunk=chunk + 1,
                        num_chunks=train_config.num_chunks,
                        env_steps=env_steps,
                        env_steps_per_s=row["env_steps_per_s"],
                        metrics=row,
                    )
                )

        timed_chunks = train_config.num_chunks - timed_from_chunk
        summary: dict[str, Any] = {
            "algo": config.agent.algo,
            "env_steps": train_config.num_chunks * train_config.env_steps_per_chunk,
            "num_updates": config.num_updates,
            "compile_s": compile_s,
            "train_s": train_seconds,
            "env_steps_per_s": (
                timed_chunks * train_config.env_steps_per_chunk / train_seconds
                if train_seconds
                else None
            ),
            "resumed_from": resumed_from,
            "num_devices": placement.num_devices,
            "num_processes": jax.process_count(),
        }
        if final_evaluation and train_config.eval_episodes > 0:
            evaluation_start = time.perf_counter()
            summary["evaluation"] = evaluate_run(program, state.agent, train_config.seed)
            summary["evaluation_s"] = time.perf_counter() - evaluation_start
        if primary:
            write_json_atomic(run_dir / SUMMARY_NAME, summary)
            plot_learning_curves([run_dir], run_dir / CURVES_NAME)
        summary["final_state"] = state
        return summary
    finally:
        if writer is not None:
            writer.close()
        if checkpointer is not None:
            checkpointer.close()


def _remove_unstarted_run(run_dir: Path, keep: set[str]) -> None:
    """Remove the files a new run writes before its first chunk, and its empty folders.

    Called when a new run fails before training. Without it, config.yaml would mark
    `run_dir` as a run, a retry with a corrected config would be rejected, and --resume
    would reload the failing config. Names in `keep`, which existed before the start, and
    folders that are not empty are kept.
    """
    for name in _NEW_RUN_PATHS:
        path = run_dir / name
        if name in keep:
            continue
        if name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


def _keep_earlier_summary(run_dir: Path) -> None:
    """Rename the summary of an earlier end of the run to summary-<env_steps>.json.

    It exists when a finished run is extended (a larger `train.total_env_steps`) or resumed
    from an older checkpoint. It contains that end's final evaluation, which the new summary
    would overwrite, and until then it would sit beside newer checkpoints and metrics.
    """
    path = run_dir / SUMMARY_NAME
    if not path.is_file():
        return
    try:
        env_steps = json.loads(path.read_text(encoding="utf-8"))["env_steps"]
    except (OSError, ValueError, TypeError, KeyError):
        env_steps = None
    # A summary edited by hand may hold any JSON value here. An infinite float or an integer
    # of hundreds of digits would stop the resume, so only a count that fits int64 names
    # the file.
    if isinstance(env_steps, bool) or not isinstance(env_steps, int):
        env_steps = None
    elif not 0 <= env_steps < 2**63:
        env_steps = None
    stem = "summary-earlier" if env_steps is None else f"summary-{env_steps}"
    target = run_dir / f"{stem}.json"
    suffix = 1
    while target.exists():
        target = run_dir / f"{stem}-{suffix}.json"
        suffix += 1
    path.rename(target)
    logger.info("moved the summary of an earlier end of the run to %s", target)


def _earlier_timing(resumed_from: dict[str, Any] | None, start_chunk: int) -> tuple[float, int]:
    """Return (training seconds, first timed chunk) of the chunks before `start_chunk`.

    The seconds cover the chunks from the first timed chunk to `start_chunk`. A checkpoint
    without a valid `train_s` gives (0.0, start_chunk). One without `TRAIN_S_FROM_CHUNK_KEY`
    was written by a version that stored it only for timings from chunk 0.
    """
    metadata = resumed_from or {}
    seconds = seconds_or_none(metadata.get("train_s"))
    first_chunk = metadata.get(TRAIN_S_FROM_CHUNK_KEY, 0)
    valid_first_chunk = (
        isinstance(first_chunk, int)
        and not isinstance(first_chunk, bool)
        and 0 <= first_chunk <= start_chunk
    )
    if seconds is None or not valid_first_chunk:
        return 0.0, start_chunk
    return seconds, first_chunk


def seconds_or_none(value: Any) -> float | None:
    """Return `value` as seconds when it is a finite number >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _last_good_state(checkpointer: Checkpointer) -> str:
    """Name the checkpoint with the last good state, or say that none was written yet."""
    steps = checkpointer.all_steps()
    if not steps:
        return f"no checkpoint was written yet in {checkpointer.directory}"
    return f"checkpoint {steps[-1]} in {checkpointer.directory} is the last good state"


def check_same_run_on_every_process(config: Config, run_dir: Path, resume: bool) -> None:
    """Check that every process was started with the same config, run directory and resume flag.

    Every process must call this. It compares a SHA-256 digest of the three across processes.

    Raises:
        ValueError: some process differs from process 0.
    """
    text = json.dumps([config.to_dict(), str(run_dir.absolute()), resume], sort_keys=True)
    differing = processes_that_differ(text)
    if differing:
        raise ValueError(
            f"processes {differing} were started with a different config, run directory or "
            "--resume flag than process 0; start every process with the same command apart "
            "from --process-id"
        )


class _NoMetricsWriter:
    """The metrics writer of a process other than process 0: it writes nothing."""

    def write(self, row: dict[str, Any], step: int, prefix: str = "train") -> None:
        del row, step, prefix

    def truncate_after(self, step: int) -> None:
        del step

    def close(self) -> None:
        pass


def _initial_state(
    program: TrainProgram,
    placement: Placement,
    checkpointer: Checkpointer,
    writer: MetricsWriter | _NoMetricsWriter,
    resume: bool,
) -> tuple[TrainState, int, dict[str, Any] | None]:
    """Return (state, first chunk to run, resume metadata or None)."""
    if resume:
        restored = restore_train_state(program, checkpointer, placement)
        if restored is not None:
            state, metadata = restored
            _check_chunk_within_run(int(metadata["chunk"]), program.config, checkpointer)
            _check_training_settings(metadata, program.config, checkpointer)
            writer.truncate_after(int(metadata["env_steps"]))
            metadata.pop(TRAINING_SETTINGS_KEY, None)
            return state, int(metadata["chunk"]), metadata
        logger.warning("no checkpoint in %s; starting the run from the beginning",
                       checkpointer.directory)  # fmt: skip
    writer.truncate_after(0)
    return placement.init(placement.key_data, placement.hyper), 0, None


def training_settings(config: Config) -> dict[str, Any]:
    """Return the config values that a resumed run must share with its checkpoint, flattened
    to `section.key` names, as JSON values.

    These are all values except `RESUME_EDITABLE_KEYS`. A value changed between two starts of
    a run would make the resumed chunks differ from an uninterrupted run. Most of them
    (learning rates, noise, warm-up, batch size) leave every array shape as it was, so the
    checkpoint alone would restore without error.
    """
    settings = {
        f"{section}.{name}": value
        for section, values in config.to_dict().items()
        for name, value in values.items()
        if f"{section}.{name}" not in RESUME_EDITABLE_KEYS
    }
    return json.loads(json.dumps(settings))


def _check_training_settings(
    metadata: dict[str, Any], config: Config, checkpointer: Checkpointer
) -> None:
    """Raise ValueError if `config` differs from the settings saved with the checkpoint.

    A checkpoint written before these settings were saved has none, and passes. Only the
    names in both are compared, so a config field added or removed by a later version of
    the library does not block resuming older runs.
    """
    saved = metadata.get(TRAINING_SETTINGS_KEY)
    if not isinstance(saved, dict):
        return
    current = training_settings(config)
    differences = [
        f"{name} = {saved[name]!r} in the checkpoint, {current[name]!r} now"
        for name in sorted(saved.keys() & current.keys())
        if saved[name] != current[name]
    ]
    if not differences:
        return
    # scripts/train.py --resume reads the config from config.yaml, while run_training from
    # Python takes it as an argument and leaves config.yaml as it is.
    config_path = checkpointer.directory.parent / CONFIG_NAME
    raise ValueError(
        f"invalid resume: the config differs from the one that checkpoint {metadata['chunk']} "
        f"in {str(checkpointer.directory)!r} was trained with: {'; '.join(differences)}. "
        f"Restore those values (in {str(config_path)!r} for scripts/train.py --resume, or in "
        "the config passed to run_training) to resume the run, or start a new run with the "
        "new values"
    )


def _check_chunk_within_run(chunk: int, config: Config, checkpointer: Checkpointer) -> None:
    """Raise ValueError if the restored `chunk` lies past the last chunk of `config`.

    That happens when `train.total_env_steps` in the run's config.yaml was lowered after the
    checkpoint was written. The run would then train nothing and report the lower step count
    for a policy trained longer.
    """
    train_config = config.train
    if chunk <= train_config.num_chunks:
        return
    run_dir = checkpointer.directory.parent
    raise ValueError(
        f"invalid train.total_env_steps = {train_config.total_env_steps} in "
        f"{str(run_dir / CONFIG_NAME)!r}: it gives {train_config.num_chunks} chunks, but the "
        f"newest readable checkpoint is chunk {chunk} "
        f"({chunk * train_config.env_steps_per_chunk} environment steps); set it to at least "
        f"{chunk * train_config.env_steps_per_chunk} to resume, or evaluate the checkpoint "
        "with scripts/evaluate.py"
    )
