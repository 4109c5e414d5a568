"""Plot the learning curves of one or more training runs into one PNG.

Example:
    python scripts/plot.py runs/ddpg-seed0 runs/gddpg-seed0 --out curves.png
"""

import argparse
import sys
from pathlib import Path

from rlli_jax.metrics import JSONL_NAME, plot_learning_curves


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
    plot_learning_curves(args.runs, args.out, tuple(args.metrics))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
