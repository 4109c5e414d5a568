"""Run configuration: frozen dataclasses per section, loaded from YAML with `--set` overrides.

Sections:
    env      static environment shape (users, horizon) and overrides of traced `EnvParams` fields
    agent    static agent settings (`AgentConfig`: algo, network sizes, T, batch size)
    hyper    traced agent hyperparameters (learning rates, tau, gamma, exploration noise); a
             null value takes the algorithm's default from `DEFAULT_HYPERPARAMS`
    train    run length, vectorised environments, replay, chunking, evaluation, checkpoints
    logging  optional outputs (TensorBoard, progress bar)

Static fields are part of the compiled program; traced ones (`hyper`, `env.params`) enter the
program as a pytree argument, so changing them does not recompile.

Every check runs in Python while the config is built, before anything is compiled. A bad key or
value raises ValueError naming the key's path, the value and the rule.
"""

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlli_jax.agents.ddpg import (
    HYPERPARAM_RULES,
    AgentConfig,
    AgentHyperparams,
    check_hyperparam,
    resolve_hyperparams,
)
from rlli_jax.env.params import EnvParams
from rlli_jax.outputs import write_text_atomic

# EnvParams fields that hold arrays or pytrees built by the environment, not scalar constants.
_NON_SCALAR_ENV_FIELDS = ("prompt_similarity", "prompt_topics", "qoe_params")
ENV_PARAM_NAMES = tuple(
    field.name
    for field in dataclasses.fields(EnvParams)
    if field.name not in _NON_SCALAR_ENV_FIELDS
)
HYPERPARAM_NAMES = tuple(field.name for field in dataclasses.fields(AgentHyperparams))
ENV_IDS = ("DiffusionService-v0",)
# Largest seed. With 64-bit types off (the default), `jax.random.key` keeps only the low 32
# bits of a seed, so key(2**32) equals key(0), and seeds >= 2**63 raise OverflowError
# (checked on jax 0.10.2).
SEED_MAX = 2**32 - 1
# Step counters inside the compiled program are int32.
INT32_MAX = 2**31 - 1


def _require(condition: bool, path: str, value: Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"invalid {path} = {value!r}: {rule}")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Environment section: static shape plus overrides of traced `EnvParams` constants."""

    id: str = "DiffusionService-v0"
    num_users: int = 8
    horizon: int = 16
    # Sorted (name, value) pairs; YAML and `--set env.params.NAME=VALUE` give a mapping.
    params: tuple[tuple[str, float], ...] = ()
    # Persona reward network checkpoint directory for the QoE, made absolute (relative paths
    # start at the working folder); None uses the packaged one.
    reward_net: str | None = None

    def __post_init__(self):
        _require(self.id in ENV_IDS, "env.id", self.id, f"must be one of {list(ENV_IDS)}")
        _require(self.num_users >= 1, "env.num_users", self.num_users, "must be >= 1")
        _require(
            1 <= self.horizon <= INT32_MAX,
            "env.horizon",
            self.horizon,
            f"must be in [1, {INT32_MAX}] (the slot counter is int32)",
        )
        pairs = self.params.items() if isinstance(self.params, Mapping) else self.params
        checked = {}
        for name, value in pairs:
            if name not in ENV_PARAM_NAMES:
                raise ValueError(_unknown_key_message(f"env.params.{name}", ENV_PARAM_NAMES))
            checked[name] = _coerce_float(value, f"env.params.{name}")
        object.__setattr__(self, "params", tuple(sorted(checked.items())))
        _validate_env_overrides(self.param_overrides)
        if self.reward_net is not None:
            # Path("") is the working folder, which would pass the folder check below.
            _require(
                self.reward_net.strip() != "",
                "env.reward_net",
                self.reward_net,
                "must be a checkpoint directory path, or null for the packaged reward network",
            )
            _require(
                Path(self.reward_net).expanduser().is_dir(),
                "env.reward_net",
                self.reward_net,
                "must be an existing reward network checkpoint directory "
                "(scripts/distill_reward.py --out writes one)",
            )
            # Stored absolute, so the saved run config names the same checkpoint from any
            # working folder that resumes or evaluates the run.
            absolute = str(Path(self.reward_net).expanduser().absolute())
            object.__setattr__(self, "reward_net", absolute)

    @property
    def param_overrides(self) -> dict[str, float]:
        """The `EnvParams` overrides as keyword arguments of `env.make_params`."""
        return dict(self.params)


def _validate_env_overrides(overrides: Mapping[str, float]) -> None:
    """Check overrides against the `EnvParams` rules with a stand-in one-prompt bank."""
    params = EnvParams(
        prompt_similarity=np.ones((1, 1), np.float32),
        prompt_topics=np.zeros((1,), np.int32),
        **overrides,
    )
    try:
        params.validate()
    except ValueError as error:
        raise ValueError(f"invalid env.params: {error}") from None


@dataclasses.dataclass(frozen=True)
class HyperConfig:
    """Traced agent hyperparameters; None takes the algorithm's default."""

    actor_lr: float | None = None
    critic_lr: float | None = None
    tau: float | None = None
    gamma: float | None = None
    exploration_std: float | None = None

    def __post_init__(self):
        for name in HYPERPARAM_RULES:
            value = getattr(self, name)
            if value is not None:
                check_hyperparam(name, value, f"hyper.{name}")

    def resolve(self, algo: str) -> dict[str, float]:
        """Return every hyperparameter as a float, filling None from `algo`'s defaults.

        Raises:
            ValueError: `algo` has no defaults (an actor added to `ACTOR_FACTORIES` only) and
                a value is None.
        """
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return resolve_hyperparams(algo, given, prefix="hyper.")


def check_seed(seed: int, path: str) -> None:
    """Raise ValueError unless `seed` is an int in [0, SEED_MAX], naming it by `path`."""
    _require(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX,
        path,
        seed,
        f"must be an integer in [0, {SEED_MAX}], because jax.random.key takes a 32-bit seed "
        "and a larger one would repeat a smaller one",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Run length, replay, chunking, evaluation and checkpoint settings (all static)."""

    seed: int = 0
    num_envs: int = 64
    total_env_steps: int = 100_000
    steps_per_chunk: int = 16
    warmup_env_steps: int = 10_000
    buffer_size: int = 100_000
    updates_per_step: int = 1
    eval_episodes: int = 64
    eval_every_chunks: int = 0
    checkpoint_every_chunks: int = 10
    max_checkpoints: int = 3
    bootstrap_at_horizon: bool = True

    def __post_init__(self):
        positive = (
            "num_envs",
            "total_env_steps",
            "steps_per_chunk",
            "buffer_size",
            "updates_per_step",
            "checkpoint_every_chunks",
            "max_checkpoints",
        )
        for name in positive:
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "must be >= 1")
        check_seed(self.seed, "train.seed")
        for name in ("warmup_env_steps", "eval_episodes", "eval_every_chunks"):
            _require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "must be >= 0")
        for name in (*positive, "warmup_env_steps", "eval_episodes", "eval_every_chunks"):
            _require(
                getattr(self, name) <= INT32_MAX,
                f"train.{name}",
                getattr(self, name),
                f"must be <= {INT32_MAX}: sizes and counters in the compiled program are int32",
            )
        _require(
            not (self.eval_every_chunks and self.eval_episodes == 0),
            "train.eval_every_chunks",
            self.eval_every_chunks,
            "needs train.eval_episodes >= 1, or set it to 0 for no evaluation during training",
        )
        _require(
            self.num_iterations <= INT32_MAX,
            "train.total_env_steps",
            self.total_env_steps,
            f"must give at most {INT32_MAX} vectorised steps (the iteration counter is int32); "
            f"with train.num_envs = {self.num_envs} it gives {self.num_iterations}",
        )
        _require(
            self.warmup_iterations <= INT32_MAX,
            "train.warmup_env_steps",
            self.warmup_env_steps,
            f"must give at most {INT32_MAX} vectorised steps (the iteration counter is int32); "
            f"with train.num_envs = {self.num_envs} it gives {self.warmup_iterations}",
        )
        _require(
            self.buffer_size >= self.num_envs,
            "train.buffer_size",
            self.buffer_size,
            f"must be >= train.num_envs = {self.num_envs}, one step of every environment",
        )

    @property
    def env_steps_per_chunk(self) -> int:
        """Environment transitions collected per chunk, over all environments."""
        return self.num_envs * self.steps_per_chunk

    @property
    def num_chunks(self) -> int:
        """Chunks in the run; `total_env_steps` is rounded up to whole chunks."""
        return math.ceil(self.total_env_steps / self.env_steps_per_chunk)

    @property
    def num_iterations(self) -> int:
        """Vectorised steps (one step of every environment) in the run."""
        return self.num_chunks * self.steps_per_chunk

    @property
    def warmup_iterations(self) -> int:
        """Vectorised steps with uniform random actions and no gradient updates."""
        return math.ceil(self.warmup_env_steps / self.num_envs)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Optional outputs; JSONL and CSV metrics are always written."""

    tensorboard: bool = False
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run. Build with `load_config` or `Config.from_dict`; never mutated."""

    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    hyper: HyperConfig = dataclasses.field(default_factory=HyperConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def __post_init__(self):
        self.hyper.resolve(self.agent.algo)  # every hyperparameter has a value
        _require(
            self.agent.batch_size <= self.train.buffer_size,
            "agent.batch_size",
            self.agent.batch_size,
            f"must be <= train.buffer_size = {self.train.buffer_size}",
        )

    @property
    def hyperparams(self) -> AgentHyperparams:
        """The traced agent hyperparameters as float32 scalars."""
        return AgentHyperparams.create(**self.hyper.resolve(self.agent.algo))

    @property
    def num_updates(self) -> int:
        """Gradient steps in the run.

        Updates start at the first iteration after warmup at which the replay buffer contains
        `agent.batch_size` transitions, because `Replay.can_sample` needs a full batch.
        """
        train = self.train
        # After iteration k the buffer contains (k + 1) * num_envs transitions.
        first_full_batch = math.ceil(self.agent.batch_size / train.num_envs) - 1
        first_update = max(train.warmup_iterations, first_full_batch)
        return max(train.num_iterations - first_update, 0) * train.updates_per_step

    @property
    def derived(self) -> dict[str, Any]:
        """Values computed from the config, recorded next to it in the run directory."""
        return {
            "hyper": self.hyper.resolve(self.agent.algo),
            "train.env_steps_per_chunk": self.train.env_steps_per_chunk,
            "train.num_chunks": self.train.num_chunks,
            "train.num_iterations": self.train.num_iterations,
            "train.actual_env_steps": self.train.num_iterations * self.train.num_envs,
            "train.warmup_iterations": self.train.warmup_iterations,
            "train.num_updates": self.num_updates,
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return plain nested data (lists, dicts, numbers) that `from_dict` reads back."""
        result = {}
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            values = {}
            for inner in dataclasses.fields(section):
                value = getattr(section, inner.name)
                if field.name == "env" and inner.name == "params":
                    value = dict(value)
                elif isinstance(value, tuple):
                    value = list(value)
                values[inner.name] = value
            result[field.name] = values
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "config") -> "Config":
        """Build a config from nested mappings, rejecting unknown keys and mistyped values."""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a mapping of sections, got {type(data).__name__}")
        section_types = {field.name: field.type for field in dataclasses.fields(cls)}
        for name in data:
            if name not in section_types:
                raise ValueError(_unknown_key_message(str(name), section_types, source))
        sections = {}
        for name, section_type in section_types.items():
            section_data = data.get(name)
            section_data = {} if section_data is None else section_data
            if not isinstance(section_data, Mapping):
                raise ValueError(
                    f"{source}: section {name} must be a mapping, got {section_data!r}"
                )
            sections[name] = _build_section(section_type, name, section_data, source)
        return cls(**sections)


def _build_section(section_type: type, section: str, data: Mapping[str, Any], source: str):
    hints = typing.get_type_hints(section_type)
    fields = [field.name for field in dataclasses.fields(section_type)]
    values = {}
    for key, value in data.items():
        path = f"{section}.{key}"
        if key not in fields:
            raise ValueError(_unknown_key_message(path, fields, source))
        if section == "env" and key == "params":
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"invalid {path} = {value!r}: must be a mapping of EnvParams")
            values[key] = dict(value)
        else:
            values[key] = _coerce(value, hints[key], path)
    try:
        return section_type(**values)
    except ValueError as error:
        message = str(error)
        # AgentConfig raises "invalid AgentConfig.x = ..."; name the key by its config path.
        message = message.replace("AgentConfig.", "agent.")
        raise ValueError(message if source == "config" else f"{source}: {message}") from None


def _unknown_key_message(path: str, known: Iterable[str], source: str = "config") -> str:
    known = list(known)
    name = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = "" if source == "config" else f"{source}: "
    return f"{prefix}unknown key {path!r}{hint}; known keys here: {sorted(known)}"


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check `value` against a field annotation and return it in the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], path)
        raise TypeError(f"unsupported annotation {annotation} for {path}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ValueError(f"invalid {path} = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0], f"{path}[{i}]") for i, item in enumerate(value))
        raise TypeError(f"unsupported annotation {annotation} for {path}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"invalid {path} = {value!r}: expected true or false")
        return value
    if annotation is int:
        return _coerce_int(value, path)
    if annotation is float:
        return _coerce_float(value, path)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"invalid {path} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {path}")


def _coerce_float(value: Any, path: str) -> float:
    # PyYAML reads exponents without a dot (1e-4) as strings, so numeric strings are accepted.
    written = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"invalid {path} = {value!r}: expected a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"invalid {path} = {value!r}: expected a number")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"invalid {path} = {written!r}: expected a number")
    return value


def _coerce_int(value: Any, path: str) -> int:
    if isinstance(value, str | float) and not isinstance(value, bool):
        number = _coerce_float(value, path)
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"invalid {path} = {value!r}: expected an integer")
        return int(number)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid {path} = {value!r}: expected an integer")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` (or `env.params.NAME=value`) into a key path and a YAML value."""
    if "=" not in text:
        raise ValueError(f"invalid override {text!r}: expected section.key=value")
    path, raw_value = text.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or any(not key for key in keys):
        raise ValueError(f"invalid override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as error:
        message = (
            f"invalid override {text!r}: the value is not valid YAML ({describe_yaml_error(error)})"
        )
        raise ValueError(message) from None
    return keys, value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], *, last_wins: bool = False
) -> dict[str, Any]:
    """Return a copy of nested config data with each `section.key=value` override set.

    Two overrides may not set the same key: a repeated key path, or one path inside another
    (`env.params` and `env.params.energy_weight`), raises ValueError unless `last_wins` is
    True. With `last_wins`, overrides apply in order and a repeated key keeps its last value.
    That suits callers that stack layers of overrides, such as a study with its budget, entry
    and --set overrides.

    Raises:
        ValueError: a section of `data` is not a mapping, an override is malformed, or two
            overrides set the same key and `last_wins` is False.
    """
    result = {}
    for name, section in (data or {}).items():
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"section {name} must be a mapping, got {section!r}")
        result[name] = dict(section or {})
    texts = list(overrides)
    parsed = [parse_override(text) for text in texts]
    if not last_wins:
        overlap = find_overlapping_keys([keys for keys, _ in parsed])
        if overlap is not None:
            first, second = overlap
            raise ValueError(
                f"invalid override {texts[second]!r}: "
                + describe_overlap(
                    parsed[first][0], parsed[second][0], f"override {texts[first]!r}"
                )
            )
    for keys, value in parsed:
        node = result.setdefault(keys[0], {})
        for key in keys[1:-1]:
            child = node.get(key)
            node[key] = dict(child) if isinstance(child, Mapping) else {}
            node = node[key]
        node[keys[-1]] = value
    return result


def find_overlapping_keys(paths: Sequence[Sequence[str]]) -> tuple[int, int] | None:
    """Return the indices (first, second) of the first pair of key paths that set the same key.

    Two paths overlap when they are equal or one starts with the other, because the later
    override then replaces or edits the value the earlier one set. Returns None when no pair
    overlaps.
    """
    for second, path in enumerate(paths):
        for first in range(second):
            common = min(len(path), len(paths[first]))
            if list(path[:common]) == list(paths[first][:common]):
                return first, second
    return None


def describe_overlap(first: Sequence[str], second: Sequence[str], first_source: str) -> str:
    """Describe two overlapping key paths for an error message; `first_source` names where the
    first one was given."""
    first_key, second_key = ".".join(first), ".".join(second)
    if first_key == second_key:
        return f"{second_key} is already set by {first_source}; give each key once"
    return (
        f"{second_key} overlaps {first_key}, set by {first_source}; give each key once, "
        "either as a whole mapping or key by key"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping.

    Plain `yaml.safe_load` keeps the last value of a repeated key, so a config that sets
    `train.num_envs` twice would silently run with whichever came second.
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        merge_line = None
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # One `<<: *base` (or `<<: [*a, *b]`) per mapping. The mapping's own keys may
                # replace merged ones, but a second `<<` would silently replace the first's.
                if merge_line is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"merge key '<<' appears twice in one mapping (first on line "
                        f"{merge_line}); merge several mappings with one key: <<: [*a, *b]",
                        key_node.start_mark,
                    )
                merge_line = key_node.start_mark.line + 1
                self._check_merged_keys_differ(value_node)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first is None:
                seen[key] = key_node.start_mark.line + 1
            else:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {first}); "
                    "give each key once",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def _check_merged_keys_differ(self, value_node) -> None:
        """Reject `<<: [*a, *b]` where `a` and `b` share a key: one value would be dropped."""
        if not isinstance(value_node, yaml.SequenceNode):
            return
        owner = {}  # key -> (index, line) of the first merged mapping that gives it
        for index, merged in enumerate(value_node.value):
            if not isinstance(merged, yaml.MappingNode):
                continue  # the base class reports a merge of something else
            line = merged.start_mark.line + 1
            for key_node, _ in merged.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first_index, first_line = owner.setdefault(key, (index, line))
                except TypeError:  # an unhashable key; the base class reports it
                    continue
                if first_index != index:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is in two of the mappings merged by '<<' (lines "
                        f"{first_line} and {line}), so one value would be dropped; give it in "
                        "one of them, or in the mapping itself",
                        value_node.start_mark,
                    )


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Describe a PyYAML error on one line: the line and column (1-based) and the problem.

    PyYAML's own text spans several lines, with a copy of the offending line and a caret.
    """
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).split())
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context:
        context = error.context
        start = error.context_mark
        if start is not None and (start.line, start.column) != (mark.line, mark.column):
            context += f" that starts at line {start.line + 1}, column {start.column + 1}"
        text += f", {context}"
    return " ".join(text.split())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into nested dicts."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {str(path)!r} is a folder: expected a YAML file")
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(
            f"config file {str(path)!r} is not valid YAML: {describe_yaml_error(error)}"
        ) from None
    except OSError as error:
        raise ValueError(f"config file {str(path)!r} could not be read: {error}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"config file {str(path)!r} must contain a mapping of sections")
    return dict(data or {})


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), *, last_wins: bool = False
) -> Config:
    """Load a config from YAML (defaults when `path` is None) with `section.key=value` overrides.

    Keys missing from the file take the dataclass defaults of this module, which are not the
    values of `configs/default.yaml` (that file sizes a 4096-environment CPU run); pass that
    file as `path` to start from the run `scripts/train.py` makes without --config.
    `last_wins` lets a later override replace an earlier one of the same key, as in
    `apply_overrides`.

    Raises:
        ValueError: a missing file, an unknown key, a mistyped value, a value breaking a rule,
            or two overrides of the same key without `last_wins`.
    """
    file_data = read_yaml(path) if path is not None else {}
    file_source = "config" if path is None else f"config file {str(path)!r}"
    overrides = list(overrides)
    if not overrides:
        return Config.from_dict(file_data, file_source)
    try:
        data = apply_overrides(file_data, overrides, last_wins=last_wins)
    except ValueError as error:
        raise ValueError(str(error) if path is None else f"{file_source}: {error}") from None
    source = "config" if path is None else f"{file_source} with --set overrides"
    try:
        return Config.from_dict(data, source)
    except ValueError as error:
        if path is not None:
            # Name the file alone when the overrides play no part in the error.
            try:
                Config.from_dict(file_data, file_source)
            except ValueError as file_error:
                if str(file_error) == str(error).replace(source, file_source, 1):
                    raise file_error from None
        raise


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML that `load_config` reads back; derived values go in
    a header comment."""
    header = ["# Resolved config of this run. Derived values (not read back):"]
    for key, value in config.derived.items():
        header.append(f"#   {key}: {value}")
    text = "\n".join(header) + "\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_text_atomic(path, text)


def check_gradient_steps(config: Config) -> None:
    """Raise ValueError if `config` makes no gradient step: its warm-up covers the whole run,
    or its environment steps never fill one batch.

    Such a run would report the untrained initial policy as its result. The check is not a
    `TrainConfig` rule, because `rlli_jax.benchmarking` builds programs whose warm-up is
    longer than their configured run and times chunks past its end.
    """
    if config.num_updates >= 1:
        return
    train_config = config.train
    run_env_steps = train_config.num_iterations * train_config.num_envs
    if train_config.warmup_iterations < train_config.num_iterations:
        raise ValueError(
            f"invalid agent.batch_size = {config.agent.batch_size}: the run's {run_env_steps} "
            "environment steps never fill one batch in the replay buffer, so the run makes no "
            "gradient step; lower agent.batch_size or raise train.total_env_steps"
        )
    raise ValueError(
        f"invalid train.warmup_env_steps = {train_config.warmup_env_steps}: must be less than "
        f"the {run_env_steps} environment steps of the run (train.total_env_steps = "
        f"{train_config.total_env_steps}, rounded up to whole chunks), or the run makes no "
        "gradient step; lower it or raise train.total_env_steps"
    )
