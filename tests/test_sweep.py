"""Sweeps: config validation, expansion and grouping, memory estimate, and a run on one device
with a diverging member, an interruption, a resume and a skip of finished groups."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from jax.experimental.compilation_cache import compilation_cache

from rlli_jax.agents.replay import estimate_replay_bytes
from rlli_jax.distributed import resolve_setup
from rlli_jax.population import (
    GROUP_RESULTS_NAME,
    GROUPS_DIR,
    MEMBERS_DIR,
    rank_points,
    results_table,
    run_sweep,
)
from rlli_jax.runner import RunDirectoryLock
from rlli_jax.sharding import make_mesh
from rlli_jax.sweep import (
    SweepConfig,
    check_sweep_memory,
    estimate_member_memory,
    load_sweep_config,
    plan_sweep,
    save_sweep_config,
    stack_hyperparams,
)
from rlli_jax.train import make_env, make_hyperparams

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

TINY_BASE = {
    "env": {"num_users": 3, "horizon": 4},
    "agent": {
        "algo": "ddpg",
        "actor_hidden_sizes": [16],
        "critic_hidden_sizes": [16],
        "encoder_hidden_sizes": [16],
        "batch_size": 8,
    },
    "hyper": {"actor_lr": 1e-3, "critic_lr": 1e-3, "tau": 0.01, "gamma": 0.0},
    "train": {
        "num_envs": 4,
        "steps_per_chunk": 4,
        "total_env_steps": 64,  # 4 chunks of 4 x 4 environment steps
        "warmup_env_steps": 8,
        "buffer_size": 64,
        "updates_per_step": 1,
        "eval_episodes": 4,
        "checkpoint_every_chunks": 1,
        "max_checkpoints": 5,
    },
    "logging": {"progress_bar": False},
}


@pytest.fixture
def base_path(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(TINY_BASE))
    return path


def sweep_from(base_path: Path, **fields) -> SweepConfig:
    return SweepConfig.from_dict({"base": str(base_path), **fields})


# Validation: every bad config fails in Python, naming the field, the value and the rule.


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"grid": {"hyper.actor_lr": [1e-3]}, "seeds": 3}, r"unknown sweep key 'seeds'"),
        ({"grid": {"hyper.actor_lr": []}}, r"grid\.hyper\.actor_lr = \[\]: must list at least"),
        (
            {"grid": {"hyper.actor_learning_rate": [1e-3]}},
            r"unknown sweep key 'hyper\.actor_learning_rate' \(did you mean 'hyper\.actor_lr'",
        ),
        ({"grid": {"hyper.tau": [0.1]}, "num_seeds": 0}, r"num_seeds = 0: must be an integer >= 1"),
        ({"grid": {"hyper.tau": [0.1]}, "num_seeds": -2}, r"num_seeds = -2"),
        ({"grid": {"hyper.tau": [0.1]}, "first_seed": -1}, r"first_seed = -1: must be"),
        (
            {"grid": {"hyper.tau": [0.1]}, "first_seed": 2**32},
            r"invalid first_seed = 4294967296: must be an integer in \[0, 4294967295\]",
        ),
        (
            {"grid": {"hyper.tau": [0.1]}, "first_seed": 2**63},
            r"invalid first_seed = 9223372036854775808",
        ),
        (
            {"grid": {"hyper.tau": [0.1]}, "first_seed": 2**32 - 2, "num_seeds": 3},
            r"invalid num_seeds = 3: the last seed .* = 4294967296 must be <= 4294967295",
        ),
        (
            {"grid": {"hyper.tau": [0.1]}, "set": ["train.seed=7"]},
            r"invalid set\[0\] = 'train\.seed=7': seeds are set by num_seeds",
        ),
        (
            {"grid": {"hyper.tau": [0.1]}, "set": ["train.num_envs=4", "hyper.tau=0.5"]},
            r"invalid set\[1\] = 'hyper\.tau=0\.5': hyper\.tau is also swept",
        ),
        ({"grid": {"hyper.tau": [0.1]}, "set": ["train"]}, r"invalid set\[0\]: invalid override"),
        (
            {"grid": {"hyper.tau": [0.1]}, "set": ["train.num_envs=4", "train.num_envs=8"]},
            r"invalid set\[1\] = 'train\.num_envs=8': train\.num_envs is already set by set\[0\]",
        ),
        (
            {"grid": {"env.params.energy_weight": [0.1]}, "set": ["env.params={energy_weight: 1}"]},
            r"invalid set\[0\] = .*: env\.params\.energy_weight is also swept",
        ),
        (
            {"set": ["env.params.energy_weight=0.5", "env.params={energy_weight: 1}"]},
            r"invalid set\[1\] = .*: env\.params overlaps env\.params\.energy_weight, set by set",
        ),
        (
            {"grid": {"env.reward_net": ["a", "b"]}},
            r"invalid grid\.env\.reward_net: env\.reward_net cannot be swept: the reward network",
        ),
        ({"grid": {"train.seed": [1, 2]}}, r"grid\.train\.seed: seeds are set by num_seeds"),
        ({"grid": {"hyper.tau": [0.1, 0.1]}}, r"must not repeat a value"),
        ({"grid": {"hyper.tau": 0.1}}, r"grid\.hyper\.tau = 0\.1: must be a list"),
        ({"grid": {"hyper.tau": [0.1]}, "metric": "fun"}, r"metric = 'fun': must be one of"),
        ({"grid": {"hyper.tau": [0.1]}, "goal": "up"}, r"goal = 'up': must be one of"),
        ({"grid": {"logging.tensorboard": [True]}}, r"unknown sweep key 'logging\.tensorboard'"),
        (
            {"grid": {"hyper.tau": [0.1]}, "points": [{"hyper.tau": 0.2}]},
            r"points\[0\]\.hyper\.tau = 0\.2: the key is also in grid",
        ),
        (
            {"points": [{"hyper.tau": 0.2}, {"hyper.gamma": 0.5}]},
            r"every point must set the same keys",
        ),
        (
            {
                "points": [
                    {"hyper.tau": 0.2, "hyper.gamma": 0.5},
                    {"hyper.gamma": 0.5, "hyper.tau": 0.2},
                ]
            },
            r"invalid points\[1\] = .*: repeats points\[0\]; list each combination once",
        ),
        ({"set": "train.num_envs=4"}, r"set = 'train\.num_envs=4': must be a list"),
        # Only null means an empty set, grid or points.
        ({"num_seeds": 1, "set": False}, r"invalid set = False: must be a list"),
        ({"num_seeds": 1, "grid": []}, r"invalid grid = \[\]: must map keys to lists"),
        ({"num_seeds": 1, "grid": False}, r"invalid grid = False: must map keys to lists"),
        ({"num_seeds": 1, "points": 0}, r"invalid points = 0: must be a list of mappings"),
        ({"num_seeds": 1, "points": {}}, r"invalid points = \{\}: must be a list of mappings"),
    ],
)
def test_invalid_sweep_config_rejected(base_path, fields, match):
    with pytest.raises(ValueError, match=match):
        sweep_from(base_path, **fields)


def test_missing_base_rejected():
    with pytest.raises(ValueError, match=r"invalid base = None: must be the path"):
        SweepConfig.from_dict({"grid": {"hyper.tau": [0.1]}})


def test_set_mapping_without_swept_key_accepted(base_path):
    # Members merge their swept value into the mapping, so its own entry survives.
    sweep = sweep_from(
        base_path,
        grid={"env.params.tx_power_w": [0.5, 1.0]},
        set=["env.params={energy_weight: 0.7}"],
    )
    params = [dict(member.config.env.params) for member in plan_sweep(sweep).members]
    assert params == [
        {"energy_weight": 0.7, "tx_power_w": 0.5},
        {"energy_weight": 0.7, "tx_power_w": 1.0},
    ]


def test_seed_range_edges_accepted(base_path):
    sweep = sweep_from(base_path, grid={"hyper.tau": [0.1]}, first_seed=2**32 - 2, num_seeds=2)
    assert sweep.seeds == (2**32 - 2, 2**32 - 1)


def test_list_section_in_base_rejected(base_path):
    base_path.write_text(yaml.safe_dump(dict(TINY_BASE, train=[1, 2])))
    sweep = sweep_from(base_path, grid={"hyper.tau": [0.1]}, set=["train.num_envs=4"])
    with pytest.raises(ValueError, match=r"base config .*base\.yaml'?: section train must be a"):
        plan_sweep(sweep)


def test_list_section_rejected_when_sweeping_it(base_path):
    base_path.write_text(yaml.safe_dump(dict(TINY_BASE, hyper=[1, 2])))
    sweep = sweep_from(base_path, grid={"hyper.tau": [0.1]})
    with pytest.raises(ValueError, match=r"section hyper must be a mapping, got \[1, 2\]"):
        plan_sweep(sweep)


def test_invalid_member_value_rejected_before_compiling(base_path):
    sweep = sweep_from(base_path, grid={"hyper.actor_lr": [1e-3, -1.0]})
    with pytest.raises(ValueError, match=r"member 1 \(hyper\.actor_lr=-1\.0\).*must be > 0"):
        plan_sweep(sweep)


def test_invalid_static_value_rejected(base_path):
    sweep = sweep_from(base_path, grid={"agent.batch_size": [8, 1000]})
    with pytest.raises(ValueError, match=r"agent\.batch_size.*must be <= train\.buffer_size"):
        plan_sweep(sweep)


@pytest.mark.parametrize(
    "fields",
    [
        {"points": [{"hyper.tau": {"a": 1}}, {"hyper.tau": 0.1}]},
        {"grid": {"hyper.tau": [{"a": 1}, 0.1]}},
        {"grid": {"agent.batch_size": [{"a": 1}, 8]}},
    ],
)
def test_mapping_value_rejected_by_name(base_path, fields):
    with pytest.raises(ValueError, match=r"invalid (hyper\.tau|agent\.batch_size) = \{'a': 1\}"):
        plan_sweep(sweep_from(base_path, **fields))


def test_sweep_file_errors_name_the_file(tmp_path, base_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(base_path), "grid": {"hyper.lr": [1e-3]}}))
    with pytest.raises(ValueError, match=r"sweep config .*sweep\.yaml.*unknown sweep key"):
        load_sweep_config(path)


def test_saved_sweep_reads_back(tmp_path, base_path, monkeypatch):
    monkeypatch.chdir(base_path.parent)
    sweep = SweepConfig.from_dict({"base": "base.yaml", "grid": {"hyper.actor_lr": [1e-3]}})
    assert Path(sweep.base) == base_path.resolve()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    save_sweep_config(sweep, out_dir / "sweep.yaml")
    assert load_sweep_config(out_dir / "sweep.yaml") == sweep


# Expansion and grouping.


def test_plan_groups_by_static_values(base_path):
    sweep = sweep_from(
        base_path,
        num_seeds=3,
        first_seed=10,
        grid={
            "agent.critic_hidden_sizes": [[16], [8, 8]],
            "hyper.actor_lr": [1e-4, 1e-3],
            "env.params.energy_weight": [0.1, 0.5],
        },
    )
    plan = plan_sweep(sweep)
    assert plan.num_programs == 2
    assert [group.size for group in plan.groups] == [12, 12]  # 2 x 2 traced points x 3 seeds
    assert [m.index for m in plan.members] == list(range(24))
    assert {m.seed for m in plan.members} == {10, 11, 12}
    second = plan.groups[1]
    assert second.config.agent.critic_hidden_sizes == (8, 8)
    assert all(m.config.agent.critic_hidden_sizes == (8, 8) for m in second.members)
    assert all(m.config.train.seed == m.seed for m in plan.members)


def test_plan_rejects_group_without_gradient_steps(base_path):
    sweep = sweep_from(base_path, grid={"train.warmup_env_steps": [8, 64]})
    with pytest.raises(ValueError, match=r"group 1: invalid train\.warmup_env_steps = 64"):
        plan_sweep(sweep)


def test_plan_rejects_periodic_evaluation(base_path):
    sweep = sweep_from(base_path, grid={"train.eval_every_chunks": [0, 2]})
    with pytest.raises(ValueError, match=r"group 1: invalid train\.eval_every_chunks = 2: a sweep"):
        plan_sweep(sweep)


def test_quoted_numbers_take_field_types(base_path):
    grid = {"env.horizon": ["8", 4], "hyper.actor_lr": ["1e-4"]}
    plan = plan_sweep(sweep_from(base_path, grid=grid))
    horizons = [dict(member.values)["env.horizon"] for member in plan.members]
    assert horizons == [8, 4]
    assert all(type(horizon) is int for horizon in horizons)
    assert [group.static_values for group in plan.groups] == [
        (("env.horizon", 8),),
        (("env.horizon", 4),),
    ]
    assert type(plan.groups[0].static_values[0][1]) is int
    assert dict(plan.members[0].values)["hyper.actor_lr"] == pytest.approx(1e-4)


def test_member_error_keeps_quoted_integer(base_path):
    sweep = sweep_from(base_path, grid={"env.horizon": ["4"], "hyper.actor_lr": [-1.0]})
    with pytest.raises(ValueError, match=r"env\.horizon=4, hyper\.actor_lr=-1\.0\)"):
        plan_sweep(sweep)


@pytest.mark.parametrize("text", ["nan", "NaN"])
def test_quoted_nan_is_named_as_written(base_path, text):
    sweep = sweep_from(base_path, grid={"hyper.actor_lr": [text]})
    with pytest.raises(ValueError, match=rf"invalid hyper.actor_lr = '{text}': expected a number"):
        plan_sweep(sweep)


def test_points_cross_grid(base_path):
    sweep = sweep_from(
        base_path,
        grid={"hyper.actor_lr": [1e-4, 1e-3]},
        points=[{"hyper.tau": 0.01, "hyper.gamma": 0.0}, {"hyper.tau": 0.1, "hyper.gamma": 0.9}],
    )
    plan = plan_sweep(sweep)
    assert len(plan.members) == 4
    assert sweep.swept_keys == ("hyper.actor_lr", "hyper.tau", "hyper.gamma")
    assert dict(plan.members[3].values) == {
        "hyper.actor_lr": 1e-3,
        "hyper.tau": 0.1,
        "hyper.gamma": 0.9,
    }


def test_point_key_order_ignored_by_groups(base_path):
    points = [
        {"agent.batch_size": 8, "train.num_envs": 4, "hyper.tau": 0.1},
        {"train.num_envs": 4, "agent.batch_size": 8, "hyper.tau": 0.2},
    ]
    plan = plan_sweep(sweep_from(base_path, points=points))
    assert plan.num_programs == 1
    assert plan.groups[0].size == 2
    assert dict(plan.members[1].values) == points[1]


def test_stacked_hyperparams_follow_members(base_path):
    sweep = sweep_from(
        base_path,
        num_seeds=2,
        grid={"hyper.actor_lr": [1e-4, 1e-3], "env.params.bandwidth_hz": [1e6, 5e6]},
    )
    plan = plan_sweep(sweep)
    group = plan.groups[0]
    hyper = stack_hyperparams(group, make_hyperparams(group.config))
    np.testing.assert_allclose(hyper.agent.actor_lr, [1e-4] * 4 + [1e-3] * 4, rtol=1e-6)
    np.testing.assert_allclose(hyper.env.bandwidth_hz, [1e6, 1e6, 5e6, 5e6] * 2)
    assert hyper.env.energy_weight.shape == (8,)
    assert hyper.env.prompt_similarity.shape[0] == 8


def test_algorithm_default_follows_swept_algo(base_path, tmp_path):
    base = dict(TINY_BASE, hyper={"actor_lr": None})
    base_path.write_text(yaml.safe_dump(base))
    plan = plan_sweep(sweep_from(base_path, grid={"agent.algo": ["ddpg", "gddpg"]}))
    ddpg, gddpg = (group.members[0].config.hyperparams for group in plan.groups)
    assert float(ddpg.actor_lr) == pytest.approx(1e-3)
    assert float(gddpg.actor_lr) == pytest.approx(1e-4)


@pytest.mark.parametrize("name", ["sweep_lr.yaml", "sweep_cpu.yaml"])
def test_shipped_sweeps_plan(name):
    plan = plan_sweep(load_sweep_config(CONFIGS / name))
    assert plan.num_programs >= 1
    if name == "sweep_lr.yaml":
        assert plan.num_programs == 2
        assert {group.config.agent.algo for group in plan.groups} == {"ddpg", "gddpg"}
        assert plan.sweep.num_seeds == 8


# Memory estimate.


def test_memory_estimate_counts_state(base_path):
    plan = plan_sweep(sweep_from(base_path, grid={"hyper.tau": [0.1]}))
    config = plan.groups[0].config
    estimate = estimate_member_memory(config)
    # obs_dim and action_dim of 3 users, from the replay layout: at least the stored floats.
    program_bytes = estimate_replay_bytes(64, *_dims(config))
    assert estimate.replay_bytes >= program_bytes
    assert estimate.replay_bytes < program_bytes + 1024
    assert estimate.target_params_bytes == estimate.params_bytes
    # Adam: two moments per parameter, plus one int32 step count per network.
    assert estimate.optimizer_bytes == 2 * estimate.params_bytes + 2 * 4
    assert estimate.total_bytes == sum(
        (estimate.replay_bytes, estimate.params_bytes, estimate.target_params_bytes,
         estimate.optimizer_bytes, estimate.env_bytes)
    )  # fmt: skip


def test_memory_check_rejects_oversized_sweep(base_path):
    plan = plan_sweep(sweep_from(base_path, num_seeds=4, grid={"hyper.tau": [0.1]}))
    estimates = check_sweep_memory(plan, num_devices=1)
    assert estimates[0].members_per_device == 4
    with pytest.raises(ValueError, match=r"group 0 needs about .* per device"):
        check_sweep_memory(plan, num_devices=1, headroom=1e-12)


def _dims(config):
    env = make_env(config)
    return env.obs_dim, env.num_actions


# Multi-host settings (resolved without starting anything).


def test_distributed_setup_sources():
    assert resolve_setup(environ={}).method == "single"
    flags = resolve_setup("10.0.0.1:1234", 2, 1, environ={})
    assert (flags.method, flags.process_id, flags.num_processes) == ("flags", 1, 2)
    variables = {
        "JAX_COORDINATOR_ADDRESS": "host:99",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }
    from_env = resolve_setup(environ=variables)
    assert (from_env.method, from_env.process_id, from_env.coordinator) == (
        "environment",
        3,
        "host:99",
    )
    slurm = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}
    assert resolve_setup(environ=slurm).method == "auto"
    assert resolve_setup(environ={"SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}).method == "single"
    assert resolve_setup(auto=True, environ={}).method == "auto"


def test_auto_distributed_without_cluster_is_named(monkeypatch):
    from rlli_jax import distributed

    def no_cluster():
        raise ValueError("coordinator_address should be defined.")  # jax 0.10's message

    # Stand-ins, so that nothing is started and this process keeps its backend.
    monkeypatch.setattr(distributed.jax.extend.backend, "clear_backends", lambda: None)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", no_cluster)
    with pytest.raises(ValueError, match="cluster auto-detection found no process group") as raised:
        distributed.initialize(auto=True, environ={})
    assert "coordinator_address should be defined" in str(raised.value)
    assert "instead of --auto-distributed" in str(raised.value)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (("10.0.0.1:1234", None, 0), r"--num-processes missing"),
        (("10.0.0.1", 2, 0), r"--coordinator = '10\.0\.0\.1': expected HOST:PORT"),
        (("10.0.0.1:0", 2, 0), r"expected HOST:PORT with a port"),
        (("http://10.0.0.1:1234", 2, 0), r"expected HOST:PORT without a URL scheme"),
        (("10.0.0.1 :1234", 2, 0), r"expected HOST:PORT without a URL scheme or spaces"),
        (("h:1234", 2, 2), r"--process-id = 2: must lie in 0 to --num-processes - 1 = 1"),
        (("h:1234", 2, -1), r"--process-id = -1: must lie in 0 to --num-processes - 1 = 1"),
        (("h:1234", 0, 0), r"--num-processes = 0: must be >= 1"),
    ],
)
def test_distributed_setup_rejects_bad_flags(arguments, match):
    with pytest.raises(ValueError, match=match):
        resolve_setup(*arguments, environ={})


def test_distributed_setup_names_bad_variable():
    variables = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5"}
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID = 5: must lie in 0 to JAX_NUM_PROCESSES"):
        resolve_setup(environ=variables)


def test_distributed_setup_rejects_bad_variable():
    with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES = 'two': expected an integer"):
        resolve_setup(
            environ={
                "JAX_COORDINATOR_ADDRESS": "h:1",
                "JAX_NUM_PROCESSES": "two",
                "JAX_PROCESS_ID": "0",
            }
        )


# A run: 2 learning rates x 2 seeds in one program; critic_lr 1e30 makes members 2 and 3
# diverge. The first call stops after chunk 2 (an exception from the progress callback, as a
# kill would); the second resumes from the chunk-2 checkpoint; a fresh uninterrupted run in
# another directory is the reference.


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Use a persistent compilation cache, so that the four runs below compile only once."""
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    compilation_cache.set_cache_dir(str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, compile_cache):
    root = tmp_path_factory.mktemp("sweep")
    base_path = root / "base.yaml"
    base_path.write_text(yaml.safe_dump(TINY_BASE))
    sweep = SweepConfig.from_dict(
        {"base": str(base_path), "num_seeds": 2, "grid": {"hyper.critic_lr": [1e-3, 1e30]}}
    )
    plan = plan_sweep(sweep)
    mesh = make_mesh(devices=jax.devices()[:1])

    interrupted_events = []
    lock_errors = []

    def stop_after_chunk_2(event):
        interrupted_events.append(event)
        if event.kind == "chunk" and event.chunk == 1:
            # A second sweep on the same directory, started while this one runs.
            try:
                RunDirectoryLock(root / "resumed", "sweep.yaml", "sweep directory", "sweep")
            except ValueError as error:
                lock_errors.append(str(error))
        if event.kind == "chunk" and event.chunk == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_sweep(plan, root / "resumed", mesh=mesh, on_event=stop_after_chunk_2)
    events = []
    resumed = run_sweep(plan, root / "resumed", mesh=mesh, on_event=events.append)
    skipped = run_sweep(plan, root / "resumed", mesh=mesh)
    reference = run_sweep(plan, root / "reference", mesh=mesh)
    return {
        "root": root,
        "plan": plan,
        "resumed": resumed,
        "events": events,
        "interrupted_events": interrupted_events,
        "lock_errors": lock_errors,
        "skipped": skipped,
        "reference": reference,
    }


def test_running_sweep_holds_directory_lock(sweep_runs):
    (error,) = sweep_runs["lock_errors"]
    assert "is in use by another sweep" in error
    # The interrupted call released the lock, or the resume would have failed.
    assert sweep_runs["resumed"].groups_run == 1


def test_sweep_compiles_once_per_group(sweep_runs):
    assert sweep_runs["reference"].compiles == {"init": 1, "run_chunk": 1, "evaluate": 1}
    assert sweep_runs["reference"].groups_run == 1


def test_diverging_member_marked_failed(sweep_runs):
    members = sweep_runs["reference"].members
    assert [m["status"] for m in members] == ["ok", "ok", "failed", "failed"]
    for member in members[2:]:
        assert "non-finite" in member["failure"]
        assert member["evaluation"] is None
        assert member["env_steps"] < 64
    for member in members[:2]:
        policy = member["evaluation"]["policy"]
        assert np.isfinite(policy["qoe"])
        assert set(member["evaluation"]) == {"policy", "random", "equal_split", "greedy"}
        assert member["env_steps"] == 64


def test_members_keep_own_metrics(sweep_runs):
    members = sweep_runs["reference"].members
    assert members[0]["evaluation"]["policy"]["qoe"] != members[1]["evaluation"]["policy"]["qoe"]
    root = sweep_runs["root"] / "reference" / MEMBERS_DIR
    rows = [json.loads(line) for line in (root / "member-0000" / "metrics.jsonl").open()]
    assert [row["chunk"] for row in rows] == [1, 2, 3, 4]
    failed_rows = (root / "member-0002" / "metrics.jsonl").read_text().splitlines()
    assert len(failed_rows) < 4  # the curve stops at the chunk where the member diverged


def test_member_matches_single_run(sweep_runs, tmp_path):
    """A member trains and evaluates like `run_training` of its own config, up to float
    reassociation: same keys, hyperparameters, curves and evaluation episodes."""
    from rlli_jax.runner import run_training

    member = sweep_runs["plan"].members[1]  # seed 1, critic_lr 1e-3
    swept = sweep_runs["reference"].members[1]
    single = run_training(member.config, tmp_path / "single", shard_envs=False)
    expected = {
        "policy": single["evaluation"]["policy"],
        "greedy": single["evaluation"]["baselines"]["greedy"],
    }
    for name, values in expected.items():
        assert swept["evaluation"][name]["qoe"] == pytest.approx(values["qoe"], rel=1e-5)
        assert swept["evaluation"][name]["reward"] == pytest.approx(values["reward"], rel=1e-5)
    curve = sweep_runs["root"] / "reference" / MEMBERS_DIR / member.name / "metrics.jsonl"
    swept_rows = [json.loads(line) for line in curve.open()]
    single_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").open()]
    assert len(swept_rows) == len(single_rows) == 4
    for swept_row, single_row in zip(swept_rows, single_rows, strict=True):
        for name in ("reward", "qoe", "critic_loss", "actor_loss"):
            assert swept_row[name] == pytest.approx(single_row[name], rel=1e-4), name


def test_resume_continues_from_checkpoint(sweep_runs):
    events = sweep_runs["events"]
    chunks = [event.chunk for event in events if event.kind == "chunk"]
    assert chunks == [3, 4]
    resumed = sweep_runs["resumed"].members
    reference = sweep_runs["reference"].members
    for got, expected in zip(resumed, reference, strict=True):
        assert got["status"] == expected["status"]
        assert got["evaluation"] == expected["evaluation"]
    curve = sweep_runs["root"] / "resumed" / MEMBERS_DIR / "member-0001" / "metrics.jsonl"
    assert [json.loads(line)["chunk"] for line in curve.open()] == [1, 2, 3, 4]


def test_resume_reports_own_compile_time(sweep_runs):
    """The group_start event of a resume counts only that call's compiles; the member rows
    count the compiles of both calls."""
    (first,) = [e for e in sweep_runs["interrupted_events"] if e.kind == "group_start"]
    (resumed,) = [e for e in sweep_runs["events"] if e.kind == "group_start"]
    row = sweep_runs["resumed"].members[0]
    assert first.seconds > 0.0
    assert row["compile_s"] == pytest.approx(first.seconds + resumed.seconds)


def test_finished_groups_are_skipped(sweep_runs):
    skipped = sweep_runs["skipped"]
    assert skipped.groups_skipped == 1
    assert skipped.groups_run == 0
    assert skipped.compiles == {"init": 0, "run_chunk": 0, "evaluate": 0}
    assert skipped.members == sweep_runs["resumed"].members
    assert (sweep_runs["root"] / "resumed" / GROUPS_DIR / "group-000" / GROUP_RESULTS_NAME).exists()


def test_other_sweep_in_directory_rejected(sweep_runs, base_path):
    other = plan_sweep(sweep_from(base_path, grid={"hyper.tau": [0.1]}))
    with pytest.raises(ValueError, match=r"already contains a different sweep"):
        run_sweep(other, sweep_runs["root"] / "reference")


@pytest.fixture
def finished_copy(sweep_runs, tmp_path, monkeypatch):
    """A copy of the finished reference sweep whose base config is a file of its own.

    Returns (output directory, base config path). Building a population program fails, so a
    test that reaches a compile fails.
    """
    import shutil

    import rlli_jax.population as population

    out_dir = tmp_path / "out"
    shutil.copytree(sweep_runs["root"] / "reference", out_dir)
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(TINY_BASE))
    sweep = SweepConfig.from_dict({"base": str(base_path), **_SWEEP_FIELDS})
    save_sweep_config(sweep, out_dir / "sweep.yaml")

    def fail_if_called(*args, **kwargs):
        raise AssertionError("a group was compiled")

    monkeypatch.setattr(population, "make_population_program", fail_if_called)
    return out_dir, base_path


_SWEEP_FIELDS = {"num_seeds": 2, "grid": {"hyper.critic_lr": [1e-3, 1e30]}}


def _plan_for(base_path: Path):
    return plan_sweep(SweepConfig.from_dict({"base": str(base_path), **_SWEEP_FIELDS}))


def test_sweep_evaluation_memory_checked_first(tmp_path, base_path, monkeypatch, compile_cache):
    from rlli_jax import evaluation

    monkeypatch.setattr(evaluation, "available_device_bytes", lambda: (1024, "a test"))
    out_dir = tmp_path / "sweep"
    mesh = make_mesh(devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"at once for each of 4 members needs .* a test"):
        run_sweep(_plan_for(base_path), out_dir, mesh=mesh)
    checkpoints = out_dir / GROUPS_DIR / "group-000" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no chunk was trained


def test_sweep_chunk_memory_checked_first(tmp_path, base_path, monkeypatch, compile_cache):
    import rlli_jax.train as train_module

    # Population programs skip the state checks of make_train, which read the same function.
    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1024, "a test"))
    out_dir = tmp_path / "sweep"
    mesh = make_mesh(devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"compiled training of 4 members needs .* a test"):
        run_sweep(_plan_for(base_path), out_dir, mesh=mesh)
    checkpoints = out_dir / GROUPS_DIR / "group-000" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no chunk was trained


def test_resume_trained_group_skips_chunk_memory(sweep_runs, tmp_path, monkeypatch):
    # A group killed after its last checkpoint but before its results.json trains no chunk on
    # resume, so too little free memory for a chunk must not stop it.
    import shutil

    import rlli_jax.train as train_module

    out_dir = tmp_path / "out"
    shutil.copytree(sweep_runs["root"] / "reference", out_dir)
    (out_dir / GROUPS_DIR / "group-000" / "results.json").unlink()
    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1024, "a test"))
    resumed = run_sweep(sweep_runs["plan"], out_dir, mesh=make_mesh(devices=jax.devices()[:1]))
    reference = sweep_runs["reference"]
    # The members with critic_lr 1e30 diverge in the reference too.
    statuses = [member["status"] for member in resumed.members]
    assert statuses == [member["status"] for member in reference.members]
    evaluations = [member["evaluation"] for member in resumed.members]
    assert evaluations == [member["evaluation"] for member in reference.members]


def test_resume_rejects_changed_base_config(finished_copy):
    out_dir, base_path = finished_copy
    group_config = out_dir / GROUPS_DIR / "group-000" / "config.yaml"
    saved = group_config.read_text()
    changed = dict(TINY_BASE, hyper=dict(TINY_BASE["hyper"], critic_lr=1e-2, gamma=0.9))
    base_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(
        ValueError, match=r"group-000 differs .*: hyper\.gamma = 0\.0 saved, 0\.9 now"
    ):
        run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))
    assert group_config.read_text() == saved


def test_resume_ignores_base_value_of_swept_key(finished_copy):
    out_dir, base_path = finished_copy
    group_config = out_dir / GROUPS_DIR / "group-000" / "config.yaml"
    saved = group_config.read_text()
    # Members take critic_lr from the grid, so the base value never reaches them.
    changed = dict(TINY_BASE, hyper=dict(TINY_BASE["hyper"], critic_lr=1e-2))
    base_path.write_text(yaml.safe_dump(changed))
    result = run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))
    assert result.groups_skipped == 1
    assert group_config.read_text() == saved


def test_first_call_saves_every_group_config(finished_copy):
    out_dir, base_path = finished_copy
    group_config = out_dir / GROUPS_DIR / "group-000" / "config.yaml"
    group_config.unlink()
    run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))
    assert yaml.safe_load(group_config.read_text())["hyper"]["gamma"] == 0.0


def test_resume_rejects_changed_env_data(finished_copy):
    out_dir, base_path = finished_copy
    digest = out_dir / GROUPS_DIR / "group-000" / "env_data.sha256"
    assert len(digest.read_text().strip()) == 64
    digest.write_text("0" * 64 + "\n")  # as if the reward network file had been replaced
    with pytest.raises(ValueError, match=r"environment data differ .*group-000"):
        run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))


def test_resume_writes_a_missing_env_data_digest(finished_copy):
    out_dir, base_path = finished_copy
    digest = out_dir / GROUPS_DIR / "group-000" / "env_data.sha256"
    saved = digest.read_text()
    digest.unlink()  # a directory written before the digests existed
    run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))
    assert digest.read_text() == saved


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"foo": 1}, r"expected a mapping with a 'members' list"),
        ({"members": [1]}, r"every entry of 'members' must be a mapping"),
        ({"members": [{"member": 0}]}, r"member rows lack the keys \['group'"),
    ],
)
def test_invalid_group_results_rejected(finished_copy, content, match):
    out_dir, base_path = finished_copy
    path = out_dir / GROUPS_DIR / "group-000" / GROUP_RESULTS_NAME
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"invalid results file .*results\.json: " + match):
        run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))


def test_group_results_of_other_members_rejected(finished_copy):
    out_dir, base_path = finished_copy
    path = out_dir / GROUPS_DIR / "group-000" / GROUP_RESULTS_NAME
    data = json.loads(path.read_text())
    data["members"] = data["members"][:3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"members \[0, 1, 2\] do not match .* \[0, 1, 2, 3\]"):
        run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))


def test_results_table_and_ranking(sweep_runs):
    plan = sweep_runs["plan"]
    rows = results_table(sweep_runs["reference"], plan)
    assert [row["hyper.critic_lr"] for row in rows] == [1e-3, 1e-3, 1e30, 1e30]
    assert rows[0]["status"] == "ok"
    assert "eval_qoe" in rows[0]
    assert "greedy_qoe" in rows[0]
    assert "eval_qoe" not in rows[2]
    points = rank_points(rows, plan.sweep.swept_keys, "qoe", "max")
    assert points[0]["values"] == {"hyper.critic_lr": 1e-3}
    assert (points[0]["finished"], points[0]["members"]) == (2, 2)
    assert points[1]["finished"] == 0
    expected = np.mean([rows[0]["eval_qoe"], rows[1]["eval_qoe"]])
    assert points[0]["mean"] == pytest.approx(expected)


def test_ranking_without_evaluation_is_not_failed(base_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "sweep.py"
    spec = importlib.util.spec_from_file_location("sweep_script", script)
    sweep_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_script)
    # Members that trained to the end with train.eval_episodes 0 have no eval_ columns.
    rows = [{"member": index, "status": "ok", "hyper.tau": 0.1} for index in range(2)]
    sweep = sweep_from(base_path, grid={"hyper.tau": [0.1]})
    (point,) = rank_points(rows, sweep.swept_keys, "qoe", "max")
    assert (point["finished"], point["members"]) == (2, 2)
    assert np.isnan(point["mean"])
    sweep_script._print_ranking([point], sweep, top=5)
    table = capsys.readouterr().out
    assert "n/a" in table
    assert "failed" not in table


def test_resume_names_a_moved_reward_net(finished_copy, tmp_path, monkeypatch):
    from rlli_jax.qoe.reward_net import RewardNetQoE, save_reward_net

    out_dir, base_path = finished_copy
    model = RewardNetQoE(hidden_sizes=(8,))
    save_reward_net(tmp_path / "net", model, model.init_params(jax.random.key(0)))
    monkeypatch.chdir(tmp_path)
    changed = dict(TINY_BASE, env=dict(TINY_BASE.get("env", {}), reward_net="net"))
    base_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(ValueError, match=r"env\.reward_net of group-000 resolves to '/.*net' now"):
        run_sweep(_plan_for(base_path), out_dir, mesh=make_mesh(devices=jax.devices()[:1]))


def test_resume_accepts_group_config_without_new_field(base_path, tmp_path):
    from rlli_jax.config import save_config
    from rlli_jax.population import _check_group_config

    plan = plan_sweep(sweep_from(base_path, grid={"hyper.actor_lr": [1e-4, 1e-3]}))
    group = plan.groups[0]
    path = tmp_path / "config.yaml"
    save_config(group.config, path)
    lines = path.read_text().splitlines()

    # A group config saved before train.bootstrap_at_horizon existed lacks the field. The
    # loader gives it the default, true, which is the behaviour of that earlier code.
    path.write_text("\n".join(line for line in lines if "bootstrap_at_horizon" not in line))
    _check_group_config(plan, group, path)

    # A saved value that differs from the current one still blocks the resume.
    path.write_text(
        "\n".join(lines).replace("bootstrap_at_horizon: true", "bootstrap_at_horizon: false")
    )
    with pytest.raises(ValueError, match=r"train\.bootstrap_at_horizon = False saved, True now"):
        _check_group_config(plan, group, path)


@dataclasses.dataclass(frozen=True)
class _ConstantQoE:
    """Every user rates every image 4.25, so an evaluation shows which QoE model ran."""

    name: str = "constant"

    def __call__(self, qoe_params, traits, quality, latency_s):
        return jnp.full(quality.shape, 4.25, jnp.float32)

    def default_params(self):
        return {}


def test_env_factory_builds_each_group_env(base_path, tmp_path):
    from rlli_jax.env.service import DiffusionServiceEnv

    seen_users = []

    def constant_qoe_env(config):
        seen_users.append(config.env.num_users)
        return DiffusionServiceEnv(
            num_users=config.env.num_users, horizon=config.env.horizon, qoe_model=_ConstantQoE()
        )

    sweep = sweep_from(base_path, grid={"env.num_users": [2, 3]}, baselines=False)
    plan = plan_sweep(sweep)
    mesh = make_mesh(devices=jax.devices()[:1])
    estimates = check_sweep_memory(plan, 1, env_factory=constant_qoe_env)
    assert [estimate.group for estimate in estimates] == [0, 1]
    assert seen_users == [2, 3]

    result = run_sweep(plan, tmp_path / "out", mesh=mesh, env_factory=constant_qoe_env)
    assert seen_users == [2, 3, 2, 3]  # once per group for the memory check, once to run
    for member in result.members:
        assert member["status"] == "ok"
        assert member["evaluation"]["policy"]["qoe"] == pytest.approx(4.25)
    # The digests saved at the first start are those of the factory's environments, so
    # continuing with the configured environment (the reward network) is rejected.
    with pytest.raises(ValueError, match="environment data differ"):
        run_sweep(plan, tmp_path / "out", mesh=mesh)


def test_env_factory_mismatch_fails_before_writes(base_path, tmp_path):
    from rlli_jax.env.service import DiffusionServiceEnv

    def two_users_env(config):
        return DiffusionServiceEnv(num_users=2, horizon=config.env.horizon)

    # Group 0 has 2 users and would train before group 1 (3 users) failed in make_train.
    sweep = sweep_from(base_path, grid={"env.num_users": [2, 3]}, baselines=False)
    plan = plan_sweep(sweep)
    mesh = make_mesh(devices=jax.devices()[:1])
    out = tmp_path / "out"
    message = (
        r"env_factory for sweep group .*: invalid env: its num_users = 2 differs from "
        r"config env\.num_users = 3"
    )
    with pytest.raises(ValueError, match=message):
        check_sweep_memory(plan, 1, env_factory=two_users_env)
    with pytest.raises(ValueError, match=message):
        run_sweep(plan, out, mesh=mesh, env_factory=two_users_env)
    assert not out.exists()

    def failing_env(config):
        raise RuntimeError("no simulator")

    with pytest.raises(RuntimeError, match="no simulator") as raised:
        run_sweep(plan, out, mesh=mesh, env_factory=failing_env)
    assert "raised by env_factory for sweep group" in raised.value.__notes__[0]
    assert not out.exists()

    with pytest.raises(TypeError, match=r"env_factory for sweep group .* returned None, expected"):
        run_sweep(plan, out, mesh=mesh, env_factory=lambda config: None)
    assert not out.exists()
