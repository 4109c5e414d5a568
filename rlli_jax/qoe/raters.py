"""Rater backends behind one interface: `rate(requests) -> results`, one result per request.

Backends:
- `simulator`: the analytic persona model of `rlli_jax.qoe.simulator`. Its ratings are
  simulated, and every record it produces is marked `simulated`.
- `openai`: any OpenAI-compatible chat-completions server (`rlli_jax.qoe.openai_rater`).
"""

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import numpy as np

from rlli_jax.qoe.personas import NUM_TRAITS
from rlli_jax.qoe.simulator import sample_simulated_ratings
from rlli_jax.qoe.template import RatingRequest

BACKENDS = ("openai", "simulator")
# The simulator rates in padded chunks of this size, so its sampler compiles once.
SIMULATOR_CHUNK_SIZE = 1024
SIMULATOR_MODEL_NAME = "analytic-persona-v1"


# Start of the error of a request whose reply arrived but held no valid rating. Such a request
# is not sent again by default, since asking until a reply parses would bias the ratings.
UNPARSABLE_REPLY_PREFIX = "unparsable reply: "


@dataclasses.dataclass(frozen=True)
class RatingResult:
    """A rater's outcome for one request: a rating, or a failure with the raw reply."""

    request: RatingRequest
    rating: int | None  # 1-5, None when the request failed
    raw_text: str | None = None  # the reply as received (model output or HTTP body)
    error: str | None = None  # why the request failed, None on success
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


ResultCallback = Callable[[RatingResult], None]


class Rater(Protocol):
    """Rates a batch of requests; one result per request, in request order."""

    backend: str
    model: str
    simulated: bool

    def rate(
        self, requests: Sequence[RatingRequest], on_result: ResultCallback | None = None
    ) -> list[RatingResult]:
        """Rate every request; call `on_result` in the calling thread as each result is ready."""
        ...


def _request_key_data(request_id: str) -> np.uint32:
    """Hash a request id to 32 bits, so the simulated noise depends on the id and not the order."""
    digest = hashlib.sha256(request_id.encode("utf-8")).digest()
    return np.uint32(int.from_bytes(digest[:4], "little"))


@jax.jit
def _sample_ratings_per_key(base_key, key_data, traits, quality, latency_s):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, key_data)
    return jax.vmap(sample_simulated_ratings)(keys, traits, quality, latency_s)


@dataclasses.dataclass(frozen=True)
class SimulatorRater:
    """Simulated ratings from the analytic persona model; deterministic per (seed, request id)."""

    seed: int = 0
    backend: str = "simulator"
    model: str = SIMULATOR_MODEL_NAME
    simulated: bool = True

    def rate(
        self, requests: Sequence[RatingRequest], on_result: ResultCallback | None = None
    ) -> list[RatingResult]:
        if not requests:
            return []
        num_requests = len(requests)
        num_padded = -(-num_requests // SIMULATOR_CHUNK_SIZE) * SIMULATOR_CHUNK_SIZE
        # Padding rows are a valid dummy input (traits 0, quality 0, latency 1 s).
        key_data = np.zeros(num_padded, dtype=np.uint32)
        traits = np.zeros((num_padded, NUM_TRAITS), dtype=np.float32)
        quality = np.zeros(num_padded, dtype=np.float32)
        latency_s = np.ones(num_padded, dtype=np.float32)
        key_data[:num_requests] = [_request_key_data(r.request_id) for r in requests]
        traits[:num_requests] = [r.traits for r in requests]
        quality[:num_requests] = [r.quality for r in requests]
        latency_s[:num_requests] = [r.latency_s for r in requests]

        base_key = jax.random.key(self.seed)
        chunks = []
        for start in range(0, num_padded, SIMULATOR_CHUNK_SIZE):
            chunk = slice(start, start + SIMULATOR_CHUNK_SIZE)
            chunk_ratings = _sample_ratings_per_key(
                base_key, key_data[chunk], traits[chunk], quality[chunk], latency_s[chunk]
            )
            chunks.append(np.asarray(chunk_ratings))
        ratings = np.concatenate(chunks)[:num_requests]

        results = []
        for request, rating in zip(requests, ratings, strict=True):
            result = RatingResult(request=request, rating=int(rating))
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results


def make_rater(backend: str, **options) -> Rater:
    """Build a rater by backend name; `options` go to its constructor.

    Raises:
        ValueError: unknown backend, or an invalid option value.
    """
    if backend == "simulator":
        return SimulatorRater(**options)
    if backend == "openai":
        # httpx is an optional dependency (the `llm` extra), so import it only when needed.
        from rlli_jax.qoe.openai_rater import OpenAIRater

        return OpenAIRater(**options)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
