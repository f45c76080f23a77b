"""Standalone outputs take one writer at a time: a second trainer or coreset run into the same output
stops at once with one line, before any work, and a dead holder never blocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genrec_core import LockHeldError

_HOLDER = """
import sys, time
from genrec_core import FolderLock
with FolderLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


class _Held:
    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_second_training_into_one_output_stops_before_work(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from genrec_trainer import TrainConfig, train

    out = tmp_path / "adapter"
    held = _Held(out)
    try:
        config = TrainConfig(model=str(tmp_path / "no-model"), train=str(tmp_path / "no-records.parquet"), output=str(out))
        with pytest.raises(LockHeldError, match=rf"training output folder {out} is in use by another run \(pid {held.proc.pid}"):
            train(config)
    finally:
        held.close()
    # The holder is dead: the lock is free, and the run goes on to its (here: missing) inputs.
    with pytest.raises(Exception) as info:
        train(config)
    assert not isinstance(info.value, LockHeldError)


def test_a_second_coreset_run_into_one_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from genrec_otcoreset._cli import main

    out = tmp_path / "selection.parquet"
    held = _Held(tmp_path / ".selection.parquet.lock")
    try:
        rc = main(["select", "--features", str(tmp_path / "f"), "--val-features", str(tmp_path / "v"),
                   "--budget", "2", "--out", str(out)])
    finally:
        held.close()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"output {out} is in use by another run" in err, err
    assert not out.exists()


def test_a_second_profiler_run_into_one_table_stops_before_work(tmp_path: Path) -> None:
    from genrec_profiler import TemplateBackend, generate_profiles
    from genrec_sftdata import prepare, synthesize_city

    data = prepare(synthesize_city(n_users=3, seed=0, n_pois=40, checkins_per_user=30), out=tmp_path / "data")
    out = tmp_path / "profiles.parquet"
    held = _Held(tmp_path / ".profiles.parquet.lock")
    try:
        with pytest.raises(LockHeldError, match=rf"profiles output {out} is in use by another run"):
            generate_profiles(data, client=TemplateBackend(), out=out)
    finally:
        held.close()
    assert not out.exists()
    result = generate_profiles(data, client=TemplateBackend(), out=out)
    assert out.is_file() and result is not None
