"""Rater backend for any OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama, ...).

Each request is one POST to `{base_url}/chat/completions`. HTTP 429, 500, 502, 503 and 504
responses, timeouts and connection errors are retried with exponential backoff, and a numeric
Retry-After header replaces the backoff delay, capped at `backoff_max_s`. Other 4xx and 5xx
responses, bodies that httpx cannot decode and bodies that are not chat completions fail at
once. At most `concurrency` requests are in flight. A reply that `parse_rating` rejects becomes
a failure that keeps the raw text.
The API key is read from the environment variable named by `api_key_env` and is only ever sent
in the Authorization header: it is not stored in results, records or log messages.
"""

import dataclasses
import json
import logging
import math
import os
import queue
import random
import signal
import threading
from collections.abc import Sequence

import httpx

from rlli_jax.qoe.raters import UNPARSABLE_REPLY_PREFIX, RatingResult, ResultCallback
from rlli_jax.qoe.template import RatingParseError, RatingRequest, parse_rating, render_messages

logger = logging.getLogger(__name__)

# Maximum length of a stored raw reply, in characters. Longer replies are cut.
MAX_RAW_TEXT_CHARS = 2000
RETRY_STATUS_CODES = frozenset({429, 500, 502, 503, 504})
# Seconds between checks for a Ctrl-C while the main thread waits for results.
INTERRUPT_POLL_S = 0.1

# JSON schema of a reply: exactly one integer rating from 1 to 5.
RATING_SCHEMA = {
    "type": "object",
    "properties": {"rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["rating"],
    "additionalProperties": False,
}
# Values of `OpenAIRater.response_format`, and the `response_format` field each one sends:
#   none         no field
#   json_object  {"type": "json_object"}: any JSON object (OpenAI, vLLM, llama.cpp, Ollama)
#   json_schema  {"type": "json_schema", ...}: RATING_SCHEMA in the OpenAI structured-output form
#   llama_schema {"type": "json_object", "schema": ...}: RATING_SCHEMA in the form
#                llama-cpp-python 0.3's server turns into a grammar
RESPONSE_FORMATS = ("none", "json_object", "json_schema", "llama_schema")


class _DeferredInterrupt:
    """A SIGINT handler that records Ctrl-C instead of raising it, until `restore` runs.

    Python's default handler raises KeyboardInterrupt between any two bytecodes, so it could
    fall between taking a result from the workers' queue and storing it, and that result would
    be lost. With this handler the main thread raises it at `raise_if_received`, between two
    deliveries. A second Ctrl-C before that raises at once, so a blocked `on_result` can still
    be interrupted. It is installed only in the main thread and only over Python's default
    handler, so a handler that the caller set up is kept.
    """

    def __init__(self):
        self.received = threading.Event()
        self.repeated = False  # True once a second Ctrl-C raised before the first took effect
        self._previous = None
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._record)

    def _record(self, signum, frame) -> None:
        del signum, frame
        if self.received.is_set():
            self.repeated = True
            raise KeyboardInterrupt
        self.received.set()

    def raise_if_received(self) -> None:
        if self.received.is_set():
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _RetryableError(Exception):
    def __init__(self, message: str, raw_text: str | None, retry_after_s: float | None = None):
        super().__init__(message)
        self.raw_text = raw_text
        self.retry_after_s = retry_after_s


class _PermanentError(Exception):
    def __init__(self, message: str, raw_text: str | None):
        super().__init__(message)
        self.raw_text = raw_text


def _truncate(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_RAW_TEXT_CHARS:
        return text
    return text[:MAX_RAW_TEXT_CHARS] + f"... [{len(text) - MAX_RAW_TEXT_CHARS} chars cut]"


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date; plain exponential backoff applies instead
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _message_content(body: str) -> str:
    """Return choices[0].message.content of a chat-completions response body.

    Raises:
        _PermanentError: the body is not a chat-completions response.
    """
    try:
        document = json.loads(body)
        content = document["choices"][0]["message"]["content"]
    # RecursionError: JSON nested deeper than the interpreter's recursion limit.
    except (json.JSONDecodeError, RecursionError, KeyError, IndexError, TypeError) as error:
        raise _PermanentError(
            f"response is not a chat completion ({type(error).__name__}: {error})", body
        ) from error
    if not isinstance(content, str):
        raise _PermanentError(f"message content must be a string, got {content!r}", body)
    return content


@dataclasses.dataclass(frozen=True)
class OpenAIRater:
    """Ratings from an OpenAI-compatible chat-completions server.

    Fields are the connection and retry settings; times are in seconds.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    # Seconds to wait for the connection and for each read or write (httpx's timeout), so a
    # reply that keeps sending slowly can take longer in total.
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 4
    temperature: float = 0.7
    max_tokens: int = 32
    # What to ask for through the request's `response_format` field, see RESPONSE_FORMATS.
    response_format: str = "json_object"
    # Send the system text at the top of the user message instead, for chat templates that
    # drop system messages (llama-cpp-python 0.3's "gemma" chat format drops them).
    merge_system_message: bool = False
    backend: str = dataclasses.field(default="openai", init=False)
    simulated: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must be a non-empty string")
        for name in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"response_format must be one of {RESPONSE_FORMATS}, got {self.response_format!r}"
            )

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _payload(self, request: RatingRequest) -> dict:
        messages = render_messages(request)
        if self.merge_system_message:
            system, user = messages
            messages = [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}]
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.response_format == "json_object":
            payload["response_format"] = {"type": "json_object"}
        elif self.response_format == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "rating", "strict": True, "schema": RATING_SCHEMA},
            }
        elif self.response_format == "llama_schema":
            payload["response_format"] = {"type": "json_object", "schema": RATING_SCHEMA}
        return payload

    def _backoff_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        delay = min(self.backoff_base_s * 2.0**attempt, self.backoff_max_s)
        # Up to 10% jitter, so concurrent workers that failed together do not retry in lockstep.
        return delay * (1.0 + 0.1 * rng.random())

    def _post_once(self, client: httpx.Client, request: RatingRequest) -> str:
        """Send one POST and return the message content.

        Raises:
            _RetryableError: a status in RETRY_STATUS_CODES, a timeout or a connection error.
            _PermanentError: any other HTTP error, a body that httpx cannot decode, or a body
                that is not a chat completion.
        """
        try:
            response = client.post(self.endpoint, json=self._payload(request))
        except httpx.TimeoutException as error:
            raise _RetryableError(
                f"timed out: no progress for {self.timeout_s} s ({error!r})", None
            ) from error
        except httpx.TransportError as error:
            raise _RetryableError(f"connection failed ({error!r})", None) from error
        except httpx.HTTPError as error:
            # The reply arrived but cannot be used, such as a body that fails its
            # Content-Encoding (httpx.DecodingError). Like any other unusable body, it fails at
            # once instead of stopping the whole collection.
            raise _PermanentError(f"invalid response ({error!r})", None) from error

        if response.status_code in RETRY_STATUS_CODES:
            raise _RetryableError(
                f"HTTP {response.status_code}",
                response.text,
                _parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status_code != 200:
            raise _PermanentError(f"HTTP {response.status_code}", response.text)
        return _message_content(response.text)

    def _rate_one(
        self, client: httpx.Client, request: RatingRequest, stop: threading.Event
    ) -> RatingResult | None:
        """Send `request` with retries, and return None if `stop` is set before a final outcome."""
        rng = random.Random(request.request_id)
        for attempt in range(self.max_retries + 1):
            try:
                content = self._post_once(client, request)
            except _RetryableError as error:
                if stop.is_set():
                    return None
                if attempt == self.max_retries:
                    logger.warning(
                        "request %s failed after %d attempts: %s",
                        request.request_id,
                        attempt + 1,
                        error,
                    )
                    return RatingResult(
                        request=request,
                        rating=None,
                        raw_text=_truncate(error.raw_text),
                        error=f"{error} after {attempt + 1} attempts",
                        attempts=attempt + 1,
                    )
                delay_s = self._backoff_s(attempt, error.retry_after_s, rng)
                logger.info(
                    "request %s: %s, retry %d of %d in %.2f s",
                    request.request_id,
                    error,
                    attempt + 1,
                    self.max_retries,
                    delay_s,
                )
                if stop.wait(delay_s):
                    return None
                continue
            except _PermanentError as error:
                logger.warning("request %s failed: %s", request.request_id, error)
                return RatingResult(
                    request=request,
                    rating=None,
                    raw_text=_truncate(error.raw_text),
                    error=str(error),
                    attempts=attempt + 1,
                )

            try:
                rating = parse_rating(content)
            except RatingParseError as error:
                logger.info("request %s: unparsable reply: %s", request.request_id, error)
                return RatingResult(
                    request=request,
                    rating=None,
                    raw_text=_truncate(content),
                    error=f"{UNPARSABLE_REPLY_PREFIX}{error}",
                    attempts=attempt + 1,
                )
            return RatingResult(
                request=request, rating=rating, raw_text=_truncate(content), attempts=attempt + 1
            )
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def rate(
        self, requests: Sequence[RatingRequest], on_result: ResultCallback | None = None
    ) -> list[RatingResult]:
        """Rate every request with at most `concurrency` in flight; results in request order.

        On a KeyboardInterrupt (Ctrl-C), no request starts or is retried any more. The requests
        in flight finish their current attempt, their results go to `on_result`, and the
        interruption is raised again. A request waiting to retry is dropped (no result), and
        so are the requests in flight on a second interruption. If `on_result` raises, the
        requests in flight are dropped at once. Called in the main thread, a Ctrl-C takes effect
        between two results, so the result being passed to `on_result` is never cut off.
        """
        results: list[RatingResult | None] = [None] * len(requests)
        stop = threading.Event()
        waiting: queue.SimpleQueue = queue.SimpleQueue()
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for item in enumerate(requests):
            waiting.put(item)
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        with httpx.Client(
            headers=self._headers(), timeout=httpx.Timeout(self.timeout_s), limits=limits
        ) as client:

            def work() -> None:
                while not stop.is_set():
                    try:
                        index, request = waiting.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        finished.put((index, self._rate_one(client, request, stop)))
                    except BaseException as error:  # a bug: raise it in the calling thread
                        finished.put((index, error))

            # Daemon threads, so that dropped requests in flight do not keep the process alive.
            workers = [
                threading.Thread(target=work, name=f"openai-rater-{number}", daemon=True)
                for number in range(min(self.concurrency, len(requests)))
            ]
            for worker in workers:
                worker.start()
            ctrl_c = _DeferredInterrupt()
            try:
                for _ in requests:
                    outcome = self._next_outcome(finished, ctrl_c)
                    self._deliver(*outcome, results, on_result)
                ctrl_c.raise_if_received()
            except KeyboardInterrupt:
                stop.set()
                # A second Ctrl-C interrupts at once, and drops the requests still in flight.
                ctrl_c.restore()
                if not ctrl_c.repeated:
                    self._finish_in_flight(workers, finished, results, on_result)
                raise
            finally:
                ctrl_c.restore()
                stop.set()
        return results

    @staticmethod
    def _next_outcome(finished: queue.SimpleQueue, ctrl_c: "_DeferredInterrupt") -> tuple:
        """Wait for the next worker outcome, and raise KeyboardInterrupt once Ctrl-C is pressed."""
        while True:
            ctrl_c.raise_if_received()
            try:
                return finished.get(timeout=INTERRUPT_POLL_S)
            except queue.Empty:
                continue

    @staticmethod
    def _deliver(
        index: int,
        outcome: RatingResult | BaseException | None,
        results: list[RatingResult | None],
        on_result: ResultCallback | None,
    ) -> None:
        """Store a worker's outcome and pass it to `on_result`. A dropped request (None) is
        skipped, and an exception from a worker is raised here."""
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            return
        results[index] = outcome
        if on_result is not None:
            on_result(outcome)

    def _finish_in_flight(
        self,
        workers: list[threading.Thread],
        finished: queue.SimpleQueue,
        results: list[RatingResult | None],
        on_result: ResultCallback | None,
    ) -> None:
        """After an interruption, wait for the workers to end and deliver what they finish."""
        in_flight = sum(worker.is_alive() for worker in workers)
        if in_flight:
            logger.warning(
                "interrupted: waiting for %d requests in flight to finish their current attempt; "
                "interrupt again to drop them, and the next run sends them again",
                in_flight,
            )
        while any(worker.is_alive() for worker in workers) or not finished.empty():
            try:
                outcome = finished.get(timeout=0.1)
            except queue.Empty:
                continue
            self._deliver(*outcome, results, on_result)
