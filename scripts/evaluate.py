"""Re-evaluate the newest checkpoint of a training run, and the baselines on the same episodes.

Example:
    python scripts/evaluate.py --run runs/gddpg-seed0 --episodes 1024
"""

import argparse
import json
import sys
from pathlib import Path

from rlli_jax.checkpoint import Checkpointer
from rlli_jax.runner import CHECKPOINT_DIR, evaluate_run, load_run_config, restore_train_state
from rlli_jax.train import make_train


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
        overrides = []
        if args.episodes is not None:
            overrides.append(f"train.eval_episodes={args.episodes}")
        config = load_run_config(args.run)
        if overrides:
            from rlli_jax.config import Config, apply_overrides

            config = Config.from_dict(apply_overrides(config.to_dict(), overrides))
        if config.train.eval_episodes < 1:
            raise ValueError("eval_episodes is 0; pass --episodes N with N >= 1")
        program = make_train(config, check_memory=False)
        checkpointer = Checkpointer(f"{args.run}/{CHECKPOINT_DIR}")
        restored = restore_train_state(program, checkpointer)
        if restored is None:
            raise ValueError(f"no checkpoint found in {args.run}/{CHECKPOINT_DIR}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state, metadata = restored
    for step, message in metadata["skipped_checkpoints"]:
        print(f"warning: checkpoint {step} could not be restored: {message}", file=sys.stderr)

    seed = config.train.seed if args.seed is None else args.seed
    result = evaluate_run(program, state.agent, seed)
    result["checkpoint_chunk"] = metadata["chunk"]
    result["env_steps"] = metadata["env_steps"]
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as stream:
            stream.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
