"""The reproduction study: G-DDPG against DDPG and the baselines, and the ablations.

A study entry is one learner configuration given as config overrides on a base config (for
example `configs/paper.yaml`). `run_entry` trains it over several seeds as one `jax.vmap`-ed
program (one compile), then evaluates the final policies and the baselines `random`,
`equal_split` and `greedy` with the same evaluation code path (`run_episodes`) on the same
episodes per seed. Results are per-seed means over evaluation episodes. `summarize_seeds` adds
the mean and a Student-t 95% confidence interval over seeds. `relative_gain` bootstraps the
ratio of mean QoE between two learners.

Entries and their groups:
- `main`: G-DDPG (`gddpg`) and DDPG (`ddpg`) with the base config's settings.
- `diffusion_steps`: G-DDPG with T in {1, 3, 5, 10} denoising steps (T 5 is `gddpg`).
- `sharing`: G-DDPG and DDPG with the share ratio forced to 0 (`max_share_ratio = 0`).
- `qoe`: G-DDPG and DDPG trained on a persona-blind QoE (the reward network called with every
  trait at its mean 0.5) and evaluated on the persona QoE, to measure what persona feedback adds.
- `users`: G-DDPG and DDPG with N in {4, 16} users (N 8 is the main pair).
- `energy_budget`: G-DDPG and DDPG with a finite per-episode energy budget and gamma 0.95, once
  bootstrapping past the last slot and once (`_terminal`) storing it as terminal
  (`TrainConfig.bootstrap_at_horizon`).
- `investigation`: G-DDPG and DDPG with the same change applied to both, to find what limits
  G-DDPG against DDPG: actor learning rate 3e-4, exploration noise 0.2, and 48 gradient steps
  per vectorised environment step (the `cpu` budget's 24 doubled). `gddpg_bound_loss` adds
  the penalty on x0 predictions outside [-1, 1] (`AgentConfig.bound_loss_coef` 1), which
  only the diffusion actor has.
- `paper_config`: G-DDPG and DDPG on `configs/paper.yaml` with one of the three differences
  from `configs/default.yaml` that remain after the `cpu` budget and gamma 0 set to the
  default.yaml value: critic learning rate 1e-3, actor width 128 (the MLP actor, the noise
  network and the state encoder), batch 256. This finds which setting keeps
  `configs/paper.yaml` from learning at the `cpu` budget. On `configs/default.yaml` these
  entries would repeat the main pair, so a run that does not name its entries skips an entry
  whose resolved config equals its learner's main entry (`default_entries`).
"""

import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import rlli_jax.train as train_module
from rlli_jax.agents.baselines import BASELINE_NAMES, make_baseline_policy
from rlli_jax.config import SEED_MAX, Config, check_gradient_steps, load_config
from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.evaluation import check_evaluation_memory, make_agent_policy, run_episodes
from rlli_jax.qoe.model import QoEModel
from rlli_jax.runner import env_data_digest

# Config fields added after study entry files began to store a settings digest, each as
# (section, name, the value that keeps the behaviour from before the field existed). A test
# in tests/test_study.py fails when a config field is in neither this list nor its snapshot.
FIELDS_ADDED_AFTER_DIGEST = (("train", "bootstrap_at_horizon", True),)
# Discount of every entry without an energy budget. With the budget off no action changes a
# later slot, so gamma 0 is the exact objective, and it learned faster than 0.99 on this
# environment (measured with configs/default.yaml). Applied equally to G-DDPG and DDPG.
MYOPIC_OVERRIDES = ("hyper.gamma=0.0",)
# Per-episode energy budget of the `energy_budget` entries: 48 kJ over 16 slots is 3 kJ per
# slot. That is below the about 4 kJ per slot of 8 unshared users at the baselines' fixed 25
# steps (e_step 20 J), so the budget binds and spending early has a cost later.
ENERGY_BUDGET_J = 48_000.0
ENERGY_BUDGET_OVERRIDES = (f"env.params.energy_budget_j={ENERGY_BUDGET_J}", "hyper.gamma=0.95")

# Changes of the `investigation` group: (name suffix, label, overrides), each applied equally to
# G-DDPG and DDPG on top of the main pair's settings. The values are absolute, chosen against
# configs/default.yaml (actor lr 1e-4, exploration 0.1) and the `cpu` budget (24 updates).
INVESTIGATION_CHANGES = (
    ("_actor_lr_3e-4", " actor lr 3e-4", ("hyper.actor_lr=3.0e-4",)),
    ("_exploration_0.2", " exploration 0.2", ("hyper.exploration_std=0.2",)),
    ("_updates_48", " 48 updates per step", ("train.updates_per_step=48",)),
)

# Changes of the `paper_config` group, each applied equally to G-DDPG and DDPG on
# configs/paper.yaml: one of its differences from configs/default.yaml at a time.
PAPER_CONFIG_CHANGES = (
    ("_critic_lr_1e-3", " critic lr 1e-3", ("hyper.critic_lr=1.0e-3",)),
    (
        "_width_128",
        " width 128",
        ("agent.actor_hidden_sizes=[128, 128]", "agent.encoder_hidden_sizes=[128]"),
    ),
    ("_batch_256", " batch 256", ("agent.batch_size=256",)),
)

# Run sizes. `full` keeps the base config's sizes. `cpu` (2,880 gradient steps per seed) is
# sized so that one G-DDPG entry with 5 seeds trains in about 10 minutes on a loaded 2-core
# CPU; it keeps the base config's networks and learning rates. `tiny` only checks that the
# machinery runs end to end.
BUDGETS: dict[str, tuple[str, ...]] = {
    "tiny": (
        "env.horizon=4",
        "agent.actor_hidden_sizes=[16]",
        "agent.critic_hidden_sizes=[16]",
        "agent.encoder_hidden_sizes=[16]",
        "agent.batch_size=16",
        "train.num_envs=8",
        "train.total_env_steps=128",
        "train.steps_per_chunk=4",
        "train.warmup_env_steps=32",
        "train.buffer_size=256",
        "train.updates_per_step=1",
        "train.eval_episodes=8",
    ),
    "cpu": (
        "train.num_envs=256",
        "train.total_env_steps=32768",
        "train.steps_per_chunk=8",
        "train.warmup_env_steps=2048",
        "train.buffer_size=32768",
        "train.updates_per_step=24",
        "train.eval_episodes=256",
    ),
    "full": (),
}

# Per-episode metrics reported for every method (names of `run_episodes` outputs, plus the
# energy per delivered image derived from `energy_j`, the energy of one slot of all users).
REPORTED_METRICS = (
    "qoe",
    "reward",
    "episode_return",
    "energy_per_image_j",
    "latency_s",
    "quality",
    "shared_steps",
    "total_steps",
)
# Training metrics kept as learning curves, one value per chunk (with exploration noise on).
# The critic loss and mean Q show the critic's fit: with gamma 0 the target is the reward.
CURVE_METRICS = ("qoe", "reward", "energy_j", "critic_loss", "q_mean")
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class PersonaBlindQoE:
    """A QoE model that calls `base` with every persona trait replaced by its mean, 0.5.

    Traits are drawn uniformly in [0, 1], so 0.5 is their mean. The blind model rates every
    user as the average persona, which is what a QoE model without persona feedback can do.
    """

    base: QoEModel
    name: str = "persona_blind"

    def __call__(self, qoe_params, traits, quality, latency_s):
        mean_traits = jnp.full(traits.shape, 0.5, traits.dtype)
        return self.base(qoe_params, mean_traits, quality, latency_s)

    def default_params(self):
        return self.base.default_params()


@dataclasses.dataclass(frozen=True)
class StudyEntry:
    """One learner configuration of the study."""

    name: str
    group: str
    algo: str  # "gddpg" or "ddpg"
    label: str
    overrides: tuple[str, ...] = ()
    # Train on the persona-blind QoE; evaluation always uses the persona QoE.
    persona_blind: bool = False
    # In a run that does not name its entries, skip this entry when its resolved config equals
    # that of its learner's main entry (see `default_entries`).
    skip_if_unchanged: bool = False


def _pair(
    name: str, group: str, label: str, overrides=(), persona_blind=False, skip_if_unchanged=False
):
    """Build the G-DDPG and DDPG entries of one setting."""
    return [
        StudyEntry(
            name=f"{algo}{name}",
            group=group,
            algo=algo,
            label=f"{algo_label}{label}",
            overrides=(f"agent.algo={algo}", *overrides),
            persona_blind=persona_blind,
            skip_if_unchanged=skip_if_unchanged,
        )
        for algo, algo_label in (("gddpg", "G-DDPG"), ("ddpg", "DDPG"))
    ]


def _study_entries() -> dict[str, StudyEntry]:
    entries = [*_pair("", "main", "", MYOPIC_OVERRIDES)]
    for steps in (1, 3, 10):
        entries.append(
            StudyEntry(
                name=f"gddpg_t{steps}",
                group="diffusion_steps",
                algo="gddpg",
                label=f"G-DDPG T={steps}",
                overrides=("agent.algo=gddpg", f"agent.diffusion_steps={steps}", *MYOPIC_OVERRIDES),
            )
        )
    entries += _pair(
        "_no_sharing",
        "sharing",
        " no sharing",
        ("env.params.max_share_ratio=0.0", *MYOPIC_OVERRIDES),
    )
    entries += _pair("_persona_blind", "qoe", " persona-blind", MYOPIC_OVERRIDES, True)
    for num_users in (4, 16):
        entries += _pair(
            f"_n{num_users}",
            "users",
            f" N={num_users}",
            (f"env.num_users={num_users}", *MYOPIC_OVERRIDES),
        )
    entries += _pair("_energy_budget", "energy_budget", " energy budget", ENERGY_BUDGET_OVERRIDES)
    entries += _pair(
        "_energy_budget_terminal",
        "energy_budget",
        " energy budget, horizon terminal",
        (*ENERGY_BUDGET_OVERRIDES, "train.bootstrap_at_horizon=false"),
    )
    for suffix, label, change in INVESTIGATION_CHANGES:
        entries += _pair(suffix, "investigation", label, (*MYOPIC_OVERRIDES, *change))
    entries.append(
        StudyEntry(
            name="gddpg_bound_loss",
            group="investigation",
            algo="gddpg",
            label="G-DDPG bound loss 1",
            overrides=("agent.algo=gddpg", "agent.bound_loss_coef=1.0", *MYOPIC_OVERRIDES),
        )
    )
    for suffix, label, change in PAPER_CONFIG_CHANGES:
        entries += _pair(
            suffix, "paper_config", label, (*MYOPIC_OVERRIDES, *change), skip_if_unchanged=True
        )
    return {entry.name: entry for entry in entries}


STUDY_ENTRIES = _study_entries()


def study_overrides(entry: StudyEntry, budget: str, extra: Sequence[str] = ()) -> list[str]:
    """Config overrides of `entry` at `budget`; `extra` comes last and wins."""
    if budget not in BUDGETS:
        raise ValueError(f"invalid budget {budget!r}: expected one of {sorted(BUDGETS)}")
    return [*BUDGETS[budget], *entry.overrides, *extra]


def _load_entry_config(
    config_path: str | Path, entry: StudyEntry, budget: str, extra: Sequence[str] = ()
) -> Config:
    # The entry's overrides replace the budget's, and `extra` replaces both, so a key may
    # repeat across the layers.
    config = load_config(config_path, study_overrides(entry, budget, extra), last_wins=True)
    try:
        check_gradient_steps(config)
    except ValueError as error:
        raise ValueError(f"study entry {entry.name}: {error}") from None
    # Every reported number is a mean over evaluation episodes, which 0 episodes make NaN.
    if config.train.eval_episodes < 1:
        raise ValueError(
            f"study entry {entry.name}: invalid train.eval_episodes = "
            f"{config.train.eval_episodes}: a study evaluates every entry, so it must be >= 1"
        )
    return config


def default_entries(
    config_path: str | Path, budget: str, extra_overrides: Sequence[str] = ()
) -> list[str]:
    """Return the entries of a study run that does not name its entries, in study order.

    That is every entry except those marked `skip_if_unchanged` whose resolved config equals
    the resolved config of their learner's main entry (`gddpg` or `ddpg`): such an entry would
    train the main entry again. On `configs/default.yaml` this skips the `paper_config` group;
    on `configs/paper.yaml` it keeps it. A bad config raises ValueError.
    """
    names = []
    for name, entry in STUDY_ENTRIES.items():
        if entry.skip_if_unchanged:
            main = STUDY_ENTRIES[entry.algo]
            resolved = _load_entry_config(config_path, entry, budget, extra_overrides)
            main_resolved = _load_entry_config(config_path, main, budget, extra_overrides)
            if resolved == main_resolved and entry.persona_blind == main.persona_blind:
                continue
        names.append(name)
    return names


def seed_range(first_seed: int, num_seeds: int) -> list[int]:
    """Return the seeds first_seed, ..., first_seed + num_seeds - 1 of a study run.

    Raises:
        ValueError: a seed outside [0, SEED_MAX], which `jax.random.key` would wrap or reject.
    """
    if not 0 <= first_seed <= SEED_MAX:
        raise ValueError(f"invalid --first-seed = {first_seed}: must be in [0, {SEED_MAX}]")
    last_seed = first_seed + num_seeds - 1
    if last_seed > SEED_MAX:
        raise ValueError(
            f"invalid --seeds = {num_seeds}: the last seed --first-seed + --seeds - 1 = "
            f"{last_seed} must be <= {SEED_MAX}"
        )
    return list(range(first_seed, first_seed + num_seeds))


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Training and evaluation keys [num_seeds] for `seeds`, split from `jax.random.key(seed)`."""
    pairs = [jax.random.split(jax.random.key(seed)) for seed in seeds]
    return jnp.stack([pair[0] for pair in pairs]), jnp.stack([pair[1] for pair in pairs])


def settings_digest(
    config_path: str | Path,
    entry: StudyEntry,
    budget: str,
    seeds: Sequence[int],
    extra_overrides: Sequence[str] = (),
) -> str:
    """Return a digest of the settings that determine `entry`'s results.

    These are the resolved config (base file, budget, the entry's overrides and
    `extra_overrides`), the seeds and whether the entry trains on the persona-blind QoE. The
    config file is read and checked, so a bad value raises ValueError here, before anything
    compiles. A reward network file named by the config enters by its path, not its contents,
    so compare `entry_env_data_digest` too.
    """
    config = _load_entry_config(config_path, entry, budget, extra_overrides)
    text = f"{_config_digest_text(config)};seeds={list(seeds)};persona_blind={entry.persona_blind}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_env_data_digest(
    config_path: str | Path, entry: StudyEntry, budget: str, extra_overrides: Sequence[str] = ()
) -> str:
    """Return the digest of the data files that `entry`'s environment reads.

    These are the reward network's weights and the prompt bank (see `env_data_digest`), which
    `settings_digest` covers only by path. It is the `data=` part of `baseline_signature`.
    Loading the reward network compiles nothing. A bad config or checkpoint raises ValueError.
    """
    config = _load_entry_config(config_path, entry, budget, extra_overrides)
    return env_data_digest(train_module.make_env(config))


def _config_digest_text(config: Config) -> str:
    """Return `repr(config)` without the fields of `FIELDS_ADDED_AFTER_DIGEST` that have their
    earlier value, so entry files written before such a field existed still match."""
    text = repr(config)
    for section, name, earlier_value in FIELDS_ADDED_AFTER_DIGEST:
        if getattr(getattr(config, section), name) == earlier_value:
            text = text.replace(f", {name}={earlier_value!r}", "", 1)
    return text


def run_entry(
    config_path: str | Path,
    entry: StudyEntry,
    budget: str,
    seeds: Sequence[int],
    extra_overrides: Sequence[str] = (),
    baseline_cache: Mapping[str, Mapping[str, Mapping[str, list]]] | None = None,
) -> dict[str, Any]:
    """Train `entry` over `seeds` in one vmapped program and evaluate it and the baselines.

    `baseline_cache` maps a `baseline_signature` to earlier per-seed baseline results. Results
    with this entry's signature are reused instead of recomputed, because compiling the three
    baseline evaluations took over a minute on a loaded 2-core CPU.

    Returns a JSON-ready dict: the entry, the overrides, the run sizes, compile and run wall
    times in seconds, per-seed evaluation metrics for the learner and each baseline
    (`per_seed[method][metric]`, lists [num_seeds]) and learning curves
    (`curves[metric]`, lists [num_seeds][num_chunks]) against `curve_env_steps`.
    """
    overrides = study_overrides(entry, budget, extra_overrides)
    config = _load_entry_config(config_path, entry, budget, extra_overrides)
    eval_env = train_module.make_env(config)
    train_env = eval_env
    if entry.persona_blind:
        train_env = DiffusionServiceEnv(
            num_users=config.env.num_users,
            horizon=config.env.horizon,
            qoe_model=PersonaBlindQoE(eval_env.qoe_model),
        )
    program = train_module.make_train(config, env=train_env)
    hyper = program.default_hyperparams
    # Both environments share the reward network's parameters, so `hyper.env` serves both.
    eval_params = hyper.env

    train_keys, eval_keys = seed_keys(seeds)
    train_all = jax.jit(jax.vmap(program.train, in_axes=(0, None)))
    start = time.perf_counter()
    compiled = train_all.lower(train_keys, hyper).compile()
    # The whole run is one program, so its temporaries include every seed's training state.
    train_module.check_chunk_memory(compiled, num_members=len(seeds), config=config, whole_run=True)
    compile_s = time.perf_counter() - start

    # The evaluation is compiled and its memory checked before training, so an evaluation too
    # large for memory stops the study now and not after this entry has trained. Its compile
    # time counts as evaluation time.
    start = time.perf_counter()
    final_shapes, _ = compiled.out_info
    evaluation = _agent_evaluation(program, eval_env)
    evaluate_agents = evaluation.lower(final_shapes.agent, eval_keys).compile()
    check_evaluation_memory(evaluate_agents, config.train.eval_episodes, num_members=len(seeds))
    eval_compile_s = time.perf_counter() - start

    start = time.perf_counter()
    final_state, metrics = compiled(train_keys, hyper)
    jax.block_until_ready(final_state)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    per_episode = evaluate_agents(final_state.agent, eval_keys)
    per_seed = {entry.algo: _episode_means(per_episode, eval_env.num_users)}
    signature = baseline_signature(config, seeds, eval_env)
    baselines = (baseline_cache or {}).get(signature, {})
    for name in BASELINE_NAMES:
        if name in baselines:
            per_seed[name] = dict(baselines[name])
        else:
            per_seed[name] = _evaluate_baseline(name, eval_env, eval_params, eval_keys, config)
    eval_s = eval_compile_s + time.perf_counter() - start

    # Training metrics are [num_seeds, num_chunks, steps_per_chunk]; average each chunk.
    curves = {name: np.asarray(metrics[name]).mean(axis=2).tolist() for name in CURVE_METRICS}
    chunk_steps = config.train.env_steps_per_chunk
    return {
        "entry": dataclasses.asdict(entry),
        "settings_digest": settings_digest(config_path, entry, budget, seeds, extra_overrides),
        "budget": budget,
        "config_path": str(config_path),
        "overrides": overrides,
        "baseline_signature": signature,
        "seeds": list(seeds),
        "num_users": config.env.num_users,
        "total_env_steps": config.train.num_iterations * config.train.num_envs,
        "num_updates": config.num_updates,
        "eval_episodes": config.train.eval_episodes,
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "per_seed": per_seed,
        "curves": curves,
        "curve_env_steps": [chunk_steps * (index + 1) for index in range(program.num_chunks)],
    }


def baseline_signature(config, seeds: Sequence[int], env: DiffusionServiceEnv) -> str:
    """Return a string that is equal for two runs exactly when their baseline results are equal.

    Baseline results depend on the environment and on the evaluation episodes (seeds and
    count), not on the learner. The environment enters by its id, sizes and constants, and
    by the digest of the data read from files (the reward network's weights, whether packaged
    or from env.reward_net, and the prompt bank), because the config names those only by path.
    `env` is the evaluation environment built from `config`.
    """
    env_params = sorted(config.env.param_overrides.items())
    return (
        f"id={config.env.id};users={config.env.num_users};horizon={config.env.horizon};"
        f"params={env_params};data={env_data_digest(env)};"
        f"episodes={config.train.eval_episodes};seeds={list(seeds)}"
    )


def _episode_means(per_episode: Mapping[str, jax.Array], num_users: int) -> dict[str, list]:
    """Per-seed means over episodes: per_episode values are [num_seeds, num_episodes]."""
    means = {
        name: np.asarray(values, np.float64).mean(axis=1) for name, values in per_episode.items()
    }
    means["energy_per_image_j"] = means["energy_j"] / num_users
    return {name: means[name].tolist() for name in REPORTED_METRICS}


def _agent_evaluation(program, env: DiffusionServiceEnv):
    """Return the jitted evaluation of a batch of agent states, one key each, on `env`."""
    hyper = program.default_hyperparams
    num_episodes = program.config.train.eval_episodes

    def evaluate_one(agent_state, key):
        policy = make_agent_policy(program.agent, agent_state, hyper.agent)
        return run_episodes(env, hyper.env, policy, key, num_episodes)

    return jax.jit(jax.vmap(evaluate_one))


def _evaluate_baseline(name, env, env_params, eval_keys, config) -> dict[str, list]:
    policy = make_baseline_policy(name, env, env_params)
    num_episodes = config.train.eval_episodes

    def evaluate_one(key):
        return run_episodes(env, env_params, policy, key, num_episodes)

    per_episode = jax.jit(jax.vmap(evaluate_one))(eval_keys)
    return _episode_means(per_episode, env.num_users)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval over seeds.

    With one seed the interval is undefined and its bounds are NaN.
    """
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "num_seeds": int(values.size)}
    half_width = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * stats.sem(values)
    return {
        "mean": mean,
        "low": float(mean - half_width),
        "high": float(mean + half_width),
        "num_seeds": int(values.size),
    }


def relative_gain(
    treatment: Sequence[float],
    control: Sequence[float],
    num_resamples: int = 10_000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Relative gain mean(treatment) / mean(control) - 1 with a percentile bootstrap interval.

    The two methods' seeds are independent runs, so each bootstrap replicate resamples the
    treatment seeds and the control seeds separately, with replacement, and recomputes the
    ratio of means. With fewer than 2 seeds on either side the bounds are NaN.
    """
    treatment = np.asarray(treatment, np.float64)
    control = np.asarray(control, np.float64)
    gain = float(treatment.mean() / control.mean() - 1.0)
    if treatment.size < 2 or control.size < 2:
        return {"gain": gain, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(seed)
    treatment_means = rng.choice(treatment, (num_resamples, treatment.size)).mean(axis=1)
    control_means = rng.choice(control, (num_resamples, control.size)).mean(axis=1)
    ratios = treatment_means / control_means - 1.0
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return {"gain": gain, "low": float(low), "high": float(high)}


def summarize_seeds(result: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and 95% interval over seeds of every metric of every method in one entry result."""
    return {
        method: {name: mean_interval(values) for name, values in metrics.items()}
        for method, metrics in result["per_seed"].items()
    }
