"""The Python loop around the compiled training program: chunks, metrics, checkpoints, summary.

`run_training` owns a run directory:
    config.yaml        resolved config (read back by `--resume` and `scripts/evaluate.py`)
    metrics.jsonl/csv  one training row per chunk, evaluation rows in the JSONL
    checkpoints/       orbax checkpoints of the whole `TrainState`
    summary.json       final evaluation of the policy and of the baselines, timings
    curves.png         learning curves

A resumed run restores the newest readable checkpoint, drops metric rows written after it and
continues; on CPU it reaches bit-identical parameters to a run that was never interrupted,
because every chunk is the same compiled program applied to the same state.

This module never prints; progress goes to the `on_chunk` callback.
"""

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlli_jax.checkpoint import Checkpointer
from rlli_jax.config import Config, load_config, save_config
from rlli_jax.evaluation import evaluate_baselines, summarize
from rlli_jax.metrics import MetricsWriter, plot_learning_curves
from rlli_jax.train import (
    TrainProgram,
    TrainState,
    find_nonfinite,
    make_train,
    state_from_checkpoint,
    state_to_checkpoint,
    summarize_chunk,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
CURVES_NAME = "curves.png"
CHECKPOINT_DIR = "checkpoints"


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


def load_run_config(run_dir: str | Path) -> Config:
    """Load the resolved config saved in a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{str(path)!r} not found: {str(run_dir)!r} is not a run directory")
    return load_config(path)


def restore_train_state(
    program: TrainProgram, checkpointer: Checkpointer
) -> tuple[TrainState, dict[str, Any]] | None:
    """Restore the newest readable checkpoint as a `TrainState`, or None if there is none."""
    hyper = program.default_hyperparams
    target = jax.eval_shape(lambda key: state_to_checkpoint(program.init(key, hyper)),
                            train_key(0))  # fmt: skip
    restored = checkpointer.restore_latest(target)
    if restored is None:
        return None
    metadata = dict(restored.metadata)
    metadata["skipped_checkpoints"] = [list(item) for item in restored.skipped]
    return state_from_checkpoint(restored.state), metadata


def evaluate_run(program: TrainProgram, agent_state, seed: int) -> dict[str, Any]:
    """Evaluate the policy of `agent_state` and every baseline on the same fresh episodes."""
    config = program.config
    hyper = program.default_hyperparams
    key = eval_key(seed)
    policy = summarize(program.evaluate(agent_state, hyper, key))
    baselines = evaluate_baselines(program.env, hyper.env, key, config.train.eval_episodes)
    return {"policy": policy, "baselines": baselines}


def run_training(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    final_evaluation: bool = True,
) -> dict[str, Any]:
    """Train `config` in `run_dir`, or continue the run there when `resume` is True.

    Returns:
        The summary also written to `summary.json`.

    Raises:
        ValueError: `run_dir` already contains a run and `resume` is False.
        NonFiniteError: a loss, metric or parameter became NaN or infinite; the newest
            checkpoint is the last good state.
    """
    run_dir = Path(run_dir)
    if not resume and (run_dir / CONFIG_NAME).exists():
        raise ValueError(
            f"{str(run_dir)!r} already contains a run; pass --resume to continue it or choose "
            "a new output directory"
        )
    # Build (and so validate) the program before writing anything, so a failed start leaves
    # no run directory that would block the retry.
    program = make_train(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(config, run_dir / CONFIG_NAME)

    train_config = config.train
    hyper = program.default_hyperparams
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, train_config.max_checkpoints)
    writer = MetricsWriter(run_dir, tensorboard=config.logging.tensorboard)
    try:
        state, start_chunk, resumed_from = _initial_state(program, checkpointer, writer, resume)
        compile_start = time.perf_counter()
        run_chunk = program.run_chunk.lower(state, hyper).compile()
        compile_s = time.perf_counter() - compile_start

        train_seconds = 0.0
        for chunk in range(start_chunk, train_config.num_chunks):
            chunk_start = time.perf_counter()
            state, metrics = run_chunk(state, hyper)
            metrics = jax.device_get(metrics)  # blocks until the chunk has finished
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
                evaluation = summarize(
                    program.evaluate(state.agent, hyper, eval_key(config.train.seed))
                )
                writer.write(evaluation, env_steps, prefix="eval")
            if is_last or (chunk + 1) % train_config.checkpoint_every_chunks == 0:
                checkpointer.save(
                    chunk + 1,
                    state_to_checkpoint(state),
                    {"chunk": chunk + 1, "env_steps": env_steps},
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

        chunks_run = train_config.num_chunks - start_chunk
        summary: dict[str, Any] = {
            "algo": config.agent.algo,
            "env_steps": train_config.num_chunks * train_config.env_steps_per_chunk,
            "num_updates": train_config.num_updates,
            "compile_s": compile_s,
            "train_s": train_seconds,
            "env_steps_per_s": (
                chunks_run * train_config.env_steps_per_chunk / train_seconds
                if train_seconds
                else None
            ),
            "resumed_from": resumed_from,
        }
        if final_evaluation and train_config.eval_episodes > 0:
            evaluation_start = time.perf_counter()
            summary["evaluation"] = evaluate_run(program, state.agent, train_config.seed)
            summary["evaluation_s"] = time.perf_counter() - evaluation_start
        _write_json(run_dir / SUMMARY_NAME, summary)
        plot_learning_curves([run_dir], run_dir / CURVES_NAME)
        summary["final_state"] = state
        return summary
    finally:
        writer.close()
        checkpointer.close()


def _last_good_state(checkpointer: Checkpointer) -> str:
    """Name the checkpoint with the last good state, or say that none was written yet."""
    steps = checkpointer.all_steps()
    if not steps:
        return f"no checkpoint was written yet in {checkpointer.directory}"
    return f"checkpoint {steps[-1]} in {checkpointer.directory} is the last good state"


def _initial_state(
    program: TrainProgram, checkpointer: Checkpointer, writer: MetricsWriter, resume: bool
) -> tuple[TrainState, int, dict[str, Any] | None]:
    """Return (state, first chunk to run, resume metadata or None)."""
    config = program.config
    if resume:
        restored = restore_train_state(program, checkpointer)
        if restored is not None:
            state, metadata = restored
            writer.truncate_after(int(metadata["env_steps"]))
            return state, int(metadata["chunk"]), metadata
        logger.warning("no checkpoint in %s; starting the run from the beginning",
                       checkpointer.directory)  # fmt: skip
    writer.truncate_after(0)
    state = program.init(train_key(config.train.seed), program.default_hyperparams)
    return state, 0, None


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    temporary.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
