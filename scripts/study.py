"""Run the reproduction study (G-DDPG, DDPG, baselines, ablations) and write its results.

    python scripts/study.py --config configs/paper.yaml --seeds 5 --budget cpu --out runs/study
    python scripts/study.py --config configs/default.yaml --budget cpu --only gddpg ddpg \
        --out runs/study_default   # the main pair on the config the CPU study used
    python scripts/study.py --report-only --out runs/study   # tables and plots from saved runs

Without --only every entry runs, except a `paper_config` entry whose resolved config equals
its learner's main entry (on configs/default.yaml all six; see `default_entries`).

Each entry's results go to OUT/entries/NAME.json; an entry whose file exists is not run
again, so an interrupted study resumes where it stopped. Before anything compiles the script
checks that each existing file was written with the same config, budget, seeds and --set
overrides, and with the same reward network weights and prompt bank, and stops with an error
naming the file if not. After the runs the script writes
OUT/summary.json, OUT/summary.csv, OUT/gain.json, OUT/tables.md and the plots OUT/curves_GROUP.png,
OUT/bars_qoe.png and OUT/energy_qoe.png from every entry file present. In the two JSON files an
undefined value, such as the interval of a single seed, is null. While a study runs it
takes a lock on OUT/.lock (POSIX systems), so a second study on the same --out stops at once.
"""

import argparse
import csv
import io
import json
import re
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlli_jax.agents.baselines import BASELINE_NAMES  # noqa: E402
from rlli_jax.cli import INTERRUPTED, command_line, exit_process  # noqa: E402
from rlli_jax.config import parse_override  # noqa: E402
from rlli_jax.outputs import (  # noqa: E402
    check_output_folder,
    json_safe,
    save_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)
from rlli_jax.runner import RunDirectoryLock  # noqa: E402
from rlli_jax.study import (  # noqa: E402
    BUDGETS,
    REPORTED_METRICS,
    STUDY_ENTRIES,
    default_entries,
    entry_env_data_digest,
    mean_interval,
    relative_gain,
    run_entry,
    seed_range,
    settings_digest,
    study_overrides,
    summarize_seeds,
)

DEFAULT_CONFIG = "configs/paper.yaml"
ENTRIES_DIR = "entries"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="base training config (default: %(default)s, taken from this repository when "
        "the current folder has none)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per entry (>= 2 for intervals)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first seed; seeds are consecutive"
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="run sizes")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=(
            "entries to run (default: all, except paper_config entries that leave the config "
            f"unchanged): {list(STUDY_ENTRIES)}"
        ),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "extra config override, applied after the budget's and the entry's overrides, so it "
            "wins over both; entry labels do not show it"
        ),
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--report-only", action="store_true", help="only rebuild tables and plots")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.config == DEFAULT_CONFIG and not Path(DEFAULT_CONFIG).is_file():
        args.config = str(Path(__file__).resolve().parent.parent / DEFAULT_CONFIG)
    try:
        out = check_output_folder(args.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    entries_dir = out / ENTRIES_DIR
    unknown = [name for name in args.only or () if name not in STUDY_ENTRIES]
    if unknown:
        print(
            f"error: unknown study entries {unknown}; known: {list(STUDY_ENTRIES)}", file=sys.stderr
        )
        return 2
    repeated = [name for name in dict.fromkeys(args.only or ()) if args.only.count(name) > 1]
    if repeated:
        print(
            f"error: invalid --only: {repeated} given more than once; name each entry once",
            file=sys.stderr,
        )
        return 2
    seed_override = _seed_override(args.set)
    if seed_override is not None:
        print(
            f"error: invalid --set {seed_override}: seeds are set by --seeds and --first-seed",
            file=sys.stderr,
        )
        return 2
    if args.report_only:
        return _report(entries_dir, out)
    if args.seeds < 1:
        print(f"error: invalid --seeds {args.seeds}: must be >= 1", file=sys.stderr)
        return 2
    try:
        seeds = seed_range(args.first_seed, args.seeds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Check the configs and the files of finished entries before anything compiles.
    try:
        names = args.only or default_entries(args.config, args.budget, args.set)
        digests = {
            name: settings_digest(args.config, STUDY_ENTRIES[name], args.budget, seeds, args.set)
            for name in names
        }
        finished = _finished_entries(entries_dir, names, digests, args, seeds)
    except (ValueError, EntryFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # One study at a time per folder, so that a second one cannot train the same entries.
    try:
        lock = RunDirectoryLock(out, ENTRIES_DIR, "study directory", "study process")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        entries_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        lock.release()
        print(f"error: --out = {args.out} cannot be created: {error}", file=sys.stderr)
        return 2
    try:
        _run_entries(names, finished, entries_dir, args, seeds)
        return _report(entries_dir, out)
    except KeyboardInterrupt:
        print(
            f"interrupted: finished entries are saved in {entries_dir}; run the same command "
            f"again to train the rest: {command_line(argv, __file__)}",
            file=sys.stderr,
        )
        return INTERRUPTED
    finally:
        lock.release()


def _seed_override(overrides: list[str]) -> str | None:
    """Return the first `--set` text that sets train.seed, or None.

    A study takes its seeds from --seeds and --first-seed, so such an override would change
    nothing but the settings digest. Malformed texts are left to the config loader.
    """
    for text in overrides:
        try:
            keys, _ = parse_override(text)
        except ValueError:
            continue
        if keys == ["train", "seed"]:
            return text
    return None


def _run_entries(
    names: list[str], finished: set[str], entries_dir: Path, args, seeds: list[int]
) -> None:
    """Train every entry of `names` not in `finished` and write its file under `entries_dir`."""
    for name in names:
        path = entries_dir / f"{name}.json"
        if name in finished:
            print(f"{name}: done earlier with the same settings, skipping ({path})", flush=True)
            continue
        start = time.perf_counter()
        result = run_entry(
            args.config,
            STUDY_ENTRIES[name],
            args.budget,
            seeds,
            args.set,
            baseline_cache=_baseline_cache(entries_dir),
        )
        result["wall_s"] = time.perf_counter() - start
        _write_json(path, result)
        qoe = mean_interval(result["per_seed"][result["entry"]["algo"]]["qoe"])
        print(
            f"{name}: QoE {qoe['mean']:.3f} [{qoe['low']:.3f}, {qoe['high']:.3f}], "
            f"compile {result['compile_s']:.0f} s, train {result['train_s']:.0f} s, "
            f"eval {result['eval_s']:.0f} s",
            flush=True,
        )


class EntryFileError(Exception):
    """An entry file that cannot be used: unreadable, incomplete or from other settings."""


# Entry groups name plot files, so they may contain only these characters.
GROUP_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# Keys every entry file must contain for the report and the baseline cache.
ENTRY_FILE_KEYS = (
    "entry",
    "per_seed",
    "seeds",
    "baseline_signature",
    "curves",
    "curve_env_steps",
    "total_env_steps",
    "num_updates",
    "compile_s",
    "train_s",
    "eval_s",
)


def _report(entries_dir: Path, out: Path) -> int:
    try:
        results = _load_results(entries_dir)
    except EntryFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not results:
        print(f"error: no entry results under {entries_dir}", file=sys.stderr)
        return 1
    write_report(results, out)
    print(f"wrote summary and plots to {out}")
    return 0


def _finished_entries(
    entries_dir: Path, names: list[str], digests: dict[str, str], args, seeds: list[int]
) -> set[str]:
    """Return the requested entries whose files exist and were written with this run's settings.

    Raises EntryFileError for a file written with other settings. It also raises it for any
    unreadable file in the directory, because the report reads them all.
    """
    results = _load_results(entries_dir)
    finished = set()
    for name in names:
        if name not in results:
            continue
        saved = results[name]
        entry = STUDY_ENTRIES[name]
        requested = {
            "seeds": seeds,
            "budget": args.budget,
            "overrides": study_overrides(entry, args.budget, args.set),
            "config file": Path(args.config).name,
        }
        recorded = {
            "seeds": saved.get("seeds"),
            "budget": saved.get("budget"),
            "overrides": saved.get("overrides"),
            "config file": Path(str(saved.get("config_path"))).name,
        }
        differences = [
            f"{key} {recorded[key]} against {requested[key]} now"
            for key in requested
            if recorded[key] != requested[key]
        ]
        # Files written before the digest existed are compared on the fields above only.
        if not differences and saved.get("settings_digest", digests[name]) != digests[name]:
            differences.append("the resolved config differs (was the config file changed?)")
        # The settings digest names the reward network by its path, so a changed checkpoint or
        # prompt bank shows only in the data digest that the baseline signature records.
        saved_data = _signature_field(saved["baseline_signature"], "data")
        if not differences and saved_data is not None:
            data = entry_env_data_digest(args.config, entry, args.budget, args.set)
            if saved_data != data:
                differences.append(
                    f"the environment data (reward network weights or prompt bank) differ: "
                    f"digest {saved_data[:12]} against {data[:12]} now"
                )
        if differences:
            raise EntryFileError(
                f"{entries_dir / (name + '.json')} was written with other settings: "
                f"{'; '.join(differences)}. Use another --out, or delete the file to run "
                f"{name} again"
            )
        finished.add(name)
    return finished


def _signature_field(signature: str, key: str) -> str | None:
    """Return the value of `key` in a `baseline_signature` text, or None when it has none."""
    for part in signature.split(";"):
        name, separator, value = part.partition("=")
        if separator and name == key:
            return value
    return None


def _baseline_cache(entries_dir: Path) -> dict:
    """Baseline results of the finished entries, keyed by their baseline signature."""
    cache = {}
    for result in _load_results(entries_dir).values():
        methods = result["per_seed"]
        cache[result["baseline_signature"]] = {name: methods[name] for name in BASELINE_NAMES}
    return cache


def _load_results(entries_dir: Path) -> dict:
    """Read every entry file under `entries_dir`, raising EntryFileError that names a bad one.

    The results are in the order of STUDY_ENTRIES, so the tables and plots follow the study.
    Files of other names come last, by name.
    """
    order = {name: index for index, name in enumerate(STUDY_ENTRIES)}
    paths = sorted(
        entries_dir.glob("*.json"), key=lambda path: (order.get(path.stem, len(order)), path.stem)
    )
    results = {}
    for path in paths:
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EntryFileError(
                f"unreadable study entry file {path}: {error}. Delete it to run the entry again"
            ) from error
        missing = [
            key for key in ENTRY_FILE_KEYS if not isinstance(result, dict) or key not in result
        ]
        if missing:
            raise EntryFileError(
                f"incomplete study entry file {path}: missing {missing}. Delete it to run the "
                "entry again"
            )
        problem = _entry_file_problem(result, path.stem)
        if problem is not None:
            raise EntryFileError(
                f"invalid study entry file {path}: {problem}. Delete it to run the entry again"
            )
        results[path.stem] = result
    return results


def _entry_file_problem(result: dict, name: str) -> str | None:
    """Return the first field of entry file `name`.json that the report cannot read, or None.

    `result` must contain every key of ENTRY_FILE_KEYS. The check covers their types and
    shapes, so that the report and the baseline cache can read the file without an error.
    """
    entry = result["entry"]
    if not isinstance(entry, dict):
        return _wrong_field("entry", entry, "a mapping")
    for key in ("group", "algo", "label"):
        if not isinstance(entry.get(key), str):
            return _wrong_field(f"entry.{key}", entry.get(key), "a string")
    # The group names a plot file, curves_GROUP.png, in the output folder.
    if not GROUP_NAME_PATTERN.fullmatch(entry["group"]):
        return _wrong_field(
            "entry.group", entry["group"], "letters, digits, '_', '-' or '.' (a file name part)"
        )
    # The gains look up an entry's learner by its file name, so the two must agree.
    if name in STUDY_ENTRIES and entry["algo"] != STUDY_ENTRIES[name].algo:
        return _wrong_field(
            "entry.algo", entry["algo"], f"{STUDY_ENTRIES[name].algo!r}, the algo of entry {name}"
        )
    seeds = result["seeds"]
    if not _is_list_of(seeds, _is_int) or not seeds:
        return _wrong_field("seeds", seeds, "a non-empty list of integers")
    if not isinstance(result["baseline_signature"], str):
        return _wrong_field("baseline_signature", result["baseline_signature"], "a string")
    for key in ("total_env_steps", "num_updates"):
        if not _is_int(result[key]):
            return _wrong_field(key, result[key], "an integer")
    for key in ("compile_s", "train_s", "eval_s"):
        if not _is_number(result[key]):
            return _wrong_field(key, result[key], "a number")
    for key in ("budget", "config_path"):
        if key in result and not isinstance(result[key], str):
            return _wrong_field(key, result[key], "a string")
    overrides = result.get("overrides", [])
    if not _is_list_of(overrides, lambda item: isinstance(item, str)):
        return _wrong_field("overrides", overrides, "a list of strings")

    per_seed = result["per_seed"]
    if not isinstance(per_seed, dict):
        return _wrong_field("per_seed", per_seed, "a mapping")
    for method in (entry["algo"], *BASELINE_NAMES):
        metrics = per_seed.get(method)
        if not isinstance(metrics, dict):
            return _wrong_field(f"per_seed.{method}", metrics, "a mapping of metrics")
    for method, metrics in per_seed.items():
        if not isinstance(metrics, dict):
            return _wrong_field(f"per_seed.{method}", metrics, "a mapping of metrics")
        for metric in REPORTED_METRICS:
            if metric not in metrics:
                return f"per_seed.{method} lacks the metric {metric!r}"
        for metric, values in metrics.items():
            if not _is_list_of(values, _is_number) or len(values) != len(seeds):
                return _wrong_field(
                    f"per_seed.{method}.{metric}",
                    values,
                    f"a list of {len(seeds)} numbers, one per seed",
                )

    curves = result["curves"]
    qoe_curves = curves.get("qoe") if isinstance(curves, dict) else None
    if not _is_list_of(qoe_curves, _is_curve) or len(qoe_curves) != len(seeds):
        return _wrong_field(
            "curves.qoe",
            qoe_curves,
            f"a non-empty list of lists of numbers, one per seed ({len(seeds)})",
        )
    steps = result["curve_env_steps"]
    lengths = {len(curve) for curve in qoe_curves}
    if not _is_list_of(steps, _is_number) or lengths != {len(steps)}:
        return _wrong_field(
            "curve_env_steps", steps, "a list of numbers, one per point of each curves.qoe row"
        )
    return None


def _wrong_field(name: str, value, expected: str) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"field {name} = {text} must be {expected}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """Return whether `value` is a JSON number that converts to a float (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # JSON integers may have any number of digits, and float() of a huge one overflows.
    return isinstance(value, float) or abs(value) <= sys.float_info.max


def _is_list_of(value, predicate) -> bool:
    return isinstance(value, list) and all(predicate(item) for item in value)


def _is_curve(value) -> bool:
    return _is_list_of(value, _is_number)


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1)


def write_report(results: dict, out: Path) -> None:
    """Write summary.json, summary.csv, gain.json and the plots from entry results."""
    summary = {name: summarize_seeds(result) for name, result in results.items()}
    # An interval over one seed is NaN, which strict JSON cannot store, so it is written as null.
    write_json_atomic(out / "summary.json", json_safe(summary), indent=1, allow_nan=False)
    _write_csv(results, summary, out / "summary.csv")
    gains = _gains(results)
    write_json_atomic(out / "gain.json", json_safe(gains), indent=1, allow_nan=False)
    write_text_atomic(out / "tables.md", _markdown_tables(results, summary, gains))
    _plot_curves(results, out)
    _plot_bars(results, summary, out / "bars_qoe.png")
    _plot_energy_qoe(results, summary, out / "energy_qoe.png")


def _write_csv(results: dict, summary: dict, path: Path) -> None:
    stream = io.StringIO(newline="")
    writer = csv.writer(stream)
    header = ["entry", "group", "method", "num_seeds", "total_env_steps", "train_s"]
    for metric in REPORTED_METRICS:
        header += [metric, f"{metric}_low", f"{metric}_high"]
    writer.writerow(header)
    for name, result in results.items():
        for method, metrics in summary[name].items():
            row = [
                name,
                result["entry"]["group"],
                method,
                len(result["seeds"]),
                result["total_env_steps"],
                round(result["train_s"], 1),
            ]
            for metric in REPORTED_METRICS:
                values = metrics[metric]
                row += [
                    f"{values['mean']:.4f}",
                    f"{values['low']:.4f}",
                    f"{values['high']:.4f}",
                ]
            writer.writerow(row)

    write_text_atomic(path, stream.getvalue())


def _gains(results: dict) -> dict:
    """Relative QoE gains: each G-DDPG entry over its DDPG counterpart and over the baselines,
    and each ablation entry over the main entry of its algorithm.

    Two entries are compared only when `_run_conditions` match, because the folder may hold
    entries from runs with other seeds, budgets or overrides.
    """
    gains = {}
    for name, result in results.items():
        algo = result["entry"]["algo"]
        if name != algo and algo in results and _same_conditions(results, name, algo):
            gains[f"{name} vs {algo}"] = relative_gain(
                result["per_seed"][algo]["qoe"], results[algo]["per_seed"][algo]["qoe"]
            )
        if algo != "gddpg":
            continue
        gddpg_qoe = result["per_seed"]["gddpg"]["qoe"]
        ddpg_name = "ddpg" + name.removeprefix("gddpg")
        if (
            ddpg_name in results
            and name != ddpg_name
            and results[ddpg_name]["entry"]["algo"] == "ddpg"
            and _same_conditions(results, name, ddpg_name)
        ):
            gains[f"{name} vs {ddpg_name}"] = relative_gain(
                gddpg_qoe, results[ddpg_name]["per_seed"]["ddpg"]["qoe"]
            )
        for baseline in BASELINE_NAMES:
            gains[f"{name} vs {baseline}"] = relative_gain(
                gddpg_qoe, result["per_seed"][baseline]["qoe"]
            )
    return gains


def _run_conditions(name: str, result: dict) -> tuple:
    """Return what must match for two entries' QoE to be compared.

    That is the seeds, the budget, the config file, then the --set overrides and the
    environment data digest, each None when unknown. The entries' own overrides may differ,
    because they are the compared change.
    """
    # The --set overrides are known only for an entry of STUDY_ENTRIES, because only there
    # the entry's own overrides are known. An entry file under another name matches any.
    known = name in STUDY_ENTRIES and result.get("budget") in BUDGETS
    return (
        result["seeds"],
        result.get("budget"),
        Path(str(result.get("config_path"))).name,
        _extra_overrides(name, result) if known else None,
        _signature_field(result["baseline_signature"], "data"),
    )


def _same_conditions(results: dict, first: str, second: str) -> bool:
    *first_fixed, first_extra, first_data = _run_conditions(first, results[first])
    *second_fixed, second_extra, second_data = _run_conditions(second, results[second])
    if first_fixed != second_fixed:
        return False
    # An entry file written before baseline signatures recorded `data=` has no digest. A
    # resumed study keeps such files beside newer ones, so only two recorded values can differ.
    return all(
        first_value is None or second_value is None or first_value == second_value
        for first_value, second_value in ((first_extra, second_extra), (first_data, second_data))
    )


def _markdown_tables(results: dict, summary: dict, gains: dict) -> str:
    """Format every entry's metrics (mean [95% CI] over seeds) and the gains as Markdown."""
    columns = ("qoe", "reward", "energy_per_image_j", "latency_s", "quality", "shared_steps")
    lines = [
        "| entry | method | seeds | env steps | " + " | ".join(columns) + " |",
        "|---" * (4 + len(columns)) + "|",
    ]
    for name, result in results.items():
        for method, metrics in summary[name].items():
            cells = [
                f"{metrics[column]['mean']:.3f} [{metrics[column]['low']:.3f}, "
                f"{metrics[column]['high']:.3f}]"
                for column in columns
            ]
            lines.append(
                f"| {name} | {method} | {len(result['seeds'])} | {result['total_env_steps']} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "Entries run with other seeds, budget, config file, --set overrides or environment "
        "data are not compared.",
        "",
        "| comparison | relative QoE gain | 95% bootstrap CI |",
        "|---|---|---|",
    ]
    for comparison, gain in gains.items():
        lines.append(
            f"| {comparison} | {100 * gain['gain']:+.1f}% | "
            f"[{100 * gain['low']:+.1f}%, {100 * gain['high']:+.1f}%] |"
        )
    lines += [
        "",
        "| entry | compile s | train s | eval s | updates per seed |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(
            f"| {name} | {result['compile_s']:.0f} | {result['train_s']:.0f} | "
            f"{result['eval_s']:.0f} | {result['num_updates']} |"
        )
    lines += ["", "| entry | config | budget | --set overrides |", "|---|---|---|---|"]
    for name, result in results.items():
        lines.append(
            f"| {name} | {result.get('config_path')} | {result.get('budget')} | "
            f"{_extra_overrides(name, result)} |"
        )
    return "\n".join(lines) + "\n"


def _extra_overrides(name: str, result: dict) -> str:
    """Return the overrides an entry ran with beyond its budget's and its own, as text."""
    overrides = list(result.get("overrides", []))
    if name in STUDY_ENTRIES and result.get("budget") in BUDGETS:
        standard = study_overrides(STUDY_ENTRIES[name], result["budget"])
        if overrides[: len(standard)] == standard:
            extra = overrides[len(standard) :]
            return ", ".join(f"`{item}`" for item in extra) if extra else "none"
    return "all: " + ", ".join(f"`{item}`" for item in overrides)


def _plot_curves(results: dict, out: Path) -> None:
    """Training QoE per chunk (exploration noise on): mean over seeds and a 95% t band."""
    groups = sorted({result["entry"]["group"] for result in results.values()})
    for group in groups:
        figure, axis = plt.subplots(figsize=(6, 4))
        for result in results.values():
            if result["entry"]["group"] != group:
                continue
            curves = np.asarray(result["curves"]["qoe"])  # [num_seeds, num_chunks]
            steps = np.asarray(result["curve_env_steps"])
            intervals = [mean_interval(curves[:, index]) for index in range(curves.shape[1])]
            mean = np.array([interval["mean"] for interval in intervals])
            axis.plot(steps, mean, label=result["entry"]["label"])
            if curves.shape[0] > 1:
                low = np.array([interval["low"] for interval in intervals])
                high = np.array([interval["high"] for interval in intervals])
                axis.fill_between(steps, low, high, alpha=0.25)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("training QoE (MOS, with exploration noise)")
        axis.set_title(f"learning curves: {group}")
        axis.legend(fontsize=8)
        figure.tight_layout()
        save_figure_atomic(figure, out / f"curves_{group}.png", dpi=120)
        plt.close(figure)


def _plot_bars(results: dict, summary: dict, path: Path) -> None:
    """Evaluation QoE of every learner entry and of the baselines on the main environment."""
    labels, means, errors = [], [], []
    for name, result in results.items():
        method = result["entry"]["algo"]
        interval = summary[name][method]["qoe"]
        labels.append(result["entry"]["label"])
        means.append(interval["mean"])
        errors.append(_half_width(interval))
    main_names = [name for name in ("gddpg", "ddpg") if name in results]
    if main_names:
        main_name = main_names[0]
        for baseline in BASELINE_NAMES:
            interval = summary[main_name][baseline]["qoe"]
            labels.append(baseline)
            means.append(interval["mean"])
            errors.append(_half_width(interval))
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(labels)), 4))
    axis.bar(range(len(labels)), means, yerr=errors, capsize=3, color="tab:blue")
    axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("evaluation QoE (MOS), 95% CI")
    lowest = min(means) - max(errors + [0.0]) - 0.1
    axis.set_ylim(max(1.0, lowest), None)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def _plot_energy_qoe(results: dict, summary: dict, path: Path) -> None:
    """Energy per image against QoE for every learner entry and every baseline, with 95% CIs."""
    figure, axis = plt.subplots(figsize=(7, 5))
    seen_baselines = set()
    for name, result in results.items():
        methods = [result["entry"]["algo"]]
        signature = result["baseline_signature"]
        if signature not in seen_baselines:
            seen_baselines.add(signature)
            methods += list(BASELINE_NAMES)
        for method in methods:
            energy = summary[name][method]["energy_per_image_j"]
            qoe = summary[name][method]["qoe"]
            label = result["entry"]["label"] if method == result["entry"]["algo"] else method
            if method in BASELINE_NAMES and name not in ("gddpg", "ddpg"):
                label = f"{method} ({_setting_label(result['entry'])})"
            marker = "o" if method == result["entry"]["algo"] else "x"
            axis.errorbar(
                energy["mean"],
                qoe["mean"],
                xerr=_half_width(energy),
                yerr=_half_width(qoe),
                fmt=marker,
                capsize=2,
            )
            axis.annotate(label, (energy["mean"], qoe["mean"]), fontsize=6)
    axis.set_xlabel("energy per image (J)")
    axis.set_ylabel("evaluation QoE (MOS)")
    axis.set_title("energy-QoE trade-off (mean and 95% CI over seeds)")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def _setting_label(entry: dict) -> str:
    """Return the setting part of an entry's label ("N=4" of "DDPG N=4"), else its group."""
    _, separator, setting = entry["label"].partition(" ")
    return setting if separator and setting else entry["group"]


def _half_width(interval: dict) -> float:
    half = (interval["high"] - interval["low"]) / 2
    return 0.0 if np.isnan(half) else float(half)


if __name__ == "__main__":
    exit_process(main())
