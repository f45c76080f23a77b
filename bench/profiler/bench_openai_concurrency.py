"""OpenAI backend: N requests in flight against a local chat-completions server with a fixed latency,
against one request at a time. Throughput should be close to N / latency; the ratio against
sequential close to N.

quick: latency 0.2 s, N = 8, 48 requests; full: latency 0.25 s, N = 16, 160 requests.
``GENREC_BENCH_SIZE=quick|full`` (default quick).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
LATENCY, CONCURRENCY, N_REQUESTS = {"quick": (0.2, 8, 48), "full": (0.25, 16, 160)}[SIZE]
# The server runs in its own process: in this process it would share the GIL with the client under
# test, and the measurement would be of Python's scheduler rather than of the backend.
SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
latency = float(sys.argv[1])
profile = json.dumps({
    "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open to experience"],
    "age": "adult", "gender": "female", "education": "college & beyond", "socioeco": "middle",
    "preferences": ["coffee"], "routines": ["mornings"], "summary": "You are a coffee lover.",
})
body = json.dumps({
    "choices": [{"index": 0, "message": {"role": "assistant", "content": profile}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 60},
}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(latency)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
httpd.daemon_threads = True
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


@pytest.fixture
def server_url() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(LATENCY)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_openai_requests_in_flight(benchmark: Any, server_url: str) -> None:
    from genrec_profiler import OpenAIBackend, ProfileRequest
    from genrec_profiler._digest import compute_digests
    from genrec_sftdata import prepare, synthesize_city

    train = prepare(synthesize_city(n_users=4, seed=0)).train
    digest = next(iter(compute_digests(train).values()))
    requests = [
        ProfileRequest(user_id=str(i), messages=({"role": "user", "content": f"profile {i}"},), digest=digest)
        for i in range(N_REQUESTS)
    ]
    with OpenAIBackend(base_url=server_url, model="bench", concurrency=1) as one:
        t0 = time.perf_counter()
        sequential = one.complete(requests[: N_REQUESTS // 4])
        seq_s = (time.perf_counter() - t0) * 4  # a quarter of the requests, scaled: the baseline is linear
    with OpenAIBackend(base_url=server_url, model="bench", concurrency=CONCURRENCY) as many:
        completions = benchmark.pedantic(many.complete, args=(requests,), rounds=2, iterations=1)
    assert all(c.error is None for c in [*sequential, *completions])
    ours_s = benchmark.stats.stats.median
    throughput = N_REQUESTS / ours_s
    benchmark.extra_info.update(
        ratio=seq_s / ours_s,
        baseline="the same backend with concurrency 1 (one request at a time)",
        baseline_s=seq_s,
        target=0.75 * CONCURRENCY,
        size={"requests": N_REQUESTS, "concurrency": CONCURRENCY, "latency_s": LATENCY},
        floor_s=N_REQUESTS * LATENCY / CONCURRENCY,
        throughput_rps=throughput,
        ideal_rps=CONCURRENCY / LATENCY,
        device="cpu",
    )
