"""SeqRec (BIGRec) and CTR (TALLRec) records, against plain-Python references and the real slices."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import genrec_sftdata as g


@pytest.fixture(scope="module")
def amazon(shared_data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    items = pl.read_parquet(shared_data / "amazon_games" / "items.parquet")
    inter = pl.read_parquet(shared_data / "amazon_games" / "interactions.parquet")
    return items, inter.filter(pl.col("user_id") < 600)


def test_seqrec_on_amazon_games(amazon: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, inter = amazon
    recs = g.build_seqrec(items, inter)
    title = dict(zip(items["item_id"], items["title"]))
    # Reference: each user's train, valid, test parts in order; every item after the first is a target.
    seqs: dict[int, list[tuple[int, str]]] = {}
    order = {"train": 0, "valid": 1, "test": 2}
    for row in sorted(inter.iter_rows(named=True), key=lambda r: (r["user_id"], order[r["split"]])):
        seqs.setdefault(row["user_id"], []).extend((i, row["split"]) for i in row["item_ids"])
    expected = {}
    for user, seq in seqs.items():
        for pos in range(1, len(seq)):
            split = {"valid": "val"}.get(seq[pos][1], seq[pos][1])
            expected[f"seqrec:{split}:{user}:{pos}"] = ([i for i, _ in seq[max(0, pos - 10):pos]], seq[pos][0])
    allrec = pl.concat(list(recs.values()))
    assert allrec.height == len(expected)
    user_items = {u: {i for i, _ in s} for u, s in seqs.items()}
    for row in allrec.iter_rows(named=True):
        hist, target = expected[row["record_id"]]
        assert row["history_item_ids"] == hist
        assert row["target_item_id"] == target
        assert row["completion"] == f'"{title[target]}"'
        assert ", ".join(f'"{title[i]}"' for i in hist) in row["prompt"]
        neg = row["negative_item_ids"]
        assert len(neg) == 99
        assert len(set(neg)) == 99
        assert not set(neg) & user_items[int(row["user_id"])]
    again = g.build_seqrec(items, inter)
    assert again["test"]["negative_item_ids"].to_list() == recs["test"]["negative_item_ids"].to_list()
    other = g.build_seqrec(items, inter, config=g.SeqRecConfig(seed=1))
    assert other["test"]["negative_item_ids"].to_list() != recs["test"]["negative_item_ids"].to_list()


def test_seqrec_flat_interactions_global_time_split() -> None:
    items = pl.DataFrame({"item_id": list(range(20)), "title": [f"Game {i}" for i in range(20)]})
    inter = pl.DataFrame({
        "user_id": [1, 2, 1, 2, 1, 2, 1, 2, 1, 2],
        "item_id": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "timestamp": list(range(10)),
    })
    recs = g.build_seqrec(items, inter, config=g.SeqRecConfig(num_negatives=5, history_len=2))
    assert [recs[s].height for s in ("train", "val", "test")] == [6, 1, 1]
    test = recs["test"].row(0, named=True)
    assert test["target_item_id"] == 9
    assert test["history_item_ids"] == [5, 7]
    assert not set(test["negative_item_ids"]) & {1, 3, 5, 7, 9}
    with pytest.raises(g.SftDataError, match="cannot draw 15 negatives"):
        g.build_seqrec(items, inter, config=g.SeqRecConfig(num_negatives=15))
    with pytest.raises(g.SftDataError, match="item_id 99"):
        g.build_seqrec(items, inter.with_columns(item_id=pl.lit(99)))


def _ratings() -> tuple[pl.DataFrame, pl.DataFrame]:
    items = pl.DataFrame({"item_id": list(range(8)), "title": [f"Movie {i} (199{i})" for i in range(8)]})
    ratings = pl.DataFrame({
        "user_id": ["a"] * 6 + ["b"] * 4,
        "item_id": [0, 1, 2, 3, 4, 5, 0, 2, 4, 6],
        "rating": [5, 2, 4, 1, 3, 5, 4, 4, 1, 5],
        "timestamp": [1, 2, 3, 4, 5, 20, 6, 7, 8, 9],
    })
    return ratings, items


def test_ctr_records_tallrec_style() -> None:
    ratings, items = _ratings()
    recs = g.build_ctr(ratings, items, config=g.CtrConfig(history_len=3))
    allrec = pl.concat(list(recs.values()))
    assert allrec.height == 8  # every rating but each user's first
    row = allrec.filter(pl.col("record_id") == "ctr:test:a:5").row(0, named=True)
    # a's three previous: Movie 2 (4, liked), Movie 3 (1), Movie 4 (3, not > 3).
    assert row["input"] == (
        'User Preference: "Movie 2 (1992)"\nUser Unpreference: "Movie 3 (1993)", "Movie 4 (1994)"\n'
        'Whether the user will like the target movie "Movie 5 (1995)"?'
    )
    assert row["completion"] == "Yes."
    assert row["label"] == 1
    assert row["prompt"].endswith("### Input:\n" + row["input"] + "\n\n### Response:\n")
    assert allrec.filter(pl.col("record_id") == "ctr:train:b:2")["completion"].item() == "No."
    assert (allrec["label"] == (allrec["completion"] == "Yes.").cast(pl.Int64)).all()


def test_ctr_round_trips_through_tallrec_json(tmp_path) -> None:
    ratings, items = _ratings()
    recs = pl.concat(list(g.build_ctr(ratings, items).values()))
    path = tmp_path / "test.json"
    path.write_text(json.dumps(recs.select("instruction", "input", "output").to_dicts()))
    back = g.read_tallrec_json(path)
    assert back["input"].to_list() == recs["input"].to_list()
    assert back["label"].to_list() == recs["label"].to_list()
    assert back["prompt"].to_list() == recs["prompt"].to_list()
    assert back["target_title"].to_list() == recs["target_title"].to_list()
    assert set(back["split"]) == {"test"}


def test_read_tallrec_json_real(shared_data: Path) -> None:
    for name, yes, no in (("valid", 658, 342), ("test", 528, 472)):
        recs = g.read_tallrec_json(shared_data / "movielens_ctr" / f"{name}.json")
        assert recs.height == yes + no
        assert int(recs["label"].sum()) == yes
        assert set(recs["split"]) == {"val" if name == "valid" else "test"}
        assert recs["target_title"].null_count() == 0
        raw = json.loads((shared_data / "movielens_ctr" / f"{name}.json").read_text())
        assert recs["messages"][0].to_list()[1]["content"] == raw[0]["input"]


def test_read_tallrec_json_bad_input(tmp_path) -> None:
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps([{"instruction": "i", "input": "x", "output": "Maybe."}]))
    with pytest.raises(g.SftDataError, match=r"train\.json: field 'output' must be 'Yes\.' or 'No\.' at row 0: 'Maybe\.'"):
        g.read_tallrec_json(bad)
    bad.write_text("{not json")
    with pytest.raises(g.SftDataError, match="not valid JSON"):
        g.read_tallrec_json(bad)


def test_cli_builds_seqrec_and_ctr(tmp_path, amazon: tuple[pl.DataFrame, pl.DataFrame], shared_data: Path) -> None:
    from genrec_sftdata._cli import main

    items, inter = amazon
    items.write_parquet(tmp_path / "items.parquet")
    inter.filter(pl.col("user_id") < 100).write_parquet(tmp_path / "inter.parquet")
    assert main(["build", "--task", "seqrec", "--input", str(tmp_path / "items.parquet"),
                 "--input", str(tmp_path / "inter.parquet"), "--num-negatives", "9", "--out", str(tmp_path / "s")]) == 0
    test = pl.read_parquet(tmp_path / "s" / "test.parquet")
    assert test["negative_item_ids"].list.len().unique().to_list() == [9]
    assert main(["build", "--task", "ctr", "--input", str(shared_data / "movielens_ctr" / "valid.json"),
                 "--out", str(tmp_path / "c"), "--write-format", "jsonl"]) == 0
    assert pl.read_ndjson(tmp_path / "c" / "val.jsonl").height == 1000


def test_seqrec_sample_per_split(amazon: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, inter = amazon
    full = g.build_seqrec(items, inter, config=g.SeqRecConfig(num_negatives=3))
    some = g.build_seqrec(items, inter, config=g.SeqRecConfig(num_negatives=3, max_records_per_split=50))
    for split in ("train", "val", "test"):
        assert some[split].height == min(50, full[split].height)
        assert set(some[split]["record_id"]) <= set(full[split]["record_id"])
