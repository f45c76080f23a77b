"""Atomic writes, fingerprints, folder locks and the CLI helpers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pytest

from genrec_core import (
    FolderLock,
    GenrecError,
    LockHeldError,
    add_config_args,
    atomic_write,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_parquet,
    cache_dir,
    config_from_args,
    fingerprint,
    run_main,
)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.json"
    atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"x": 1}  # the old file stands
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_atomic_write_dir_swaps_a_whole_set(tmp_path: Path) -> None:
    folder = tmp_path / "set"

    def first(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")

    atomic_write_dir(folder, first)

    def second_fails(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        atomic_write_dir(folder, second_fails)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a.txt": "1", "b.txt": "1"}

    def second(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "a.txt").write_text("2")

    atomic_write_dir(folder, second)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a.txt": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_fingerprint_sees_in_place_edits(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a,b\n1,2\n")
    before = fingerprint(f)
    st = f.stat()
    f.write_text("a,b\n1,3\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime: only the content differs
    assert fingerprint(f)["sha256"] != before["sha256"]
    f.write_text("a,b\n1,2\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touch: content as before
    assert fingerprint(f) == before
    copy = tmp_path / "copy.csv"
    copy.write_bytes(f.read_bytes())
    assert fingerprint(copy) == before
    folder_before = fingerprint(tmp_path)
    (tmp_path / "more.csv").write_text("x\n")
    assert fingerprint(tmp_path)["sha256"] != folder_before["sha256"]
    with pytest.raises(GenrecError, match="no such file"):
        fingerprint(tmp_path / "nope")


def test_fingerprint_of_large_files_uses_edges_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import genrec_core._cache as cache

    monkeypatch.setattr(cache, "HASH_LIMIT_BYTES", 1024)
    monkeypatch.setattr(cache, "_EDGE", 16)
    cache._file_fingerprint.cache_clear()
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(4096))
    before = fingerprint(f)
    assert set(before) == {"size", "mtime_ns", "sha256_edges"}
    with f.open("r+b") as fh:  # an edit in the middle, outside the hashed edges: the mtime tells
        fh.seek(2000)
        fh.write(b"x")
    assert fingerprint(f) != before
    cache._file_fingerprint.cache_clear()


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


_HOLDER = """
import sys, time
from genrec_core import FolderLock
with FolderLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_folder_lock_excludes_and_recovers_from_a_dead_holder(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=rf"run folder {tmp_path} is in use by another run \(pid {proc.pid} "):
            FolderLock(tmp_path, what="run folder").acquire()
    finally:
        proc.kill()  # dies holding the lock: the kernel drops it
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    with FolderLock(tmp_path):
        pass


@dataclass(frozen=True, kw_only=True)
class _Config:
    budget: int = field(default=10, metadata={"help": "how many"})
    lam: float = field(default=0.1, metadata={"help": "weight"})
    method: Literal["itra", "random"] = field(default="itra", metadata={"help": "which"})
    progress: bool = field(default=True, metadata={"help": "bars"})
    layers: tuple[int, ...] = field(default=(1, 2), metadata={"help": "layers"})
    out: Path | None = field(default=None, metadata={"help": "where"})


def test_config_args_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser, _Config)
    args = parser.parse_args(["--budget", "5", "--method", "random", "--no-progress", "--layers", "3", "4", "--out", "x"])
    cfg = config_from_args(_Config, args)
    assert cfg == _Config(budget=5, method="random", progress=False, layers=(3, 4), out=Path("x"))
    assert config_from_args(_Config, parser.parse_args([])) == _Config()
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "greedy"])
    help_text = parser.format_help()
    assert "how many (default: 10)" in help_text and "layers (default: 1 2)" in help_text
    sparse = argparse.ArgumentParser()
    add_config_args(sparse, _Config, suppress_defaults=True)
    assert vars(sparse.parse_args(["--lam", "0.5"])) == {"lam": 0.5}
    assert {f.name for f in dataclasses.fields(_Config)} >= set(vars(parser.parse_args([])))


def test_run_main_turns_bad_input_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> int:
        raise GenrecError("records.parquet: column 'split' has 'dev' at row 1\nmore detail")

    assert run_main("genrec-x", bad) == 2
    err = capsys.readouterr().err
    assert err == "genrec-x: error: records.parquet: column 'split' has 'dev' at row 1; more detail\n"

    def missing() -> int:
        open("/nonexistent/file.csv")  # noqa: SIM115
        return 0

    assert run_main("genrec-x", missing) == 2
    assert capsys.readouterr().err == "genrec-x: error: /nonexistent/file.csv: no such file or directory\n"
    assert run_main("genrec-x", lambda: None) == 0
    with pytest.raises(GenrecError):
        run_main("genrec-x", bad, debug=True)


def test_core_imports_without_torch() -> None:
    code = "import sys, genrec_core; assert not [m for m in ('torch','transformers') if m in sys.modules]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lock_message_waits_for_nobody(tmp_path: Path) -> None:
    start = time.monotonic()
    with FolderLock(tmp_path), pytest.raises(LockHeldError):
        FolderLock(tmp_path).acquire()
    assert time.monotonic() - start < 30
    assert pl.__version__
    atomic_write_parquet(tmp_path / "t.parquet", pl.DataFrame({"a": [1]}))


def test_private_cache_dir_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec_core import UnsafeCacheError, private_cache_dir, sha256_file

    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    monkeypatch.setenv("GENREC_CACHE", str(root))
    folder = private_cache_dir("kernels")
    assert folder == root / "kernels" and folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)  # loosened by someone: tightened again before use
    assert private_cache_dir("kernels").stat().st_mode & 0o777 == 0o700
    root.chmod(0o777)  # anyone could swap the folder under us: refused
    with pytest.raises(UnsafeCacheError, match="writable by group or others"):
        private_cache_dir("kernels")
    root.chmod(0o755)
    f = folder / "x.so"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@dataclass(frozen=True, kw_only=True)
class _Needs:
    features: Path = field(metadata={"help": "features folder"})
    lam: float = field(default=0.1, metadata={"help": "weight"})


def test_required_fields_renamed_flags_and_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    from genrec_core import command_parser, dispatch

    parser, sub = command_parser("genrec-x", "a tool", "1.2.3")
    p = sub.add_parser("select")
    add_config_args(p, _Needs, flags={"lam": "--lambda"})
    seen: list[_Needs] = []

    def run(args: argparse.Namespace) -> int:
        cfg = config_from_args(_Needs, args)
        if cfg.lam < 0:
            raise GenrecError(f"--lambda must be >= 0, got {cfg.lam}")
        seen.append(cfg)
        return 0

    assert dispatch(parser, ["select", "--features", "f", "--lambda", "0.5"], run) == 0
    assert seen == [_Needs(features=Path("f"), lam=0.5)]
    assert dispatch(parser, ["select", "--features", "f", "--lambda", "-1"], run) == 2
    assert capsys.readouterr().err == "genrec-x: error: --lambda must be >= 0, got -1.0\n"
    with pytest.raises(SystemExit) as info:
        dispatch(parser, ["select"], run)
    assert info.value.code == 2 and "--features" in capsys.readouterr().err
    assert dispatch(parser, [], run) == 0 and "COMMAND" in capsys.readouterr().out
