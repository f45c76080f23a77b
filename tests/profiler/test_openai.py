"""The openai backend against a real chat-completions server on 127.0.0.1 that fails on request."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from genrec_profiler import OpenAIBackend, ProfilerConfig, ProfileRequest, ProfilerError, generate_profiles
from genrec_profiler._digest import compute_digests


@pytest.fixture(scope="module")
def request_for(city: Any) -> ProfileRequest:
    user = city.train["user_id"][0]
    digest = compute_digests(city.train)[user]
    messages = ({"role": "system", "content": "s"}, {"role": "user", "content": f"profile user {user}"})
    return ProfileRequest(user_id=user, messages=messages, digest=digest)


def backend(server: Any, **kw: Any) -> OpenAIBackend:
    options = {"model": "test-model", "backoff": 0.01, "max_retries": 3, "timeout": 5.0, **kw}
    return OpenAIBackend(base_url=server.url, **options)


@pytest.mark.parametrize("fault", ["429", "500", "malformed"])
def test_transient_faults_are_retried(chat_server: Any, request_for: ProfileRequest, fault: str) -> None:
    chat_server.faults.extend([fault, fault])
    with backend(chat_server) as client:
        [completion] = client.complete([request_for])
    assert completion.error is None
    assert completion.text == chat_server.content
    assert (completion.tokens_in, completion.tokens_out) == (100, 50)
    assert len(chat_server.requests) == 3 == client.requests_sent


def test_slow_server_times_out_and_is_retried(chat_server: Any, request_for: ProfileRequest) -> None:
    chat_server.slow_seconds = 1.5
    chat_server.faults.append("slow")
    with backend(chat_server, timeout=0.3) as client:
        start = time.perf_counter()
        [completion] = client.complete([request_for])
        elapsed = time.perf_counter() - start
    assert completion.error is None and completion.text == chat_server.content
    assert len(chat_server.requests) == 2
    assert elapsed < 1.5  # did not wait for the slow answer


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "slow"])
def test_persistent_faults_give_up_after_bounded_attempts(chat_server: Any, request_for: ProfileRequest, fault: str) -> None:
    chat_server.default = fault
    chat_server.slow_seconds = 1.0
    with backend(chat_server, max_retries=2, timeout=0.2) as client:
        [completion] = client.complete([request_for])
    assert completion.text == "" and "gave up after 3 attempts" in completion.error
    expected = {"500": "HTTP 500", "429": "HTTP 429", "malformed": "malformed response", "slow": "timeout"}[fault]
    assert expected in completion.error
    assert len(chat_server.requests) == 3


def test_client_errors_are_not_retried(chat_server: Any, request_for: ProfileRequest) -> None:
    chat_server.default = "no_json_mode"
    with backend(chat_server, response_format="json") as client:
        [completion] = client.complete([request_for])
    assert "HTTP 400" in completion.error and len(chat_server.requests) == 1


def _formats(server: Any) -> list[str | None]:
    return [r.get("response_format", {}).get("type") for r in server.requests]


def test_structured_output_falls_back_schema_then_json_mode_then_repair(chat_server: Any,
                                                                         request_for: ProfileRequest) -> None:
    """json_schema refused -> json_object refused -> no response_format (the repair parser's turn),
    remembered by the client: later requests go straight to what worked."""
    chat_server.default = "no_json_mode"
    with backend(chat_server) as client:
        first = client.complete([request_for])[0]
        assert client.response_format_level == "none"
        second = client.complete([request_for])[0]
    assert first.error is None and second.error is None
    assert _formats(chat_server) == ["json_schema", "json_object", None, None]


def test_json_mode_kept_when_only_the_schema_is_refused(chat_server: Any, request_for: ProfileRequest) -> None:
    chat_server.default = "no_json_schema"
    with backend(chat_server, concurrency=4) as client:
        completions = client.complete([request_for] * 6)
    assert all(c.error is None for c in completions)
    formats = _formats(chat_server)
    # Requests already in flight may each be refused once; none is refused twice, none asks again.
    assert formats.count("json_object") == 6 and set(formats) == {"json_schema", "json_object"}
    assert client.response_format_level == "json_object"


def test_json_schema_is_what_a_server_receives(chat_server: Any, request_for: ProfileRequest) -> None:
    from genrec_profiler import profile_json_schema

    with backend(chat_server) as client:
        client.complete([request_for, replace(request_for, protocol="genup", json_mode=True)])
    # The two requests run concurrently: tell them apart by the schema's name, not their order.
    formats = {r["response_format"]["json_schema"]["name"]: r["response_format"] for r in chat_server.requests}
    ours, genup = formats["genrec_profile"], formats["genup_profile"]
    assert ours["type"] == "json_schema" and ours["json_schema"]["schema"] == profile_json_schema("genrec")
    assert genup["json_schema"]["schema"] == profile_json_schema("genup")
    schema = ours["json_schema"]["schema"]
    assert schema["required"] == list(schema["properties"]) and schema["additionalProperties"] is False
    assert schema["properties"]["age"]["enum"] == ["child", "adolescent", "adult", "older adult"]
    assert schema["properties"]["preferences"]["maxItems"] >= 1
    assert schema["properties"]["summary"]["maxLength"] > schema["properties"]["summary"]["minLength"]


def test_request_body_and_api_key(chat_server: Any, request_for: ProfileRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROFILER_KEY", "sk-test-123")
    with backend(chat_server, api_key_env="TEST_PROFILER_KEY", max_tokens=77, seed=5) as client:
        client.complete([request_for])
    body = chat_server.requests[0]
    assert body["model"] == "test-model" and body["max_tokens"] == 77 and body["seed"] == 5
    assert body["messages"] == list(request_for.messages)
    assert body["response_format"]["type"] == "json_schema"
    assert chat_server.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_concurrency_limit_keeps_n_requests_in_flight(chat_server: Any, request_for: ProfileRequest) -> None:
    chat_server.latency = 0.2
    with backend(chat_server, concurrency=4) as client:
        completions = client.complete([request_for] * 12)
    assert all(c.error is None for c in completions)
    assert chat_server.max_in_flight == 4


def test_model_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(ProfilerError, match="model is required"):
        OpenAIBackend(base_url="http://127.0.0.1:9")


def test_generate_through_the_fault_matrix(city: Any, chat_server: Any, tmp_path: Path) -> None:
    """A whole run: transient faults are absorbed, truncated and invalid answers get feedback retries,
    and a user whose requests keep failing is recorded as failed without stopping the run."""
    users = city.train["user_id"].unique(maintain_order=True).to_list()[:5]
    # one user at a time, one request at a time: the faults below are consumed in this order.
    chat_server.faults.extend([
        "429", "ok",               # user 0: rate limited once
        "truncated", "ok",         # user 1: cut off -> feedback retry
        "500", "malformed", "ok",  # user 2: two transient faults
        "invalid", "invalid", "invalid",  # user 3: never valid -> failed after 1 + 2 feedback retries
        "500", "500", "500",       # user 4: server keeps failing -> failed with the HTTP error
    ])
    with backend(chat_server, concurrency=1, max_retries=2) as client:
        result = generate_profiles(city, client=client, out=tmp_path / "p.parquet",
                                   config=ProfilerConfig(user_ids=tuple(users), max_retries=2, batch_size=1))
    table = pl.read_parquet(result.path)
    rows = {r["user_id"]: r for r in table.iter_rows(named=True)}
    status = [rows[u]["status"] for u in users]
    assert status == ["ok", "ok", "ok", "failed", "failed"]
    assert [rows[u]["attempts"] for u in users] == [1, 2, 1, 3, 1]
    assert "no JSON object" in rows[users[3]]["error"]
    assert "HTTP 500" in rows[users[4]]["error"]
    assert rows[users[1]]["tokens_in"] == 200  # two answered requests
    assert set(table["backend"]) == {"openai"} and set(table["model"]) == {"test-model"}
    # the feedback retry carried the truncated answer back to the model
    retry = [r for r in chat_server.requests if len(r["messages"]) == 4]
    assert retry[0]["messages"][2]["role"] == "assistant"
    assert retry[0]["messages"][2]["content"] == chat_server.content[: len(chat_server.content) // 2]
    assert len(chat_server.requests) == 13  # bounded: no request loops
