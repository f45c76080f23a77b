"""genrec-sftdata under kills, concurrent runs, bad options and bad inputs: every failure is one line
(exit 2 on the command line, a GenrecError in the API) and never leaves a mixed output folder."""

from __future__ import annotations

import hashlib
import math
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import genrec_sftdata as g
from genrec_core import GenrecError
from genrec_sftdata._cli import main


def _snapshot(folder: Path) -> dict[str, str]:
    """Every visible file under ``folder`` by relative path -> sha256 (hidden lock files excluded)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-sftdata: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def city_file(tmp_path: Path) -> Path:
    path = tmp_path / "city.parquet"
    g.synthesize_city(n_users=20, seed=1).write_parquet(path)
    return path


# ------------------------------------------------------------------------------ 1. half-written sets


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_prepare_killed_mid_write_leaves_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: BaseException
) -> None:
    out = tmp_path / "prepared"
    g.prepare(g.synthesize_city(n_users=20, seed=1), out=out)
    before = _snapshot(out)
    assert {"checkins.parquet", "train.parquet", "val.parquet", "test.parquet", "stats.json"} <= set(before)

    real = pl.DataFrame.write_parquet
    calls = []

    def dies_on_third(self: pl.DataFrame, file: object, *args: object, **kwargs: object) -> object:
        calls.append(file)
        if len(calls) == 3:
            raise interrupt
        return real(self, file, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pl.DataFrame, "write_parquet", dies_on_third)
    with pytest.raises(type(interrupt)):
        g.prepare(g.synthesize_city(n_users=20, seed=2), out=out)
    monkeypatch.undo()
    assert len(calls) == 3
    assert _snapshot(out) == before  # the old set, whole: no new checkins.parquet beside old splits
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    g.load_prepared(out)


def test_build_records_killed_mid_write_leaves_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = {s: pl.DataFrame({"record_id": [f"{s}-1"], "x": [1]}) for s in ("train", "val", "test")}
    out = tmp_path / "sft"
    g.write_records(records, out)
    before = _snapshot(out)
    real = pl.DataFrame.write_parquet
    calls = []

    def dies_on_second(self: pl.DataFrame, file: object, *args: object, **kwargs: object) -> object:
        calls.append(file)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, file, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pl.DataFrame, "write_parquet", dies_on_second)
    new = {s: f.with_columns(x=pl.lit(2)) for s, f in records.items()}
    with pytest.raises(RuntimeError):
        g.write_records(new, out)
    monkeypatch.undo()
    assert _snapshot(out) == before


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock (the flock genrec_core.FolderLock takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        f"os.write(fd, ('pid %d on {socket.gethostname()} since now' % os.getpid()).encode())\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "--input", "{missing}"],
        ["build", "--task", "seqrec", "--input", "{missing}", "--input", "{missing}"],
        ["synth", "--users", "5"],
    ],
    ids=["prepare", "build", "synth"],
)
def test_second_run_into_a_folder_in_use_stops_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        # The inputs do not even exist: the lock is checked before anything is read.
        args = [a.format(missing=tmp_path / "missing.parquet") for a in argv]
        assert main([*args, "--out", str(out)]) == 2
        err = _one_line_error(capsys)
        assert "in use" in err and str(out) in err
    finally:
        _release(holder)


def test_two_prepares_into_one_folder_api(tmp_path: Path, city_file: Path) -> None:
    out = tmp_path / "prepared"
    holder = _hold_lock(out)
    try:
        with pytest.raises(GenrecError, match="in use"):
            g.prepare(city_file, out=out)
    finally:
        _release(holder)
    # The lock dies with its holder: the next run goes through.
    g.prepare(city_file, out=out)
    g.load_prepared(out)


def test_other_files_in_the_output_folder_are_kept(tmp_path: Path, city_file: Path) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "NOTES.txt").write_text("mine")
    (out / "train.jsonl").write_text("{}\n")  # an older set's file: replaced, not kept beside the new one
    g.prepare(city_file, out=out)
    g.prepare(city_file, out=out)
    assert (out / "NOTES.txt").read_text() == "mine"
    assert not (out / "train.jsonl").exists()


# ------------------------------------------------------------------------------ 2. options checked early

_NAN = math.nan


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (g.CityConfig, {"n_users": 10**20}, "n_users"),
        (g.CityConfig, {"n_users": -3}, "n_users"),
        (g.CityConfig, {"n_users": 0}, "n_users"),
        (g.CityConfig, {"n_users": 2.5}, "n_users"),
        (g.CityConfig, {"n_users": 10, "n_pois": 10**12}, "n_pois"),
        (g.CityConfig, {"n_users": 10, "checkins_per_user": _NAN}, "checkins_per_user"),
        (g.CityConfig, {"n_users": 10, "revisit": _NAN}, "revisit"),
        (g.CityConfig, {"n_users": 10, "n_days": 10**9}, "n_days"),
        (g.CityConfig, {"n_users": 10, "seed": -1}, "seed"),
        (g.CityConfig, {"n_users": 10, "center_lat": 123.0}, "center_lat"),
        (g.CityConfig, {"n_users": 10_000_000, "checkins_per_user": 10_000}, "checkins_per_user"),
        (g.PrepareConfig, {"train_frac": _NAN}, "train_frac"),
        (g.PrepareConfig, {"train_frac": 1.5}, "train_frac"),
        (g.PrepareConfig, {"val_frac": _NAN}, "val_frac"),
        (g.PrepareConfig, {"val_frac": -0.1}, "val_frac"),
        (g.PrepareConfig, {"min_user_checkins": -1}, "min_user_checkins"),
        (g.PrepareConfig, {"min_poi_checkins": -5}, "min_poi_checkins"),
        (g.PrepareConfig, {"min_trajectory_checkins": "2"}, "min_trajectory_checkins"),
        (g.PrepareConfig, {"max_gap_hours": _NAN}, "max_gap_hours"),
        (g.PrepareConfig, {"max_gap_hours": math.inf}, "max_gap_hours"),
        (g.PrepareConfig, {"drop_unseen": "no"}, "drop_unseen"),
        (g.NextPoiConfig, {"max_history": "a lot"}, "max_history"),
        (g.NextPoiConfig, {"max_history": 10**12}, "max_history"),
        (g.NextPoiConfig, {"history_checkins": 2.5}, "history_checkins"),
        (g.NextPoiConfig, {"max_length": 0}, "max_length"),
        (g.NextPoiConfig, {"splits": "train"}, "splits"),
        (g.NextPoiConfig, {"every_prefix": "yes"}, "every_prefix"),
        (g.SeqRecConfig, {"history_len": "10"}, "history_len"),
        (g.SeqRecConfig, {"num_negatives": 10**9}, "num_negatives"),
        (g.SeqRecConfig, {"train_frac": _NAN}, "train_frac"),
        (g.SeqRecConfig, {"train_frac": 0.9, "val_frac": 0.5}, "train_frac"),
        (g.SeqRecConfig, {"max_records_per_split": 0}, "max_records_per_split"),
        (g.CtrConfig, {"history_len": 0}, "history_len"),
        (g.CtrConfig, {"positive_threshold": _NAN}, "positive_threshold"),
        (g.CtrConfig, {"val_frac": 2.0}, "val_frac"),
        (g.GoracsConfig, {"history_len": -1}, "history_len"),
        (g.GoracsConfig, {"split_frac": _NAN}, "split_frac"),
        (g.GoracsConfig, {"test_size": -5}, "test_size"),
        (g.GoracsConfig, {"num_negatives": 10**9}, "num_negatives"),
        (g.GoracsConfig, {"min_history": -7}, "min_history"),
    ],
)
def test_bad_option_fails_at_construction(cls: type, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(g.SftDataError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert field in message and "\n" not in message
    assert cls.__name__ in message or "synthesize_city" in message


def test_absurd_users_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--users", str(10**20), "--out", str(tmp_path / "city")]) == 2
    err = _one_line_error(capsys)
    assert "n_users" in err and str(10**20) in err


def test_nan_fraction_on_the_command_line(
    tmp_path: Path, city_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prepare", "--input", str(city_file), "--out", str(tmp_path / "p"), "--max-gap-hours", "nan"]
    assert main(argv) == 2
    assert "max_gap_hours" in _one_line_error(capsys)


# ------------------------------------------------------------------------------ 3. bad inputs, one line


def _prepare(args: list[str], out: Path) -> int:
    return main(["prepare", *args, "--out", str(out)])


def test_text_file_named_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "checkins.parquet"
    bad.write_text("user_id,poi_id\n1,2\n")
    assert _prepare(["--input", str(bad)], tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "parquet" in err


def test_truncated_parquet(tmp_path: Path, city_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cut.parquet"
    data = city_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert _prepare(["--input", str(bad)], tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "not a readable parquet" in err


def test_csv_where_parquet_is_expected(
    tmp_path: Path, city_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "city.csv"
    csv.write_text("user_id,poi_id\n1,2\n")
    assert _prepare(["--format", "parquet", "--input", str(csv)], tmp_path / "out") == 2
    assert str(csv) in _one_line_error(capsys)
    # And a CSV behind a .parquet name where SeqRec items are expected.
    items = tmp_path / "items.parquet"
    items.write_text("item_id,title\n1,A\n")
    inter = tmp_path / "inter.parquet"
    pl.DataFrame({"user_id": ["u"], "item_id": [1], "timestamp": [1]}).write_parquet(inter)
    assert (
        main(
            [
                "build",
                "--task",
                "seqrec",
                "--input",
                str(items),
                "--input",
                str(inter),
                "--out",
                str(tmp_path / "sr"),
            ]
        )
        == 2
    )
    err = _one_line_error(capsys)
    assert str(items) in err and "parquet" in err


def test_empty_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert _prepare(["--input", str(empty)], tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert str(empty) in err and "empty" in err
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\nu,1,1\n")
    assert (
        main(
            [
                "build",
                "--task",
                "seqrec",
                "--input",
                str(empty),
                "--input",
                str(inter),
                "--out",
                str(tmp_path / "sr"),
            ]
        )
        == 2
    )
    assert "empty" in _one_line_error(capsys)


def test_out_is_an_existing_file(tmp_path: Path, city_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert _prepare(["--input", str(city_file)], out) == 2
    err = _one_line_error(capsys)
    assert str(out) in err and "file" in err
    assert out.read_text() == "not a folder"
    with pytest.raises(GenrecError, match="not a folder"):
        g.prepare(city_file, out=out)


def test_out_is_the_working_folder(
    tmp_path: Path, city_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    assert _prepare(["--input", str(city_file)], Path(".")) == 2
    assert "working folder" in _one_line_error(capsys)
    assert (tmp_path / "keep.txt").exists()


def test_local_looking_missing_path_is_no_such_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"hub lookup for {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        g.read_checkins("bad/nope.csv")
    assert _prepare(["--input", "bad/nope.csv"], tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert "bad/nope.csv" in err and "no such file" in err


# ------------------------------------------------------------------------------ 4. float ids


def _getnext(user_ids: list[float]) -> pl.DataFrame:
    t0 = datetime(2012, 4, 3, 18)
    n = len(user_ids)
    return pl.DataFrame(
        {
            "user_id": user_ids,
            "POI_id": [float(i % 3) for i in range(n)],
            "POI_catname": ["Bar"] * n,
            "latitude": [40.7] * n,
            "longitude": [-73.9] * n,
            "UTC_time": [(t0 + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)],
        }
    )


def test_integral_float_ids_become_integers_as_text(tmp_path: Path) -> None:
    path = tmp_path / "getnext.parquet"
    _getnext([1.0, 1.0, 2.0, 2.0]).write_parquet(path)
    frame = g.read_checkins(path)
    assert frame["user_id"].to_list() == ["1", "1", "2", "2"]
    assert frame["poi_id"].to_list() == ["0", "1", "2", "0"]


def test_non_integral_float_ids_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "getnext.parquet"
    _getnext([1.0, 1.5, 2.0]).write_parquet(path)
    with pytest.raises(g.SftDataError, match=r"user_id.*row 1.*1\.5"):
        g.read_checkins(path)


def test_float_user_ids_in_seqrec_and_ctr_inputs(tmp_path: Path) -> None:
    items = pl.DataFrame({"item_id": [1, 2, 3], "title": ["A", "B", "C"]})
    inter = tmp_path / "inter.parquet"
    pl.DataFrame(
        {
            "user_id": [7.0, 7.0, 7.0, 8.0, 8.0],
            "item_id": [1.0, 2.0, 3.0, 1.0, 2.0],
            "timestamp": [1, 2, 3, 4, 5],
        }
    ).write_parquet(inter)
    recs = g.build_seqrec(items, inter, config=g.SeqRecConfig(num_negatives=0))
    users = {u for frame in recs.values() for u in frame["user_id"].to_list()}
    assert users == {"7", "8"}
    ratings = pl.read_parquet(inter).with_columns(rating=pl.lit(4.0))
    ctr = g.build_ctr(ratings, items)
    assert {u for frame in ctr.values() for u in frame["user_id"].to_list()} == {"7", "8"}
    bad = pl.read_parquet(inter).with_columns(pl.Series("user_id", [7.0, 7.5, 7.0, 8.0, 8.0]))
    with pytest.raises(g.SftDataError, match="row 1"):
        g.build_seqrec(items, bad)


def test_lock_is_free_after_a_run(tmp_path: Path, city_file: Path) -> None:
    """After a run, the folder's lock is free: another process can take it at once."""
    out = tmp_path / "prepared"
    g.prepare(city_file, out=out)
    code = (
        "import fcntl, os\n"
        f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert os.path.isdir(out)
