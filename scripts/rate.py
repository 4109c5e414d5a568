"""Collect persona ratings of sampled service outcomes and append them to a JSONL file.

Examples:
    python scripts/rate.py --backend simulator --num 24000 --out ratings_simulated.jsonl
    python scripts/rate.py --backend openai --base-url http://127.0.0.1:8080/v1 \\
        --model gemma-3-270m --num 300 --out ratings_gemma.jsonl --concurrency 2

Requests 0 .. num-1 are fixed by --seed; a re-run with the same arguments skips the request ids
already in --out and sends only the rest. The settings that define the requests and the rater
are stored in OUT.settings.json, and a re-run with other settings is rejected before sending
anything. Failed requests are skipped too unless --retry-failed is given, and requests whose
reply held no valid rating unless --retry-unparsable is given (asking again until a reply
parses biases the ratings toward the replies that parse).

A Ctrl-C stops sending: the requests in flight finish their current attempt and are stored,
and a second Ctrl-C drops them (the next run sends them again). Only one run at a time may
append to --out.

Exit status: 0 on success, 1 when requests were sent and none of them got a rating or --out
could not be written, 2 on invalid arguments, 130 when interrupted.
"""

import argparse
import logging
import re
import sys
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rlli_jax.cli import INTERRUPTED, exit_process
from rlli_jax.config import check_seed
from rlli_jax.env.prompts import load_prompt_bank
from rlli_jax.qoe.collect import (
    OutcomeRanges,
    collect_ratings,
    collection_settings,
    lock_ratings_file,
    prepare_ratings_file,
    request_id,
    sample_requests,
)
from rlli_jax.qoe.openai_rater import RESPONSE_FORMATS
from rlli_jax.qoe.raters import BACKENDS, make_rater

# Requests sampled and handed to the rater at a time.
CHUNK_SIZE = 256
# Command-line options of the fields named in the rater's and the ranges' error messages.
OPTION_OF_FIELD = {
    "base_url": "--base-url",
    "model": "--model",
    "timeout_s": "--timeout",
    "max_retries": "--max-retries",
    "concurrency": "--concurrency",
    "temperature": "--temperature",
    "max_tokens": "--max-tokens",
    "min_quality": "--min-quality",
    "max_quality": "--max-quality",
    "min_latency_s": "--min-latency",
    "max_latency_s": "--max-latency",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True, help="rater backend")
    parser.add_argument("--num", type=int, required=True, help="number of requests in the run")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to append to")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sampled requests (default: %(default)s)"
    )
    parser.add_argument(
        "--base-url", help="openai: server URL including /v1, e.g. http://127.0.0.1:8080/v1"
    )
    parser.add_argument("--model", help="openai: model name sent with each request")
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="openai: environment variable with the API key, none sent when it is unset "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="openai: maximum requests in flight (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="openai: seconds to wait for the connection and for each read or write of a request "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=4,
        help=(
            "openai: retries after a 429, 500, 502, 503 or 504 response, a timeout or a "
            "connection error (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="openai: sampling temperature (default: %(default)s)",
    )
    parser.add_argument(
        "--response-format",
        choices=RESPONSE_FORMATS,
        default="json_object",
        help="openai: structured-output request; llama_schema constrains llama-cpp-python's "
        'server to {"rating": 1-5}, none is for servers that reject the field (default: '
        "%(default)s)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="openai: maximum tokens the model may generate per rating (default: %(default)s)",
    )
    parser.add_argument(
        "--merge-system-message",
        action="store_true",
        help="openai: put the system text into the user message (for Gemma chat templates)",
    )
    parser.add_argument(
        "--min-quality",
        type=float,
        default=OutcomeRanges.min_quality,
        help="lower bound of the uniformly sampled image quality, in [0, 1] "
        f"(default: {OutcomeRanges.min_quality:g})",
    )
    parser.add_argument(
        "--max-quality",
        type=float,
        default=OutcomeRanges.max_quality,
        help="upper bound of the uniformly sampled image quality, in [0, 1] "
        f"(default: {OutcomeRanges.max_quality:g})",
    )
    parser.add_argument(
        "--min-latency",
        type=float,
        default=OutcomeRanges.min_latency_s,
        help="lower bound of the log-uniformly sampled waiting time, in seconds "
        f"(default: {OutcomeRanges.min_latency_s:g})",
    )
    parser.add_argument(
        "--max-latency",
        type=float,
        default=OutcomeRanges.max_latency_s,
        help="upper bound of the log-uniformly sampled waiting time, in seconds "
        f"(default: {OutcomeRanges.max_latency_s:g})",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="send the requests stored as failed in --out again (HTTP and connection errors, "
        "timeouts, bodies that cannot be decoded or are not chat completions); their old "
        "records are kept",
    )
    parser.add_argument(
        "--retry-unparsable",
        action="store_true",
        help="send the requests whose stored reply held no valid rating again; this biases the "
        "ratings toward the replies that parse",
    )
    parser.add_argument("--verbose", action="store_true", help="log every retry and failure")
    return parser.parse_args(argv)


def with_option_names(error: ValueError) -> ValueError:
    """Return `error` with the field names of OPTION_OF_FIELD replaced by their options."""
    pattern = r"\b(" + "|".join(OPTION_OF_FIELD) + r")\b"
    return ValueError(re.sub(pattern, lambda match: OPTION_OF_FIELD[match[1]], str(error)))


def build_rater(args: argparse.Namespace):
    if args.backend == "simulator":
        return make_rater("simulator", seed=args.seed)
    if not args.base_url or not args.model:
        raise ValueError("--base-url and --model are required with --backend openai")
    return make_rater(
        "openai",
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        temperature=args.temperature,
        response_format=args.response_format,
        max_tokens=args.max_tokens,
        merge_system_message=args.merge_system_message,
    )


def rater_options(args: argparse.Namespace) -> dict:
    """Return the backend options that change the ratings, stored with the collection settings."""
    if args.backend != "openai":
        return {}
    return {
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "response_format": args.response_format,
        "merge_system_message": args.merge_system_message,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    check_seed(args.seed, "--seed")
    try:
        ranges = OutcomeRanges(
            min_quality=args.min_quality,
            max_quality=args.max_quality,
            min_latency_s=args.min_latency,
            max_latency_s=args.max_latency,
        )
        rater = build_rater(args)
    except ValueError as error:
        raise with_option_names(error) from None
    prompt_texts = load_prompt_bank().texts

    settings = collection_settings(args.seed, ranges, prompt_texts, rater, rater_options(args))
    with lock_ratings_file(args.out):
        return collect(args, ranges, rater, prompt_texts, settings)


def collect(args, ranges, rater, prompt_texts, settings) -> int:
    """Send the requests of the run that --out does not contain yet, and print the counts."""
    statuses = prepare_ratings_file(args.out, settings)
    run_statuses = [statuses.get(request_id(args.seed, index)) for index in range(args.num)]
    skipped_statuses = {"ok"}
    if not args.retry_failed:
        skipped_statuses.add("failed")
    if not args.retry_unparsable:
        skipped_statuses.add("unparsable")
    pending = [index for index, status in enumerate(run_statuses) if status not in skipped_statuses]
    num_done = args.num - len(pending)
    num_stored_failures = 0 if args.retry_failed else run_statuses.count("failed")
    num_stored_unparsable = 0 if args.retry_unparsable else run_statuses.count("unparsable")
    counts = {"ok": 0, "failed": 0}

    def count_result(result) -> None:
        counts["ok" if result.ok else "failed"] += 1
        progress.update(1)
        progress.set_postfix(failed=counts["failed"], refresh=False)

    progress = tqdm(total=args.num, initial=num_done, unit="rating", desc=args.backend)
    try:
        with progress, logging_redirect_tqdm():
            for start in range(0, len(pending), CHUNK_SIZE):
                requests = sample_requests(
                    args.seed, pending[start : start + CHUNK_SIZE], prompt_texts, ranges
                )
                collect_ratings(rater, requests, args.out, on_result=count_result)
    except KeyboardInterrupt:
        num_left = len(pending) - counts["ok"] - counts["failed"]
        # The requests in flight may have been the last ones, and then the run is complete.
        if num_left > 0:
            print(
                f"interrupted: {counts['ok']} new ratings and {counts['failed']} new failures "
                f"were stored in {args.out}; run the same command again to send the other "
                f"{num_left} requests",
                file=sys.stderr,
            )
            return INTERRUPTED
    except OSError as error:
        print(
            f"error: could not append to {args.out}: {error.strerror or error}; the "
            f"{counts['ok'] + counts['failed']} records this run stored before it are kept. "
            "Fix the cause (free disk space, for example) and run the same command again.",
            file=sys.stderr,
        )
        return 1

    stored_failures = ""
    if num_stored_failures:
        stored_failures += (
            f", {num_stored_failures} of them stored as failures "
            "(pass --retry-failed to send them again)"
        )
    if num_stored_unparsable:
        stored_failures += (
            f", {num_stored_unparsable} of them stored as unparsable replies "
            "(--retry-unparsable sends them again, which biases the ratings)"
        )
    print(
        f"{args.out}: {counts['ok']} new ratings, {counts['failed']} new failures, "
        f"{num_done} requests already present (skipped){stored_failures}"
        + (" [simulated ratings]" if rater.simulated else "")
    )
    if pending and counts["ok"] == 0:
        print(
            f"error: all {len(pending)} requests failed; the error field of their records in "
            f"{args.out} says why (--verbose logs each failure)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        # Outside the sending loop (start-up, reading --out) nothing is half written: the
        # settings file is replaced atomically.
        print("interrupted: run the same command again to continue", file=sys.stderr)
        code = INTERRUPTED
    exit_process(code)
