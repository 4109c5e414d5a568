"""Train a DDPG or G-DDPG allocation policy on the diffusion service environment.

Examples:
    python scripts/train.py --num-envs 4096
    python scripts/train.py --config configs/quick.yaml --algo ddpg --out runs/quick
    python scripts/train.py --set hyper.actor_lr=3e-4 --set env.params.energy_weight=0.5
    python scripts/train.py --resume runs/gddpg-seed0

On several devices or hosts one run splits its environments over all of them. For several
hosts, start the same command on each with --coordinator, --num-processes and its own
--process-id, and an --out directory on a file system that every host shares (docs/scaling.md).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
from tqdm import tqdm

from rlli_jax.cli import INTERRUPTED, exit_process
from rlli_jax.config import load_config
from rlli_jax.distributed import (
    add_distributed_arguments,
    describe_start,
    initialize_from_args,
)
from rlli_jax.outputs import check_output_folder
from rlli_jax.runner import CONFIG_NAME, NonFiniteError, load_run_config, run_training

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help=f"YAML config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--algo", choices=("ddpg", "gddpg"), help="sets agent.algo")
    parser.add_argument("--num-envs", type=int, help="sets train.num_envs, parallel environments")
    parser.add_argument(
        "--total-env-steps", type=int, help="sets train.total_env_steps, over all environments"
    )
    parser.add_argument("--seed", type=int, help="sets train.seed")
    parser.add_argument("--out", help="run directory (default: runs/<algo>-seed<seed>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. hyper.actor_lr=1e-4",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its newest checkpoint, with its saved config",
    )
    add_distributed_arguments(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    overrides = list(args.set)
    set_keys = {text.split("=", 1)[0].strip() for text in args.set}
    for flag, key in (
        ("algo", "agent.algo"),
        ("num_envs", "train.num_envs"),
        ("total_env_steps", "train.total_env_steps"),
        ("seed", "train.seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            if key in set_keys:
                option = "--" + flag.replace("_", "-")
                raise ValueError(f"{option} and --set {key}=... both set {key}: use one of them")
            overrides.append(f"{key}={value}")
    if args.resume:
        conflicting = [
            option
            for option, value in (
                ("--config", args.config),
                ("--out", args.out),
                ("--set", args.set or None),
                ("--algo", args.algo),
                ("--num-envs", args.num_envs),
                ("--total-env-steps", args.total_env_steps),
                ("--seed", args.seed),
            )
            if value is not None
        ]
        if conflicting:
            raise ValueError(
                f"--resume continues a run with its saved config; do not combine it with "
                f"{', '.join(conflicting)}; start a new run with --out to change a setting"
            )
        return load_run_config(args.resume)
    if args.out is not None:
        args.out = str(check_output_folder(args.out))
    return load_config(args.config or DEFAULT_CONFIG, overrides)


def print_start(setup) -> None:
    print(describe_start(setup), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
        initialize_from_args(args, on_start=print_start)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(args.resume or args.out or f"runs/{config.agent.algo}-seed{config.train.seed}")
    # In a multi-process run every process trains its share of the environments; process 0
    # alone reports and writes results.
    primary = jax.process_index() == 0

    progress = tqdm(
        total=config.train.num_chunks * config.train.env_steps_per_chunk,
        unit="step",
        unit_scale=True,
        disable=not (config.logging.progress_bar and primary),
        desc=config.agent.algo,
    )

    def on_chunk(chunk):
        progress.n = chunk.env_steps
        progress.set_postfix(
            steps_per_s=f"{chunk.env_steps_per_s:.0f}",
            reward=f"{chunk.metrics['reward']:.3f}",
            qoe=f"{chunk.metrics['qoe']:.3f}",
        )
        progress.refresh()

    if primary:
        devices = f"{jax.device_count()} visible devices in {jax.process_count()} process(es)"
        print(f"run directory: {run_dir}; {devices}", file=sys.stderr)
    start = time.perf_counter()
    try:
        summary = run_training(config, run_dir, resume=bool(args.resume), on_chunk=on_chunk)
    except (ValueError, NonFiniteError, OSError) as error:
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        if (run_dir / CONFIG_NAME).exists():
            hint = f"continue from the newest checkpoint with --resume {run_dir}"
        else:
            hint = "the run had not started, so nothing was written"
        print(f"interrupted: {hint}", file=sys.stderr)
        return INTERRUPTED
    progress.close()
    summary.pop("final_state")
    summary["wall_s"] = time.perf_counter() - start
    if primary:
        print(json.dumps(_brief(summary), indent=2))
    return 0


def _brief(summary: dict) -> dict:
    """Return the headline numbers of a summary: timings and mean QoE per policy."""
    names = ("algo", "env_steps", "num_devices", "num_processes", "compile_s", "train_s", "wall_s")
    brief = {k: summary[k] for k in names}
    brief["env_steps_per_s"] = summary["env_steps_per_s"]
    evaluation = summary.get("evaluation")
    if evaluation:
        brief["qoe"] = {"policy": evaluation["policy"]["qoe"]}
        brief["reward"] = {"policy": evaluation["policy"]["reward"]}
        for name, result in evaluation["baselines"].items():
            brief["qoe"][name] = result["qoe"]
            brief["reward"][name] = result["reward"]
    return brief


if __name__ == "__main__":
    exit_process(main())
