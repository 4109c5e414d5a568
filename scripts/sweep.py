"""Run a sweep of seeds x hyperparameters, one compiled program per static combination.

Examples:
    python scripts/sweep.py --config configs/sweep_cpu.yaml --out runs/sweep-cpu
    python scripts/sweep.py --config configs/sweep_lr.yaml --dry-run
    python scripts/sweep.py --config configs/sweep_lr.yaml --out /shared/runs/lr \\
        --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0

Rerunning the same command continues an interrupted sweep from its checkpoints. Writes, in the
output directory: results.csv (one row per member), summary.json, sweep.png, and the
per-member learning curves under members/. In a multi-host run only process 0 writes them.
"""

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from rlli_jax.cli import INTERRUPTED, command_line, exit_process
from rlli_jax.distributed import (
    add_distributed_arguments,
    describe_start,
    initialize_from_args,
)
from rlli_jax.outputs import (
    check_output_folder,
    save_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="sweep YAML file")
    parser.add_argument(
        "--out", help="output directory, reused to resume (default: runs/sweep-<config name>)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the sweep, print its groups and memory estimate, and exit",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        help="points shown in the ranked table, >= 1 (default: 20)",
    )
    add_distributed_arguments(parser)
    return parser.parse_args(argv)


def print_start(setup) -> None:
    print(describe_start(setup), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.top < 1:
        print(f"error: invalid --top = {args.top}: must be >= 1", file=sys.stderr)
        return 2
    try:
        setup = initialize_from_args(args, on_start=print_start)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Imported after the distributed start-up; these modules create no arrays at import.
    import jax

    from rlli_jax.population import run_sweep
    from rlli_jax.sweep import check_sweep_memory, load_sweep_config, plan_sweep

    primary = jax.process_index() == 0
    try:
        if args.out is not None:
            args.out = str(check_output_folder(args.out))
        sweep = load_sweep_config(args.config)
        plan = plan_sweep(sweep)
        devices = jax.devices()
        estimates = check_sweep_memory(plan, len(devices))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out if args.out is not None else f"runs/sweep-{Path(args.config).stem}")

    if primary:
        _print_plan(plan, estimates, devices, setup)
    if args.dry_run:
        return 0

    def on_event(event):
        if primary:
            _print_event(event)

    try:
        result = run_sweep(plan, out_dir, on_event=on_event)
        if primary:
            _write_results(result, plan, out_dir, len(devices), args.top)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again to continue from the newest checkpoints "
            f"in {out_dir}: {command_line(argv, __file__)}",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0


def _write_results(result, plan, out_dir: Path, num_devices: int, top: int) -> None:
    """Write results.csv, summary.json and sweep.png, and print the ranking and the totals."""
    import jax

    from rlli_jax.population import rank_points, results_table

    sweep = plan.sweep
    rows = results_table(result, plan)
    _write_csv(out_dir / "results.csv", rows)
    points = rank_points(rows, sweep.swept_keys, sweep.metric, sweep.goal)
    summary = {
        "members": len(rows),
        "failed": sum(row["status"] != "ok" for row in rows),
        "programs": plan.num_programs,
        "compiles": result.compiles,
        "groups_run": result.groups_run,
        "groups_skipped": result.groups_skipped,
        "devices": num_devices,
        "processes": jax.process_count(),
        "wall_s": result.wall_s,
        "metric": sweep.metric,
        "goal": sweep.goal,
        "ranking": points,
    }
    write_json_atomic(out_dir / "summary.json", summary, default=str)
    _plot(out_dir / "sweep.png", rows, sweep)
    _print_ranking(points, sweep, top)
    print(
        f"{len(rows)} members ({summary['failed']} failed) in {plan.num_programs} programs; "
        f"compiled chunk programs this run: {result.compiles['run_chunk']}; "
        f"wall time {result.wall_s:.1f} s; results in {out_dir}",
        file=sys.stderr,
    )


def _print_plan(plan, estimates, devices, setup) -> None:
    sweep = plan.sweep
    print(
        f"sweep: {len(plan.members)} members ({sweep.num_seeds} seeds) in "
        f"{plan.num_programs} compiled programs on {len(devices)} devices "
        f"({setup.num_processes} processes)",
        file=sys.stderr,
    )
    for group, estimate in zip(plan.groups, estimates, strict=True):
        static = ", ".join(f"{key}={value}" for key, value in group.static_values) or "base"
        member = estimate.member
        print(
            f"  {group.name}: {group.size} members [{static}]; per member "
            f"{member.total_bytes / 2**20:.2f} MiB (replay {member.replay_bytes / 2**20:.2f}, "
            f"params {member.params_bytes / 2**20:.2f}, targets "
            f"{member.target_params_bytes / 2**20:.2f}, Adam {member.optimizer_bytes / 2**20:.2f}"
            f"); per device {estimate.bytes_per_device / 2**20:.1f} MiB",
            file=sys.stderr,
        )


def _print_event(event) -> None:
    prefix = f"[group {event.group + 1}/{event.num_groups}]"
    if event.kind == "group_skipped":
        print(f"{prefix} finished earlier, skipped", file=sys.stderr)
    elif event.kind == "group_start":
        print(
            f"{prefix} {event.members} members, compiled in {event.seconds:.1f} s", file=sys.stderr
        )
    elif event.kind == "chunk":
        print(
            f"{prefix} chunk {event.chunk}/{event.num_chunks}: "
            f"{event.env_steps_per_s:,.0f} env steps/s, {event.failed} failed",
            file=sys.stderr,
        )
    elif event.kind == "group_done":
        print(f"{prefix} done in {event.seconds:.1f} s", file=sys.stderr)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = []
    for row in rows:
        fields.extend(name for name in row if name not in fields)
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    write_text_atomic(path, stream.getvalue())


def _cell(value):
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else value


def _print_ranking(points, sweep, top: int) -> None:
    keys = sweep.swept_keys
    header = ["rank", *keys, f"{sweep.metric} mean", "std", "ok/n", "best baseline"]
    table = []
    for rank, point in enumerate(points[:top], start=1):
        baselines = point["baselines"]
        if baselines:
            pick = max if sweep.goal == "max" else min
            name = pick(baselines, key=baselines.get)
            best = f"{name} {baselines[name]:.4g}"
        else:
            best = "-"
        table.append(
            [str(rank)]
            + [_format_value(point["values"][key]) for key in keys]
            + [_format_score(point, point["mean"]), _format_score(point, point["std"])]
            + [f"{point['finished']}/{point['members']}", best]
        )
    widths = [max(len(header[i]), *(len(row[i]) for row in table)) for i in range(len(header))]
    print("  ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if len(points) > top:
        print(f"... {len(points) - top} more points in summary.json")


def _format_value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _format_score(point: dict, value: float) -> str:
    """Format a point's mean or std. Finished members have no score when they were not
    evaluated (train.eval_episodes 0) or their evaluation is not finite."""
    if math.isfinite(value):
        return f"{value:.4g}"
    return "n/a" if point["finished"] else "failed"


def _plot(path: Path, rows: list[dict], sweep) -> None:
    """Plot the metric against each swept key: one dot per member, mean and seed std per line.

    A line joins the points that share the values of every other swept key.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A key swept over a single value has nothing to show.
    keys = [key for key in sweep.swept_keys if len({repr(row.get(key)) for row in rows}) > 1]
    keys = keys or ["seed"]
    column = f"eval_{sweep.metric}"
    finished = [row for row in rows if row["status"] == "ok" and column in row]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        others = [other for other in keys if other != key]
        lines: dict[tuple, dict] = {}
        for row in finished:
            label = tuple((other, _format_value(row.get(other))) for other in others)
            lines.setdefault(label, {}).setdefault(_format_value(row.get(key)), []).append(row)
        order = _axis_order(finished, key)
        positions = {value: index for index, value in enumerate(order)}
        for label, by_value in list(lines.items())[:12]:
            xs = [value for value in order if value in by_value]
            scores = [[row[column] for row in by_value[value]] for value in xs]
            means = [sum(s) / len(s) for s in scores]
            stds = [_std(s) for s in scores]
            x = [positions[value] for value in xs]
            name = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in label) or sweep.metric
            line = axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=name)
            for position, values in zip(x, scores, strict=True):
                axis.scatter([position] * len(values), values, s=8, alpha=0.4,
                             color=line[0].get_color())  # fmt: skip
        axis.set_xticks(range(len(order)), order, rotation=30)
        axis.set_xlabel(key)
        axis.set_ylabel(f"{sweep.metric} (final evaluation)")
        if len(lines) > 1:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle("dots: members; bars: mean and std over seeds")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def _axis_order(rows: list[dict], key: str) -> list[str]:
    values = {}
    for row in rows:
        value = row.get(key)
        values[_format_value(value)] = value
    try:
        return sorted(values, key=lambda text: values[text])
    except TypeError:
        return sorted(values)


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


if __name__ == "__main__":
    exit_process(main())
