"""Fixtures for the profiler tests: a small prepared city and a real chat-completions server on
127.0.0.1 that can be told to fail."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

VALID_PROFILE: dict[str, Any] = {
    "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open to experience"],
    "age": "adult",
    "gender": "female",
    "education": "college & beyond",
    "socioeco": "middle",
    "preferences": ["coffee shops", "parks"],
    "routines": ["coffee before work", "park on Sundays"],
    "summary": "You are a curious adult who starts the day with coffee and spends Sundays in the park.",
}


@pytest.fixture(scope="session")
def city(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A synthetic city of 12 users, prepared and saved (``.path`` is the prepared folder)."""
    from genrec_sftdata import prepare, synthesize_city

    out = tmp_path_factory.mktemp("city") / "prepared"
    return prepare(synthesize_city(n_users=12, seed=3), out=out)


@pytest.fixture(scope="session")
def nyc(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real NYC slice (GETNext CSV, Nov-Dec 2012) prepared by genrec-sftdata."""
    from genrec_sftdata import prepare

    out = tmp_path_factory.mktemp("nyc") / "prepared"
    return prepare(shared_data / "foursquare_nyc" / "NYC_val.csv", out=out)


class ChatServer:
    """A real HTTP server speaking the OpenAI chat-completions protocol.

    ``faults`` is a queue of behaviours consumed one per request (then ``default``): ``ok``, ``429``,
    ``500``, ``slow`` (sleeps ``slow_seconds`` before answering), ``malformed`` (a 200 whose body is not
    JSON), ``truncated`` (the profile cut off, finish_reason=length), ``invalid`` (prose, no JSON),
    ``no_json_mode`` (HTTP 400 whenever response_format is sent), ``no_json_schema`` (HTTP 400 when
    response_format is a json_schema; JSON mode is fine).
    """

    def __init__(self) -> None:
        self.faults: deque[str] = deque()
        self.default = "ok"
        self.latency = 0.0
        self.slow_seconds = 2.0
        self.content = json.dumps(VALID_PROFILE)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                # the client may give up first (timeout tests)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _completion(self, content: str, finish: str = "stop") -> bytes:
        return json.dumps({
            "id": "cmpl-test", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }).encode()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        payload = json.loads(handler.rfile.read(length))
        with self.lock:
            self.requests.append(payload)
            self.headers.append(dict(handler.headers))
            fault = self.faults.popleft() if self.faults else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            if fault == "429":
                self._send(handler, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
            elif fault == "500":
                self._send(handler, 500, b'{"error": {"message": "boom"}}')
            elif fault == "slow":
                time.sleep(self.slow_seconds)
                self._send(handler, 200, self._completion(self.content))
            elif fault == "malformed":
                self._send(handler, 200, b'{"choices": [{"message": ')
            elif fault == "truncated":
                self._send(handler, 200, self._completion(self.content[: len(self.content) // 2], "length"))
            elif fault == "invalid":
                self._send(handler, 200, self._completion("I am sorry, I cannot profile people."))
            elif fault == "no_json_schema" and payload.get("response_format", {}).get("type") == "json_schema":
                self._send(handler, 400, b'{"error": {"message": "response_format json_schema is not supported"}}')
            elif fault == "no_json_mode" and "response_format" in payload:
                self._send(handler, 400, b'{"error": {"message": "response_format is not supported"}}')
            else:
                self._send(handler, 200, self._completion(self.content))
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def checkins_with_ghost(city: Any) -> pl.DataFrame:
    """The city's check-ins plus user ``ghost`` who has only val/test check-ins."""
    rows = city.checkins.filter(pl.col("split") != "train").head(3)
    ghost = rows.with_columns(user_id=pl.lit("ghost"), user_idx=pl.lit(None, dtype=rows.schema["user_idx"]))
    return pl.concat([city.checkins, ghost], how="vertical_relaxed")
