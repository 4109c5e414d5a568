"""Run a planned sweep: each group is one vmapped training program sharded over all devices.

`run_sweep` owns an output directory:
    sweep.yaml                      the resolved sweep config; a resume must match it
    groups/group-NNN/config.yaml    the group's training config (base config, overrides and
                                    static values), written at the first call; a resume
                                    must match it except in the seed and the swept keys
    groups/group-NNN/env_data.sha256  digest of the reward network and prompt bank at the
                                    first call; a resume must match it
    groups/group-NNN/checkpoints/   orbax checkpoints of the whole population state, padded
                                    for the device count; a resume on another device count
                                    pads the members again (`Checkpointer.restore_latest`)
    groups/group-NNN/results.json   per-member results, written when the group has finished
    members/member-NNNN/            per-member learning curves (metrics.jsonl and metrics.csv)
    .lock                           locked while a single-process sweep runs there (POSIX)

A rerun in the same directory skips every group with a `results.json` and continues an
unfinished group from its newest checkpoint, so finished groups and members never run again.
Members of a group run together, so a group resumes as a whole.

A member whose loss, metric or parameters become non-finite is marked failed at the chunk
where that is first seen. Its curve stops there and it gets no evaluation. The vmapped
program keeps stepping it (dropping it would need a new compile), which does not affect the
others because members share no data.

Multi-host: every process runs this same loop on the same global arrays. Checkpoints are
written by all processes together (orbax), so `out_dir` must be on a filesystem that every
host sees; curves and results are written by process 0 only.
"""

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rlli_jax import sharding
from rlli_jax.agents.baselines import BASELINE_NAMES, make_baseline_policy
from rlli_jax.checkpoint import Checkpointer
from rlli_jax.config import Config, read_yaml, save_config
from rlli_jax.distributed import (
    check_on_every_process,
    check_shared_directory,
    processes_that_differ,
)
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.evaluation import check_evaluation_memory, run_episodes, summarize
from rlli_jax.metrics import MetricsWriter
from rlli_jax.outputs import write_json_atomic
from rlli_jax.runner import (
    CONFIG_NAME,
    SWEEP_CONFIG_NAME,
    SWEEP_GROUPS_DIR,
    RunDirectoryLock,
    check_env_data,
    check_outside_checkpoints,
    check_outside_sweeps,
    eval_key,
    save_env_data_digest,
    seconds_or_none,
    train_key,
)
from rlli_jax.sweep import (
    SweepGroup,
    SweepPlan,
    build_group_env,
    save_sweep_config,
    stack_hyperparams,
)
from rlli_jax.train import (
    TrainHyperparams,
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

GROUPS_DIR = SWEEP_GROUPS_DIR
MEMBERS_DIR = "members"
GROUP_RESULTS_NAME = "results.json"
GROUP_CONFIG_NAME = "config.yaml"
STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class PopulationProgram:
    """The jitted, sharded functions of one group; every array has a leading [padded] axis.

    init(key_data [padded, 2] uint32, hyper) -> TrainState
    run_chunk(state, hyper) -> (state, metrics [padded, steps_per_chunk] per name); donates state
    evaluate(agent_state, hyper, key_data) -> {"policy" or baseline name: per-episode values
        [padded, eval_episodes] per name}
    """

    program: TrainProgram
    mesh: Mesh
    size: int  # real members
    padded_size: int  # size rounded up to a multiple of the device count
    init: Callable[[jax.Array, TrainHyperparams], TrainState]
    run_chunk: Callable[[TrainState, TrainHyperparams], tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[..., dict[str, dict[str, jax.Array]]]


def make_population_program(
    config: Config,
    size: int,
    mesh: Mesh,
    baselines: bool = True,
    env: DiffusionServiceEnv | None = None,
) -> PopulationProgram:
    """Build the vmapped program of a population of `size` members of `config`; compiles nothing.

    The population axis of every input and output is sharded over `mesh`. `env` replaces the
    environment that `config.env` describes, as in `make_train`.
    """
    program = make_train(config, check_memory=False, env=env)
    population = sharding.leading_axis_sharding(mesh)
    baseline_names = BASELINE_NAMES if baselines else ()

    def init(key_data: jax.Array, hyper: TrainHyperparams) -> TrainState:
        return jax.vmap(program.init)(jax.random.wrap_key_data(key_data), hyper)

    def evaluate_member(agent_state, hyper: TrainHyperparams, key: jax.Array):
        # The same episodes (same key) for the policy and every baseline, as in `runner`.
        results = {"policy": program.evaluate(agent_state, hyper, key)}
        for name in baseline_names:
            policy = make_baseline_policy(name, program.env, hyper.env)
            results[name] = run_episodes(
                program.env, hyper.env, policy, key, config.train.eval_episodes
            )
        return results

    def evaluate(agent_state, hyper: TrainHyperparams, key_data: jax.Array):
        keys = jax.random.wrap_key_data(key_data)
        return jax.vmap(evaluate_member)(agent_state, hyper, keys)

    return PopulationProgram(
        program=program,
        mesh=mesh,
        size=size,
        padded_size=sharding.padded_size(size, mesh.devices.size),
        init=jax.jit(init, in_shardings=population, out_shardings=population),
        run_chunk=jax.jit(
            jax.vmap(program.run_chunk),
            in_shardings=population,
            out_shardings=population,
            donate_argnums=0,
        ),
        evaluate=jax.jit(evaluate, in_shardings=population, out_shardings=population),
    )


@dataclasses.dataclass(frozen=True)
class SweepEvent:
    """A progress report that `run_sweep` passes to its `on_event` callback."""

    kind: str  # "group_start", "group_skipped", "chunk" or "group_done"
    group: int
    num_groups: int
    chunk: int = 0  # 1-based index of the chunk just finished
    num_chunks: int = 0
    members: int = 0
    failed: int = 0  # members failed so far in this group
    env_steps_per_s: float = 0.0  # over the whole population, compile time excluded
    # group_start: compile time of this call, without that of an earlier, interrupted call.
    # group_done: wall time of the group over every call.
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Per-member results in member order, plus counts of what this call compiled and ran."""

    members: list[dict[str, Any]]
    compiles: dict[str, int]  # traces of init, run_chunk and evaluate made by this call
    groups_run: int
    groups_skipped: int
    wall_s: float


def run_sweep(
    plan: SweepPlan,
    out_dir: str | Path,
    mesh: Mesh | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    env_factory: Callable[[Config], DiffusionServiceEnv] | None = None,
) -> SweepResult:
    """Run every group of `plan` not yet finished in `out_dir`, and return all members' results.

    Args:
        env_factory: builds each group's environment from the group's config, in place of
            the one `config.env` describes, for example with a custom QoE model (see
            `make_train`). It is called once per group, so a swept static key such as
            `env.num_users` reaches it. A resume must pass an equal factory: each group's
            environment data are checked against the digest saved at its first start.

    Raises:
        ValueError: `out_dir` contains a different sweep or a training run, another process is
            running a sweep in `out_dir`, or in a multi-process run some process planned
            another sweep or output directory, or cannot see the files of `out_dir` (it is
            not shared).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    mesh = sharding.make_mesh() if mesh is None else mesh
    if jax.process_count() > 1:
        check_same_sweep_on_every_process(plan, out_dir)
    _check_sweep_location(out_dir)
    # One process owns the sweep directory while it runs, so a second sweep started on the
    # same --out is rejected instead of training the same groups and writing the same curves.
    lock = (
        RunDirectoryLock(out_dir, SWEEP_CONFIG_NAME, "sweep directory", "sweep process")
        if jax.process_count() == 1
        else None
    )
    try:
        return _run_sweep(plan, out_dir, mesh, on_event, start, env_factory)
    finally:
        if lock is not None:
            lock.release()


def _run_sweep(
    plan: SweepPlan,
    out_dir: Path,
    mesh: Mesh,
    on_event: Callable[[SweepEvent], None] | None,
    start: float,
    env_factory: Callable[[Config], DiffusionServiceEnv] | None,
) -> SweepResult:
    """Run the sweep as `run_sweep` describes, once its location is checked."""
    primary = jax.process_index() == 0
    envs = _claim_directory(plan, out_dir, primary, env_factory)
    check_shared_directory(out_dir)

    # Every results file is read and checked before the first group compiles.
    finished_groups = [
        _read_group_results(out_dir / GROUPS_DIR / group.name / GROUP_RESULTS_NAME, group)
        for group in plan.groups
    ]
    compiles = {"init": 0, "run_chunk": 0, "evaluate": 0}
    results: list[dict[str, Any]] = []
    groups_run = groups_skipped = 0
    num_groups = len(plan.groups)
    for group, finished, env in zip(plan.groups, finished_groups, envs, strict=True):
        group_dir = out_dir / GROUPS_DIR / group.name
        if _agree_across_processes(finished is not None):
            results.extend(finished["members"])
            groups_skipped += 1
            _emit(on_event, SweepEvent("group_skipped", group.index, num_groups,
                                       members=group.size))  # fmt: skip
            continue
        group_results, traces = _run_group(plan, group, group_dir, out_dir, mesh, on_event, env)
        for name, count in traces.items():
            compiles[name] += count
        if primary:
            _write_json(group_dir / GROUP_RESULTS_NAME, {"members": group_results})
        results.extend(group_results)
        groups_run += 1
    results.sort(key=lambda row: row["member"])
    return SweepResult(
        members=results,
        compiles=compiles,
        groups_run=groups_run,
        groups_skipped=groups_skipped,
        wall_s=time.perf_counter() - start,
    )


def check_same_sweep_on_every_process(plan: SweepPlan, out_dir: Path) -> None:
    """Check that every process plans the same sweep in the same output directory.

    Every process must call this. Each process fills the population rows on its own devices
    from its own plan. A process started with another sweep file would therefore train those
    members with other values, while process 0 reports its own values for them.

    Raises:
        ValueError: the sweep config, a group's resolved config or the output directory of
            some process differs from process 0's.
    """
    data = [
        plan.sweep.to_dict(),
        [group.config.to_dict() for group in plan.groups],
        str(out_dir.absolute()),
    ]
    differing = processes_that_differ(json.dumps(data, sort_keys=True, default=str))
    if differing:
        raise ValueError(
            f"processes {differing} were started with a different sweep config, base config "
            "or --out directory than process 0; start every process with the same command "
            "and files apart from --process-id"
        )


def _check_sweep_location(out_dir: Path) -> None:
    """Raise ValueError if `out_dir` contains a training run, lies inside a run's checkpoints,
    or would start a new sweep inside another sweep's folder."""
    check_outside_checkpoints(out_dir, "sweep directory")
    if not (out_dir / SWEEP_CONFIG_NAME).exists():  # a new sweep
        check_outside_sweeps(out_dir, "sweep directory")
    if (out_dir / CONFIG_NAME).exists():
        raise ValueError(
            f"{str(out_dir)!r} contains a training run ({CONFIG_NAME}), not a sweep; choose a "
            "new output directory for the sweep"
        )


def _claim_directory(
    plan: SweepPlan,
    out_dir: Path,
    primary: bool,
    env_factory: Callable[[Config], DiffusionServiceEnv] | None,
) -> list[DiffusionServiceEnv]:
    """Save the sweep and group configs in `out_dir`, or check that the saved ones match.

    Returns each group's environment, built by `env_factory` or from the group's config.

    `sweep.yaml` names the base config by its path, so a changed base file leaves it equal.
    Every group's resolved config is therefore saved too, and a resume is rejected when one
    differs from the saved copy in a value that its members use. Saved copies are never
    overwritten; a missing one (a group of a directory written before these copies existed,
    or an interrupted first call) is written. The same holds for each group's digest of the
    environment data files (`check_env_data`).
    """
    # Loading the reward networks first lets a bad env.reward_net, or a factory's environment
    # that does not fit its group, fail before any write and before the first group trains.
    envs = [build_group_env(group, env_factory) for group in plan.groups]
    path = out_dir / SWEEP_CONFIG_NAME
    if path.exists():
        if read_yaml(path) != plan.sweep.to_dict():
            raise ValueError(
                f"{str(out_dir)!r} already contains a different sweep (see {path}); choose a new "
                "output directory, or rerun with the same sweep config to resume"
            )
    elif primary:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_sweep_config(plan.sweep, path)

    missing = []
    for group, env in zip(plan.groups, envs, strict=True):
        config_path = out_dir / GROUPS_DIR / group.name / GROUP_CONFIG_NAME
        if config_path.exists():
            _check_group_config(plan, group, config_path)
            check_env_data(config_path.parent, env, write_missing=primary)
        else:
            missing.append((group, config_path, env))
    if primary:
        for group, config_path, env in missing:
            config_path.parent.mkdir(parents=True, exist_ok=True)
            save_env_data_digest(config_path.parent, env)
            save_config(group.config, config_path)
    return envs


def _check_group_config(plan: SweepPlan, group: SweepGroup, path: Path) -> None:
    """Raise ValueError if the config saved at `path` differs from `group.config`.

    The seed and the swept keys are left out: members set them, so a base value of theirs
    never reaches a member.
    """
    ignored = {"train.seed", *plan.sweep.swept_keys}
    saved = _flatten_config(read_yaml(path))
    # A YAML round trip, so that the values compare in the form the saved file holds.
    current = _flatten_config(yaml.safe_load(yaml.safe_dump(group.config.to_dict())))
    # A field missing from the saved file was added after the sweep started. The config loader
    # gives such a field its default, which keeps the earlier behaviour, so it is compared as that.
    defaults = _flatten_config(yaml.safe_load(yaml.safe_dump(Config().to_dict())))
    for key in [*current, *(key for key in saved if key not in current)]:
        if key in ignored:
            continue
        before = saved.get(key, defaults.get(key, "unset"))
        now = current.get(key, "unset")
        if before != now and key == "env.reward_net":
            raise ValueError(
                f"invalid resume: env.reward_net of {group.name} resolves to {now!r} now, but "
                f"{path} saved {before!r}; a relative path starts at the working folder, so "
                "run the sweep from the folder it started in, or give the saved absolute path"
            )
        if before != now:
            raise ValueError(
                f"invalid resume: the resolved config of {group.name} differs from the one saved "
                f"in {path}: {key} = {before!r} saved, {now!r} now (did the base config "
                f"{plan.sweep.base} or its overrides change?); choose a new output directory, "
                "or restore the saved values to resume"
            )


def _flatten_config(data: Any) -> dict[str, Any]:
    """Return config data as {dotted key: value}, one entry per field and per env parameter."""
    flat = {}
    for section, values in (data or {}).items():
        if not isinstance(values, dict):
            flat[str(section)] = values
            continue
        for key, value in values.items():
            if section == "env" and key == "params" and isinstance(value, dict):
                for name, param in value.items():
                    flat[f"env.params.{name}"] = param
            else:
                flat[f"{section}.{key}"] = value
    return flat


def _run_group(
    plan: SweepPlan,
    group: SweepGroup,
    group_dir: Path,
    out_dir: Path,
    mesh: Mesh,
    on_event: Callable[[SweepEvent], None] | None,
    env: DiffusionServiceEnv,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Train, checkpoint and evaluate one group; return its member results and trace counts."""
    group_start = time.perf_counter()
    config = group.config
    train_config = config.train
    primary = jax.process_index() == 0
    population = make_population_program(config, group.size, mesh, plan.sweep.baselines, env)
    program = population.program
    padded = population.padded_size
    placement = sharding.leading_axis_sharding(mesh)
    num_groups = len(plan.groups)

    seeds = np.asarray([member.seed for member in group.members])
    host_hyper = sharding.pad(stack_hyperparams(group, program.default_hyperparams), padded)
    hyper = sharding.place(host_hyper, placement)
    train_keys = np.stack([jax.random.key_data(train_key(int(seed))) for seed in seeds])
    eval_keys = np.stack([jax.random.key_data(eval_key(int(seed))) for seed in seeds])

    # `_claim_directory` has saved the group config, or checked the saved one.
    writers = [_member_writer(out_dir, member.name) if primary else None
               for member in group.members]  # fmt: skip
    checkpointer = Checkpointer(group_dir / "checkpoints", train_config.max_checkpoints)
    try:
        state, start_chunk, failures, timing = _initial_population(
            population, checkpointer, sharding.place(sharding.pad(train_keys, padded), placement),
            hyper, placement,
        )  # fmt: skip
        for writer in writers:
            if writer is not None:
                writer.truncate_after(start_chunk * train_config.env_steps_per_chunk)

        compile_start = time.perf_counter()
        run_chunk = population.run_chunk.lower(state, hyper).compile()
        if start_chunk < train_config.num_chunks:
            # A group killed after its last checkpoint, before its results.json, trains no
            # chunk on resume, so its chunk memory does not matter.
            check_on_every_process(
                lambda: check_chunk_memory(run_chunk, num_members=padded, config=config)
            )
        eval_key_data = sharding.place(sharding.pad(eval_keys, padded), placement)
        evaluate = None
        if train_config.eval_episodes > 0:
            # Compiled and checked before the first chunk, so an evaluation too large for
            # memory stops the group now and not after its training.
            evaluate = population.evaluate.lower(state.agent, hyper, eval_key_data).compile()
            check_on_every_process(
                lambda: check_evaluation_memory(
                    evaluate, train_config.eval_episodes, num_members=padded
                )
            )
        timing["compile_s"] += time.perf_counter() - compile_start
        _emit(on_event, SweepEvent("group_start", group.index, num_groups, 0,
                                   train_config.num_chunks, group.size, len(failures),
                                   seconds=timing["compile_s"]))  # fmt: skip

        for chunk in range(start_chunk, train_config.num_chunks):
            chunk_start = time.perf_counter()
            state, metrics = run_chunk(state, hyper)
            metrics = sharding.unpad(sharding.to_host(metrics), group.size)
            seconds = time.perf_counter() - chunk_start
            timing["train_s"] += seconds
            env_steps = (chunk + 1) * train_config.env_steps_per_chunk
            _record_chunk(program, metrics, chunk, env_steps, writers, failures)

            is_last = chunk + 1 == train_config.num_chunks
            if is_last or (chunk + 1) % train_config.checkpoint_every_chunks == 0:
                checkpointer.save(
                    chunk + 1,
                    state_to_checkpoint(state),
                    {
                        "chunk": chunk + 1,
                        "env_steps": env_steps,
                        "failures": failures,
                        # Compile time of this group over every call so far.
                        "compile_s": timing["previous_compile_s"] + timing["compile_s"],
                        "train_s": timing["train_s"],
                        # Wall time of this group over every invocation so far.
                        "wall_s": timing["previous_wall_s"] + time.perf_counter() - group_start,
                    },
                )
            _emit(on_event, SweepEvent(
                "chunk", group.index, num_groups, chunk + 1, train_config.num_chunks,
                group.size, len(failures),
                env_steps_per_s=group.size * train_config.env_steps_per_chunk / seconds,
            ))  # fmt: skip

        evaluation = None
        if evaluate is not None:
            evaluate_start = time.perf_counter()
            evaluation = sharding.unpad(
                sharding.to_host(evaluate(state.agent, hyper, eval_key_data)), group.size
            )
            timing["evaluation_s"] = time.perf_counter() - evaluate_start
    finally:
        checkpointer.close()
        for writer in writers:
            if writer is not None:
                writer.close()

    wall_s = timing["previous_wall_s"] + time.perf_counter() - group_start
    rows = [
        _member_result(member, index, failures, evaluation, train_config, wall_s, timing)
        for index, member in enumerate(group.members)
    ]
    _emit(on_event, SweepEvent("group_done", group.index, num_groups, train_config.num_chunks,
                               train_config.num_chunks, group.size, len(failures),
                               seconds=wall_s))  # fmt: skip
    return rows, dict(program.trace_counts)


def _initial_population(
    population: PopulationProgram,
    checkpointer: Checkpointer,
    key_data: jax.Array,
    hyper: TrainHyperparams,
    placement,
) -> tuple[TrainState, int, dict[str, dict[str, Any]], dict[str, float]]:
    """Restore the newest checkpoint of the group, or initialise the population.

    Returns (state, first chunk to run, failures by member position, timing so far). In the
    timing, `compile_s` counts this call only and `previous_compile_s` the earlier calls.
    """
    timing = {"compile_s": 0.0, "previous_compile_s": 0.0, "train_s": 0.0, "previous_wall_s": 0.0}
    abstract = jax.eval_shape(lambda k, h: state_to_checkpoint(population.init(k, h)),
                              key_data, hyper)  # fmt: skip
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=placement), abstract
    )
    # A checkpoint written on another device count has another padded size, so it is padded
    # again for this mesh.
    restored = checkpointer.restore_latest(target, population_size=population.size)
    if restored is not None:
        metadata = restored.metadata
        # A damaged or hand-edited timing (not a finite number >= 0) counts as 0 seconds.
        timing["previous_compile_s"] = seconds_or_none(metadata.get("compile_s")) or 0.0
        timing["train_s"] = seconds_or_none(metadata.get("train_s")) or 0.0
        timing["previous_wall_s"] = seconds_or_none(metadata.get("wall_s")) or 0.0
        return (
            state_from_checkpoint(restored.state),
            int(metadata["chunk"]),
            dict(metadata.get("failures", {})),
            timing,
        )
    compile_start = time.perf_counter()
    init = population.init.lower(key_data, hyper).compile()
    timing["compile_s"] += time.perf_counter() - compile_start
    return init(key_data, hyper), 0, {}, timing


def _record_chunk(
    program: TrainProgram,
    metrics: dict[str, np.ndarray],
    chunk: int,
    env_steps: int,
    writers: list[MetricsWriter | None],
    failures: dict[str, dict[str, Any]],
) -> None:
    """Mark newly diverged members as failed and write one curve row per live member.

    Args:
        metrics: host arrays [size, steps_per_chunk] per name, padding removed.
        failures: by member position (a string, for JSON); updated in place.
    """
    finite = np.ones(len(writers), bool)
    for values in metrics.values():
        finite &= np.isfinite(np.asarray(values, np.float64)).all(axis=1)
    finite &= (np.asarray(metrics["params_finite"]) >= 1.0).all(axis=1)

    for position, writer in enumerate(writers):
        if str(position) in failures:
            continue
        member_metrics = {name: values[position] for name, values in metrics.items()}
        if not finite[position]:
            iteration, name, value = find_nonfinite(member_metrics)
            failures[str(position)] = {
                "chunk": chunk + 1,
                "env_steps": env_steps,
                "reason": f"non-finite {name} = {value} at iteration {iteration}",
            }
        if writer is not None:
            row = summarize_chunk(member_metrics, program.update_metric_names)
            row["chunk"] = chunk + 1
            writer.write(row, env_steps)


def _member_result(
    member,
    position: int,
    failures: dict[str, dict[str, Any]],
    evaluation: dict[str, dict[str, np.ndarray]] | None,
    train_config,
    wall_s: float,
    timing: dict[str, float],
) -> dict[str, Any]:
    failure = failures.get(str(position))
    total_env_steps = train_config.num_chunks * train_config.env_steps_per_chunk
    row: dict[str, Any] = {
        "member": member.index,
        "group": member.group,
        "seed": member.seed,
        "values": {key: _plain(value) for key, value in member.values},
        "status": STATUS_FAILED if failure else STATUS_OK,
        "failure": failure["reason"] if failure else None,
        "env_steps": failure["env_steps"] if failure else total_env_steps,
        # Members of a group run together, so they share its wall and compile times, both
        # summed over every call that ran the group.
        "wall_s": wall_s,
        "compile_s": timing["previous_compile_s"] + timing["compile_s"],
        "evaluation": None,
    }
    if evaluation is not None and failure is None:
        row["evaluation"] = {
            name: summarize({key: values[position] for key, values in per_episode.items()})
            for name, per_episode in evaluation.items()
        }
    return row


def _member_writer(out_dir: Path, name: str) -> MetricsWriter:
    return MetricsWriter(out_dir / MEMBERS_DIR / name)


def _agree_across_processes(flag: bool) -> bool:
    """Return process 0's value of `flag` on every process, so all take the same branch."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _emit(on_event: Callable[[SweepEvent], None] | None, event: SweepEvent) -> None:
    if on_event is not None:
        on_event(event)


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("ignoring unreadable %s; the group runs again", path)
        return None


# Keys of each member row in a group's results.json, as `_member_result` writes them.
MEMBER_RESULT_KEYS = (
    "member",
    "group",
    "seed",
    "values",
    "status",
    "failure",
    "env_steps",
    "wall_s",
    "compile_s",
    "evaluation",
)


def _read_group_results(path: Path, group: SweepGroup) -> dict[str, Any] | None:
    """Read the results file of a finished group, or return None if the group has none.

    Raises:
        ValueError: the file is valid JSON but not the results of this group's members.
    """
    data = _read_json(path)
    if data is None:
        return None
    problem = None
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        problem = "expected a mapping with a 'members' list"
    elif not all(isinstance(row, dict) for row in data["members"]):
        problem = "every entry of 'members' must be a mapping"
    else:
        rows = data["members"]
        missing = [key for key in MEMBER_RESULT_KEYS if any(key not in row for row in rows)]
        expected = [member.index for member in group.members]
        if missing:
            problem = f"member rows lack the keys {missing}"
        elif [row["member"] for row in rows] != expected:
            problem = (
                f"members {[row['member'] for row in rows]} do not match the group's members "
                f"{expected}"
            )
    if problem is not None:
        raise ValueError(
            f"invalid results file {path}: {problem}; delete it to run {group.name} again"
        )
    return data


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def results_table(result: SweepResult, plan: SweepPlan) -> list[dict[str, Any]]:
    """Flatten member results into rows for `results.csv`, in member order.

    Columns: member, group, status, seed, each swept key, env_steps, wall_s, then
    `eval_NAME` and `eval_NAME_stderr` of the policy and `BASELINE_NAME` of each baseline.
    Failed members have empty evaluation cells and their reason in `failure`.
    """
    rows = []
    for member in result.members:
        row: dict[str, Any] = {
            "member": member["member"],
            "group": member["group"],
            "status": member["status"],
            "seed": member["seed"],
        }
        for key in plan.sweep.swept_keys:
            row[key] = member["values"].get(key)
        row["env_steps"] = member["env_steps"]
        row["wall_s"] = round(member["wall_s"], 3)
        evaluation = member["evaluation"] or {}
        for name, value in (evaluation.get("policy") or {}).items():
            row[f"eval_{name}"] = value
        for baseline in BASELINE_NAMES:
            for name, value in (evaluation.get(baseline) or {}).items():
                if not name.endswith("_stderr") and name != "num_episodes":
                    row[f"{baseline}_{name}"] = value
        row["failure"] = member["failure"] or ""
        rows.append(row)
    return rows


def rank_rows(rows: list[dict[str, Any]], metric: str, goal: str) -> list[dict[str, Any]]:
    """Sort finished members best first by `eval_<metric>`; failed members go last."""
    column = f"eval_{metric}"
    sign = -1.0 if goal == "max" else 1.0

    def key(row):
        value = row.get(column)
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, sign * value)

    return sorted(rows, key=key)


def rank_points(
    rows: list[dict[str, Any]], swept_keys: tuple[str, ...], metric: str, goal: str
) -> list[dict[str, Any]]:
    """Aggregate `results_table` rows over seeds, one entry per point, best mean first.

    Each entry: `values` (swept key -> value), `mean` and `std` (over the evaluations of the
    seeds that finished, ddof=0; NaN when none has one, as with train.eval_episodes 0),
    `finished` (members that trained to the end) and `members` counts, and `baselines`
    (baseline -> mean of `BASELINE_<metric>` over the same members).
    """
    column = f"eval_{metric}"
    points: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(repr(row.get(name)) for name in swept_keys)
        points.setdefault(key, []).append(row)
    ranked = []
    for members in points.values():
        finished = [row for row in members if row["status"] == STATUS_OK]
        scores = np.asarray([row[column] for row in finished if column in row], np.float64)
        baselines = {}
        for name in BASELINE_NAMES:
            values = [row[f"{name}_{metric}"] for row in finished if f"{name}_{metric}" in row]
            if values:
                baselines[name] = float(np.mean(values))
        ranked.append(
            {
                "values": {name: members[0].get(name) for name in swept_keys},
                "mean": float(scores.mean()) if scores.size else math.nan,
                "std": float(scores.std()) if scores.size else math.nan,
                "finished": len(finished),
                "members": len(members),
                "baselines": baselines,
            }
        )
    sign = -1.0 if goal == "max" else 1.0
    return sorted(
        ranked,
        key=lambda p: (0, sign * p["mean"]) if math.isfinite(p["mean"]) else (1, 0.0),
    )
