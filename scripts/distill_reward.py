"""Distil a ratings file into the persona reward network and save an orbax checkpoint.

Example:
    python scripts/distill_reward.py --ratings ratings_simulated.jsonl --out runs/reward_net

Prints the validation metrics and writes them, with the config and the dataset hash, into the
checkpoint's metadata and into OUT/metrics.json.

Exit status: 0 on success, 2 for an invalid option or ratings file or a training run that
diverged, 1 when the checkpoint could not be written, 130 when interrupted before saving (a
Ctrl-C during training saves nothing).
"""

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from tqdm import tqdm

import rlli_jax
from rlli_jax.cli import INTERRUPTED, command_line, exit_process
from rlli_jax.config import check_seed
from rlli_jax.outputs import check_output_folder, write_json_atomic
from rlli_jax.qoe.dataset import load_ratings
from rlli_jax.qoe.distill import DistillConfig, TrainingDivergedError, distill
from rlli_jax.qoe.reward_net import check_checkpoint_destination, save_reward_net


def parse_hidden_sizes(text: str) -> tuple[int, ...]:
    """Parse --hidden-sizes, e.g. "64,64", into a tuple of positive ints."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected comma-separated positive integers, e.g. 64,64"
        )
    return sizes


def check_out_path(value: str, ratings: Path, overwrite: bool) -> Path:
    """Check that training can write --out without losing data, and return it as a Path with
    `~` expanded.

    Raises:
        ValueError: --out is, or contains, the --ratings file, it exists and is not a
            checkpoint that --overwrite may replace (see `check_checkpoint_destination`), or
            it cannot become a writable folder (see `check_output_folder`).
    """
    if not value.strip():
        # Path("") is the current folder, which the checks below would misreport.
        raise ValueError(f"--out = {value!r} is invalid: it must name a path")
    out = Path(value).expanduser()
    out_resolved = out.resolve()
    ratings_resolved = ratings.resolve()
    if ratings_resolved == out_resolved or out_resolved in ratings_resolved.parents:
        raise ValueError(
            f"--out {out} contains the --ratings file {ratings}; choose another output directory"
        )
    if out.is_dir() and not overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite to replace it")
    try:
        check_checkpoint_destination(out, overwrite)
    except ValueError as error:
        raise ValueError(f"invalid --out: {error}") from None
    return check_output_folder(value, "--out")


def parse_args(argv=None) -> argparse.Namespace:
    defaults = DistillConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=Path, required=True, help="JSONL or JSONL.gz file")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out, if it is an empty directory or a reward-net checkpoint",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on any invalid line instead of skipping it"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the train/validation split and the initialisation (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.max_epochs,
        help=f"maximum number of epochs (default: {defaults.max_epochs})",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help=(
            "epochs without a better validation loss before stopping "
            f"(default: {defaults.patience})"
        ),
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"ratings per AdamW step (default: {defaults.batch_size})",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help=f"AdamW learning rate (default: {defaults.learning_rate:g})",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help=f"AdamW weight decay (default: {defaults.weight_decay:g})",
    )
    hidden_sizes = ",".join(str(size) for size in defaults.hidden_sizes)
    parser.add_argument(
        "--hidden-sizes",
        type=parse_hidden_sizes,
        default=defaults.hidden_sizes,
        help=f"comma-separated hidden layer widths (default: {hidden_sizes})",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=defaults.validation_fraction,
        help=(
            "fraction of the ratings held out for early stopping and the reported metrics "
            f"(default: {defaults.validation_fraction:g})"
        ),
    )
    return parser.parse_args(argv)


# The command-line option of each DistillConfig field, for error messages.
OPTIONS = {
    "hidden_sizes": "--hidden-sizes",
    "learning_rate": "--learning-rate",
    "weight_decay": "--weight-decay",
    "batch_size": "--batch-size",
    "max_epochs": "--epochs",
    "patience": "--patience",
    "validation_fraction": "--validation-fraction",
    "seed": "--seed",
}


def _finite_or_none(metrics: dict) -> dict:
    """Return `metrics` with NaN and infinite floats as None, which JSON can hold."""
    return {
        name: None if isinstance(value, float) and not math.isfinite(value) else value
        for name, value in metrics.items()
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    check_seed(args.seed, "--seed")
    try:
        config = DistillConfig(
            hidden_sizes=args.hidden_sizes,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            max_epochs=args.epochs,
            patience=args.patience,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
        )
    except ValueError as error:
        field = str(error).split(" ", 1)[0]
        option = OPTIONS.get(field)
        raise ValueError(f"invalid {option}: {error}" if option else str(error)) from None
    out = check_out_path(args.out, args.ratings, args.overwrite)

    dataset = load_ratings(args.ratings, strict=args.strict)
    label = " (simulated)" if dataset.all_simulated else ""
    print(
        f"{args.ratings}: {dataset.num_ratings} ratings{label}, {dataset.num_failed} failed "
        f"requests, {len(dataset.bad_lines)} invalid lines skipped"
    )
    for bad in dataset.bad_lines[:10]:
        print(f"  line {bad.line_number}: {bad.reason}")

    with tqdm(total=config.max_epochs, unit="epoch", desc="distil") as progress:

        def show_epoch(epoch: int, losses: dict) -> None:
            progress.update(1)
            progress.set_postfix(
                train=f"{losses['train_loss']:.4f}",
                val=f"{losses['validation_loss']:.4f}",
                best=f"{losses['best_validation_loss']:.4f}",
                refresh=False,
            )

        try:
            result = distill(dataset, config, on_epoch=show_epoch)
        except TrainingDivergedError as error:
            lower = config.learning_rate / 10
            message = f"{error}, e.g. --learning-rate {lower:g}; nothing was saved"
            raise ValueError(message) from None
        except KeyboardInterrupt:
            # Distillation keeps no checkpoints, so the next run trains from the start.
            progress.close()
            print(
                "interrupted: nothing was saved; run the same command again to distil from "
                f"the start: {command_line(argv, __file__)}",
                file=sys.stderr,
            )
            return INTERRUPTED

    metadata = {
        "package_version": rlli_jax.__version__,
        "config": dataclasses.asdict(config),
        "dataset_file": args.ratings.name,
        "dataset_hash": dataset.dataset_hash,
        "dataset_num_ratings": dataset.num_ratings,
        "dataset_simulated": dataset.all_simulated,
        "dataset_raters": list(dataset.raters),
        "template_hashes": list(dataset.template_hashes),
        "best_epoch": result.best_epoch,
        "num_epochs": result.num_epochs,
        # A metric is NaN when it is undefined, such as a correlation over one rating.
        "validation_metrics": _finite_or_none(result.metrics),
    }
    try:
        path = save_reward_net(out, result.model, result.params, metadata, overwrite=args.overwrite)
        write_json_atomic(path / "metrics.json", metadata, allow_nan=False)
    except OSError as error:
        # A full disk or a folder made read-only during training, found only after it.
        print(f"error: failed to write --out {out}: {error}", file=sys.stderr)
        return 1

    print(f"best epoch {result.best_epoch} of {result.num_epochs}; validation{label}:")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    exit_process(code)
