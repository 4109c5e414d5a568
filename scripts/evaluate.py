"""Re-evaluate the newest checkpoint of a training run, and the baselines on the same episodes.

Example:
    python scripts/evaluate.py --run runs/gddpg-seed0 --episodes 1024

Exit status: 0 on success, 2 for an invalid option or a directory that contains no readable run
or checkpoint, 1 when the result was printed but --out could not be written.
"""

import argparse
import json
import sys
from pathlib import Path

from rlli_jax.config import Config, apply_overrides, check_seed
from rlli_jax.outputs import check_output_file, write_text_atomic
from rlli_jax.runner import (
    check_not_a_run_file,
    evaluate_run,
    load_run_config,
    load_trained_run,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    parser.add_argument(
        "--episodes", type=int, help="episodes to evaluate (default: the run's eval_episodes)"
    )
    parser.add_argument("--seed", type=int, help="evaluation seed (default: the run's seed)")
    parser.add_argument("--out", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)

    try:
        if args.seed is not None:
            check_seed(args.seed, "--seed")
        out = check_output_file(args.out) if args.out is not None else None
        if out is not None:
            check_not_a_run_file(out, Path(args.run), example="eval.json")
        if args.episodes is not None and args.episodes < 1:
            raise ValueError(f"--episodes = {args.episodes} is invalid: it must be >= 1")
        config = load_run_config(args.run)
        if args.episodes is not None:
            overrides = [f"train.eval_episodes={args.episodes}"]
            config = Config.from_dict(apply_overrides(config.to_dict(), overrides))
        if config.train.eval_episodes < 1:
            raise ValueError(
                f"train.eval_episodes = 0 in {Path(args.run) / 'config.yaml'}: the run has no "
                "evaluation episodes; pass --episodes N with N >= 1"
            )
        run = load_trained_run(args.run, config)
        # The checkpoint module logs each checkpoint it skips; the result lists them too.
        state, metadata = run.state, run.metadata
        seed = config.train.seed if args.seed is None else args.seed
        result = evaluate_run(run.program, state.agent, seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["run"] = str(args.run)
    result["seed"] = seed
    result["checkpoint_chunk"] = metadata["chunk"]
    result["env_steps"] = metadata["env_steps"]
    result["skipped_checkpoints"] = metadata["skipped_checkpoints"]
    text = json.dumps(result, indent=2)
    print(text)  # before writing --out, so a failed write loses no result
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, text + "\n")
        except OSError as error:
            print(f"error: could not write --out {out}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
