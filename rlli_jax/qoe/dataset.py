"""Ratings datasets: the JSONL record schema, writing records, and a validating loader.

One JSON object per line (files ending in .gz are gzip-compressed):

    request_id        str    deterministic id of the request (see `collect.request_id`)
    status            str    "ok" or "failed"
    rating            int    1-5 when status is "ok"; null when "failed"
    traits            object the five Big Five traits by name, each a number in [0, 1]
    quality           number image quality in [0, 1]
    latency_s         number waiting time in seconds, > 0 and at most the float32 maximum
    prompt_id         int    index of the request text in the prompt bank, >= 0
    rater             object {"backend": str, "model": str}
    simulated         bool   true when the rating comes from the analytic simulator
    template_version  int    rating template version
    template_hash     str    SHA-256 of the rating template
    timestamp         str    ISO 8601 time (UTC) the rating was received
    error             str    why the request failed; null when "ok"
    raw_text          str    the rater's reply as received, or null (the simulator has none)

The dataset hash is the SHA-256 of the uncompressed file bytes, so a gzip copy hashes the same as
the plain file.
"""

import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rlli_jax.qoe.personas import TRAIT_NAMES
from rlli_jax.qoe.raters import Rater, RatingResult
from rlli_jax.qoe.template import MAX_RATING, MIN_RATING, TEMPLATE_VERSION, template_hash

STATUSES = ("ok", "failed")
REQUIRED_FIELDS = (
    "request_id",
    "status",
    "rating",
    "traits",
    "quality",
    "latency_s",
    "prompt_id",
    "rater",
    "simulated",
    "template_version",
    "template_hash",
    "timestamp",
)
# Bad lines listed in the message of a strict-mode error; the rest are only counted.
MAX_BAD_LINES_IN_ERROR = 10
# Largest valid prompt_id, because the loader stores prompt ids as int32.
MAX_PROMPT_ID = np.iinfo(np.int32).max
# Largest valid latency_s, because the loader stores latencies as float32, where a larger value
# becomes inf and turns the reward network's training loss into NaN.
MAX_LATENCY_S = float(np.finfo(np.float32).max)


def make_record(result: RatingResult, rater: Rater, timestamp: str | None = None) -> dict:
    """Build the JSONL record of one rating result."""
    if timestamp is None:
        timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    request = result.request
    return {
        "request_id": request.request_id,
        "status": "ok" if result.ok else "failed",
        "rating": result.rating if result.ok else None,
        "traits": dict(zip(TRAIT_NAMES, request.traits, strict=True)),
        "quality": request.quality,
        "latency_s": request.latency_s,
        "prompt_id": request.prompt_id,
        "rater": {"backend": rater.backend, "model": rater.model},
        "simulated": rater.simulated,
        "template_version": TEMPLATE_VERSION,
        "template_hash": template_hash(),
        "timestamp": timestamp,
        "error": result.error,
        "raw_text": result.raw_text,
    }


def open_text(path: Path):
    """Open a ratings file for reading as UTF-8 text, through gzip when its name ends in .gz.

    Line endings are kept as stored, so hashing the lines hashes the file's bytes.
    """
    # surrogateescape keeps undecodable bytes, so one bad byte spoils one line, not the file.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def append_records(path: str | Path, records: Iterable[dict]) -> None:
    """Append records to a plain JSONL file, one line each, flushing after each line."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, allow_nan=False) + "\n")
            stream.flush()


class RatingsFileError(ValueError):
    """A ratings file is missing, unreadable, or (in strict mode) contains invalid lines."""


@dataclasses.dataclass(frozen=True)
class BadLine:
    """An invalid line of a ratings file: its 1-based number and what is wrong with it."""

    line_number: int
    reason: str


@dataclasses.dataclass(frozen=True)
class RatingsDataset:
    """The successful ratings of a file as arrays, with counts of what was left out."""

    path: Path
    dataset_hash: str
    request_ids: tuple[str, ...]
    traits: np.ndarray  # [num_ratings, 5] float32
    quality: np.ndarray  # [num_ratings] float32
    latency_s: np.ndarray  # [num_ratings] float32
    prompt_ids: np.ndarray  # [num_ratings] int32
    ratings: np.ndarray  # [num_ratings] float32, integers 1-5
    simulated: np.ndarray  # [num_ratings] bool
    num_failed: int  # requests whose last valid record has status "failed"
    bad_lines: tuple[BadLine, ...]  # invalid lines that were skipped
    raters: tuple[str, ...]  # distinct "backend/model" names of the successful ratings
    template_hashes: tuple[str, ...]  # distinct template hashes of the successful ratings

    @property
    def num_ratings(self) -> int:
        return len(self.request_ids)

    @property
    def all_simulated(self) -> bool:
        return bool(self.num_ratings) and bool(np.all(self.simulated))


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(record: dict, field: str, low: float, high: float, low_open: bool = False):
    value = record[field]
    if not _is_number(value):
        raise ValueError(f"field {field!r} must be a number, got {value!r}")
    # JSON integers may have any number of digits, and math.isfinite raises OverflowError on one
    # too large for a float.
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise ValueError(
            f"field {field!r} must be finite, got an integer of {len(str(abs(value)))} digits"
        )
    if not math.isfinite(value):
        raise ValueError(f"field {field!r} must be finite, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"field {field!r} must be in {bracket}{low}, {high}], got {value!r}")


def validate_record(record) -> None:
    """Check one parsed line against the schema.

    Raises:
        ValueError: naming the field, its value and the rule it breaks.
    """
    if not isinstance(record, dict):
        raise ValueError(f"line must be a JSON object, got {type(record).__name__}")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}")

    for field in ("request_id", "template_hash", "timestamp"):
        if not isinstance(record[field], str) or not record[field]:
            raise ValueError(f"field {field!r} must be a non-empty string, got {record[field]!r}")
    if record["status"] not in STATUSES:
        raise ValueError(f"field 'status' must be one of {STATUSES}, got {record['status']!r}")
    if not isinstance(record["simulated"], bool):
        raise ValueError(f"field 'simulated' must be true or false, got {record['simulated']!r}")
    for field in ("prompt_id", "template_version"):
        value = record[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"field {field!r} must be an integer >= 0, got {value!r}")
    if record["prompt_id"] > MAX_PROMPT_ID:
        raise ValueError(
            f"field 'prompt_id' must be at most {MAX_PROMPT_ID}, got {record['prompt_id']!r}"
        )

    rater = record["rater"]
    if not (
        isinstance(rater, dict)
        and isinstance(rater.get("backend"), str)
        and isinstance(rater.get("model"), str)
    ):
        raise ValueError(f"field 'rater' must be {{'backend': str, 'model': str}}, got {rater!r}")

    traits = record["traits"]
    if not isinstance(traits, dict) or set(traits) != set(TRAIT_NAMES):
        keys = sorted(traits) if isinstance(traits, dict) else traits
        raise ValueError(f"field 'traits' must have exactly the keys {TRAIT_NAMES}, got {keys!r}")
    for name in TRAIT_NAMES:
        try:
            _check_number(traits, name, 0.0, 1.0)
        except ValueError as error:
            raise ValueError(f"in field 'traits': {error}") from None
    _check_number(record, "quality", 0.0, 1.0)
    _check_number(record, "latency_s", 0.0, MAX_LATENCY_S, low_open=True)

    rating = record["rating"]
    if record["status"] == "ok":
        if isinstance(rating, bool) or not isinstance(rating, int):
            raise ValueError(
                f"field 'rating' must be an integer when status is 'ok', got {rating!r}"
            )
        if not MIN_RATING <= rating <= MAX_RATING:
            raise ValueError(
                f"field 'rating' must be in [{MIN_RATING}, {MAX_RATING}], got {rating!r}"
            )
    elif rating is not None:
        raise ValueError(f"field 'rating' must be null when status is 'failed', got {rating!r}")


def parse_record_line(line: str) -> dict:
    """Parse one line of a ratings file read through `open_text`, and validate the record.

    Raises:
        ValueError: the line is not valid UTF-8, not JSON, or not a valid record. The message
            is the reason.
    """
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid UTF-8") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error}") from None
    except RecursionError:
        raise ValueError(
            "invalid record: JSON nested deeper than Python's recursion limit"
        ) from None
    validate_record(record)
    return record


def load_ratings(path: str | Path, strict: bool = False) -> RatingsDataset:
    """Load and validate a ratings file (plain or .gz JSONL).

    Every line is checked with `validate_record`. A request id may repeat only after failed
    records of it (retries), and a repeat after an "ok" record is invalid. By default invalid
    lines are skipped and listed in `bad_lines`; with `strict=True` any invalid line raises.
    Blank lines are ignored.

    Raises:
        RatingsFileError: the file is missing, a directory or unreadable, or strict mode found
            invalid lines.
    """
    path = Path(path)
    if path.is_dir():
        raise RatingsFileError(
            f"ratings file {path} is a directory, not a file; pass the .jsonl or .jsonl.gz file"
        )
    if not path.is_file():
        raise RatingsFileError(f"ratings file not found: {path}")

    hasher = hashlib.sha256()
    records: list[dict] = []
    bad_lines: list[BadLine] = []
    status_by_id: dict[str, str] = {}
    num_failed = 0
    try:
        with open_text(path) as stream:
            for line_number, line in enumerate(stream, start=1):
                hasher.update(line.encode("utf-8", "surrogateescape"))
                if not line.strip():
                    continue
                try:
                    record = parse_record_line(line)
                except ValueError as error:
                    bad_lines.append(BadLine(line_number, str(error)))
                    continue
                previous_status = status_by_id.get(record["request_id"])
                if previous_status == "ok":
                    reason = f"duplicate request_id {record['request_id']!r}"
                    bad_lines.append(BadLine(line_number, reason))
                    continue
                status_by_id[record["request_id"]] = record["status"]
                # A record after a failed one is a retry (rate.py --retry-failed), and it
                # replaces the failure in the counts.
                if previous_status == "failed":
                    num_failed -= 1
                if record["status"] == "ok":
                    records.append(record)
                else:
                    num_failed += 1
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise RatingsFileError(f"cannot read ratings file {path}: {error}") from error

    if strict and bad_lines:
        listed = "; ".join(
            f"line {bad.line_number}: {bad.reason}" for bad in bad_lines[:MAX_BAD_LINES_IN_ERROR]
        )
        more = len(bad_lines) - MAX_BAD_LINES_IN_ERROR
        suffix = f"; and {more} more" if more > 0 else ""
        raise RatingsFileError(
            f"{path}: {len(bad_lines)} invalid line(s): {listed}{suffix}. "
            "Fix or remove them, or load without strict mode to skip them."
        )

    return RatingsDataset(
        path=path,
        dataset_hash=hasher.hexdigest(),
        request_ids=tuple(r["request_id"] for r in records),
        traits=np.asarray(
            [[r["traits"][name] for name in TRAIT_NAMES] for r in records], dtype=np.float32
        ).reshape(-1, len(TRAIT_NAMES)),
        quality=np.asarray([r["quality"] for r in records], dtype=np.float32),
        latency_s=np.asarray([r["latency_s"] for r in records], dtype=np.float32),
        prompt_ids=np.asarray([r["prompt_id"] for r in records], dtype=np.int32),
        ratings=np.asarray([r["rating"] for r in records], dtype=np.float32),
        simulated=np.asarray([r["simulated"] for r in records], dtype=bool),
        num_failed=num_failed,
        bad_lines=tuple(bad_lines),
        raters=tuple(sorted({f"{r['rater']['backend']}/{r['rater']['model']}" for r in records})),
        template_hashes=tuple(sorted({r["template_hash"] for r in records})),
    )


def dataset_hash(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a ratings file's uncompressed bytes."""
    path = Path(path)
    hasher = hashlib.sha256()
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()
