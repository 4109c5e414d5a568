"""Config loading: every shipped YAML loads, bad keys and values raise before compiling."""

from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rlli_jax.agents.ddpg import HYPERPARAM_RULES
from rlli_jax.config import (
    Config,
    apply_overrides,
    load_config,
    parse_override,
    read_yaml,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Sweep and study configs have their own schema and their own tests.
TRAINING_CONFIGS = sorted(
    path for path in CONFIG_DIR.glob("*.yaml") if not path.name.startswith(("sweep", "study"))
)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.train.num_chunks >= 1


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_comments_every_key(path):
    # Every line that sets a value carries a comment, on the line or the line above; section
    # headers ("train:") and list items are exempt.
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        # List items belong to the key above them, which carries the comment.
        if not stripped or stripped.startswith(("#", "- ")) or stripped.endswith(":"):
            continue
        has_comment = "#" in line or (number > 0 and lines[number - 1].strip().startswith("#"))
        assert has_comment, f"{path.name}:{number + 1} has no comment: {line!r}"


def test_paper_config_values():
    config = load_config(CONFIG_DIR / "paper.yaml")
    assert config.agent.diffusion_steps == 5
    assert config.agent.actor_hidden_sizes == (256, 256)
    assert config.agent.critic_hidden_sizes == (256, 256)
    assert config.agent.batch_size == 512
    hyper = config.hyper.resolve(config.agent.algo)
    assert hyper["actor_lr"] == pytest.approx(1e-4)
    assert hyper["critic_lr"] == pytest.approx(1e-4)
    assert hyper["tau"] == pytest.approx(0.005)
    assert hyper["exploration_std"] == pytest.approx(0.1)


def test_defaults_without_file():
    config = load_config()
    assert config == Config()


def test_override_sets_values():
    config = load_config(
        overrides=[
            "train.num_envs=128",
            "hyper.actor_lr=3e-4",
            "agent.critic_hidden_sizes=[64, 32]",
            "env.params.energy_weight=0.5",
            "logging.tensorboard=true",
        ]
    )
    assert config.train.num_envs == 128
    assert config.hyper.actor_lr == pytest.approx(3e-4)
    assert config.agent.critic_hidden_sizes == (64, 32)
    assert config.env.param_overrides == {"energy_weight": 0.5}
    assert config.logging.tensorboard is True


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads 1e-4 as a string; the loader still takes it as a float.
    path = tmp_path / "c.yaml"
    path.write_text("hyper:\n  actor_lr: 1e-4\ntrain:\n  total_env_steps: 1e6\n")
    config = load_config(path)
    assert config.hyper.actor_lr == pytest.approx(1e-4)
    assert config.train.total_env_steps == 1_000_000


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("train:\n  num_envs: 8\n  seed: 1\n  num_envs: 16\n", "num_envs", 2),
        ("train: {num_envs: 8, num_envs: 9}\n", "num_envs", 1),
        ("train: {num_envs: 8}\nagent: {algo: ddpg}\ntrain: {seed: 3}\n", "train", 1),
    ],
)
def test_repeated_yaml_key_is_rejected(tmp_path, text, key, line):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"twice\.yaml.*key '{key}' appears twice.*line {line}"):
        load_config(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {num_envs: 8, seed: 1}\ntrain:\n  <<: *base\n  seed: 2\n")
    data = read_yaml(path)
    assert data["train"] == {"num_envs": 8, "seed": 2}


def test_second_yaml_merge_key_is_rejected(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("a: &a {seed: 1}\nb: &b {seed: 2}\ntrain:\n  <<: *a\n  <<: *b\n")
    with pytest.raises(ValueError, match=r"merge key '<<' appears twice .*\(first on line 4\)"):
        read_yaml(path)


def test_yaml_merge_list_is_accepted(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "a: &a {seed: 1, num_envs: 8}\nb: &b {buffer_size: 64}\n"
        "train:\n  <<: [*a, *b]\n  num_envs: 4\n"
    )
    assert read_yaml(path)["train"] == {"seed": 1, "num_envs": 4, "buffer_size": 64}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["train.num_envs=8", "train.seed=1", "train.num_envs=16"],
            r"invalid override 'train\.num_envs=16': train\.num_envs is already set by override "
            r"'train\.num_envs=8'; give each key once",
        ),
        (
            ["env.params.energy_weight=0.5", "env.params.energy_weight=1"],
            r"invalid override 'env\.params\.energy_weight=1': env\.params\.energy_weight is "
            r"already set",
        ),
        (
            ["env.params.energy_weight=0.5", "env.params={logit_scale: 2}"],
            r"env\.params overlaps env\.params\.energy_weight, set by override 'env\.params\.en",
        ),
        (
            ["env.params={energy_weight: 1}", "env.params.energy_weight=0.5"],
            r"env\.params\.energy_weight overlaps env\.params, set by override 'env\.params=",
        ),
    ],
)
def test_repeated_override_key_is_rejected(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_envs: 4\n")
    with pytest.raises(ValueError, match=match):
        load_config(path, overrides)
    with pytest.raises(ValueError, match=match):
        apply_overrides({}, overrides)


def test_repeated_override_key_with_last_wins():
    overrides = ["train.num_envs=8", "env.params.energy_weight=0.5", "train.num_envs=16"]
    config = load_config(None, overrides, last_wins=True)
    assert config.train.num_envs == 16
    assert config.env.param_overrides == {"energy_weight": 0.5}


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.num_env=3", r"unknown key 'train\.num_env' \(did you mean 'num_envs'\?\)"),
        ("trian.num_envs=3", r"unknown key 'trian'"),
        ("env.params.energy_wieght=1", r"unknown key 'env\.params\.energy_wieght'"),
        ("train.num_envs=1.5", r"invalid train\.num_envs = 1\.5: expected an integer"),
        ("train.num_envs=0", r"invalid train\.num_envs = 0: must be >= 1"),
        ("train.num_envs=many", r"invalid train\.num_envs = 'many'"),
        ("hyper.tau=2", r"invalid hyper\.tau = 2\.0: must lie in \(0, 1\]"),
        ("hyper.gamma=1", r"invalid hyper\.gamma = 1\.0: must lie in \[0, 1\)"),
        ("hyper.actor_lr=-1", r"invalid hyper\.actor_lr = -1\.0: must be > 0"),
        ("hyper.actor_lr=.nan", r"invalid hyper\.actor_lr = nan"),
        ("agent.algo=ppo", r"invalid agent\.algo = 'ppo'"),
        ("agent.batch_size=0", r"invalid agent\.batch_size = 0"),
        ("agent.actor_hidden_sizes=64", r"invalid agent\.actor_hidden_sizes = 64: expected a list"),
        ("agent.actor_hidden_sizes=[64, x]", r"invalid agent\.actor_hidden_sizes\[1\]"),
        ("env.params.energy_weight=-1", r"energy_weight = -1\.0 is invalid"),
        ("env.params.logit_scale=100", r"logit_scale = 100\.0 is invalid: .*\(0, 30\]"),
        ("env.num_users=0", r"invalid env\.num_users = 0"),
        ("logging.tensorboard=1", r"invalid logging\.tensorboard = 1: expected true or false"),
        ("train.buffer_size=10", r"invalid train\.buffer_size = 10: must be >= train\.num_envs"),
        ("agent.batch_size=1000000", r"invalid agent\.batch_size = 1000000: must be <="),
        ("train", r"invalid override 'train': expected section\.key=value"),
        ("train.seed=4294967296", r"invalid train\.seed = 4294967296: must be an integer in"),
        ("env.horizon=1000000000000", r"invalid env\.horizon = 1000000000000: must be in"),
        ("train.total_env_steps=1e18", r"invalid train\.total_env_steps = .*int32"),
        ("train.buffer_size=2147483648", r"invalid train\.buffer_size = 2147483648: .*int32"),
        ("train.eval_episodes=3e9", r"invalid train\.eval_episodes = 3000000000: .*int32"),
        ("agent.beta_max=.inf", r"invalid agent\.beta_min = 0\.1, beta_max = inf: both must"),
        ("agent.max_grad_norm=.inf", r"invalid agent\.max_grad_norm = inf"),
        # Finite in float64 but not in float32, the type of the training program.
        ("hyper.actor_lr=1e39", r"invalid hyper\.actor_lr = 1e\+39: it exceeds the float32"),
        ("hyper.tau=1e-40", r"invalid hyper\.tau = 1e-40: it becomes 0\.0 in float32"),
        ("hyper.gamma=0.99999999999", r"hyper\.gamma = 0\.99999999999: it becomes 1\.0"),
        ("env.params.tx_power_w=1e39", r"tx_power_w = 1e\+39 is invalid: it exceeds the float32"),
        ("env.params.energy_budget_j=1e39", r"energy_budget_j = 1e\+39 is invalid: it exceeds"),
        ("env.params.image_bits=1e-46", r"image_bits = 1e-46 is invalid: it becomes 0\.0"),
        ("agent.max_grad_norm=1e-46", r"max_grad_norm = 1e-46: .*float32.* makes it 0\.0"),
        ("env.reward_net=''", r"invalid env\.reward_net = '': must be a checkpoint directory"),
        ("agent.bound_loss_coef=1e39", r"bound_loss_coef = 1e\+39: .*float32.* makes it inf"),
    ],
)
def test_bad_override_raises(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(overrides=[override])


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(HYPERPARAM_RULES)),
    value=st.floats(allow_nan=False, allow_infinity=False),
)
def test_accepted_hyperparameter_obeys_rule_in_float32(name, value):
    # The program computes in float32, so a value accepted in float64 must keep its rule
    # after rounding, with subnormals flushed to 0 as XLA on CPU does.
    try:
        config = load_config(overrides=[f"hyper.{name}={value!r}"])
    except ValueError:
        return
    rounded = np.float32(config.hyper.resolve(config.agent.algo)[name])
    if abs(rounded) < np.finfo(np.float32).tiny:
        rounded = np.float32(0.0)
    _, predicate = HYPERPARAM_RULES[name]
    assert np.isfinite(rounded)
    assert predicate(float(rounded))


def test_unknown_key_in_file_names_file_and_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("agent:\n  hiden_sizes: [4]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown key 'agent\.hiden_sizes'"):
        load_config(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_section_not_mapping_raises(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: 3\n")
    with pytest.raises(ValueError, match="section train must be a mapping"):
        load_config(path)


def test_evaluation_every_chunks_needs_episodes():
    overrides = ["train.eval_every_chunks=2", "train.eval_episodes=0"]
    with pytest.raises(ValueError, match=r"train\.eval_every_chunks = 2: needs train\.eval"):
        load_config(overrides=overrides)


def test_schedule_with_zero_betas_raises():
    overrides = ["agent.beta_min=1e-300", "agent.beta_max=1e-300"]
    with pytest.raises(ValueError, match=r"invalid agent\.beta_min = 1e-300, .* not finite"):
        load_config(overrides=overrides)


def test_largest_seed_is_accepted():
    assert load_config(overrides=["train.seed=4294967295"]).train.seed == 2**32 - 1


@pytest.mark.parametrize("section", ["[1, 2]", "0", "false"])
def test_section_not_mapping_with_overrides_raises(tmp_path, section):
    path = tmp_path / "bad.yaml"
    path.write_text(f"train: {section}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*section train must be a mapping"):
        load_config(path, ["logging.progress_bar=false"])


def test_binary_config_names_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x80\x81")
    with pytest.raises(ValueError, match=r"binary\.yaml' is not UTF-8 text"):
        load_config(path)


def test_folder_as_config_raises(tmp_path):
    with pytest.raises(ValueError, match="is a folder: expected a YAML file"):
        load_config(tmp_path)


def test_save_and_load_round_trip(tmp_path):
    config = load_config(overrides=["env.params.energy_weight=0.5", "agent.algo=ddpg"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_derived_values():
    config = load_config(
        overrides=[
            "train.num_envs=10",
            "train.steps_per_chunk=4",
            "train.total_env_steps=95",
            "train.warmup_env_steps=25",
            "train.updates_per_step=2",
            "agent.batch_size=16",
        ]
    )
    # 95 steps round up to 3 chunks of 10 * 4 = 40 steps: 12 iterations, 3 of them warmup.
    # The buffer contains a batch of 16 after iteration 1, before warmup ends.
    assert config.train.env_steps_per_chunk == 40
    assert config.train.num_chunks == 3
    assert config.train.num_iterations == 12
    assert config.train.warmup_iterations == 3
    assert config.num_updates == 18


def test_num_updates_waits_for_a_full_batch():
    config = load_config(
        overrides=[
            "train.num_envs=10",
            "train.steps_per_chunk=4",
            "train.total_env_steps=95",
            "train.warmup_env_steps=25",
            "train.updates_per_step=2",
            "agent.batch_size=64",
        ]
    )
    # After iteration k the buffer contains 10 (k + 1) transitions, so the first batch of 64 is
    # ready at iteration 6, after the 3 warmup iterations: (12 - 6) * 2 = 12 updates.
    assert config.num_updates == 12
    assert config.derived["train.num_updates"] == 12


def test_null_hyperparameter_takes_algo_default():
    ddpg = load_config(overrides=["agent.algo=ddpg"]).hyper.resolve("ddpg")
    assert load_config(overrides=["agent.algo=ddpg", "hyper.actor_lr=null"]).hyper.actor_lr is None
    assert ddpg["actor_lr"] > 0


def test_parse_override_nested_path():
    keys, value = parse_override("env.params.energy_weight=0.5")
    assert keys == ["env", "params", "energy_weight"]
    assert value == 0.5
    data = apply_overrides({"env": {"num_users": 4}}, ["env.params.energy_weight=0.5"])
    assert data == {"env": {"num_users": 4, "params": {"energy_weight": 0.5}}}


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.train.num_envs = 3  # type: ignore[misc]


def test_to_dict_is_plain_yaml():
    text = yaml.safe_dump(Config().to_dict())
    assert "!!python" not in text


def test_reward_net_missing_directory_raises(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ValueError, match=r"env.reward_net = .*no_such_checkpoint"):
        load_config(None, [f"env.reward_net={missing}"])


def test_reward_net_checkpoint_swaps_qoe(tmp_path):
    from rlli_jax.qoe.reward_net import RewardNetQoE, save_reward_net
    from rlli_jax.train import make_env

    model = RewardNetQoE(hidden_sizes=(8,))
    params = model.init_params(jax.random.key(3))
    save_reward_net(tmp_path / "net", model, params)
    config = load_config(None, [f"env.reward_net={tmp_path / 'net'}", "env.num_users=2"])
    env = make_env(config)
    assert env.qoe_model.hidden_sizes == (8,)
    loaded = env.default_params.qoe_params
    np.testing.assert_allclose(loaded["input_std"], params["input_std"])
    default_env = make_env(load_config(None, ["env.num_users=2"]))
    assert default_env.qoe_model.hidden_sizes != (8,)


def test_file_error_omits_innocent_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_envs: 0\n")
    with pytest.raises(ValueError, match=r"^config file '.*bad\.yaml': invalid train\.num_envs"):
        load_config(bad, ["train.seed=1"])
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  num_envs: 8\n")
    with pytest.raises(ValueError, match=r"good\.yaml' with --set overrides: invalid train\.num_"):
        load_config(good, ["train.num_envs=0"])
    assert load_config(bad, ["train.num_envs=3"]).train.num_envs == 3


def test_relative_reward_net_is_saved_absolute(tmp_path, monkeypatch):
    from rlli_jax.qoe.reward_net import RewardNetQoE, save_reward_net

    model = RewardNetQoE(hidden_sizes=(8,))
    save_reward_net(tmp_path / "net", model, model.init_params(jax.random.key(0)))
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["env.reward_net=net"])
    assert config.env.reward_net == str(tmp_path / "net")
    save_config(config, tmp_path / "saved.yaml")
    monkeypatch.chdir(tmp_path.parent)  # another working folder reads the same checkpoint
    assert load_config(tmp_path / "saved.yaml").env.reward_net == str(tmp_path / "net")


@pytest.mark.parametrize(
    "anchors",
    ["a: &a {seed: 1}\nb: &b {seed: 2}\n", "x: [&a {seed: 1}, &b {seed: 2}]\n"],
)
def test_merge_list_with_a_shared_key_is_rejected(tmp_path, anchors):
    path = tmp_path / "merge.yaml"
    path.write_text(anchors + "train:\n  <<: [*a, *b]\n")
    with pytest.raises(ValueError, match=r"key 'seed' is in two of the mappings merged by '<<'"):
        read_yaml(path)
    path.write_text(anchors + "train:\n  <<: [*a]\n  seed: 3\n")
    assert read_yaml(path)["train"] == {"seed": 3}


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base: x\ngrid: [\n")
    with pytest.raises(ValueError) as info:
        read_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert "broken.yaml' is not valid YAML: line 3, column 1: expected the node content" in message
