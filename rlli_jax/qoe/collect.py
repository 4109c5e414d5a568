"""Rating collection: deterministic rating requests and a resumable append-only writer.

Request `index` of a run with seed `seed` always has the id `request_id(seed, index)` and the same
persona, outcome and prompt, whatever the run's size, so a re-run skips the ids already in the
output file and sends only the rest.
"""

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.qoe.dataset import make_record
from rlli_jax.qoe.personas import sample_traits
from rlli_jax.qoe.raters import Rater, RatingResult, ResultCallback
from rlli_jax.qoe.template import RatingRequest

# Decimals kept for sampled traits, quality and latency (s): the stored values are the rated ones.
SAMPLE_DECIMALS = 3
# Requests are sampled in padded chunks of this size, so the sampler compiles once.
SAMPLE_CHUNK_SIZE = 1024


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


def read_request_ids(path: str | Path) -> set[str]:
    """Return the request ids already stored in a ratings file; empty when it does not exist.

    Lines that are not JSON objects with a string "request_id" are ignored here, because this only
    decides what to skip; `load_ratings` reports them.
    """
    path = Path(path)
    if not path.is_file():
        return set()
    ids = set()
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("request_id"), str):
                ids.add(record["request_id"])
    return ids


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
    repeat them. The caller filters out already-stored ids (`read_request_ids`).

    Raises:
        ValueError: `out_path` is a gzip file (append a plain .jsonl and compress it afterwards).
    """
    out_path = Path(out_path)
    if out_path.suffix == ".gz":
        raise ValueError(f"out_path must be a plain JSONL file, got a .gz path: {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _end_with_newline(out_path)

    with open(out_path, "a", encoding="utf-8") as stream:

        def write_result(result: RatingResult) -> None:
            stream.write(json.dumps(make_record(result, rater), allow_nan=False) + "\n")
            stream.flush()
            if on_result is not None:
                on_result(result)

        return rater.rate(requests, on_result=write_result)
