"""The genrec-sftdata command line: synth -> prepare -> build -> stats, and one-line errors."""

from __future__ import annotations

import json

import polars as pl
import pytest

import genrec_sftdata as g
from genrec_sftdata._cli import main


def test_synth_prepare_build_stats(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    city = tmp_path / "city"
    assert main(["synth", "--users", "40", "--seed", "5", "--out", str(city)]) == 0
    raw = pl.read_parquet(city / "checkins.parquet")
    assert raw.equals(g.synthesize_city(n_users=40, seed=5))
    assert str(city / "checkins.parquet") in capsys.readouterr().out

    prep = tmp_path / "prep"
    assert main(["prepare", "--input", str(city / "checkins.parquet"), "--out", str(prep),
                 "--max-gap-hours", "12"]) == 0
    out = capsys.readouterr().out
    assert str(prep) in out
    stats = json.loads((prep / "stats.json").read_text())
    assert stats["config"]["max_gap_hours"] == 12.0
    assert stats == g.prepare(raw, config=g.PrepareConfig(max_gap_hours=12)).stats | {"source": stats["source"]}

    sft = tmp_path / "sft"
    assert main(["build", "--task", "next_poi", "--data", str(prep), "--out", str(sft), "--every-prefix"]) == 0
    recs = g.build_next_poi(prep, config=g.NextPoiConfig(every_prefix=True))
    for split in ("train", "val", "test"):
        assert pl.read_parquet(sft / f"{split}.parquet").equals(recs[split])
    capsys.readouterr()

    assert main(["stats", str(prep)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["split", "users", "pois", "categories", "checkins", "trajectories"]
    assert table[1].split()[0] == "train"
    assert int(table[1].split()[4]) == stats["splits"]["train"]["checkins"]


def test_errors_exit_2_with_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,poi_id,category_id,category_name,latitude,longitud,utc_time\n1,a,c,C,40.0,-73.0,2012-01-01T00:00:00Z\n")
    assert main(["prepare", "--input", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec-sftdata: error: ")
    assert len(err.strip().splitlines()) == 1
    assert "'longitude'" in err
    assert "bad.csv" in err
    assert main(["prepare", "--input", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    with pytest.raises(g.SftDataError):
        main(["--debug", "prepare", "--input", str(bad), "--out", str(tmp_path / "o")])


def test_build_with_profiles(small_prepared: g.PreparedData, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    users = small_prepared.train["user_id"].unique().sort().head(3).to_list()
    profiles = pl.DataFrame({
        "user_id": users, "traits": [["open"]] * 3, "age": ["30"] * 3, "gender": ["x"] * 3,
        "education": ["college"] * 3, "socioeco": ["middle"] * 3, "preferences": [["parks"]] * 3,
        "routines": [["runs"]] * 3, "summary": ["S."] * 3, "status": ["ok"] * 3,
    })
    profiles.write_parquet(tmp_path / "profiles.parquet")
    assert small_prepared.path is not None
    assert main(["build", "--data", str(small_prepared.path), "--profiles", str(tmp_path / "profiles.parquet"),
                 "--out", str(tmp_path / "sft")]) == 0
    train = pl.read_parquet(tmp_path / "sft" / "train.parquet")
    with_profile = train.filter(pl.col("prompt").str.starts_with("You are user "))
    assert set(with_profile["user_id"]) == set(users)
    assert with_profile.height == train.filter(pl.col("user_id").is_in(users)).height
