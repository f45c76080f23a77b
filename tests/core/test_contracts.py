"""The table contracts: each validator names the file, the column and the first bad row, and casts
compatible types (ids to strings, integral floats to ints) against an independent reading."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from genrec_core import (
    CHECKINS,
    CONTRACTS,
    FEATURES,
    PREDICTIONS,
    PROFILES,
    SELECTION,
    SFT_RECORDS,
    ContractError,
    GenrecError,
    read_table,
    validate_metrics,
)


def _records(**overrides: list) -> pl.DataFrame:
    base = {
        "record_id": ["r0", "r1", "r2"],
        "task": ["next_poi"] * 3,
        "user_id": ["u0", "u1", "u1"],
        "split": ["train", "train", "test"],
        "prompt": ["p0", "p1", "p2"],
        "completion": ["c0", "c1", "c2"],
        "target_poi_idx": [3, 4, 5],
        "trajectory_id": ["u0_1", "u1_1", "u1_2"],
        "n_checkins": [2, 3, 4],
    }
    base.update(overrides)
    return pl.DataFrame(base)


def test_valid_records_pass_and_keep_extra_columns() -> None:
    frame = _records().with_columns(extra=pl.lit(1))
    out = SFT_RECORDS.validate(frame, source="train.parquet")
    assert out.columns == frame.columns
    assert out.equals(frame)


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("split", ["train", "dev", "test"], "train.parquet: column 'split' has 'dev' at row 1"),
        ("record_id", ["r0", "r1", "r0"], "train.parquet: column 'record_id' repeats 'r0' (first at row 0)"),
        ("prompt", ["p0", None, "p2"], "train.parquet: column 'prompt' is empty at row 1"),
        ("target_poi_idx", [3, -1, 5], "train.parquet: column 'target_poi_idx' is below 0 at row 1: -1"),
        ("n_checkins", [1.0, 2.5, 3.0], "train.parquet: column 'n_checkins' must hold integers, but row 1 has 2.5"),
    ],
)
def test_first_bad_row_is_named(column: str, values: list, expected: str) -> None:
    with pytest.raises(ContractError) as info:
        SFT_RECORDS.validate(_records(**{column: values}), source="train.parquet")
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_column_suggests_the_close_one() -> None:
    frame = _records().rename({"completion": "completions"})
    with pytest.raises(ContractError, match=r"missing column 'completion' \(did you mean 'completions'\?\)"):
        SFT_RECORDS.validate(frame, source="x.parquet")


def test_task_columns_are_required_only_for_their_task() -> None:
    ctr = _records(task=["ctr"] * 3).drop("target_poi_idx", "trajectory_id", "n_checkins")
    with pytest.raises(ContractError, match="rows with task='ctr' need column 'label'"):
        SFT_RECORDS.validate(ctr)
    ok = SFT_RECORDS.validate(ctr.with_columns(label=pl.Series([0, 1, 1])))
    assert ok["label"].to_list() == [0, 1, 1]
    with pytest.raises(ContractError, match="column 'label' has 2 at row 2"):
        SFT_RECORDS.validate(ctr.with_columns(label=pl.Series([0, 1, 2])))


def test_ids_are_cast_to_strings_and_float_ids_must_be_integral() -> None:
    profiles = pl.DataFrame(
        {
            "user_id": [1.0, 2.0],
            "traits": [["open"], ["calm"]],
            **{k: ["x", "y"] for k in ("age", "gender", "education", "socioeco", "summary")},
            "preferences": [["a"], ["b"]],
            "routines": [["c"], ["d"]],
        }
    )
    out = PROFILES.validate(profiles, source="profiles.parquet")
    assert out["user_id"].to_list() == ["1", "2"]  # not "1.0"
    with pytest.raises(ContractError, match=r"column 'user_id' holds ids, but row 1 has the non-integral number 2\.5"):
        PROFILES.validate(profiles.with_columns(user_id=pl.Series([1.0, 2.5])), source="profiles.parquet")
    with pytest.raises(ContractError, match="column 'user_id' repeats '1'"):
        PROFILES.validate(profiles.with_columns(user_id=pl.Series([1, 1])))


def test_selection_and_features_rules() -> None:
    good = pl.DataFrame({"record_id": ["a", "b", "c"], "selected": [True, False, True], "rank": [2, None, 1]})
    assert SELECTION.validate(good).equals(good)
    with pytest.raises(ContractError, match="column 'rank' is below 1"):
        SELECTION.validate(good.with_columns(rank=pl.Series([0, None, 1])))
    feats = pl.DataFrame({"record_id": ["a", "b"], "grad_norm": [0.5, math.nan]})
    with pytest.raises(ContractError, match="column 'grad_norm' is not finite at row 1"):
        FEATURES.validate(feats, source="features.parquet")


def test_checkins_coordinates_and_times() -> None:
    frame = pl.DataFrame(
        {
            "user_id": [1, 2],
            "poi_id": ["p", "q"],
            "category_id": ["c", "c"],
            "category_name": ["Cafe", "Cafe"],
            "latitude": [40.7, 95.0],
            "longitude": [-73.9, -73.9],
            "local_time": pl.Series(["2012-04-03 18:00:09"] * 2).str.to_datetime(),
            "utc_time": pl.Series(["2012-04-03 22:00:09"] * 2).str.to_datetime(time_zone="UTC"),
            "trajectory_id": ["1_1", "2_1"],
            "split": ["train", "test"],
            "user_idx": [0, 1],
            "poi_idx": [0, 1],
            "category_idx": [0, 0],
        }
    )
    with pytest.raises(ContractError, match=r"column 'latitude' is above 90.0 at row 1: 95.0"):
        CHECKINS.validate(frame, source="checkins.parquet")
    out = CHECKINS.validate(frame.with_columns(latitude=pl.Series([40.7, 40.8])))
    assert out.schema["user_id"] == pl.String
    assert out.schema["local_time"] == pl.Datetime("us")


def test_read_names_the_file_for_unreadable_input(tmp_path: Path) -> None:
    fake = tmp_path / "records.parquet"
    fake.write_text("this is text, not parquet\n")
    with pytest.raises(ContractError, match=r"records.parquet: not a readable parquet SFT records file"):
        SFT_RECORDS.read(fake)
    with pytest.raises(ContractError, match="no such table file"):
        read_table(tmp_path / "missing.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ContractError, match="empty file, expected a CSV profiles file"):
        read_table(tmp_path / "empty.csv", what="profiles")
    with pytest.raises(ContractError, match="is a folder"):
        read_table(tmp_path)
    good = tmp_path / "preds.parquet"
    pl.DataFrame({"record_id": ["a"], "ranked": [[3, 1]], "generated": ["3"], "valid": [True]}).write_parquet(good)
    assert PREDICTIONS.read(good)["ranked"].to_list() == [[3, 1]]
    csv = tmp_path / "sel.csv"
    csv.write_text("record_id,selected,rank\n7,1,1\n8,0,\n")
    sel = SELECTION.read(csv)
    assert sel["record_id"].to_list() == ["7", "8"] and sel["selected"].to_list() == [True, False]


def test_metrics_contract() -> None:
    good = {"model": {"acc@1": 0.25, "n": 28, "by_length": {"short": {"acc@1": 0.1, "n": 9}}}, "popularity": {"acc@1": 0.1, "n": 28}}
    assert validate_metrics(good) is good
    with pytest.raises(ContractError, match="system 'popularity' has no 'n'"):
        validate_metrics({"popularity": {"acc@1": 0.1}})
    with pytest.raises(ContractError, match=r"model.acc@1 is not finite"):
        validate_metrics({"model": {"acc@1": math.nan, "n": 1}})
    with pytest.raises(ContractError, match="not valid JSON"):
        validate_metrics("{oops")


def test_every_contract_is_described_and_errors_are_value_errors() -> None:
    for contract in CONTRACTS.values():
        text = contract.describe()
        for name in contract.required:
            assert f"`{name}`" in text
        assert contract.empty().columns == list(contract.schema)
    assert issubclass(ContractError, GenrecError) and issubclass(GenrecError, ValueError)
