"""The `openai` rater backend against a local OpenAI-compatible server on 127.0.0.1.

The server decides how to respond from a `mode=...` marker in the prompt text: well-formed,
fenced, prose, out of range, malformed envelope, slow, 429 and 500 responses.
"""

import http.server
import json
import logging
import re
import signal
import threading
import time
from collections import defaultdict

import pytest

pytest.importorskip("httpx")

from rlli_jax.qoe.collect import collect_ratings  # noqa: E402
from rlli_jax.qoe.dataset import load_ratings  # noqa: E402
from rlli_jax.qoe.openai_rater import RATING_SCHEMA, OpenAIRater  # noqa: E402
from rlli_jax.qoe.raters import make_rater  # noqa: E402
from rlli_jax.qoe.template import RatingRequest  # noqa: E402

SECRET_KEY = "sk-test-do-not-leak-7f3a9c"
# Nesting depth past Python's recursion limit, so json.loads raises RecursionError.
DEEP_JSON_LEVELS = 100_000
KEY_ENV = "RLLI_TEST_OPENAI_KEY"


def completion(content: str) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    return json.dumps(body).encode("utf-8")


class FakeChatServer:
    """A threaded chat-completions server whose behaviour per request is set by its prompt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = defaultdict(int)  # prompt marker -> number of POSTs seen
        self.arrivals = defaultdict(list)  # prompt marker -> monotonic arrival times
        self.authorization = []
        self.payloads = []
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                marker = re.search(r"mode=(\S+) id=(\d+)", payload["messages"][-1]["content"])
                mode, marker_id = marker.group(1), marker.group(2)
                key = f"{mode}/{marker_id}"
                with server.lock:
                    server.calls[key] += 1
                    server.arrivals[key].append(time.monotonic())
                    server.authorization.append(self.headers.get("Authorization"))
                    server.payloads.append(payload)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    call = server.calls[key]
                try:
                    status, body, headers = server.respond(mode, call)
                finally:
                    # Leave the count before the reply is written: the client may send its
                    # next request as soon as it has the body, before this thread runs on.
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and closed the connection

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, mode: str, call: int) -> tuple[int, bytes, dict]:
        json_type = {"Content-Type": "application/json"}
        if mode.startswith("ok"):
            rating = int(mode.split(":")[1]) if ":" in mode else 4
            return 200, completion(json.dumps({"rating": rating})), json_type
        if mode == "fenced":
            return 200, completion('```json\n{"rating": 5}\n```'), json_type
        if mode == "prose":
            return 200, completion("I'd give it a 4 out of 5."), json_type
        if mode == "range":
            return 200, completion('{"rating": 9}'), json_type
        if mode == "envelope":
            return 200, b"<html>gateway says hi</html>", {"Content-Type": "text/html"}
        if mode == "nocontent":
            return 200, json.dumps({"choices": []}).encode(), json_type
        if mode == "badgzip":
            return 200, b"not gzip data", {**json_type, "Content-Encoding": "gzip"}
        if mode == "deepbody":
            return 200, b"[" * DEEP_JSON_LEVELS, json_type
        if mode == "deepreply":
            return 200, completion("[" * DEEP_JSON_LEVELS), json_type
        if mode == "slow":
            time.sleep(1.0)
            return 200, completion('{"rating": 3}'), json_type
        if mode == "slowonce":
            if call == 1:
                time.sleep(1.0)
            return 200, completion('{"rating": 3}'), json_type
        if mode == "busy":
            time.sleep(0.15)
            return 200, completion('{"rating": 2}'), json_type
        if mode == "429twice":
            if call <= 2:
                return 429, b'{"error": "rate limited"}', json_type
            return 200, completion('{"rating": 4}'), json_type
        if mode == "retryafter":
            if call == 1:
                return 429, b'{"error": "rate limited"}', {**json_type, "Retry-After": "0.4"}
            return 200, completion('{"rating": 4}'), json_type
        if mode == "retryafternan":
            if call == 1:
                return 429, b'{"error": "rate limited"}', {**json_type, "Retry-After": "nan"}
            return 200, completion('{"rating": 4}'), json_type
        if mode == "500":
            return 500, b"internal boom", {"Content-Type": "text/plain"}
        if mode == "400":
            return 400, b'{"error": "bad request"}', json_type
        raise AssertionError(f"unknown mode {mode}")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with FakeChatServer() as running:
        yield running


def make_request(mode: str, index: int = 0) -> RatingRequest:
    return RatingRequest(
        request_id=f"t-{mode}-{index}",
        traits=(0.5, 0.5, 0.5, 0.5, 0.5),
        quality=0.7,
        latency_s=4.0,
        prompt_id=0,
        prompt_text=f"mode={mode} id={index}",
    )


def make_test_rater(server, **overrides) -> OpenAIRater:
    options = {
        "base_url": server.base_url,
        "model": "test-model",
        "api_key_env": KEY_ENV,
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.05,
        "backoff_max_s": 1.0,
        "concurrency": 4,
    }
    options.update(overrides)
    return OpenAIRater(**options)


def test_well_formed_replies(server):
    rater = make_test_rater(server)
    results = rater.rate([make_request("ok:1"), make_request("ok:5"), make_request("fenced")])
    assert [r.rating for r in results] == [1, 5, 5]
    assert all(r.ok and r.attempts == 1 for r in results)
    assert results[0].raw_text == '{"rating": 1}'


def test_request_payload(server):
    make_test_rater(server, temperature=0.3, max_tokens=16).rate([make_request("ok")])
    payload = server.payloads[0]
    assert payload["model"] == "test-model"
    assert payload["temperature"] == 0.3
    assert payload["max_tokens"] == 16
    assert payload["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]


def test_system_message_merged(server):
    make_test_rater(server, merge_system_message=True).rate([make_request("ok")])
    (message,) = server.payloads[0]["messages"]
    assert message["role"] == "user"
    assert message["content"].startswith("You role-play one user")
    assert "mode=ok id=0" in message["content"]


def test_response_format_none(server):
    make_test_rater(server, response_format="none").rate([make_request("ok")])
    assert "response_format" not in server.payloads[0]


def test_response_format_schemas(server):
    make_test_rater(server, response_format="json_schema").rate([make_request("ok", 0)])
    make_test_rater(server, response_format="llama_schema").rate([make_request("ok", 1)])
    openai_style, llama_style = (p["response_format"] for p in server.payloads)
    assert openai_style["type"] == "json_schema"
    assert openai_style["json_schema"]["schema"] == RATING_SCHEMA
    assert llama_style == {"type": "json_object", "schema": RATING_SCHEMA}


@pytest.mark.parametrize(
    ("mode", "error", "raw_text"),
    [
        ("prose", "unparsable reply: reply is not valid JSON", "I'd give it a 4 out of 5."),
        ("range", r"unparsable reply: \"rating\" must be in \[1, 5\], got 9", '{"rating": 9}'),
        ("envelope", "response is not a chat completion", "<html>gateway says hi</html>"),
        ("nocontent", "response is not a chat completion", '{"choices": []}'),
    ],
)
def test_unparsable_reply_stored_as_failure(server, mode, error, raw_text):
    (result,) = make_test_rater(server).rate([make_request(mode)])
    assert not result.ok
    assert result.rating is None
    assert re.search(error, result.error)
    assert result.raw_text == raw_text
    # A malformed reply is not retried, because asking again would bias the ratings.
    assert server.calls[f"{mode}/0"] == 1


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("badgzip", "invalid response (DecodingError("),
        ("deepbody", "response is not a chat completion (RecursionError:"),
        ("deepreply", "unparsable reply: reply is JSON nested deeper than"),
    ],
)
def test_undecodable_reply_stored_as_failure(server, mode, error):
    requests = [make_request(mode), make_request("ok", 1)]
    bad_result, good_result = make_test_rater(server).rate(requests)
    assert not bad_result.ok
    assert bad_result.error.startswith(error)
    assert server.calls[f"{mode}/0"] == 1
    # The other requests of the batch are still rated.
    assert good_result.rating == 4


def test_429_retried_with_exponential_backoff(server):
    (result,) = make_test_rater(server, backoff_base_s=0.1).rate([make_request("429twice")])
    assert result.ok
    assert result.rating == 4
    assert result.attempts == 3
    first, second, third = server.arrivals["429twice/0"]
    assert second - first >= 0.1  # backoff_base_s * 2**0
    assert third - second >= 0.2  # backoff_base_s * 2**1


def test_retry_after_header_honoured(server):
    (result,) = make_test_rater(server, backoff_base_s=0.01).rate([make_request("retryafter")])
    assert result.ok
    first, second = server.arrivals["retryafter/0"]
    assert second - first >= 0.4


def test_retry_after_nan_falls_back_to_backoff(server):
    (result,) = make_test_rater(server).rate([make_request("retryafternan")])
    assert result.ok
    assert result.attempts == 2


def test_interrupt_stores_requests_in_flight(server):
    """A Ctrl-C stops new requests and retries, and the requests in flight are delivered."""
    rater = make_test_rater(server, concurrency=3, backoff_base_s=0.5)
    modes = [("ok", 0), ("slow", 0), ("500", 0)] + [("slow", index) for index in range(1, 6)]
    delivered = []

    def interrupt_once(result):
        delivered.append(result.request.request_id)
        if len(delivered) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rater.rate([make_request(mode, index) for mode, index in modes], on_result=interrupt_once)
    assert delivered[0] == "t-ok-0"
    assert "t-slow-0" in delivered
    # The failed attempt of the 500 request is neither retried nor stored as a failure.
    assert server.calls["500/0"] == 1
    assert "t-500-0" not in delivered
    # A worker that finished before the interruption may have started one more request, and
    # it is delivered too. The others were never sent.
    for index in range(6):
        assert server.calls[f"slow/{index}"] == int(f"t-slow-{index}" in delivered)
    assert sum(server.calls[f"slow/{index}"] for index in range(2, 6)) == 0


def test_ctrl_c_while_storing_keeps_result(server):
    rater = make_test_rater(server, concurrency=2)
    stored = []

    def store_after_ctrl_c(result):
        if not stored:
            # Ctrl-C arrives before this result is stored. Python runs the SIGINT handler
            # before the next line, as it would for a real Ctrl-C at this point.
            signal.raise_signal(signal.SIGINT)
        stored.append(result.request.request_id)

    requests = [make_request("ok"), *(make_request("busy", index) for index in range(1, 5))]
    with pytest.raises(KeyboardInterrupt):
        rater.rate(requests, on_result=store_after_ctrl_c)
    assert stored[0] == "t-ok-0"
    # Every request that the server replied to was stored.
    assert sum(server.calls.values()) == len(stored)
    assert len(stored) < len(requests)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_interrupts_callback(server):
    rater = make_test_rater(server, concurrency=2)
    delivered = []

    def blocked_callback(result):
        delivered.append(result.request.request_id)
        # The first Ctrl-C waits for this callback to return. A callback that blocks (a hung
        # disk, say) must still yield to a second Ctrl-C, which raises at once.
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        delivered.append("callback returned")

    with pytest.raises(KeyboardInterrupt):
        rater.rate([make_request("ok"), make_request("slow")], on_result=blocked_callback)
    assert delivered == ["t-ok-0"]  # the slow request in flight is dropped, not awaited
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_failing_callback_drops_requests_in_flight(server):
    rater = make_test_rater(server, concurrency=2)
    delivered = []

    def fail(result):
        delivered.append(result.request.request_id)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rater.rate([make_request("ok"), make_request("slow")], on_result=fail)
    assert delivered == ["t-ok-0"]


def test_500_retried_then_failure(server, caplog):
    caplog.set_level(logging.INFO, logger="rlli_jax.qoe.openai_rater")
    (result,) = make_test_rater(server, max_retries=2).rate([make_request("500")])
    assert not result.ok
    assert result.error == "HTTP 500 after 3 attempts"
    assert result.raw_text == "internal boom"
    assert result.attempts == 3
    assert server.calls["500/0"] == 3
    assert "request t-500-0: HTTP 500, retry 1 of 2" in caplog.text
    assert "request t-500-0 failed after 3 attempts" in caplog.text


def test_400_not_retried(server):
    (result,) = make_test_rater(server).rate([make_request("400")])
    assert result.error == "HTTP 400"
    assert result.raw_text == '{"error": "bad request"}'
    assert server.calls["400/0"] == 1


def test_timeout_then_failure(server):
    rater = make_test_rater(server, timeout_s=0.2, max_retries=1)
    started = time.monotonic()
    (result,) = rater.rate([make_request("slow")])
    assert time.monotonic() - started < 1.5
    assert not result.ok
    assert result.error.startswith("timed out: no progress for 0.2 s")
    assert result.error.endswith("after 2 attempts")
    assert result.raw_text is None


def test_timeout_retried_then_success(server):
    (result,) = make_test_rater(server, timeout_s=0.3).rate([make_request("slowonce")])
    assert result.ok
    assert result.rating == 3
    assert result.attempts == 2


def test_connection_refused_is_failure():
    rater = OpenAIRater(
        base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_base_s=0.01
    )
    (result,) = rater.rate([make_request("ok")])
    assert not result.ok
    assert result.error.startswith("connection failed")


def test_concurrency_bounded(server):
    requests = [make_request("busy", i) for i in range(12)]
    results = make_test_rater(server, concurrency=3).rate(requests)
    assert [r.rating for r in results] == [2] * 12
    assert [r.request for r in results] == requests
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2  # requests really overlap


def test_results_in_request_order_and_callback(server):
    requests = [make_request("busy", 0), make_request("ok:1", 1), make_request("500", 2)]
    seen = []
    results = make_test_rater(server, max_retries=0).rate(requests, on_result=seen.append)
    assert [r.request.request_id for r in results] == [r.request_id for r in requests]
    assert sorted(r.request.request_id for r in seen) == sorted(r.request_id for r in requests)


def test_api_key_sent_but_never_stored(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET_KEY)
    caplog.set_level(logging.DEBUG)
    rater = make_test_rater(server, max_retries=1)
    out = tmp_path / "ratings.jsonl"
    requests = [make_request("ok", 0), make_request("500", 1), make_request("prose", 2)]
    collect_ratings(rater, requests, out)

    assert set(server.authorization) == {f"Bearer {SECRET_KEY}"}
    assert SECRET_KEY not in out.read_text(encoding="utf-8")
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in repr(rater)
    dataset = load_ratings(out, strict=True)
    assert dataset.num_ratings == 1
    assert dataset.num_failed == 2
    assert not dataset.all_simulated
    assert dataset.raters == ("openai/test-model",)


def test_no_key_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    make_test_rater(server).rate([make_request("ok")])
    assert server.authorization == [None]


def test_failures_stored_with_raw_text(server, tmp_path):
    out = tmp_path / "ratings.jsonl"
    collect_ratings(make_test_rater(server), [make_request("prose")], out)
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["status"] == "failed"
    assert record["rating"] is None
    assert record["raw_text"] == "I'd give it a 4 out of 5."
    assert record["error"].startswith("unparsable reply")
    assert record["simulated"] is False
    assert record["rater"] == {"backend": "openai", "model": "test-model"}


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("base_url", "127.0.0.1:8080", "base_url must start with http"),
        ("model", "", "model must be a non-empty string"),
        ("timeout_s", 0.0, "timeout_s must be a finite number > 0, got 0.0"),
        ("timeout_s", float("inf"), "timeout_s must be a finite number > 0, got inf"),
        ("temperature", float("nan"), "temperature must be a finite number >= 0, got nan"),
        ("temperature", -1.0, "temperature must be a finite number >= 0, got -1.0"),
        ("max_retries", -1, "max_retries must be >= 0"),
        ("concurrency", 0, "concurrency must be >= 1"),
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("response_format", "yaml", "response_format must be one of"),
    ],
)
def test_rater_rejects_bad_option(option, value, match):
    options = {"base_url": "http://127.0.0.1:1/v1", "model": "m", option: value}
    with pytest.raises(ValueError, match=match):
        make_rater("openai", **options)


def test_make_rater_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        make_rater("anthropic")
