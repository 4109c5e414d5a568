"""Rating collection: deterministic rating requests and a resumable append-only writer.

Request `index` of a run with seed `seed` always has the id `request_id(seed, index)` and the same
persona, outcome and prompt, whatever the run's size, so a re-run skips the ids already in the
output file and sends only the rest.

The settings that define the requests and the rater (`collection_settings`) are stored next to
the output file in `settings_path(out_path)`, and `prepare_ratings_file` rejects a re-run with
other settings, so one file never mixes them.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import fcntl
except ImportError:  # Windows has no flock, so ratings files there are not locked
    fcntl = None

from rlli_jax.outputs import write_json_atomic
from rlli_jax.qoe.dataset import make_record, open_text, parse_record_line
from rlli_jax.qoe.personas import sample_traits
from rlli_jax.qoe.raters import UNPARSABLE_REPLY_PREFIX, Rater, RatingResult, ResultCallback
from rlli_jax.qoe.template import TEMPLATE_VERSION, RatingRequest, template_hash

# Decimals kept for sampled traits, quality and latency (s): the stored values are the rated ones.
SAMPLE_DECIMALS = 3
# Requests are sampled in padded chunks of this size, so the sampler compiles once.
SAMPLE_CHUNK_SIZE = 1024
# Appended to the ratings file's name to get the file that stores its collection settings.
SETTINGS_SUFFIX = ".settings.json"


@dataclasses.dataclass(frozen=True)
class OutcomeRanges:
    """Ranges of the sampled service outcomes.

    The defaults span what the service environment produces. Quality q is in [0, 1]. Latency
    runs from about 0.3 s (few steps, a large GPU share, a fast link) to about 60 s (50 steps at
    a 1/8 GPU share of 40 steps/s plus a slow downlink). Latency is log-uniform, because ratings
    depend on its logarithm.
    """

    min_quality: float = 0.0
    max_quality: float = 1.0
    min_latency_s: float = 0.3
    max_latency_s: float = 60.0

    def __post_init__(self):
        if not 0.0 <= self.min_quality < self.max_quality <= 1.0:
            raise ValueError(
                "quality range must satisfy 0 <= min_quality < max_quality <= 1, got "
                f"[{self.min_quality}, {self.max_quality}]"
            )
        if not 0.0 < self.min_latency_s < self.max_latency_s < math.inf:
            raise ValueError(
                "latency range must satisfy 0 < min_latency_s < max_latency_s, got "
                f"[{self.min_latency_s}, {self.max_latency_s}] s"
            )


def request_id(seed: int, index: int) -> str:
    """Return the id of request `index` of a run with seed `seed`."""
    return f"s{seed}-{index:07d}"


@jax.jit
def _sample_outcomes(key, indices, ranges_array, num_prompts):
    def sample_one(index):
        key_index = jax.random.fold_in(key, index)
        key_traits, key_quality, key_latency, key_prompt = jax.random.split(key_index, 4)
        traits = sample_traits(key_traits, 1)[0]
        quality = jax.random.uniform(key_quality, minval=ranges_array[0], maxval=ranges_array[1])
        log_latency = jax.random.uniform(
            key_latency, minval=jnp.log(ranges_array[2]), maxval=jnp.log(ranges_array[3])
        )
        prompt_id = jax.random.randint(key_prompt, (), 0, num_prompts)
        return traits, quality, jnp.exp(log_latency), prompt_id

    return jax.vmap(sample_one)(indices)


def sample_requests(
    seed: int,
    indices: Sequence[int],
    prompt_texts: Sequence[str],
    ranges: OutcomeRanges | None = None,
) -> list[RatingRequest]:
    """Sample the rating requests with the given indices of a run with seed `seed`.

    Persona traits are uniform on [0, 1]^5, quality uniform and latency log-uniform over
    `ranges`, and the prompt uniform over `prompt_texts`. Each request depends only on
    (seed, index, ranges, number of prompts).

    Raises:
        ValueError: no prompt texts, or a negative index.
    """
    if not prompt_texts:
        raise ValueError("prompt_texts must contain at least one prompt")
    ranges = ranges if ranges is not None else OutcomeRanges()
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return []
    if indices.min() < 0:
        raise ValueError(f"request indices must be >= 0, got {int(indices.min())}")

    ranges_array = jnp.asarray(
        [ranges.min_quality, ranges.max_quality, ranges.min_latency_s, ranges.max_latency_s],
        dtype=jnp.float32,
    )
    key = jax.random.key(seed)
    num_padded = -(-indices.size // SAMPLE_CHUNK_SIZE) * SAMPLE_CHUNK_SIZE
    padded_indices = np.zeros(num_padded, dtype=np.uint32)
    padded_indices[: indices.size] = indices
    chunks = [
        jax.device_get(
            _sample_outcomes(
                key,
                padded_indices[start : start + SAMPLE_CHUNK_SIZE],
                ranges_array,
                len(prompt_texts),
            )
        )
        for start in range(0, num_padded, SAMPLE_CHUNK_SIZE)
    ]
    traits, quality, latency_s, prompt_ids = (
        np.concatenate(parts)[: indices.size] for parts in zip(*chunks, strict=True)
    )
    # Rounding can push a value just past the range ends; clip back into them.
    traits = np.clip(np.round(traits.astype(np.float64), SAMPLE_DECIMALS), 0.0, 1.0)
    quality = np.clip(
        np.round(quality.astype(np.float64), SAMPLE_DECIMALS),
        ranges.min_quality,
        ranges.max_quality,
    )
    latency_s = np.clip(
        np.round(latency_s.astype(np.float64), SAMPLE_DECIMALS),
        ranges.min_latency_s,
        ranges.max_latency_s,
    )
    return [
        RatingRequest(
            request_id=request_id(seed, int(index)),
            traits=tuple(float(t) for t in traits[i]),
            quality=float(quality[i]),
            latency_s=float(latency_s[i]),
            prompt_id=int(prompt_ids[i]),
            prompt_text=prompt_texts[int(prompt_ids[i])],
        )
        for i, index in enumerate(indices)
    ]


def read_request_statuses(path: str | Path) -> dict[str, str]:
    """Return the status ("ok", "failed" or "unparsable") of each request in a ratings file.

    "unparsable" marks a failed record whose reply arrived without a valid rating. "failed"
    marks the other failures: HTTP and connection errors, timeouts, and bodies that cannot be
    decoded or are not chat completions.

    A request retried after a failure has several records, and any "ok" one wins. Lines that
    `parse_record_line` rejects (invalid UTF-8 or JSON, invalid records) are ignored, so their
    requests count as not done and are sent again. `load_ratings` skips the same lines and
    reports them with their numbers. A missing file gives {}.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    statuses: dict[str, str] = {}
    with open_text(path) as stream:
        for line in stream:
            try:
                record = parse_record_line(line)
            except ValueError:
                continue
            if statuses.get(record["request_id"]) != "ok":
                statuses[record["request_id"]] = _request_status(record)
    return statuses


def _request_status(record: Mapping[str, Any]) -> str:
    error = record.get("error")
    if (
        record["status"] == "failed"
        and isinstance(error, str)
        and error.startswith(UNPARSABLE_REPLY_PREFIX)
    ):
        return "unparsable"
    return record["status"]


def read_request_ids(path: str | Path) -> set[str]:
    """Return the ids of the requests with a valid record (ok or failed) in a ratings file."""
    return set(read_request_statuses(path))


def settings_path(out_path: str | Path) -> Path:
    """Return the path of the settings file that belongs to a ratings file."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + SETTINGS_SUFFIX)


def _check_jsonl_name(out_path: Path) -> None:
    """Raise ValueError unless `out_path` names a plain JSONL file: not gzip, and not the
    settings file of another ratings file."""
    if out_path.suffix == ".gz":
        raise ValueError(
            f"ratings file {out_path} is a .gz path, but ratings are appended to a plain JSONL "
            "file; pass a .jsonl path and compress the file when the collection is complete"
        )
    if out_path.name.endswith(SETTINGS_SUFFIX):
        raise ValueError(
            f"ratings file {out_path} ends in {SETTINGS_SUFFIX}, the name of another ratings "
            "file's settings; pass a .jsonl file path"
        )


def collection_settings(
    seed: int,
    ranges: OutcomeRanges,
    prompt_texts: Sequence[str],
    rater: Rater,
    rater_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the settings that decide which requests a run sends and how they are rated.

    `rater_options` are the backend's options that change its ratings (for the openai backend:
    temperature, max_tokens, response_format, merge_system_message). They must be JSON values.
    """
    prompts_digest = hashlib.sha256(json.dumps(list(prompt_texts)).encode("utf-8")).hexdigest()
    settings = {
        "seed": seed,
        "min_quality": ranges.min_quality,
        "max_quality": ranges.max_quality,
        "min_latency_s": ranges.min_latency_s,
        "max_latency_s": ranges.max_latency_s,
        "num_prompts": len(prompt_texts),
        "prompt_bank_hash": prompts_digest,
        "backend": rater.backend,
        "model": rater.model,
        "template_version": TEMPLATE_VERSION,
        "template_hash": template_hash(),
    }
    settings.update(rater_options or {})
    return settings


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"settings file {path} is not valid JSON ({error}); restore it, or move the "
            "ratings file and its settings file away to start a new collection"
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(
            f"settings file {path} must contain a JSON object, got {type(settings).__name__}"
        )
    return settings


def _describe_setting(settings: Mapping, name: str) -> str:
    return repr(settings[name]) if name in settings else "(not set)"


def _compare_settings(out_path: Path, stored: Mapping, settings: Mapping) -> None:
    differences = [
        f"{name} = {_describe_setting(stored, name)} in the file, "
        f"{_describe_setting(settings, name)} now"
        for name in sorted(stored.keys() | settings.keys())
        if name not in stored or name not in settings or stored[name] != settings[name]
    ]
    if differences:
        raise ValueError(
            f"ratings file {out_path} was collected with other settings "
            f"({settings_path(out_path)}): " + "; ".join(differences) + ". Rerun with the "
            "file's settings to resume it, or write to another file."
        )


def _check_records_match(out_path: Path, settings: Mapping) -> None:
    """Check the valid records of a file that has no settings file against `settings`.

    Records store the rater and template hash, which must match, the seed as the prefix of
    their request id, which must match, and the rated quality, latency and prompt index,
    which must lie inside the current ranges and prompt bank.
    """
    # NOTE: such a file does not store its prompt bank, so a bank of the same size or larger
    # with other texts passes. Ranges wider than the file's pass too, because every stored
    # value still lies inside them.
    checks = {
        "backend": lambda record: record["rater"]["backend"],
        "model": lambda record: record["rater"]["model"],
        "template_hash": lambda record: record["template_hash"],
    }
    bounds = {
        "quality": ("min_quality", "max_quality"),
        "latency_s": ("min_latency_s", "max_latency_s"),
    }
    with open_text(out_path) as stream:
        for line_number, line in enumerate(stream, start=1):
            try:
                record = parse_record_line(line)
            except ValueError:
                continue
            for name, read in checks.items():
                if read(record) != settings[name]:
                    raise ValueError(
                        f"ratings file {out_path} line {line_number} has {name} = "
                        f"{read(record)!r}, but this run has {name} = {settings[name]!r}; "
                        "rerun with the file's settings to resume it, or write to another file"
                    )
            seed_prefix = request_id(settings["seed"], 0).split("-")[0] + "-"
            if not record["request_id"].startswith(seed_prefix):
                raise ValueError(
                    f"ratings file {out_path} line {line_number} has request_id = "
                    f"{record['request_id']!r}, but this run's seed = {settings['seed']} gives "
                    f"ids starting {seed_prefix!r}; rerun with the file's seed to resume it, or "
                    "write to another file"
                )
            if not 0 <= record["prompt_id"] < settings["num_prompts"]:
                raise ValueError(
                    f"ratings file {out_path} line {line_number} has prompt_id = "
                    f"{record['prompt_id']!r}, but this run's prompt bank has "
                    f"{settings['num_prompts']} prompts; rerun with the file's prompt bank to "
                    "resume it, or write to another file"
                )
            for field, (low_name, high_name) in bounds.items():
                low, high = settings[low_name], settings[high_name]
                if not low <= record[field] <= high:
                    raise ValueError(
                        f"ratings file {out_path} line {line_number} has {field} = "
                        f"{record[field]!r}, outside this run's range {low_name} = {low!r} to "
                        f"{high_name} = {high!r}; rerun with the file's ranges to resume it, "
                        "or write to another file"
                    )


def prepare_ratings_file(out_path: str | Path, settings: Mapping[str, Any]) -> dict[str, str]:
    """Check that a run may append to `out_path`, store its settings, and return the statuses.

    Call it before sending any request. It checks that `out_path` is a plain JSONL path that can
    be written, and that the settings stored with an existing file equal `settings`. A file
    without a settings file (one written before they existed) is checked against its records.
    Then it writes the settings file if there is none, and returns `read_request_statuses`.

    A settings file whose ratings file is missing or contains no valid record is replaced, because
    no record depends on it.

    Raises:
        ValueError: `out_path` is a directory, a .gz path or cannot be written, the settings file
            is unreadable, or the stored settings differ (naming each setting and both values).
    """
    out_path = _check_ratings_path(out_path)
    stored_path = settings_path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "a", encoding="utf-8"):
            pass
        statuses = read_request_statuses(out_path)
        if stored_path.exists() and statuses:
            _compare_settings(out_path, _read_settings(stored_path), settings)
        else:
            if statuses:
                _check_records_match(out_path, settings)
            write_json_atomic(stored_path, settings, sort_keys=True)
        return statuses
    except OSError as error:
        raise _unwritable(out_path, error) from None


def _check_ratings_path(out_path: str | Path) -> Path:
    """Return `out_path` as a Path if it can name a ratings file, and raise ValueError if not."""
    out_path = Path(out_path)
    _check_jsonl_name(out_path)
    if out_path.is_dir():
        raise ValueError(f"ratings file {out_path} is a directory; pass a .jsonl file path")
    if out_path.exists() and not out_path.is_file():
        raise ValueError(
            f"ratings file {out_path} exists and is not a regular file (a device or a pipe); "
            "pass a .jsonl file path"
        )
    for parent in out_path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(
                f"cannot write ratings file {out_path}: {parent} is a file, not a directory"
            )
    return out_path


def _unwritable(out_path: Path, error: OSError) -> ValueError:
    reason = error.strerror or str(error)
    return ValueError(
        f"cannot write ratings file {out_path} or its settings file: {reason} "
        f"({error.filename or out_path}); choose a writable --out path"
    )


@contextlib.contextmanager
def lock_ratings_file(out_path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the ratings file `out_path` (created if missing) for a run.

    Two runs appending to one file would both send the requests that neither has stored yet,
    so a second run is rejected while the first holds the lock. The lock is released when the
    process ends, however it ends. Without `fcntl` (Windows) nothing is locked.

    Raises:
        ValueError: `out_path` cannot name a ratings file, cannot be written, or another
            process holds the lock.
    """
    out_path = _check_ratings_path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 (held until the end)
    except OSError as error:
        raise _unwritable(out_path, error) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"ratings file {out_path} is in use by another run; wait for it to end, "
                    "or write to another file"
                ) from None
        yield
    finally:
        stream.close()


def _end_with_newline(path: Path) -> None:
    """Terminate a last line cut off by an interrupted write, so the next record starts anew."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as stream:
        stream.seek(-1, 2)
        if stream.read(1) != b"\n":
            stream.write(b"\n")


def collect_ratings(
    rater: Rater,
    requests: Sequence[RatingRequest],
    out_path: str | Path,
    on_result: ResultCallback | None = None,
) -> list[RatingResult]:
    """Rate `requests` and append one record per result to `out_path` as soon as it arrives.

    Failures are stored too (status "failed" with the error and raw text), so a re-run does not
    repeat them unless asked to retry them. The caller filters out already-stored ids
    (`prepare_ratings_file` or `read_request_statuses`).

    Raises:
        ValueError: `out_path` is a gzip file (append a plain .jsonl and compress it afterwards).
    """
    out_path = Path(out_path)
    _check_jsonl_name(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _end_with_newline(out_path)

    with open(out_path, "a", encoding="utf-8") as stream:

        def write_result(result: RatingResult) -> None:
            stream.write(json.dumps(make_record(result, rater), allow_nan=False) + "\n")
            stream.flush()
            if on_result is not None:
                on_result(result)

        return rater.rate(requests, on_result=write_result)
