"""Reward network: forward pass, distillation on a small dataset, checkpoints, shipped default."""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.qoe.collect import collect_ratings, sample_requests
from rlli_jax.qoe.dataset import RatingsFileError, dataset_hash, load_ratings
from rlli_jax.qoe.distill import DistillConfig, TrainingDivergedError, distill, spearman
from rlli_jax.qoe.model import default_qoe_model
from rlli_jax.qoe.personas import sample_traits
from rlli_jax.qoe.raters import SimulatorRater
from rlli_jax.qoe.reward_net import (
    CHECKPOINT_FORMAT_VERSION,
    RewardNetQoE,
    default_checkpoint_path,
    load_reward_net,
    save_reward_net,
)
from rlli_jax.qoe.simulator import simulated_mos

PROMPTS = ("a red apple on a table", "a lemon on a table")
SMALL_HIDDEN = (16, 16)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ratings") / "ratings_simulated.jsonl"
    collect_ratings(SimulatorRater(seed=0), sample_requests(0, range(1500), PROMPTS), path)
    return load_ratings(path, strict=True)


@pytest.fixture(scope="module")
def small_result(small_dataset):
    config = DistillConfig(hidden_sizes=SMALL_HIDDEN, max_epochs=60, patience=10, batch_size=128)
    return distill(small_dataset, config)


def test_forward_shapes_and_range():
    model = RewardNetQoE(hidden_sizes=SMALL_HIDDEN)
    params = model.init_params(jax.random.key(0))
    traits = jax.random.uniform(jax.random.key(1), (3, 8, 5))
    quality = jax.random.uniform(jax.random.key(2), (3, 8))
    latency = jnp.exp(jax.random.uniform(jax.random.key(3), (3, 8), minval=-2, maxval=5))
    mos = model(params, traits, quality, latency)
    assert mos.shape == (3, 8)
    assert float(mos.min()) >= 1.0
    assert float(mos.max()) <= 5.0


def test_forward_under_jit_and_vmap_over_params():
    model = RewardNetQoE(hidden_sizes=SMALL_HIDDEN)
    stacked = jax.vmap(model.init_params)(jax.random.split(jax.random.key(0), 4))
    traits = jnp.full((8, 5), 0.5)
    quality = jnp.linspace(0, 1, 8)
    latency = jnp.full(8, 3.0)
    mos = jax.jit(jax.vmap(model, in_axes=(0, None, None, None)))(stacked, traits, quality, latency)
    assert mos.shape == (4, 8)
    assert not np.allclose(mos[0], mos[1])


def test_model_is_hashable_static():
    assert hash(RewardNetQoE()) == hash(RewardNetQoE())
    assert RewardNetQoE() == RewardNetQoE(hidden_sizes=[64, 64])
    assert RewardNetQoE() != RewardNetQoE(hidden_sizes=(32,))


@pytest.mark.parametrize("hidden_sizes", [(), (64, 0), (64, -1), (64, 2.5)])
def test_model_rejects_bad_hidden_sizes(hidden_sizes):
    with pytest.raises(ValueError, match="hidden_sizes must be a non-empty list or tuple"):
        RewardNetQoE(hidden_sizes=hidden_sizes)


def test_model_rejects_hidden_sizes_string():
    with pytest.raises(ValueError, match="got '64,64' of type str"):
        RewardNetQoE(hidden_sizes="64,64")
    with pytest.raises(ValueError, match="got '64,64' of type str"):
        DistillConfig(hidden_sizes="64,64")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("batch_size", 2.5, "batch_size must be an integer >= 1, got 2.5"),
        ("max_epochs", 10.0, "max_epochs must be an integer >= 1, got 10.0"),
        ("patience", True, "patience must be an integer >= 1, got True"),
        ("seed", -1, r"seed must be an integer in \[0, 4294967295\], got -1"),
        ("seed", 1.5, r"seed must be an integer in \[0, 4294967295\], got 1.5"),
        ("validation_fraction", 1.0, r"validation_fraction must be in \(0, 1\)"),
        ("weight_decay", -1e-3, "weight_decay must be >= 0"),
        ("hidden_sizes", (8, 0), "hidden_sizes"),
    ],
)
def test_distill_config_rejects_bad_value(field, value, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**{field: value})


def test_distill_small_dataset_learns(small_result):
    metrics = small_result.metrics
    assert metrics["num_ratings"] == 300
    # 1 500 noisy simulated ratings and a 16-16 network: a loose bar that training must clear.
    assert metrics["mos_spearman"] > 0.85
    assert metrics["mos_mae"] < 0.35
    assert metrics["mae"] < metrics["rmse"] + 1e-9
    losses = [entry["validation_loss"] for entry in small_result.history]
    assert min(losses) < losses[0]
    assert 1 <= small_result.best_epoch <= small_result.num_epochs <= 60


def test_distill_deterministic(small_dataset):
    config = DistillConfig(hidden_sizes=(8,), max_epochs=3, patience=3)
    first = distill(small_dataset, config)
    second = distill(small_dataset, config)
    leaves = zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)


def test_distill_early_stopping(small_dataset):
    # A learning rate this large diverges or stalls, so patience must end training early.
    config = DistillConfig(hidden_sizes=(8,), max_epochs=200, patience=3, learning_rate=5.0)
    result = distill(small_dataset, config)
    assert result.num_epochs < 200
    assert result.num_epochs - result.best_epoch == 3


def test_checkpoint_round_trip(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params, {"dataset_hash": "abc"})
    model, params, metadata = load_reward_net(path)

    assert model.hidden_sizes == SMALL_HIDDEN
    assert metadata["dataset_hash"] == "abc"
    assert metadata["format_version"] == CHECKPOINT_FORMAT_VERSION
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(small_result.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    traits = sample_traits(jax.random.key(0), 5)
    quality = jnp.linspace(0.2, 1.0, 5)
    latency = jnp.linspace(0.5, 40.0, 5)
    np.testing.assert_allclose(
        model(params, traits, quality, latency),
        small_result.model(small_result.params, traits, quality, latency),
        rtol=1e-6,
    )
    assert RewardNetQoE.from_checkpoint(path) == model
    assert model.default_params()["input_std"].shape == (7,)


def test_checkpoint_refuses_overwrite(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params)
    with pytest.raises(ValueError, match="already exists"):
        save_reward_net(path, small_result.model, small_result.params)
    save_reward_net(path, small_result.model, small_result.params, overwrite=True)


def test_interrupted_first_save_leaves_nothing(small_result, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def interrupted_save(self, directory, *args, **kwargs):
        # orbax writes into a temporary folder beside `directory` and renames it at the end.
        Path(f"{directory}.orbax-checkpoint-tmp-1").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.Checkpointer, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_reward_net(tmp_path / "reward_net", small_result.model, small_result.params)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["net[1]", "net[ab]"])
def test_interrupted_save_of_pattern_name(small_result, tmp_path, monkeypatch, name):
    import orbax.checkpoint as ocp

    def interrupted_save(self, directory, *args, **kwargs):
        Path(f"{directory}.orbax-checkpoint-tmp-1").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.Checkpointer, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_reward_net(tmp_path / name, small_result.model, small_result.params)
    assert list(tmp_path.iterdir()) == []


def test_save_accepts_a_long_name(small_result, tmp_path):
    # 230 characters fit a 255-byte file name, but not with the hidden folder's additions.
    path = tmp_path / ("n" * 230)
    save_reward_net(path, small_result.model, small_result.params)
    save_reward_net(path, small_result.model, small_result.params, overwrite=True)
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def test_save_rejects_params_of_other_shape(small_result, tmp_path):
    with pytest.raises(ValueError, match=r"does not match hidden sizes \(64, 64\)"):
        save_reward_net(tmp_path / "x", RewardNetQoE(), small_result.params)


def rewrite_metadata(path, **changes) -> None:
    metadata_file = path / "metadata" / "metadata"
    document = json.loads(metadata_file.read_text())
    document.update(changes)
    metadata_file.write_text(json.dumps(document))


def test_load_other_format_version(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params)
    rewrite_metadata(path, format_version=CHECKPOINT_FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="has format version 2, but this version") as error:
        load_reward_net(path)
    assert str(path) in str(error.value)


def test_load_wrong_array_shape(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params)
    # The metadata claims 32-wide layers while the stored arrays are 16 wide.
    rewrite_metadata(path, hidden_sizes=[32, 32])
    with pytest.raises(ValueError, match=r"has shape \(7, 16\), expected \(7, 32\)") as error:
        load_reward_net(path)
    assert str(path) in str(error.value)


def test_load_other_hidden_sizes_than_expected(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params)
    with pytest.raises(ValueError, match=r"has hidden sizes \(16, 16\), expected \(64, 64\)"):
        load_reward_net(path, hidden_sizes=(64, 64))
    with pytest.raises(ValueError, match=r"hidden sizes \(16, 16\), expected \(64, 64\)"):
        RewardNetQoE(hidden_sizes=(64, 64), checkpoint=str(path)).default_params()


def test_load_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="reward-net checkpoint not found"):
        load_reward_net(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a reward-net checkpoint"):
        load_reward_net(tmp_path / "empty")


def test_load_other_format_name(small_result, tmp_path):
    path = tmp_path / "reward_net"
    save_reward_net(path, small_result.model, small_result.params)
    rewrite_metadata(path, format="something.else")
    with pytest.raises(ValueError, match="metadata format is 'something.else'"):
        load_reward_net(path)


def save_tiny_checkpoint(path) -> None:
    model = RewardNetQoE(hidden_sizes=(4,))
    save_reward_net(path, model, model.init_params(jax.random.key(0)))


def test_load_garbled_metadata_names_file(tmp_path):
    path = tmp_path / "reward_net"
    save_tiny_checkpoint(path)
    metadata_file = path / "metadata" / "metadata"
    metadata_file.write_text('{"format": "rlli_jax.reward_net", bad', encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON") as error:
        load_reward_net(path)
    assert str(metadata_file) in str(error.value)


def test_load_hidden_sizes_string(tmp_path):
    path = tmp_path / "reward_net"
    save_tiny_checkpoint(path)
    rewrite_metadata(path, hidden_sizes="64,64")
    with pytest.raises(ValueError, match="got '64,64' of type str") as error:
        load_reward_net(path)
    assert str(path) in str(error.value)


def _cut_params_files(path):
    for data_file in (path / "params").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[:10])


def _remove_params_metadata(path):
    (path / "params" / "_METADATA").unlink()


def _remove_metadata_file(path):
    (path / "metadata" / "metadata").unlink()


@pytest.mark.parametrize(
    "damage, item",
    [
        (_cut_params_files, "params"),
        (_remove_params_metadata, "params"),
        (_remove_metadata_file, "metadata"),
    ],
)
def test_load_damaged_checkpoint_names_it(tmp_path, damage, item):
    path = tmp_path / "reward_net"
    save_tiny_checkpoint(path)
    damage(path)
    with pytest.raises(ValueError, match=f"is damaged: failed to read {item}") as error:
        load_reward_net(path)
    assert str(path) in str(error.value)
    assert "tensorstore_spec" not in str(error.value)


def test_env_config_garbled_metadata_names_field(tmp_path):
    from rlli_jax.config import load_config
    from rlli_jax.train import make_env

    path = tmp_path / "reward_net"
    save_tiny_checkpoint(path)
    (path / "metadata" / "metadata").write_text("{bad", encoding="utf-8")
    config = load_config(None, [f"env.reward_net={path}", "env.num_users=2"])
    with pytest.raises(ValueError, match=r"invalid env\.reward_net = .*is not valid JSON"):
        make_env(config)


def test_overwrite_replaces_checkpoint_or_empty_dir(tmp_path):
    checkpoint = tmp_path / "reward_net"
    save_tiny_checkpoint(checkpoint)
    (checkpoint / "metrics.json").write_text("{}", encoding="utf-8")
    model = RewardNetQoE(hidden_sizes=(2,))
    save_reward_net(checkpoint, model, model.init_params(jax.random.key(1)), overwrite=True)
    assert load_reward_net(checkpoint)[0].hidden_sizes == (2,)

    empty = tmp_path / "empty"
    empty.mkdir()
    save_reward_net(empty, model, model.init_params(jax.random.key(1)), overwrite=True)
    assert load_reward_net(empty)[0].hidden_sizes == (2,)


def test_failed_overwrite_keeps_old_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    checkpoint = tmp_path / "reward_net"
    save_tiny_checkpoint(checkpoint)
    _, old_params, _ = load_reward_net(checkpoint)

    def fail_save(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ocp.CompositeCheckpointHandler, "save", fail_save)
    model = RewardNetQoE(hidden_sizes=(2,))
    with pytest.raises(OSError, match="No space left"):
        save_reward_net(checkpoint, model, model.init_params(jax.random.key(1)), overwrite=True)
    monkeypatch.undo()

    model, params, _ = load_reward_net(checkpoint)
    assert model.hidden_sizes == (4,)
    for old, new in zip(jax.tree.leaves(old_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["reward_net"]


def test_overwrite_rejects_other_folder(tmp_path):
    model = RewardNetQoE(hidden_sizes=(4,))
    params = model.init_params(jax.random.key(0))
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="neither empty nor a reward-net checkpoint"):
        save_reward_net(folder, model, params, overwrite=True)
    assert (folder / "sub" / "notes.txt").read_text(encoding="utf-8") == "keep me"

    plain_file = tmp_path / "file.txt"
    plain_file.write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="it exists and is not a directory"):
        save_reward_net(plain_file, model, params, overwrite=True)
    assert plain_file.read_text(encoding="utf-8") == "keep me"


def test_overwrite_rejects_checkpoint_with_extra_files(tmp_path):
    path = tmp_path / "reward_net"
    save_tiny_checkpoint(path)
    (path / "notes.txt").write_text("keep me", encoding="utf-8")
    model = RewardNetQoE(hidden_sizes=(4,))
    with pytest.raises(ValueError, match=r"also contains \['notes.txt'\]"):
        save_reward_net(path, model, model.init_params(jax.random.key(0)), overwrite=True)
    assert (path / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_default_qoe_model_is_shipped_reward_net():
    model = default_qoe_model()
    assert isinstance(model, RewardNetQoE)
    params = model.default_params()
    assert model.default_params() is params  # cached: loaded once per process
    _, _, metadata = load_reward_net(default_checkpoint_path())
    assert metadata["dataset_simulated"] is True
    assert metadata["validation_metrics"]["mos_spearman"] >= 0.9


def test_shipped_default_tracks_simulator_on_fresh_personas():
    # Fresh personas and outcomes (not the shipped dataset's), spread as in the environment.
    model = default_qoe_model()
    key_traits, key_quality, key_latency = jax.random.split(jax.random.key(2024), 3)
    traits = sample_traits(key_traits, 4000)
    quality = jax.random.uniform(key_quality, (4000,))
    latency = jnp.exp(
        jax.random.uniform(key_latency, (4000,), minval=np.log(0.3), maxval=np.log(60))
    )
    predicted = np.asarray(model(model.default_params(), traits, quality, latency))
    mos = np.asarray(simulated_mos(traits, quality, latency))
    assert spearman(predicted, mos) >= 0.9
    assert np.mean(np.abs(predicted - mos)) < 0.15


def test_shipped_checkpoint_loads_from_copy(tmp_path):
    # A copied checkpoint directory (as an installed wheel has it) loads the same parameters.
    copy = tmp_path / "copy"
    shutil.copytree(default_checkpoint_path(), copy)
    _, copied, _ = load_reward_net(copy)
    _, shipped, _ = load_reward_net(default_checkpoint_path())
    for a, b in zip(jax.tree.leaves(copied), jax.tree.leaves(shipped), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distill_script_strict_and_default(small_dataset, tmp_path, capsys):
    distill_main = load_script("distill_reward").main
    ratings = tmp_path / "ratings.jsonl"
    lines = small_dataset.path.read_text(encoding="utf-8").splitlines()[:200]
    lines.insert(5, '{"request_id": "broken"}')
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ["--ratings", str(ratings), "--epochs", "2", "--hidden-sizes", "8"]

    with pytest.raises(RatingsFileError, match="line 6: missing field"):
        distill_main([*options, "--out", str(tmp_path / "strict"), "--strict"])

    assert distill_main([*options, "--out", str(tmp_path / "net")]) == 0
    output = capsys.readouterr().out
    assert "200 ratings (simulated)" in output
    assert "1 invalid lines skipped" in output
    assert "line 6: missing field" in output
    model, _, metadata = load_reward_net(tmp_path / "net")
    assert model.hidden_sizes == (8,)
    assert metadata["dataset_hash"] == dataset_hash(ratings)
    assert metadata["config"]["max_epochs"] == 2
    saved_metrics = json.loads((tmp_path / "net" / "metrics.json").read_text())
    assert saved_metrics["validation_metrics"] == metadata["validation_metrics"]

    with pytest.raises(ValueError, match="already exists"):
        distill_main([*options, "--out", str(tmp_path / "net")])


def test_distill_script_interrupt_saves_nothing(small_dataset, tmp_path, monkeypatch, capsys):
    script = load_script("distill_reward")

    def interrupted_distill(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "distill", interrupted_distill)
    out = tmp_path / "net"
    options = ["--ratings", str(small_dataset.path), "--epochs", "2", "--out", str(out)]
    assert script.main(options) == 130
    error = capsys.readouterr().err
    assert "interrupted: nothing was saved; run the same command again" in error
    assert not out.exists()


def test_distill_script_protects_out(tmp_path):
    distill_main = load_script("distill_reward").main
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    ratings = folder / "ratings.jsonl"
    ratings.write_text("{}\n", encoding="utf-8")
    (folder / "sub" / "notes.txt").write_text("keep me", encoding="utf-8")
    options = ["--ratings", str(ratings), "--epochs", "3", "--overwrite"]

    for out in (folder, ratings):
        with pytest.raises(ValueError, match="contains the --ratings file"):
            distill_main([*options, "--out", str(out)])
    with pytest.raises(ValueError, match="neither empty nor a reward-net checkpoint"):
        distill_main([*options, "--out", str(folder / "sub")])
    (folder / "file").write_text("keep me too", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(ValueError, match="exists and is not a directory"):
            distill_main([*options[:-1], *extra, "--out", str(folder / "file")])
    assert ratings.read_text(encoding="utf-8") == "{}\n"
    assert (folder / "sub" / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_distill_script_ratings_directory(tmp_path):
    distill_main = load_script("distill_reward").main
    with pytest.raises(RatingsFileError, match="is a directory, not a file"):
        distill_main(["--ratings", str(tmp_path), "--out", str(tmp_path / "net")])


def test_distill_script_bad_hidden_sizes(tmp_path, capsys):
    distill_main = load_script("distill_reward").main
    options = ["--ratings", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "net")]
    with pytest.raises(SystemExit):
        distill_main([*options, "--hidden-sizes", "64,x"])
    error = capsys.readouterr().err
    assert "argument --hidden-sizes: invalid value '64,x'" in error
    assert "comma-separated positive integers" in error
    assert "lambda" not in error


def test_distill_script_writes_strict_json_for_tiny_data(small_dataset, tmp_path):
    distill_main = load_script("distill_reward").main
    ratings = tmp_path / "ratings.jsonl"
    lines = small_dataset.path.read_text(encoding="utf-8").splitlines()[:3]
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ["--ratings", str(ratings), "--epochs", "2", "--hidden-sizes", "8"]
    assert distill_main([*options, "--out", str(tmp_path / "net")]) == 0

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    text = (tmp_path / "net" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=reject)["validation_metrics"]
    assert metrics["mos_spearman"] is None  # one validation rating has no rank correlation


@pytest.mark.parametrize(
    "option, value, message",
    [("--epochs", "0", "invalid --epochs: max_epochs"), ("--patience", "-1", "invalid --patience")],
)
def test_distill_script_names_the_option(tmp_path, option, value, message):
    distill_main = load_script("distill_reward").main
    argv = ["--ratings", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "net"), option, value]
    with pytest.raises(ValueError, match=message):
        distill_main(argv)


def test_distill_diverged_raises(small_dataset):
    config = DistillConfig(hidden_sizes=(8,), learning_rate=1e30, max_epochs=5, patience=3)
    with pytest.raises(TrainingDivergedError, match="no finite validation loss in 3 epochs"):
        distill(small_dataset, config)


def test_distill_script_diverged_saves_nothing(small_dataset, tmp_path):
    distill_main = load_script("distill_reward").main
    ratings = tmp_path / "ratings.jsonl"
    lines = small_dataset.path.read_text(encoding="utf-8").splitlines()[:200]
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "net"
    argv = ["--ratings", str(ratings), "--out", str(out), "--hidden-sizes", "8"]
    argv += ["--learning-rate", "1e30", "--patience", "3"]
    with pytest.raises(ValueError, match="training diverged") as error:
        distill_main(argv)
    assert "try a lower learning rate, e.g. --learning-rate 1e+29" in str(error.value)
    assert not out.exists()


def test_distill_script_failed_write_exits_1(small_dataset, tmp_path, capsys, monkeypatch):
    distill_script = load_script("distill_reward")
    ratings = tmp_path / "ratings.jsonl"
    lines = small_dataset.path.read_text(encoding="utf-8").splitlines()[:200]
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def fail_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(distill_script, "save_reward_net", fail_save)
    out = tmp_path / "net"
    argv = ["--ratings", str(ratings), "--out", str(out), "--epochs", "2", "--hidden-sizes", "8"]
    assert distill_script.main(argv) == 1
    error = capsys.readouterr().err
    assert f"error: failed to write --out {out}: [Errno 28] No space left on device" in error


def test_distill_script_out_under_file(tmp_path):
    # The ratings file does not exist, so the error must come before the dataset loads.
    distill_main = load_script("distill_reward").main
    plain_file = tmp_path / "afile"
    plain_file.write_text("keep me", encoding="utf-8")
    out = plain_file / "sub"
    argv = ["--ratings", str(tmp_path / "r.jsonl"), "--out", str(out)]
    with pytest.raises(ValueError, match="is invalid: .*afile is a file, not a folder") as error:
        distill_main(argv)
    assert f"--out = '{out}'" in str(error.value)
    assert plain_file.read_text(encoding="utf-8") == "keep me"


def test_distill_script_empty_out(tmp_path):
    distill_main = load_script("distill_reward").main
    with pytest.raises(ValueError, match="--out = '' is invalid: it must name a path"):
        distill_main(["--ratings", str(tmp_path / "r.jsonl"), "--out", ""])


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_distill_script_rejects_bad_seed(tmp_path, seed):
    # The ratings file does not exist, so the error must come before the dataset loads.
    distill_main = load_script("distill_reward").main
    argv = ["--ratings", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "net")]
    with pytest.raises(ValueError, match=rf"invalid --seed = {seed}: must be an integer in"):
        distill_main([*argv, "--seed", seed])
    assert not (tmp_path / "net").exists()


def test_distill_help_gives_defaults(capsys):
    parse_args = load_script("distill_reward").parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    # argparse wraps long help lines, so compare with the whitespace collapsed.
    help_text = " ".join(capsys.readouterr().out.split())
    defaults = DistillConfig()
    hidden_sizes = ",".join(str(size) for size in defaults.hidden_sizes)
    for option, default in [
        ("--seed SEED", defaults.seed),
        ("--epochs EPOCHS", defaults.max_epochs),
        ("--patience PATIENCE", defaults.patience),
        ("--batch-size BATCH_SIZE", defaults.batch_size),
        ("--learning-rate LEARNING_RATE", f"{defaults.learning_rate:g}"),
        ("--weight-decay WEIGHT_DECAY", f"{defaults.weight_decay:g}"),
        ("--hidden-sizes HIDDEN_SIZES", hidden_sizes),
        ("--validation-fraction VALIDATION_FRACTION", f"{defaults.validation_fraction:g}"),
    ]:
        entry = help_text.split(f"{option} ")[-1].split(" --")[0]
        assert f"(default: {default})" in entry, (option, entry)
