"""Tests of the reproduction study: statistics, the persona-blind QoE and the CLI end to end.

The end-to-end tests check that the script runs and writes its outputs at the `tiny` budget,
not that any method wins.
"""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlli_jax.agents.baselines import BASELINE_NAMES
from rlli_jax.config import load_config
from rlli_jax.qoe.model import SimulatorQoE
from rlli_jax.study import (
    FIELDS_ADDED_AFTER_DIGEST,
    REPORTED_METRICS,
    STUDY_ENTRIES,
    PersonaBlindQoE,
    baseline_signature,
    default_entries,
    entry_env_data_digest,
    mean_interval,
    relative_gain,
    run_entry,
    settings_digest,
    study_overrides,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "study.py"


def test_mean_interval_matches_t_formula():
    values = [1.0, 2.0, 3.0, 4.0]
    interval = mean_interval(values)
    # mean 2.5, sample std sqrt(5/3), sem sqrt(5/3)/2 = 0.6455, t(0.975, 3) = 3.1824.
    half_width = stats.t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2
    assert interval["mean"] == pytest.approx(2.5)
    assert interval["low"] == pytest.approx(2.5 - half_width)
    assert interval["high"] == pytest.approx(2.5 + half_width)
    assert half_width == pytest.approx(2.0541, abs=1e-3)


def test_mean_interval_one_seed_is_nan():
    interval = mean_interval([3.0])
    assert interval["mean"] == 3.0
    assert math.isnan(interval["low"])
    assert math.isnan(interval["high"])


def test_relative_gain_point_and_bounds():
    treatment = [3.3, 3.5, 3.4, 3.6, 3.2]
    control = [3.0, 3.1, 2.9, 3.0, 3.0]
    gain = relative_gain(treatment, control)
    # Means 3.4 and 3.0: gain 3.4 / 3.0 - 1 = 0.1333.
    assert gain["gain"] == pytest.approx(0.4 / 3.0)
    assert gain["low"] < gain["gain"] < gain["high"]
    assert gain["low"] > 0.0


def test_relative_gain_is_deterministic():
    first = relative_gain([1.0, 2.0, 3.0], [2.0, 2.5, 3.0])
    second = relative_gain([1.0, 2.0, 3.0], [2.0, 2.5, 3.0])
    assert first == second


def test_persona_blind_ignores_traits():
    blind = PersonaBlindQoE(SimulatorQoE())
    quality = jnp.full((3,), 0.8)
    latency_s = jnp.full((3,), 4.0)
    traits = jax.random.uniform(jax.random.key(0), (3, 5))
    blind_mos = blind({}, traits, quality, latency_s)
    mean_mos = SimulatorQoE()({}, jnp.full((3, 5), 0.5), quality, latency_s)
    persona_mos = SimulatorQoE()({}, traits, quality, latency_s)
    np.testing.assert_allclose(blind_mos, mean_mos)
    assert not np.allclose(blind_mos, persona_mos)


def test_study_overrides_put_entry_after_budget():
    overrides = study_overrides(STUDY_ENTRIES["gddpg_t3"], "tiny", ["train.seed=1"])
    assert "agent.diffusion_steps=3" in overrides
    assert overrides.index("agent.algo=gddpg") > overrides.index("train.num_envs=8")
    assert overrides[-1] == "train.seed=1"


def test_study_overrides_reject_unknown_budget():
    with pytest.raises(ValueError, match="invalid budget 'huge'"):
        study_overrides(STUDY_ENTRIES["gddpg"], "huge")


def test_every_entry_config_loads():
    from rlli_jax.config import load_config

    for entry in STUDY_ENTRIES.values():
        config = load_config(
            REPO / "configs" / "paper.yaml", study_overrides(entry, "tiny"), last_wins=True
        )
        assert config.agent.algo == entry.algo


def test_paper_config_entries_take_default_values():
    """Each `paper_config` pair differs from the paper.yaml main pair only in the settings it
    names. There it takes the configs/default.yaml values."""
    from rlli_jax.config import load_config

    paper = REPO / "configs" / "paper.yaml"
    default = load_config(REPO / "configs" / "default.yaml")
    group = [entry for entry in STUDY_ENTRIES.values() if entry.group == "paper_config"]
    assert len(group) == 6
    changed_fields = set()
    for entry in group:
        main = load_config(paper, study_overrides(STUDY_ENTRIES[entry.algo], "cpu"), last_wins=True)
        changed = load_config(paper, study_overrides(entry, "cpu"), last_wins=True)
        differences = [
            (section, field)
            for section in ("agent", "hyper", "train", "env")
            for field, value in vars(getattr(changed, section)).items()
            if value != vars(getattr(main, section))[field]
        ]
        assert differences, entry.name
        for section, field in differences:
            assert vars(getattr(changed, section))[field] == vars(getattr(default, section))[field]
        changed_fields.update(differences)
    assert changed_fields == {
        ("hyper", "critic_lr"),
        ("agent", "actor_hidden_sizes"),
        ("agent", "encoder_hidden_sizes"),
        ("agent", "batch_size"),
    }


@pytest.mark.parametrize("budget", ["cpu", "full"])
def test_default_entries_skip_unchanged(budget):
    """A run without --only skips the paper_config entries on configs/default.yaml, where they
    would train the main pair again, and keeps them on configs/paper.yaml."""
    group = {entry.name for entry in STUDY_ENTRIES.values() if entry.group == "paper_config"}
    on_default = default_entries(REPO / "configs" / "default.yaml", budget)
    assert set(STUDY_ENTRIES) - set(on_default) == group
    assert default_entries(REPO / "configs" / "paper.yaml", budget) == list(STUDY_ENTRIES)
    # An extra override that gives paper.yaml the default.yaml critic learning rate makes the
    # critic lr entries repeat the main pair, so they are skipped too.
    with_critic_lr = default_entries(
        REPO / "configs" / "paper.yaml", budget, ["hyper.critic_lr=1.0e-3"]
    )
    assert set(STUDY_ENTRIES) - set(with_critic_lr) == {
        "gddpg_critic_lr_1e-3",
        "ddpg_critic_lr_1e-3",
    }


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(REPO / "configs" / "paper.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_script_tiny_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "study"
    args = ("--budget", "tiny", "--seeds", "2", "--only", "ddpg", "--out", str(out))
    completed = _run_script(*args)
    assert completed.returncode == 0, completed.stderr

    for name in (
        "summary.json",
        "summary.csv",
        "gain.json",
        "tables.md",
        "bars_qoe.png",
        "energy_qoe.png",
    ):
        assert (out / name).exists(), name
    assert (out / "curves_main.png").exists()
    result = json.loads((out / "entries" / "ddpg.json").read_text())
    assert result["seeds"] == [0, 1]
    for method in ("ddpg", "random", "equal_split", "greedy"):
        assert len(result["per_seed"][method]["qoe"]) == 2, method
    assert np.isfinite(result["per_seed"]["ddpg"]["qoe"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert 1.0 <= summary["ddpg"]["greedy"]["qoe"]["mean"] <= 5.0
    tables = (out / "tables.md").read_text()
    assert "| ddpg | " in tables
    assert "| tiny | none |" in tables

    resumed = _run_script(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "done earlier with the same settings, skipping" in resumed.stdout

    # A resume with other settings stops before running anything and names the file.
    before = (out / "entries" / "ddpg.json").read_text()
    other_seeds = _run_script(*args, "--first-seed", "1")
    assert other_seeds.returncode == 2
    assert "ddpg.json was written with other settings" in other_seeds.stderr
    assert "seeds [0, 1] against [1, 2] now" in other_seeds.stderr
    other_set = _run_script(*args, "--set", "hyper.tau=0.01")
    assert other_set.returncode == 2
    assert "hyper.tau=0.01" in other_set.stderr
    assert (out / "entries" / "ddpg.json").read_text() == before

    # A damaged entry file is named in the error, for a resume and for --report-only.
    (out / "entries" / "ddpg.json").write_text(before[:1000])
    for extra in ((), ("--report-only",)):
        damaged = _run_script(*args, *extra)
        assert damaged.returncode == 2
        assert "unreadable study entry file" in damaged.stderr
        assert "ddpg.json" in damaged.stderr
        assert "Traceback" not in damaged.stderr
    (out / "entries" / "ddpg.json").write_text("{}")
    incomplete = _run_script(*args, "--report-only")
    assert incomplete.returncode == 2
    assert "incomplete study entry file" in incomplete.stderr


def test_entry_checks_evaluation_memory_first(monkeypatch):
    from rlli_jax import evaluation
    from rlli_jax.study import run_entry

    monkeypatch.setattr(evaluation, "available_device_bytes", lambda: (1024, "a test"))
    with pytest.raises(ValueError, match=r"at once for each of 2 members needs .* a test"):
        run_entry(REPO / "configs" / "paper.yaml", STUDY_ENTRIES["ddpg"], "tiny", [0, 1])


def test_entry_checks_training_memory_first(monkeypatch):
    import rlli_jax.train as train_module

    # The state checks of make_train would reject 1 KiB of free memory before compiling.
    monkeypatch.setattr(train_module, "check_users_memory", lambda config: None)
    monkeypatch.setattr(train_module, "check_network_memory", lambda *args: None)
    monkeypatch.setattr(train_module, "available_device_bytes", lambda: (1024, "a test"))
    with pytest.raises(ValueError, match=r"compiled training of 2 members needs .* a test"):
        run_entry(REPO / "configs" / "paper.yaml", STUDY_ENTRIES["ddpg"], "tiny", [0, 1])


def test_script_rejects_bad_config_early(tmp_path):
    out = tmp_path / "study"
    missing = _run_script("--config", str(tmp_path / "nope.yaml"), "--out", str(out))
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr
    assert "not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_value = _run_script("--only", "ddpg", "--set", "hyper.tau=-1", "--out", str(out))
    assert bad_value.returncode == 2
    assert "hyper.tau" in bad_value.stderr
    assert not out.exists()


def test_entry_without_gradient_steps_is_rejected():
    extra = ["train.warmup_env_steps=100000000"]
    with pytest.raises(ValueError, match=r"study entry ddpg: invalid train\.warmup_env_steps"):
        settings_digest(REPO / "configs" / "default.yaml", STUDY_ENTRIES["ddpg"], "cpu", [0], extra)


def test_run_entry_rejects_no_gradient_steps(monkeypatch):
    import rlli_jax.train as train_module

    def fail_make_train(*args, **kwargs):
        raise AssertionError("run_entry built the training program before checking the config")

    # run_entry is public, so it checks the config itself, before anything compiles.
    monkeypatch.setattr(train_module, "make_train", fail_make_train)
    extra = ["train.warmup_env_steps=100000000"]
    config_path = REPO / "configs" / "default.yaml"
    with pytest.raises(ValueError, match=r"study entry ddpg: invalid train\.warmup_env_steps"):
        run_entry(config_path, STUDY_ENTRIES["ddpg"], "cpu", [0], extra)


def test_digest_matches_files_before_new_field():
    # Entry files written before train.bootstrap_at_horizon existed store the digest of a
    # config repr without it. Its default, true, keeps that behaviour, so they still match.
    config_path = REPO / "configs" / "default.yaml"
    entry = STUDY_ENTRIES["ddpg"]
    config = load_config(config_path, study_overrides(entry, "cpu"), last_wins=True)
    earlier_repr = repr(config).replace(", bootstrap_at_horizon=True", "")
    assert earlier_repr != repr(config)
    earlier_text = f"{earlier_repr};seeds=[0];persona_blind=False"
    earlier_digest = hashlib.sha256(earlier_text.encode()).hexdigest()[:16]

    assert settings_digest(config_path, entry, "cpu", [0]) == earlier_digest
    terminal = ["train.bootstrap_at_horizon=false"]
    assert settings_digest(config_path, entry, "cpu", [0], terminal) != earlier_digest


# Every config field when study entry files began to store a settings digest, plus the fields
# of FIELDS_ADDED_AFTER_DIGEST. A field added later changes repr(config) and so the digest of
# every finished entry, which then reruns.
FIELDS_AT_DIGEST = {
    "env": ("id", "num_users", "horizon", "params", "reward_net"),
    "agent": (
        "algo", "actor_hidden_sizes", "critic_hidden_sizes", "encoder_hidden_sizes",
        "time_embedding_dim", "diffusion_steps", "beta_min", "beta_max", "batch_size",
        "max_grad_norm", "bound_loss_coef",
    ),
    "hyper": ("actor_lr", "critic_lr", "tau", "gamma", "exploration_std"),
    "train": (
        "seed", "num_envs", "total_env_steps", "steps_per_chunk", "warmup_env_steps",
        "buffer_size", "updates_per_step", "eval_episodes", "eval_every_chunks",
        "checkpoint_every_chunks", "max_checkpoints",
    ),
    "logging": ("tensorboard", "progress_bar"),
}  # fmt: skip


def test_new_config_fields_keep_old_digests():
    config = load_config(REPO / "configs" / "default.yaml")
    added = {(section, name) for section, name, _ in FIELDS_ADDED_AFTER_DIGEST}
    for section in dataclasses.fields(config):
        names = [field.name for field in dataclasses.fields(getattr(config, section.name))]
        new = [
            f"{section.name}.{name}"
            for name in names
            if name not in FIELDS_AT_DIGEST.get(section.name, ())
            and (section.name, name) not in added
        ]
        assert not new, (
            f"config fields {', '.join(new)} are not in FIELDS_ADDED_AFTER_DIGEST: add "
            "each with the value that keeps the behaviour from before it existed, so finished "
            "study entries keep their digest"
        )


def test_script_rejects_unknown_entry(tmp_path):
    completed = _run_script("--only", "nope", "--out", str(tmp_path))
    assert completed.returncode == 2
    assert "unknown study entries ['nope']" in completed.stderr


@pytest.fixture
def study_script(monkeypatch):
    """scripts/study.py imported as a module, so that `main` runs in this process."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import study

    return study


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--first-seed", "4294967296"], "invalid --first-seed = 4294967296: must be in [0, "),
        (["--first-seed", "-5"], "invalid --first-seed = -5: must be in [0, 4294967295]"),
        (["--first-seed", str(2**63)], f"invalid --first-seed = {2**63}"),
        (
            ["--first-seed", "4294967295", "--seeds", "2"],
            "invalid --seeds = 2: the last seed --first-seed + --seeds - 1 = 4294967296",
        ),
    ],
)
def test_script_rejects_out_of_range_seeds(study_script, tmp_path, capsys, argv, message):
    out = tmp_path / "study"
    code = study_script.main([*argv, "--only", "ddpg", "--budget", "tiny", "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _valid_entry_file() -> dict:
    """An entry file with every field the report reads, for two seeds and two chunks."""
    metrics = {name: [3.0, 3.5] for name in REPORTED_METRICS}
    return {
        "entry": {"name": "ddpg", "group": "main", "algo": "ddpg", "label": "DDPG"},
        "per_seed": {method: dict(metrics) for method in ("ddpg", *BASELINE_NAMES)},
        "seeds": [0, 1],
        "baseline_signature": "users=8",
        "curves": {"qoe": [[2.0, 3.0], [2.5, 3.5]]},
        "curve_env_steps": [8, 16],
        "total_env_steps": 16,
        "num_updates": 2,
        "compile_s": 1.0,
        "train_s": 1.0,
        "eval_s": 1.0,
        "budget": "tiny",
        "config_path": "configs/paper.yaml",
        "overrides": [],
    }


def test_report_only_reads_valid_entry_file(study_script, tmp_path):
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(_valid_entry_file()))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables.md").exists()


def test_energy_plot_labels_each_setting_baselines(study_script, tmp_path, monkeypatch):
    # Two entries of one group with other environments: each has its own baseline points.
    (tmp_path / "entries").mkdir()
    for num_users in (4, 16):
        data = _valid_entry_file()
        name = f"ddpg_n{num_users}"
        data["entry"] = {
            "name": name,
            "group": "users",
            "algo": "ddpg",
            "label": f"DDPG N={num_users}",
        }
        data["baseline_signature"] = f"users={num_users}"
        (tmp_path / "entries" / f"{name}.json").write_text(json.dumps(data))
    figures = []
    monkeypatch.setattr(study_script.plt, "close", figures.append)
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    energy_axis = figures[-1].axes[0]
    labels = [text.get_text() for text in energy_axis.texts]
    assert "greedy (N=4)" in labels
    assert "greedy (N=16)" in labels
    assert len(labels) == len(set(labels))


def test_report_follows_study_order(study_script, tmp_path):
    (tmp_path / "entries").mkdir()
    for name in ("gddpg_t3", "ddpg", "gddpg", "custom"):
        data = _valid_entry_file()
        algo = "ddpg" if name.startswith("ddpg") or name == "custom" else "gddpg"
        data["entry"] = {"name": name, "group": "main", "algo": algo, "label": name}
        data["per_seed"][algo] = data["per_seed"].pop("ddpg")
        (tmp_path / "entries" / f"{name}.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["gddpg", "ddpg", "gddpg_t3", "custom"]


def test_report_of_one_seed_is_strict_json(study_script, tmp_path):
    # The interval over one seed is undefined, and a NaN token would break strict JSON readers.
    data = _valid_entry_file()
    data["seeds"] = [0]
    for metrics in data["per_seed"].values():
        for name in metrics:
            metrics[name] = [3.0]
    data["curves"] = {"qoe": [[2.0, 3.0]]}
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0

    def reject(name):
        pytest.fail(f"JSON contains {name}")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=reject)
    json.loads((tmp_path / "gain.json").read_text(), parse_constant=reject)
    assert summary["ddpg"]["ddpg"]["qoe"]["mean"] == 3.0
    assert summary["ddpg"]["ddpg"]["qoe"]["low"] is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("entry", "ddpg", "field entry = 'ddpg' must be a mapping"),
        ("per_seed", [], "field per_seed = [] must be a mapping"),
        ("seeds", "0,1", "field seeds = '0,1' must be a non-empty list of integers"),
        ("train_s", "fast", "field train_s = 'fast' must be a number"),
        ("curves", {"qoe": 3}, "field curves.qoe = 3 must be a non-empty list of lists"),
        ("curve_env_steps", [8], "field curve_env_steps = [8] must be a list of numbers, one"),
        ("budget", ["tiny"], "field budget = ['tiny'] must be a string"),
    ],
)
def test_report_only_rejects_mistyped_field(study_script, tmp_path, capsys, field, value, message):
    data = _valid_entry_file()
    data[field] = value
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "invalid study entry file" in error
    assert "ddpg.json" in error
    assert message in error


@pytest.mark.parametrize(
    ("method", "metrics", "message"),
    [
        ("greedy", None, "field per_seed.greedy = None must be a mapping of metrics"),
        ("ddpg", {"qoe": "high"}, "per_seed.ddpg lacks the metric 'reward'"),
    ],
)
def test_report_only_rejects_bad_per_seed(study_script, tmp_path, capsys, method, metrics, message):
    data = _valid_entry_file()
    data["per_seed"][method] = metrics
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_report_only_rejects_mistyped_metric(study_script, tmp_path, capsys):
    data = _valid_entry_file()
    data["per_seed"]["ddpg"]["qoe"] = "high"
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "field per_seed.ddpg.qoe = 'high' must be a list of 2 numbers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda data: data["per_seed"]["greedy"].update(qoe=[3.0, 3.5, 4.0]),
            "field per_seed.greedy.qoe = [3.0, 3.5, 4.0] must be a list of 2 numbers, one per seed",
        ),
        (
            lambda data: data["curves"].update(qoe=[[2.0, 3.0]]),
            "field curves.qoe = [[2.0, 3.0]] must be a non-empty list of lists of numbers, one "
            "per seed (2)",
        ),
        (
            lambda data: data["per_seed"]["ddpg"].update(qoe=[3.0, 10**400]),
            "field per_seed.ddpg.qoe = [3.0, 1000",
        ),
        (
            lambda data: data["entry"].update(group="a/b"),
            "field entry.group = 'a/b' must be letters, digits",
        ),
        (
            lambda data: data["entry"].update(algo="gddpg"),
            "field entry.algo = 'gddpg' must be 'ddpg', the algo of entry ddpg",
        ),
    ],
)
def test_report_only_rejects_inconsistent_entry(study_script, tmp_path, capsys, change, message):
    data = _valid_entry_file()
    change(data)
    if data["entry"]["algo"] == "gddpg":
        data["per_seed"]["gddpg"] = data["per_seed"]["ddpg"]
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(data))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "invalid study entry file" in error
    assert message in error
    assert not (tmp_path / "tables.md").exists()


@pytest.mark.parametrize("data_changed", [False, True])
def test_finished_entry_checks_env_data(study_script, tmp_path, capsys, data_changed):
    config = REPO / "configs" / "quick.yaml"
    entry = STUDY_ENTRIES["ddpg"]
    data = entry_env_data_digest(config, entry, "tiny")
    saved_data = "0" * 64 if data_changed else data
    result = _valid_entry_file()
    result.update(
        budget="tiny",
        config_path=str(config),
        overrides=study_overrides(entry, "tiny"),
        settings_digest=settings_digest(config, entry, "tiny", [0, 1]),
        baseline_signature=f"users=8;data={saved_data};seeds=[0, 1]",
    )
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(result))
    argv = ["--config", str(config), "--budget", "tiny", "--seeds", "2", "--only", "ddpg"]
    code = study_script.main([*argv, "--out", str(tmp_path)])
    error = capsys.readouterr().err
    if data_changed:
        assert code == 2
        assert "ddpg.json was written with other settings: the environment data" in error
        assert f"digest 000000000000 against {data[:12]} now" in error
        assert not (tmp_path / "tables.md").exists()
    else:
        assert code == 0, error
        assert (tmp_path / "tables.md").exists()


@pytest.mark.parametrize("signature", ["users=8", "users=8;data=0000"])
def test_report_compares_entry_without_data_digest(study_script, tmp_path, signature):
    # Entry files written before baseline signatures had `data=` can share a folder with newer
    # ones when a study is resumed, and nothing then shows that their data differ.
    ddpg = _valid_entry_file()
    ddpg.update(overrides=study_overrides(STUDY_ENTRIES["ddpg"], "tiny"))
    ddpg.update(baseline_signature=signature)
    gddpg = json.loads(json.dumps(ddpg))
    gddpg["entry"] = {"name": "gddpg", "group": "main", "algo": "gddpg", "label": "G-DDPG"}
    gddpg["per_seed"]["gddpg"] = gddpg["per_seed"].pop("ddpg")
    gddpg["overrides"] = study_overrides(STUDY_ENTRIES["gddpg"], "tiny")
    gddpg["baseline_signature"] = "users=8"
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(ddpg))
    (tmp_path / "entries" / "gddpg.json").write_text(json.dumps(gddpg))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    gains = json.loads((tmp_path / "gain.json").read_text())
    assert "gddpg vs ddpg" in gains


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (None, None),
        ("seeds", [0, 2]),
        ("budget", "cpu"),
        ("config_path", "configs/default.yaml"),
        ("overrides", [*study_overrides(STUDY_ENTRIES["gddpg"], "tiny"), "train.num_envs=16"]),
        ("baseline_signature", "users=8;data=1111"),
    ],
)
def test_report_compares_only_like_runs(study_script, tmp_path, field, value):
    ddpg = _valid_entry_file()
    ddpg.update(overrides=study_overrides(STUDY_ENTRIES["ddpg"], "tiny"))
    ddpg.update(baseline_signature="users=8;data=0000")
    gddpg = json.loads(json.dumps(ddpg))
    gddpg["entry"] = {"name": "gddpg", "group": "main", "algo": "gddpg", "label": "G-DDPG"}
    gddpg["per_seed"]["gddpg"] = gddpg["per_seed"].pop("ddpg")
    gddpg["overrides"] = study_overrides(STUDY_ENTRIES["gddpg"], "tiny")
    if field is not None:
        gddpg[field] = value
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(ddpg))
    (tmp_path / "entries" / "gddpg.json").write_text(json.dumps(gddpg))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    gains = json.loads((tmp_path / "gain.json").read_text())
    assert ("gddpg vs ddpg" in gains) == (field is None)
    assert "gddpg vs greedy" in gains


def test_report_compares_hand_written_entry(study_script, tmp_path):
    # An entry file under a name outside the study, such as a copy with a setting of one's
    # own, keeps its comparison with the main entry of its learner.
    ddpg = _valid_entry_file()
    ddpg.update(overrides=study_overrides(STUDY_ENTRIES["ddpg"], "tiny"))
    custom = json.loads(json.dumps(ddpg))
    custom["entry"] = {"name": "ddpg_custom", "group": "custom", "algo": "ddpg", "label": "DDPG x"}
    custom["overrides"] = [*ddpg["overrides"], "env.num_users=6"]
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "ddpg.json").write_text(json.dumps(ddpg))
    (tmp_path / "entries" / "ddpg_custom.json").write_text(json.dumps(custom))
    assert study_script.main(["--report-only", "--out", str(tmp_path)]) == 0
    gains = json.loads((tmp_path / "gain.json").read_text())
    assert "ddpg_custom vs ddpg" in gains


def test_script_rejects_no_eval_episodes(study_script, tmp_path, capsys):
    config = str(REPO / "configs" / "quick.yaml")
    argv = ["--config", config, "--budget", "tiny", "--seeds", "1", "--only", "ddpg"]
    argv += ["--set", "train.eval_episodes=0", "--out", str(tmp_path / "study")]
    assert study_script.main(argv) == 2
    error = capsys.readouterr().err
    assert "study entry ddpg: invalid train.eval_episodes = 0" in error
    assert not (tmp_path / "study" / "entries").exists()


@pytest.mark.slow
def test_script_tiny_every_entry(tmp_path):
    out = tmp_path / "study"
    completed = _run_script("--budget", "tiny", "--seeds", "2", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    gains = json.loads((out / "gain.json").read_text())
    assert "gddpg vs ddpg" in gains
    for name in STUDY_ENTRIES:
        assert (out / "entries" / f"{name}.json").exists(), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "ddpg", "gddpg", "ddpg"], "invalid --only: ['ddpg'] given more than once"),
        (["--only", "ddpg", "--set", "train.seed=3"], "invalid --set train.seed=3: seeds are set"),
    ],
)
def test_script_rejects_no_op_arguments(study_script, tmp_path, capsys, argv, message):
    out = tmp_path / "study"
    code = study_script.main([*argv, "--budget", "tiny", "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_script_interrupt_prints_resume_hint(study_script, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_script, "run_entry", interrupt)
    out = tmp_path / "study"
    argv = ["--only", "ddpg", "--budget", "tiny", "--seeds", "2", "--out", str(out)]
    assert study_script.main(argv) == 130
    error = capsys.readouterr().err
    assert error.startswith("interrupted: finished entries are saved in ")
    assert f"--only ddpg --budget tiny --seeds 2 --out {out}" in error
    assert len(error.splitlines()) == 1


def test_second_study_on_same_out_is_rejected(study_script, tmp_path, capsys):
    from rlli_jax.runner import RunDirectoryLock

    out = tmp_path / "study"
    lock = RunDirectoryLock(out, "entries", "study directory", "study process")
    try:
        code = study_script.main(["--only", "ddpg", "--budget", "tiny", "--out", str(out)])
    finally:
        lock.release()
    assert code == 2
    error = capsys.readouterr().err
    assert f"error: study directory {str(out)!r} is in use by another study process" in error
    assert not (out / "entries").exists()


def test_baseline_signature_covers_reward_net(tmp_path):
    from rlli_jax.config import load_config
    from rlli_jax.qoe.reward_net import RewardNetQoE, save_reward_net
    from rlli_jax.train import make_env

    def signature(config):
        return baseline_signature(config, [0, 1], make_env(config))

    model = RewardNetQoE(hidden_sizes=(8,))
    net = tmp_path / "net"
    save_reward_net(net, model, model.init_params(jax.random.key(0)))
    packaged = load_config(REPO / "configs" / "default.yaml")
    custom = load_config(REPO / "configs" / "default.yaml", [f"env.reward_net={net}"])
    assert signature(packaged) == signature(packaged)
    assert signature(custom) != signature(packaged)

    # The same path with other weights must not hit the cache either.
    before = signature(custom)
    save_reward_net(net, model, model.init_params(jax.random.key(1)), overwrite=True)
    assert signature(custom) != before
