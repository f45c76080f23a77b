"""The CLI, a real SIGKILL mid-run and the resume after it, and similar_users."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from genrec_profiler import ProfilerError, similar_users
from genrec_profiler._cli import main


def test_cli_generate_stats_and_errors(city: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.parquet"
    code = main(["generate", "--data", str(city.path), "--backend", "template", "--users", "5",
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"profiles: {out} (5 users: 5 generated, 0 already done; ok 5" in printed
    assert "age: adult 100%" in printed
    assert pl.read_parquet(out).height == 5

    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_users"] == 5 and stats["status"] == {"ok": 5, "repaired": 0, "failed": 0}

    assert main(["generate", "--data", str(tmp_path / "missing"), "--backend", "template", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec-profiler: error: ") and "missing" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError):
        main(["--debug", "stats", str(tmp_path / "nope.parquet")])
    assert main(["generate", "--data", str(city.path), "--backend", "openai", "--out", str(out),
                 "--batch-size", "0"]) == 2


def _parts(out: Path) -> list[Path]:
    folder = out.with_name(out.name + ".parts")
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def test_sigkill_mid_run_then_resume(city: Any, chat_server: Any, tmp_path: Path) -> None:
    """A real process killed with SIGKILL loses at most the user in flight; the rerun finishes the
    others and the table ends with exactly one row per user."""
    users = sorted(city.train["user_id"].unique().to_list())
    out = tmp_path / "profiles.parquet"
    chat_server.latency = 0.25
    cmd = [sys.executable, "-m", "genrec_profiler", "generate", "--data", str(city.path), "--backend", "openai",
           "--model", "test-model", "--base-url", chat_server.url, "--batch-size", "1", "--concurrency", "1",
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_parts(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    parts = _parts(out)
    done = pl.concat([pl.read_parquet(p) for p in parts])  # every part file is whole (atomic writes)
    assert 3 <= done.height < len(users)
    assert not out.exists()
    sent_before = len(chat_server.requests)

    chat_server.latency = 0.0
    proc2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    assert f"{done.height} already done" in proc2.stdout
    table = pl.read_parquet(out)
    assert sorted(table["user_id"].to_list()) == users  # exactly one row per user
    assert (table["status"] == "ok").all()
    assert len(chat_server.requests) - sent_before == len(users) - done.height
    assert not _parts(out)


def test_similar_users_matches_brute_force(city: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(30)]
    vectors = rng.normal(size=(30, 8))
    lookup = {f"summary {i}": vectors[i] for i in range(30)}
    frame = pl.DataFrame({"user_id": users, "summary": list(lookup), "status": ["ok"] * 30})
    result = similar_users(frame, encoder=lambda texts: np.stack([lookup[t] for t in texts]), k=3,
                           out=tmp_path / "sim.parquet")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    for i, row in enumerate(result.iter_rows(named=True)):
        expected = np.argsort(-sims[i], kind="stable")[:3]
        assert row["similar_user_ids"] == [users[j] for j in expected]
        assert row["similarities"] == pytest.approx(sims[i, expected].tolist())
    assert pl.read_parquet(tmp_path / "sim.parquet").equals(result)
    with pytest.raises(ProfilerError, match="k must be"):
        similar_users(frame, encoder=lambda t: np.zeros((len(t), 2)), k=0)


def test_similar_users_with_minilm(city: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sentence_transformers")
    summaries = [
        "You love coffee shops and cafes every morning before work.",
        "Every morning you grab an espresso at a cafe on the way to the office.",
        "You spend weekend nights in bars and nightclubs dancing until late.",
        "On Friday and Saturday nights you go clubbing and drink at bars.",
        "You hike mountain trails and camp in national parks.",
    ]
    frame = pl.DataFrame({"user_id": ["a", "b", "c", "d", "e"], "summary": summaries,
                          "status": ["ok", "ok", "repaired", "ok", "ok"]})
    frame.write_parquet(tmp_path / "p.parquet")
    assert main(["similar", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "s.parquet"), "-k", "2"]) == 0
    assert "similar users:" in capsys.readouterr().out
    table = pl.read_parquet(tmp_path / "s.parquet")
    best = {r["user_id"]: r["similar_user_ids"][0] for r in table.iter_rows(named=True)}
    assert best["a"] == "b" and best["b"] == "a" and best["c"] == "d" and best["d"] == "c"
    assert all(len(r) == 2 for r in table["similar_user_ids"])
