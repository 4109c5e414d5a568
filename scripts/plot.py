"""Plot the learning curves of one or more training runs into one PNG.

Example:
    python scripts/plot.py runs/ddpg-seed0 runs/gddpg-seed0 --out curves.png

Exit status: 0 on success, 2 for an invalid option, a run without training rows in its
metrics.jsonl or an unknown --metrics name, 1 when --out could not be written.
"""

import argparse
import sys
from pathlib import Path

from rlli_jax.metrics import (
    JSONL_NAME,
    is_number,
    plot_learning_curves,
    read_metrics,
    unreadable_lines,
)
from rlli_jax.outputs import check_output_file
from rlli_jax.runner import check_not_a_run_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", default="curves.png", help="output PNG (default: curves.png)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["episode_return", "qoe", "critic_loss", "actor_loss"],
        help="metric names, one panel each",
    )
    args = parser.parse_args(argv)
    missing = [run for run in args.runs if not (Path(run) / JSONL_NAME).is_file()]
    if missing:
        print(f"error: no {JSONL_NAME} in {missing}", file=sys.stderr)
        return 2
    try:
        out = check_output_file(args.out, suffix=".png")
        for run in args.runs:
            check_not_a_run_file(out, Path(run), example="plot.png")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    known = set()
    for run in args.runs:
        skipped = unreadable_lines(run)
        if skipped:
            print(
                f"warning: skipped {len(skipped)} unreadable lines of "
                f"{Path(run) / JSONL_NAME} (line numbers {skipped[:10]})",
                file=sys.stderr,
            )
        rows = read_metrics(run)
        if not rows:
            print(
                f"error: {Path(run) / JSONL_NAME} has no training rows yet; a run writes its "
                "first row after its first chunk",
                file=sys.stderr,
            )
            return 2
        for row in rows:
            known.update(name for name, value in row.items() if is_number(value))
    known.discard("env_step")  # the x axis of every panel
    unknown = [name for name in args.metrics if name not in known]
    if unknown:
        print(
            f"error: --metrics {unknown} not found in the runs' metrics; known names: "
            f"{sorted(known)}",
            file=sys.stderr,
        )
        return 2
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_learning_curves(args.runs, out, tuple(args.metrics))
    except OSError as error:
        print(f"error: could not write --out {args.out}: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
