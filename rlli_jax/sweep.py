"""Sweep configs: validation, expansion into members, grouping into compiled programs, memory.

A sweep file names a base training config, a number of seeds and the values to try:

    base: quick.yaml              # training config, relative to the sweep file
    set: [train.total_env_steps=40960]   # overrides of every member, except seed and swept keys
    num_seeds: 8
    grid:                         # Cartesian product over these keys
      agent.algo: [ddpg, gddpg]   # static: one compiled program per value
      hyper.actor_lr: [1.0e-4, 1.0e-3]    # traced: vmapped inside one program
    points:                       # optional explicit combinations, each crossed with the grid
      - {hyper.tau: 0.005, hyper.gamma: 0.0}
    metric: qoe                   # final evaluation metric used for ranking
    goal: max

Keys are config paths. Traced keys (`hyper.NAME` and `env.params.NAME`) enter the training
program as arguments, so every member that shares the static keys (`agent.*`, `env.num_users`,
`env.horizon`, `train.*` except `train.seed`) runs in one `jax.vmap`-ed program that is
compiled once. `env.reward_net` and `env.id` cannot be swept. A member is one point of the
sweep with one seed. Member `i` of seed `s` uses the training and evaluation keys of
`scripts/train.py --seed s`, so it reproduces that single run up to float rounding.

Every check runs in Python while the sweep is planned, before anything is compiled, and raises
ValueError naming the field, the value and the rule.
"""

import dataclasses
import difflib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from rlli_jax.agents.ddpg import AgentConfig
from rlli_jax.agents.replay import available_device_bytes
from rlli_jax.config import (
    ENV_PARAM_NAMES,
    HYPERPARAM_NAMES,
    SEED_MAX,
    Config,
    TrainConfig,
    apply_overrides,
    check_gradient_steps,
    describe_overlap,
    find_overlapping_keys,
    parse_override,
    read_yaml,
)
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.evaluation import EPISODE_METRICS
from rlli_jax.outputs import write_text_atomic
from rlli_jax.train import TrainHyperparams, check_env_shape, make_env, make_train

TRACED_KEYS = tuple(f"hyper.{name}" for name in HYPERPARAM_NAMES) + tuple(
    f"env.params.{name}" for name in ENV_PARAM_NAMES
)
STATIC_KEYS = (
    tuple(f"agent.{field.name}" for field in dataclasses.fields(AgentConfig))
    + ("env.num_users", "env.horizon")
    + tuple(
        f"train.{field.name}" for field in dataclasses.fields(TrainConfig) if field.name != "seed"
    )
)
RANKING_METRICS = (*EPISODE_METRICS, "reward", "episode_return")
GOALS = ("max", "min")
# Config keys a sweep cannot vary, and why.
UNSWEEPABLE_KEYS = {
    "env.reward_net": (
        "the reward network defines the QoE that members are ranked on, so members with "
        "different networks would not be comparable; set it in the base config or in set"
    ),
    "env.id": "DiffusionService-v0 is the only environment",
}
SWEEP_FIELDS = (
    "base",
    "set",
    "num_seeds",
    "first_seed",
    "grid",
    "points",
    "metric",
    "goal",
    "baselines",
)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep file; build with `load_sweep_config` or `SweepConfig.from_dict`."""

    base: str  # absolute path of the base training config
    set: tuple[str, ...] = ()  # SECTION.KEY=VALUE overrides of the base config
    num_seeds: int = 1
    first_seed: int = 0  # seeds are first_seed, ..., first_seed + num_seeds - 1 <= SEED_MAX
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (key, values) in file order
    points: tuple[tuple[tuple[str, Any], ...], ...] = ()  # explicit (key, value) combinations
    metric: str = "qoe"
    goal: str = "max"
    baselines: bool = True  # also evaluate every baseline policy on each member's episodes

    def __post_init__(self):
        _require(
            _is_int(self.num_seeds) and self.num_seeds >= 1,
            "num_seeds",
            self.num_seeds,
            "must be an integer >= 1",
        )
        _require(
            _is_int(self.first_seed) and 0 <= self.first_seed <= SEED_MAX,
            "first_seed",
            self.first_seed,
            f"must be an integer in [0, {SEED_MAX}]",
        )
        last_seed = self.first_seed + self.num_seeds - 1
        _require(
            last_seed <= SEED_MAX,
            "num_seeds",
            self.num_seeds,
            f"the last seed first_seed + num_seeds - 1 = {last_seed} must be <= {SEED_MAX}",
        )
        _require(
            self.metric in RANKING_METRICS,
            "metric",
            self.metric,
            f"must be one of {list(RANKING_METRICS)}",
        )
        _require(self.goal in GOALS, "goal", self.goal, f"must be one of {list(GOALS)}")
        _require(
            isinstance(self.baselines, bool), "baselines", self.baselines, "expected true or false"
        )
        for key, values in self.grid:
            _check_key(key, f"grid.{key}")
            _require(len(values) > 0, f"grid.{key}", list(values), "must list at least one value")
            hashable = [_hashable(value) for value in values]
            _require(
                len(set(hashable)) == len(hashable),
                f"grid.{key}",
                list(values),
                "must not repeat a value",
            )
        grid_keys = {key for key, _ in self.grid}
        for index, point in enumerate(self.points):
            _require(len(point) > 0, f"points[{index}]", {}, "must set at least one key")
            for key, _ in point:
                _check_key(key, f"points[{index}].{key}")
                _require(
                    key not in grid_keys,
                    f"points[{index}].{key}",
                    dict(point)[key],
                    "the key is also in grid; set it in one place",
                )
        point_keys = [tuple(sorted(key for key, _ in point)) for point in self.points]
        _require(
            len(set(point_keys)) <= 1,
            "points",
            [dict(p) for p in self.points],
            "every point must set the same keys",
        )
        seen: dict[frozenset, int] = {}
        for index, point in enumerate(self.points):
            # Key order does not matter: {a: 1, b: 2} and {b: 2, a: 1} are one combination.
            combination = frozenset((key, _hashable(value)) for key, value in point)
            _require(
                combination not in seen,
                f"points[{index}]",
                dict(point),
                f"repeats points[{seen.get(combination)}]; list each combination once",
            )
            seen[combination] = index

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.first_seed, self.first_seed + self.num_seeds))

    @property
    def swept_keys(self) -> tuple[str, ...]:
        """Keys that vary over the sweep, in file order (grid first, then points)."""
        keys = [key for key, _ in self.grid]
        if self.points:
            keys += [key for key, _ in self.points[0]]
        return tuple(keys)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], directory: str | Path = ".") -> "SweepConfig":
        """Build from parsed YAML; a relative `base` is resolved against `directory`.

        Raises:
            ValueError: an unknown or missing key, or a value that breaks a rule.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a sweep config must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in SWEEP_FIELDS:
                raise ValueError(_unknown_message("sweep key", str(key), SWEEP_FIELDS))
        if "base" not in data or not isinstance(data["base"], str) or not data["base"]:
            raise ValueError(
                f"invalid base = {data.get('base')!r}: must be the path of a training config"
            )
        # An absolute path, so that the copy saved in an output directory names the same file.
        base = (Path(directory) / data["base"]).resolve()
        # Only null means an empty value. A false, 0 or a list in place of the grid mapping is
        # a mistake, not an empty sweep key.
        overrides = _or_empty(data.get("set"), [])
        _require(
            isinstance(overrides, list) and all(isinstance(item, str) for item in overrides),
            "set",
            overrides,
            "must be a list of SECTION.KEY=VALUE strings",
        )
        grid = _or_empty(data.get("grid"), {})
        _require(isinstance(grid, Mapping), "grid", grid, "must map keys to lists of values")
        for key, values in grid.items():
            _require(isinstance(values, list), f"grid.{key}", values, "must be a list of values")
        points = _or_empty(data.get("points"), [])
        _require(isinstance(points, list), "points", points, "must be a list of mappings")
        for index, point in enumerate(points):
            _require(isinstance(point, Mapping), f"points[{index}]", point, "must be a mapping")
        swept = {str(key) for key in grid} | {str(key) for point in points for key in point}
        _check_overrides(overrides, swept)
        _require(
            bool(grid) or bool(points) or "num_seeds" in data,
            "grid",
            grid,
            "a sweep needs a grid, points or num_seeds",
        )
        fields = {
            name: data[name]
            for name in ("num_seeds", "first_seed", "metric", "goal", "baselines")
            if name in data
        }
        return cls(
            base=str(base),
            set=tuple(overrides),
            grid=tuple(
                (str(key), tuple(_normalize(v) for v in values)) for key, values in grid.items()
            ),
            points=tuple(
                tuple((str(key), _normalize(value)) for key, value in point.items())
                for point in points
            ),
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return plain data that `from_dict` reads back."""
        return {
            "base": self.base,
            "set": list(self.set),
            "num_seeds": self.num_seeds,
            "first_seed": self.first_seed,
            "grid": {key: [_plain(v) for v in values] for key, values in self.grid},
            "points": [{key: _plain(value) for key, value in point} for point in self.points],
            "metric": self.metric,
            "goal": self.goal,
            "baselines": self.baselines,
        }


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return SweepConfig.from_dict(data, path.parent)
    except ValueError as error:
        raise ValueError(f"sweep config {str(path)!r}: {error}") from None


def save_sweep_config(sweep: SweepConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(sweep.to_dict(), sort_keys=False))


@dataclasses.dataclass(frozen=True)
class SweepMember:
    """One training run of the sweep: a point (swept key -> value) and a seed."""

    index: int  # position in the sweep, 0-based; also the row order of results.csv
    group: int  # index of the `SweepGroup` (compiled program) that runs it
    seed: int
    values: tuple[tuple[str, Any], ...]  # every swept key and its value
    config: Config  # the member's full training config (train.seed == seed)

    @property
    def name(self) -> str:
        return f"member-{self.index:04d}"


@dataclasses.dataclass(frozen=True)
class SweepGroup:
    """Members sharing every static value; they run as one vmapped, compiled program."""

    index: int
    config: Config  # base config with this group's static values; traced values from the base
    static_values: tuple[tuple[str, Any], ...]
    members: tuple[SweepMember, ...]

    @property
    def name(self) -> str:
        return f"group-{self.index:03d}"

    @property
    def size(self) -> int:
        return len(self.members)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A sweep expanded into members and grouped into compiled programs."""

    sweep: SweepConfig
    groups: tuple[SweepGroup, ...]

    @property
    def members(self) -> tuple[SweepMember, ...]:
        return tuple(sorted((m for g in self.groups for m in g.members), key=lambda m: m.index))

    @property
    def num_programs(self) -> int:
        """Distinct static combinations, so the training programs a full run compiles."""
        return len(self.groups)


def plan_sweep(sweep: SweepConfig) -> SweepPlan:
    """Expand a sweep into members and group them by static values; compiles nothing.

    Every member's full config is built and validated here, so an invalid value (a negative
    learning rate, a batch larger than the buffer) raises ValueError before any compile.
    """
    base_data = apply_overrides(_read_base(sweep.base), sweep.set)
    _build_config(base_data, {}, "base config")
    points = _expand_points(sweep)

    points_by_static: dict[Any, list[tuple[tuple[str, Any], ...]]] = {}
    for point in points:
        static = tuple((key, value) for key, value in point if key not in TRACED_KEYS)
        points_by_static.setdefault(_hashable(static), []).append(point)

    planned = []
    index = 0
    for group_index, group_points in enumerate(points_by_static.values()):
        static = tuple((key, value) for key, value in group_points[0] if key not in TRACED_KEYS)
        group_config = _build_config(base_data, dict(static), f"group {group_index}")
        try:
            check_gradient_steps(group_config)
        except ValueError as error:
            raise ValueError(f"group {group_index}: {error}") from None
        if group_config.train.eval_every_chunks:
            raise ValueError(
                f"group {group_index}: invalid train.eval_every_chunks = "
                f"{group_config.train.eval_every_chunks}: a sweep evaluates each member once, "
                "after its last chunk, and writes no periodic evaluation; set it to 0"
            )
        static = _typed_values(group_config, static)
        members = []
        for point in group_points:
            for seed in sweep.seeds:
                values = {**dict(point), "train.seed": seed}
                config = _build_config(base_data, values, f"member {index} ({_describe(point)})")
                typed_point = _typed_values(config, point)
                members.append(SweepMember(index, group_index, seed, typed_point, config))
                index += 1
        planned.append(SweepGroup(group_index, group_config, static, tuple(members)))
    # Members are numbered group by group so that each group's members are contiguous.
    return SweepPlan(sweep=sweep, groups=tuple(planned))


def _expand_points(sweep: SweepConfig) -> list[tuple[tuple[str, Any], ...]]:
    grid_keys = [key for key, _ in sweep.grid]
    grid_points = [
        tuple(zip(grid_keys, values, strict=True))
        for values in itertools.product(*(values for _, values in sweep.grid))
    ]
    # Every point takes the key order of `swept_keys`, so that points that list the same
    # static values in different orders share one group.
    order = {key: position for position, key in enumerate(sweep.swept_keys)}
    explicit = [
        tuple(sorted(point, key=lambda item: order[item[0]])) for point in sweep.points
    ] or [()]
    return [grid_point + point for grid_point in grid_points for point in explicit]


def _read_base(path: str) -> dict[str, Any]:
    """Read the base training config, checking that every section is a mapping.

    `apply_overrides` and `_build_config` copy each section as a mapping, so a list there
    must be rejected first.
    """
    data = read_yaml(path)
    for name, section in data.items():
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(
                f"base config {path!r}: section {name} must be a mapping, got {section!r}"
            )
    return data


def _build_config(base_data: Mapping[str, Any], values: Mapping[str, Any], what: str) -> Config:
    """Build the config of `base_data` with each dotted key of `values` set.

    Raises:
        ValueError: naming `what`, for an invalid config or a key whose parent in `base_data`
            is not a mapping.
    """
    data = {}
    for name, section in base_data.items():
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"{what}: section {name} must be a mapping, got {section!r}")
        data[name] = dict(section or {})
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = data
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is not None and not isinstance(child, Mapping):
                path = ".".join(parents[: depth + 1])
                raise ValueError(
                    f"{what}: cannot set {key}: {path} must be a mapping, got {child!r}"
                )
            node[part] = dict(child or {})
            node = node[part]
        node[leaf] = _plain(value)
    try:
        return Config.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


def _typed_values(
    config: Config, point: tuple[tuple[str, Any], ...]
) -> tuple[tuple[str, Any], ...]:
    """Return the swept values of `point` as `config` stores them, in the types of their fields.

    The config coerces each value by its field's rules, so a quoted "8" for env.horizon
    becomes the integer 8 and not the float that `_normalize` reads.
    """
    typed = []
    for key, _ in point:
        section, *rest = key.split(".")
        if section == "env" and rest[0] == "params":
            value = config.env.param_overrides[rest[1]]
        else:
            value = getattr(getattr(config, section), rest[0])
        typed.append((key, value))
    return tuple(typed)


def member_hyperparams(group_hyper: TrainHyperparams, member: SweepMember) -> TrainHyperparams:
    """Return the traced values of `member`, starting from its group's defaults.

    The agent values come from the member's resolved config, so a null `hyper` entry takes the
    default of the group's algorithm. The environment constants it sweeps replace the group's.
    """
    agent = member.config.hyperparams
    env_values = {
        key.removeprefix("env.params."): jnp.asarray(value, jnp.float32)
        for key, value in member.values
        if key.startswith("env.params.")
    }
    return TrainHyperparams(agent=agent, env=group_hyper.env.replace(**env_values))


def stack_hyperparams(group: SweepGroup, group_hyper: TrainHyperparams) -> TrainHyperparams:
    """Stack the traced values of every member of `group` into NumPy arrays [P, ...]."""
    per_member = [member_hyperparams(group_hyper, member) for member in group.members]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *per_member)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Device bytes of one member's training state (an estimate: XLA temporaries excluded)."""

    replay_bytes: int
    params_bytes: int  # actor and critic parameters
    target_params_bytes: int  # their Polyak target copies
    optimizer_bytes: int  # Adam first and second moments of both networks
    env_bytes: int  # environment states and constants, observations, returns, key, counters

    @property
    def total_bytes(self) -> int:
        return (
            self.replay_bytes
            + self.params_bytes
            + self.target_params_bytes
            + self.optimizer_bytes
            + self.env_bytes
        )


def estimate_member_memory(
    config: Config, env: DiffusionServiceEnv | None = None
) -> MemoryEstimate:
    """Estimate the device memory of one member of `config` from the exact state shapes.

    The state's shapes come from `jax.eval_shape` of the program's `init`, which allocates and
    compiles nothing. Activations and other XLA temporaries during a chunk are not counted.
    Because the state is donated, they are small next to the replay buffer unless `batch_size`
    times the hidden sizes is large. `env` replaces the environment of `config.env`, as in
    `make_train`.
    """
    program = make_train(config, check_memory=False, env=env)
    hyper = program.default_hyperparams
    state = jax.eval_shape(program.init, jax.random.key(0), hyper)
    agent = state.agent
    # A member carries its own copy of the environment constants (prompt bank, QoE network).
    env_bytes = _tree_bytes(hyper) + _tree_bytes(
        (
            state.env_state,
            state.obs,
            state.episode_return,
            state.iteration,
            jax.random.key_data(jax.random.key(0)),
            agent.step,
        )
    )
    return MemoryEstimate(
        replay_bytes=_tree_bytes(state.replay),
        params_bytes=_tree_bytes((agent.actor_params, agent.critic_params)),
        target_params_bytes=_tree_bytes((agent.target_actor_params, agent.target_critic_params)),
        optimizer_bytes=_tree_bytes((agent.actor_opt_state, agent.critic_opt_state)),
        env_bytes=env_bytes,
    )


def _tree_bytes(tree: Any) -> int:
    return int(
        sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))
    )


@dataclasses.dataclass(frozen=True)
class GroupMemory:
    """Memory need of one group on the busiest device."""

    group: int
    member: MemoryEstimate
    members_per_device: int

    @property
    def bytes_per_device(self) -> int:
        return self.member.total_bytes * self.members_per_device


def estimate_sweep_memory(
    plan: SweepPlan,
    num_devices: int,
    env_factory: Callable[[Config], DiffusionServiceEnv] | None = None,
) -> list[GroupMemory]:
    """Estimate, per group, the bytes its population needs on each of `num_devices` devices.

    `env_factory` builds each group's environment, as in `rlli_jax.population.run_sweep`.
    """
    estimates = []
    for group in plan.groups:
        members_per_device = math.ceil(group.size / num_devices)
        env = None if env_factory is None else build_group_env(group, env_factory)
        member = estimate_member_memory(group.config, env)
        estimates.append(GroupMemory(group.index, member, members_per_device))
    return estimates


def check_sweep_memory(
    plan: SweepPlan,
    num_devices: int,
    device: jax.Device | None = None,
    headroom: float = 0.8,
    env_factory: Callable[[Config], DiffusionServiceEnv] | None = None,
) -> list[GroupMemory]:
    """Raise ValueError if a group's population does not fit in `headroom` of free memory.

    Groups run one after another, so the largest group decides. Free memory is read from
    `device` (default: this process's first device) with `memory_stats()` on accelerators and
    the free memory of the CPU (see `available_device_bytes`); every device is assumed to have
    as much free.
    """
    estimates = estimate_sweep_memory(plan, num_devices, env_factory)
    free_bytes, source = available_device_bytes(device)
    for estimate in estimates:
        if estimate.bytes_per_device > headroom * free_bytes:
            raise ValueError(
                f"group {estimate.group} needs about {estimate.bytes_per_device / 2**30:.2f} GiB "
                f"per device ({estimate.members_per_device} members x "
                f"{estimate.member.total_bytes / 2**20:.1f} MiB) but only "
                f"{headroom:.0%} of {free_bytes / 2**30:.2f} GiB free ({source}) may be used; "
                "reduce train.buffer_size, the number of members, or add devices"
            )
    return estimates


def build_group_env(
    group: SweepGroup, env_factory: Callable[[Config], DiffusionServiceEnv] | None
) -> DiffusionServiceEnv:
    """Return the environment of `group`, built by `env_factory` or from the group's config."""
    if env_factory is None:
        return make_env(group.config)
    try:
        env = env_factory(group.config)
    except Exception as error:
        # The note keeps the factory's exception type but names the group in the traceback.
        error.add_note(f"raised by env_factory for sweep group {group.name}")
        raise
    if not isinstance(env, DiffusionServiceEnv):
        raise TypeError(
            f"env_factory for sweep group {group.name} returned {env!r}, expected a "
            "DiffusionServiceEnv (or a subclass)"
        )
    try:
        check_env_shape(env, group.config)
    except ValueError as error:
        raise ValueError(f"env_factory for sweep group {group.name}: {error}") from None
    return env


def _require(condition: bool, field: str, value: Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"invalid {field} = {value!r}: {rule}")


def _or_empty(value: Any, empty: Any) -> Any:
    return empty if value is None else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_overrides(overrides: list[str], swept: set[str]) -> None:
    """Reject a `set` entry that does not parse, sets the seed, sets a swept key, or sets a key
    that an earlier entry sets.

    Members take their seed and their swept values from the sweep, so such an entry would
    have no effect. Of two entries with one key, the second would silently replace the first.
    """
    paths = []
    for index, text in enumerate(overrides):
        try:
            keys, value = parse_override(text)
        except ValueError as error:
            raise ValueError(f"invalid set[{index}]: {error}") from None
        paths.append(keys)
        overlap = find_overlapping_keys(paths)
        if overlap is not None:
            first, _ = overlap
            raise ValueError(
                f"invalid set[{index}] = {text!r}: "
                + describe_overlap(paths[first], keys, f"set[{first}]")
            )
        key = ".".join(keys)
        if key == "train.seed":
            raise ValueError(
                f"invalid set[{index}] = {text!r}: seeds are set by num_seeds and first_seed"
            )
        # A swept value would silently replace what the entry gives for the same key.
        covered = sorted(name for name in swept if _sets_swept_key(keys, value, name.split(".")))
        if covered:
            verb = "is" if len(covered) == 1 else "are"
            raise ValueError(
                f"invalid set[{index}] = {text!r}: {', '.join(covered)} {verb} also swept in "
                "grid or points, which would override it; set it in one place"
            )


def _is_prefix(prefix: list[str], path: list[str]) -> bool:
    return list(path[: len(prefix)]) == list(prefix)


def _sets_swept_key(keys: list[str], value: Any, swept: list[str]) -> bool:
    """Tell whether the set entry `keys`=`value` gives a value for the swept key path `swept`.

    An entry at or inside the swept key does. A mapping above it, such as env.params={...},
    does only if it contains the swept key, because members merge their swept values into it.
    Any other value above it would be replaced, so it counts as giving one.
    """
    if _is_prefix(swept, keys):
        return True
    if not _is_prefix(keys, swept):
        return False
    node = value
    for part in swept[len(keys) :]:
        if not isinstance(node, Mapping):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _check_key(key: str, field: str) -> None:
    if key == "train.seed":
        raise ValueError(f"invalid {field}: seeds are set by num_seeds and first_seed")
    if key in UNSWEEPABLE_KEYS:
        raise ValueError(f"invalid {field}: {key} cannot be swept: {UNSWEEPABLE_KEYS[key]}")
    if key not in TRACED_KEYS and key not in STATIC_KEYS:
        raise ValueError(
            _unknown_message("sweep key", key, TRACED_KEYS + STATIC_KEYS)
            + f" (in {field}); traced keys: {list(TRACED_KEYS)}"
        )


def _unknown_message(what: str, name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _normalize(value: Any) -> Any:
    """Make YAML values hashable (lists become tuples) and read numeric strings as numbers.

    PyYAML reads 1e-4 (no dot) as a string. A string such as "nan" or "inf" stays as written,
    so that the config's check names it in the text of the sweep file. `plan_sweep` converts
    each value to its field's type.
    """
    if isinstance(value, list):
        return tuple(_normalize(item) for item in value)
    if isinstance(value, str):
        try:
            return int(value)  # "8" stays an integer in messages before the typed values
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def _hashable(value: Any) -> Any:
    # A mapping is not a valid sweep value, but it must reach the config's check, which names it.
    if isinstance(value, Mapping):
        return frozenset((key, _hashable(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    return value


def _describe(point: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{key}={_plain(value)}" for key, value in point) or "base values"
