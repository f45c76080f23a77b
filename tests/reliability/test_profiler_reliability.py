"""genrec-profiler under failing servers, bad options, bad inputs, leaked credentials and changed inputs:
failures are never counted as done, every bad input is one line (exit 2, or a ProfilerError in the API),
credentials never reach a file or a log, and a resume keeps only rows written from the same inputs."""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from genrec_profiler import OpenAIBackend, ProfilerConfig, ProfilerError, TemplateBackend, generate_profiles
from genrec_profiler._cli import main

PROFILE = {
    "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open to experience"],
    "age": "adult", "gender": "female", "education": "college & beyond", "socioeco": "middle",
    "preferences": ["coffee shops", "parks"], "routines": ["coffee before work", "park on Sundays"],
    "summary": "You are a curious adult who starts the day with coffee and spends Sundays in the park.",
}
API_KEY = "sk-test-SECRETabcdef123456"
URL_PASSWORD = "hunter2password"


class Server:
    """An OpenAI-compatible server on 127.0.0.1: ``mode`` ``ok`` answers a valid profile, ``500``
    always fails, ``echo`` answers HTTP 400 with every request header in its body (as some proxies do)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests += 1
                if server.mode == "500":
                    status, body = 500, {"error": {"message": "internal error"}}
                elif server.mode == "echo":
                    status, body = 400, {"error": {"message": f"bad request; you sent {dict(self.headers)}"}}
                else:
                    status, body = 200, {"choices": [{"message": {"role": "assistant", "content": json.dumps(PROFILE)},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 10, "completion_tokens": 20}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from genrec_sftdata import prepare, synthesize_city

    return prepare(synthesize_city(n_users=6, seed=5), out=tmp_path_factory.mktemp("city") / "prepared")


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-profiler: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _openai_args(prepared: Any, server: Server, out: Path, *extra: str) -> list[str]:
    return ["generate", "--data", str(prepared.path), "--backend", "openai", "--model", "m", "--base-url", server.url,
            "--users", "3", "--http-retries", "0", "--max-retries", "0", "--out", str(out), "--no-progress", *extra]


# ------------------------------------------------------------------- 2. failures are not "done"


def test_failed_profiles_exit_1_and_are_retried(prepared: Any, server: Server, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "p.parquet"
    server.mode = "500"
    assert main(_openai_args(prepared, server, out)) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("genrec-profiler: error:")]
    assert len(errors) == 1 and "3 of 3 profiles failed" in errors[0], captured.err
    assert pl.read_parquet(out)["status"].to_list() == ["failed"] * 3

    # Accepted failures: exit 0, and the failed users are still retried (they are not done).
    assert main(_openai_args(prepared, server, out, "--accept-failures")) == 0
    assert "3 users: 3 generated, 0 already done" in capsys.readouterr().out

    server.mode = "ok"
    assert main(_openai_args(prepared, server, out)) == 0
    assert "3 users: 3 generated, 0 already done; ok 3" in capsys.readouterr().out
    table = pl.read_parquet(out)
    assert table.height == 3 and set(table["status"]) == {"ok"}

    assert main(_openai_args(prepared, server, out)) == 0
    assert "3 users: 0 generated, 3 already done" in capsys.readouterr().out


def test_api_reports_failures_with_a_flag(prepared: Any, server: Server, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.mode = "500"
    with OpenAIBackend(base_url=server.url, model="m", max_retries=0) as client:
        result = generate_profiles(prepared.path, client=client, config=ProfilerConfig(users=3, max_retries=0),
                                   out=tmp_path / "p.parquet")
        assert (result.n_failed, result.complete, result.ok, len(result.failed_users)) == (3, False, False, 3)
        accepted = generate_profiles(prepared.path, client=client, out=tmp_path / "p.parquet",
                                     config=ProfilerConfig(users=3, max_retries=0, accept_failures=True))
    assert accepted.n_generated == 3 and accepted.n_resumed == 0
    assert (accepted.complete, accepted.ok) == (False, True)


# ------------------------------------------------------------------- 3. options checked at once


@pytest.mark.parametrize(("field", "value"), [
    ("max_checkins", "a lot"), ("max_checkins", 0), ("users", -3), ("users", 2.5), ("batch_size", 0),
    ("batch_size", True), ("batch_size", math.nan), ("max_retries", -1), ("max_retries", "2"),
    ("max_prompt_tokens", 0), ("user_ids", "u1"), ("user_ids", ("u1", 7)), ("draft_in_prompt", "yes"),
    ("no_draft", 1), ("overwrite", None), ("progress", "no"), ("accept_failures", "true"), ("protocol", "gpt"),
])
def test_profiler_config_checks_every_option(field: str, value: Any) -> None:
    with pytest.raises(ProfilerError) as info:
        ProfilerConfig(**{field: value})
    message = str(info.value)
    assert f"ProfilerConfig.{field}" in message and "\n" not in message


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.5), ("temperature", math.nan), ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.inf),
    ("max_new_tokens", 0), ("max_new_tokens", "many"), ("seed", -1), ("repetition_penalty", 0.0),
    ("context_length", 0), ("do_sample", "yes"),
])
def test_local_backend_checks_options_before_loading(field: str, value: Any) -> None:
    from genrec_profiler import LocalBackend

    kwargs = {"do_sample": True, field: value}
    with pytest.raises(ProfilerError) as info:
        LocalBackend("/no/such/model/folder", **kwargs)  # the options fail before the model is looked up
    assert f"LocalBackend.{field}" in str(info.value)


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -1.0), ("temperature", math.nan), ("max_tokens", 0), ("concurrency", 0), ("max_retries", -1),
    ("timeout", 0.0), ("timeout", math.inf), ("backoff", -1.0), ("context_length", 0),
])
def test_openai_backend_checks_options(field: str, value: Any) -> None:
    with pytest.raises(ProfilerError) as info:
        OpenAIBackend(base_url="http://127.0.0.1:9/v1", model="m", **{field: value})
    assert f"OpenAIBackend.{field}" in str(info.value)


@pytest.mark.parametrize("extra", [
    ["--backend", "template", "--batch-size", "0"],
    ["--backend", "template", "--max-checkins", "-2"],
    ["--backend", "openai", "--model", "m", "--temperature", "-1", "--sample"],
    ["--backend", "openai", "--model", "m", "--timeout", "nan"],
    ["--backend", "local", "--model", "/no/such/model", "--max-new-tokens", "0"],
    ["--backend", "local", "--model", "/no/such/model", "--temperature", "-1", "--sample"],
])
def test_cli_bad_options_are_one_line(prepared: Any, tmp_path: Path, extra: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.parquet"
    assert main(["generate", "--data", str(prepared.path), "--out", str(out), "--no-progress", *extra]) == 2
    _one_line_error(capsys)
    assert not out.exists()


# ------------------------------------------------------------------- 4. bad input files


@pytest.fixture
def profiles_file(prepared: Any, tmp_path: Path) -> Path:
    out = tmp_path / "good.parquet"
    generate_profiles(prepared.path, client=TemplateBackend(), config=ProfilerConfig(users=2), out=out)
    return out


def test_bad_input_files_are_one_line(prepared: Any, profiles_file: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    header_csv = tmp_path / "header.csv"
    header_csv.write_text("user_id,poi_id,category_name,latitude,longitude,local_time,poi_idx,category_idx\n")
    checkins_csv = tmp_path / "checkins.csv"
    prepared.train.head(50).select(pl.col(pl.String, pl.Float64, pl.Int64)).write_csv(checkins_csv)
    text_parquet = tmp_path / "notes.parquet"
    text_parquet.write_text("these are not the profiles you are looking for\n")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(profiles_file.read_bytes()[: profiles_file.stat().st_size // 2])
    truncated_checkins = tmp_path / "truncated_checkins.parquet"
    data = (prepared.path / "checkins.parquet").read_bytes()
    truncated_checkins.write_bytes(data[: len(data) // 2])
    out = tmp_path / "new.parquet"

    cases = [
        ["generate", "--data", str(empty_csv), "--backend", "template", "--out", str(out)],
        ["generate", "--data", str(header_csv), "--backend", "template", "--out", str(out)],
        ["generate", "--data", str(text_parquet), "--backend", "template", "--out", str(out)],
        ["generate", "--data", str(truncated_checkins), "--backend", "template", "--out", str(out)],
        ["stats", str(checkins_csv)],
        ["stats", str(text_parquet)],
        ["stats", str(truncated)],
        ["stats", str(prepared.path / "checkins.parquet")],
        ["similar", str(checkins_csv), "--out", str(tmp_path / "sim.parquet")],
        ["similar", str(truncated), "--out", str(tmp_path / "sim.parquet")],
        ["export-genup", str(text_parquet), "--out", str(tmp_path / "genup")],
        ["export-genup", str(checkins_csv), "--out", str(tmp_path / "genup")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        _one_line_error(capsys)
    assert not out.exists()


def test_out_an_existing_file_that_is_not_profiles(prepared: Any, profiles_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    checkins = tmp_path / "checkins.parquet"
    checkins.write_bytes((prepared.path / "checkins.parquet").read_bytes())
    text = tmp_path / "notes.parquet"
    text.write_text("my notes\n")
    csv = tmp_path / "profiles.csv"
    csv.write_text("a,b\n1,2\n")
    for target in (checkins, text, csv):
        before = target.read_bytes()
        assert main(["generate", "--data", str(prepared.path), "--backend", "template", "--users", "2",
                     "--out", str(target), "--no-progress"]) == 2
        _one_line_error(capsys)
        assert target.read_bytes() == before  # never written over
    # export-genup into an existing file (not a folder)
    assert main(["export-genup", str(profiles_file), "--out", str(text)]) == 2
    _one_line_error(capsys)


# ------------------------------------------------------------------- 5. credentials


def test_credentials_never_recorded(prepared: Any, server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server.mode = "echo"
    out = tmp_path / "p.parquet"
    url = f"http://apiuser:{URL_PASSWORD}@127.0.0.1:{server.port}/v1"
    caplog.set_level("DEBUG")
    code = main(["-v", "generate", "--data", str(prepared.path), "--backend", "openai", "--model", "m",
                 "--base-url", url, "--users", "2", "--http-retries", "1", "--response-format", "none", "--max-retries", "0", "--out", str(out),
                 "--no-progress", "--accept-failures"])
    assert code == 0 and server.requests > 0
    stats_json = tmp_path / "stats.json"
    assert main(["stats", str(out), "--json"]) == 0
    stats_json.write_text(capsys.readouterr().out)
    table = pl.read_parquet(out)
    assert set(table["status"]) == {"failed"}
    assert all("HTTP 400" in e for e in table["error"])  # the server's message is kept, redacted

    secrets = [API_KEY, URL_PASSWORD, base64.b64encode(f"apiuser:{URL_PASSWORD}".encode()).decode()]
    recorded = {
        "parquet": out.read_bytes().decode("latin-1"),
        "rows": json.dumps(table.to_dicts(), default=str),
        "stats": stats_json.read_text(),
        "logs": caplog.text,
        "output": str(capsys.readouterr()),
    }
    for where, text in recorded.items():
        for secret in secrets:
            assert secret not in text, f"{where} holds a credential"

    with OpenAIBackend(base_url=url, model="m") as client:
        assert URL_PASSWORD not in client.base_url and "127.0.0.1" in client.base_url


def test_redact_helper() -> None:
    from genrec_core import redact

    assert redact("https://u:p4ssw0rd@host/v1") == "https://***@host/v1"
    assert "tok3n-value" not in str(redact('{"Authorization": "Bearer tok3n-value"}'))
    assert "abc123xyz" not in str(redact("GET /v1?api_key=abc123xyz&x=1"))
    assert "s3cr3t-key" not in str(redact("echo s3cr3t-key", ["s3cr3t-key"]))
    assert redact(None) is None


# ------------------------------------------------------------------- 6. resume from matching inputs


def test_resume_keeps_only_rows_from_the_same_inputs(prepared: Any, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    checkins = prepared.checkins
    first = generate_profiles(checkins, client=TemplateBackend(), out=out)
    users = pl.read_parquet(out)["user_id"].to_list()
    assert first.n_generated == len(users) >= 4
    gone, changed = users[0], users[1]

    same = generate_profiles(checkins, client=TemplateBackend(), out=out)
    assert (same.n_generated, same.n_resumed, same.n_stale) == (0, len(users), 0)

    # One user leaves the data; another loses half of their train check-ins.
    train_rows = checkins.filter((pl.col("user_id") == changed) & (pl.col("split") == "train"))
    drop = train_rows.head(train_rows.height // 2).select("user_id", "local_time")
    edited = checkins.filter(pl.col("user_id") != gone).join(drop, on=["user_id", "local_time"], how="anti")
    result = generate_profiles(edited, client=TemplateBackend(), out=out)
    table = pl.read_parquet(out)
    assert gone not in table["user_id"].to_list()
    assert result.n_generated == 1 and result.n_stale == 2
    row = table.filter(pl.col("user_id") == changed).row(0, named=True)
    assert row["n_checkins"] == train_rows.height - drop.height
    assert table.height == len(users) - 1

    # Different prompt options: nothing is kept.
    again = generate_profiles(edited, client=TemplateBackend(), out=out, config=ProfilerConfig(max_checkins=3))
    assert again.n_generated == len(users) - 1 and again.n_resumed == 0


def test_resume_of_a_partial_parts_folder_checks_inputs(prepared: Any, tmp_path: Path) -> None:
    """A killed run leaves part files only; a rerun on other check-ins must not merge them in."""
    out = tmp_path / "p.parquet"
    checkins = prepared.checkins
    generate_profiles(checkins, client=TemplateBackend(), out=out, config=ProfilerConfig(batch_size=2))
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    out.rename(parts / "part-000000.parquet")  # as if the run died before merging
    users = pl.read_parquet(parts / "part-000000.parquet")["user_id"].to_list()
    edited = checkins.filter(pl.col("user_id") != users[-1]).with_columns(
        pl.when(pl.col("user_id") == users[0]).then(pl.col("category_name") + " (renamed)")
        .otherwise(pl.col("category_name")).alias("category_name"))
    result = generate_profiles(edited, client=TemplateBackend(), out=out)
    table = pl.read_parquet(out)
    assert users[-1] not in table["user_id"].to_list()
    assert result.n_generated == 1 and result.n_resumed == len(users) - 2
    assert not parts.exists()
