"""Sharding over 8 forced CPU devices, run in a subprocess because JAX fixes the device count
when it starts. A sharded sweep gives every member the same results as on one device, its
arrays lie on 8 devices, and the padding never reaches the results."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rlli_jax.sharding import pad, padded_size, unpad

REPO = Path(__file__).resolve().parent.parent

TINY_BASE = """
env: {num_users: 3, horizon: 4}
agent: {algo: ddpg, actor_hidden_sizes: [16], critic_hidden_sizes: [16], batch_size: 8}
hyper: {actor_lr: 1.0e-3, critic_lr: 1.0e-3, tau: 0.01, gamma: 0.0}
train: {num_envs: 8, steps_per_chunk: 4, total_env_steps: 96, warmup_env_steps: 16,
        buffer_size: 64, updates_per_step: 1, eval_episodes: 0, checkpoint_every_chunks: 3}
logging: {progress_bar: false}
"""

# 3 learning rates x 2 seeds = 6 members, padded to 8 on 8 devices.
TINY_SWEEP = """
base: base.yaml
num_seeds: 2
grid:
  hyper.actor_lr: [1.0e-4, 1.0e-3, 1.0e-2]
baselines: false
"""

POPULATION_SCRIPT = """
import json, sys
import jax, numpy as np
from rlli_jax.population import make_population_program, run_sweep
from rlli_jax.runner import train_key
from rlli_jax.sharding import make_mesh, leading_axis_sharding, pad, place, shard_counts
from rlli_jax.sweep import load_sweep_config, plan_sweep, stack_hyperparams

plan = plan_sweep(load_sweep_config("sweep.yaml"))
group = plan.groups[0]
mesh = make_mesh()
population = make_population_program(group.config, group.size, mesh, baselines=False)
placement = leading_axis_sharding(mesh)
hyper = place(pad(stack_hyperparams(group, population.program.default_hyperparams),
                  population.padded_size), placement)
keys = np.stack([jax.random.key_data(train_key(m.seed)) for m in group.members])
state = population.init(place(pad(keys, population.padded_size), placement), hyper)
leaf = state.agent.actor_params["params"]["MLP_0"]["Dense_0"]["kernel"]

sharded = run_sweep(plan, "sharded", mesh=mesh)
single = run_sweep(plan, "single", mesh=make_mesh(devices=jax.devices()[:1]))

def curve(root, member):
    path = f"{root}/members/member-{member:04d}/metrics.jsonl"
    return [json.loads(line) for line in open(path)]

json.dump({
    "num_devices": len(jax.devices()),
    "padded_size": population.padded_size,
    "leaf_shape": list(leaf.shape),
    "leaf_devices": len(leaf.sharding.device_set),
    "rows_per_device": sorted(shard_counts(leaf).values()),
    "sharded": sharded.members,
    "single": single.members,
    "sharded_curves": [curve("sharded", m.index) for m in plan.members],
    "single_curves": [curve("single", m.index) for m in plan.members],
    "member_dirs": sorted(p.name for p in __import__("pathlib").Path("sharded/members").iterdir()),
}, sys.stdout)
"""


def run_on_forced_devices(script: str, workdir: Path, num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


def run_sweep_script(workdir: Path, sweep: str, script: str, num_devices: int) -> dict:
    """Write the tiny base config and `sweep` to `workdir`, then run `script` there."""
    (workdir / "base.yaml").write_text(TINY_BASE)
    (workdir / "sweep.yaml").write_text(sweep)
    return run_on_forced_devices(script, workdir, num_devices)


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sharding")
    return run_sweep_script(workdir, TINY_SWEEP, POPULATION_SCRIPT, num_devices=8)


def test_population_spans_eight_devices(population_run):
    assert population_run["num_devices"] == 8
    assert population_run["padded_size"] == 8
    assert population_run["leaf_shape"][0] == 8
    assert population_run["leaf_devices"] == 8
    assert population_run["rows_per_device"] == [1] * 8


def test_padding_dropped_from_results(population_run):
    assert [m["member"] for m in population_run["sharded"]] == list(range(6))
    assert population_run["member_dirs"] == [f"member-{i:04d}" for i in range(6)]


def test_sharded_sweep_matches_one_device(population_run):
    # Evaluation is off (eval_episodes 0) to save two compiles; the multi-host test compares
    # sharded evaluations. Every per-chunk training metric of every member is compared here.
    for sharded, single in zip(population_run["sharded"], population_run["single"], strict=True):
        assert sharded["status"] == single["status"] == "ok"
    for sharded, single in zip(
        population_run["sharded_curves"], population_run["single_curves"], strict=True
    ):
        assert len(sharded) == len(single) == 3
        for got, expected in zip(sharded, single, strict=True):
            for name, value in expected.items():
                if isinstance(value, float):
                    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_members_differ(population_run):
    final_losses = [curve[-1]["critic_loss"] for curve in population_run["sharded_curves"]]
    assert len(set(final_losses)) == len(final_losses)


def test_pad_repeats_last_row():
    # 6 members on 8 devices: rows 6 and 7 copy row 5; unpad restores the original.
    assert padded_size(6, 8) == 8
    assert padded_size(16, 8) == 16
    assert padded_size(1, 3) == 3
    tree = {"lr": np.arange(6.0), "key": np.arange(12).reshape(6, 2)}
    padded = pad(tree, 8)
    np.testing.assert_array_equal(padded["lr"], [0, 1, 2, 3, 4, 5, 5, 5])
    np.testing.assert_array_equal(padded["key"][7], [10, 11])
    restored = unpad(padded, 6)
    np.testing.assert_array_equal(restored["key"], tree["key"])


def test_pad_rejects_shrinking():
    with pytest.raises(ValueError, match="cannot pad 6 rows to 4"):
        pad(np.zeros(6), 4)


ENV_AXIS_SCRIPT = """
import json, sys
import jax, numpy as np
from rlli_jax.config import load_config
from rlli_jax.runner import train_key
from rlli_jax.sharding import ENV_AXIS, env_axis_shardings, make_mesh, replicated_sharding
from rlli_jax.train import make_train

config = load_config("base.yaml")
program = make_train(config)
hyper = program.default_hyperparams
mesh = make_mesh(ENV_AXIS)
abstract = jax.eval_shape(program.init, train_key(0), hyper)
shardings = env_axis_shardings(abstract, mesh, config.train.num_envs)
init = jax.jit(program.init, out_shardings=shardings)
chunk = jax.jit(program.run_chunk, in_shardings=(shardings, replicated_sharding(mesh)),
                out_shardings=(shardings, replicated_sharding(mesh)))
state = init(train_key(0), hyper)
obs_devices = len(state.obs.sharding.device_set)
for _ in range(3):
    state, _ = chunk(state, hyper)
reference = program.init(train_key(0), hyper)
for _ in range(3):
    reference, _ = program.run_chunk(reference, hyper)
difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
    jax.tree.leaves(state.agent.actor_params), jax.tree.leaves(reference.agent.actor_params)))
json.dump({"obs_devices": obs_devices, "obs_rows": state.obs.addressable_shards[0].data.shape[0],
           "difference": difference}, sys.stdout)
"""


@pytest.mark.slow
def test_env_axis_sharding_matches_one_device(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    result = run_on_forced_devices(ENV_AXIS_SCRIPT, tmp_path, num_devices=8)
    assert result["obs_devices"] == 8
    assert result["obs_rows"] == 1  # 8 environments over 8 devices
    assert result["difference"] < 1e-5


# 3 seeds = 3 members: not padded on 1 device, padded to 4 on 2 devices. Each interrupted sweep
# stops after chunk 2 of 3 (checkpointed), then resumes on the other device count, or on the
# same one for the bit-exact check.
RESUME_SWEEP = """
base: base.yaml
set: [train.checkpoint_every_chunks=1]
num_seeds: 3
grid:
  hyper.actor_lr: [1.0e-3]
baselines: false
"""

RESUME_SCRIPT = """
import json, sys
import jax
from rlli_jax.population import run_sweep
from rlli_jax.sharding import make_mesh
from rlli_jax.sweep import load_sweep_config, plan_sweep

plan = plan_sweep(load_sweep_config("sweep.yaml"))
meshes = {1: make_mesh(devices=jax.devices()[:1]), 2: make_mesh(devices=jax.devices()[:2])}

class Stop(Exception):
    pass

def stop_after_chunk_2(event):
    if event.kind == "chunk" and event.chunk == 2:
        raise Stop

def interrupted_then_resumed(name, first, second):
    try:
        run_sweep(plan, name, mesh=meshes[first], on_event=stop_after_chunk_2)
    except Stop:
        pass
    chunks = []
    run_sweep(plan, name, mesh=meshes[second],
              on_event=lambda event: chunks.append(event.chunk) if event.kind == "chunk" else None)
    return {"chunks": chunks, "curves": curves(name)}

def curves(root):
    paths = [f"{root}/members/{member.name}/metrics.jsonl" for member in plan.members]
    return [[json.loads(line) for line in open(path)] for path in paths]

run_sweep(plan, "reference1", mesh=meshes[1])
run_sweep(plan, "reference2", mesh=meshes[2])
json.dump({
    "reference1": curves("reference1"),
    "reference2": curves("reference2"),
    "grown": interrupted_then_resumed("grown", 1, 2),
    "shrunk": interrupted_then_resumed("shrunk", 2, 1),
    "same": interrupted_then_resumed("same", 2, 2),
}, sys.stdout)
"""


@pytest.fixture(scope="module")
def device_change_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("device_change")
    return run_sweep_script(workdir, RESUME_SWEEP, RESUME_SCRIPT, num_devices=2)


def _assert_curves_close(got_curves, expected_curves):
    for got_rows, expected_rows in zip(got_curves, expected_curves, strict=True):
        assert [row["chunk"] for row in got_rows] == [1, 2, 3]
        for got, expected in zip(got_rows, expected_rows, strict=True):
            for name, value in expected.items():
                if isinstance(value, float):
                    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, reference", [("grown", "reference1"), ("shrunk", "reference2")])
def test_sweep_resumes_on_other_device_count(device_change_run, name, reference):
    resumed = device_change_run[name]
    assert resumed["chunks"] == [3]  # continued from the chunk-2 checkpoint
    _assert_curves_close(resumed["curves"], device_change_run[reference])


def test_sweep_resume_on_same_devices_is_exact(device_change_run):
    resumed = device_change_run["same"]
    assert resumed["chunks"] == [3]
    assert resumed["curves"] == device_change_run["reference2"]


# A training run on 2 devices, checkpointed after every chunk, then loaded and resumed on 1.
TRAIN_ON_DEVICES_SCRIPT = """
import json, sys
import jax, numpy as np
from rlli_jax.config import load_config
from rlli_jax.runner import run_training

config = load_config("base.yaml", ["train.checkpoint_every_chunks=1"])
summary = run_training(config, "run")
actor = summary["final_state"].agent.actor_params
json.dump({"num_devices": summary["num_devices"],
           "actor": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(actor)]}, sys.stdout)
"""

LOAD_AND_RESUME_SCRIPT = """
import json, shutil, sys
import jax, numpy as np
from rlli_jax.runner import load_run_config, load_trained_run, run_training

def actor_leaves(state):
    return [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(state.agent.actor_params)]

loaded = load_trained_run("run")
shutil.rmtree("run/checkpoints/3")
summary = run_training(load_run_config("run"), "run", resume=True)
json.dump({"num_devices": summary["num_devices"],
           "loaded_chunk": loaded.metadata["chunk"],
           "loaded": actor_leaves(loaded.state),
           "resumed_from": summary["resumed_from"]["chunk"],
           "resumed": actor_leaves(summary["final_state"])}, sys.stdout)
"""


def test_train_run_loads_on_fewer_devices(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    trained = run_on_forced_devices(TRAIN_ON_DEVICES_SCRIPT, tmp_path, num_devices=2)
    assert trained["num_devices"] == 2
    resumed = run_on_forced_devices(LOAD_AND_RESUME_SCRIPT, tmp_path, num_devices=1)
    assert resumed["num_devices"] == 1
    assert resumed["loaded_chunk"] == 3
    assert resumed["loaded"] == trained["actor"]
    assert resumed["resumed_from"] == 2
    for got, expected in zip(resumed["resumed"], trained["actor"], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
