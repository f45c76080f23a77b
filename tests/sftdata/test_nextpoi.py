"""GenUP-style next_poi records against a plain-Python rendering of the same rules."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

import genrec_sftdata as g

from .conftest import make_checkins


def _sentence(row: dict) -> str:
    return (
        f"At {row['local_time']:%Y-%m-%d %H:%M:%S}, user {row['user_id']} visited POI id {row['poi_idx']} "
        f"which is a/an {row['category_name']} with category id {row['category_idx']}."
    )


def test_sentence_expr_matches_the_genup_template() -> None:
    frame = pl.DataFrame(
        {"local_time": [datetime(2012, 4, 3, 18, 0, 9)], "user_id": ["470"], "poi_idx": [12],
         "category_name": ["Coffee Shop"], "category_idx": [3]}
    )
    out = frame.select(g.checkin_sentence_expr()).item()
    assert out == "At 2012-04-03 18:00:09, user 470 visited POI id 12 which is a/an Coffee Shop with category id 3."


def _expected_records(data: g.PreparedData, every_prefix: bool) -> dict[str, dict]:
    """Independent reference: Python loops over trajectories."""
    out = {}
    ck = data.checkins.sort("user_id", "utc_time")
    trajs: dict[str, list[dict]] = {}
    for row in ck.iter_rows(named=True):
        trajs.setdefault(row["trajectory_id"], []).append(row)
    for tid, rows in trajs.items():
        targets = range(1, len(rows)) if every_prefix else [len(rows) - 1]
        for k in targets:
            t = rows[k]
            hist = rows[:k]
            user = (
                f"The following data is a trajectory of user {t['user_id']}: "
                + " ".join(_sentence(r) for r in hist)
                + f"\nGiven the data, At {t['local_time']:%Y-%m-%d %H:%M:%S}, Which POI id will user {t['user_id']} "
                f"visit? Note that POI id is an integer in the range from 0 to {data.num_pois}."
            )
            completion = f"At {t['local_time']:%Y-%m-%d %H:%M:%S}, user {t['user_id']} will visit POI id {t['poi_idx']}."
            out[f"next_poi:{t['split']}:{tid}:{k}"] = {
                "user": user, "completion": completion, "target": t["poi_idx"],
                "history": [r["poi_idx"] for r in hist], "split": t["split"],
                "target_category_idx": t["category_idx"],
            }
    return out


@pytest.mark.parametrize("every_prefix", [False, True])
def test_records_match_reference(small_prepared: g.PreparedData, every_prefix: bool) -> None:
    recs = g.build_next_poi(small_prepared, config=g.NextPoiConfig(every_prefix=every_prefix))
    allrec = pl.concat(list(recs.values()))
    expected = _expected_records(small_prepared, every_prefix)
    assert allrec.height == len(expected)
    assert allrec["record_id"].n_unique() == allrec.height
    for row in allrec.iter_rows(named=True):
        exp = expected[row["record_id"]]
        assert row["messages"][1] == {"role": "user", "content": exp["user"]}
        assert row["messages"][2] == {"role": "assistant", "content": exp["completion"]}
        assert row["messages"][0]["role"] == "system"
        assert row["prompt"] == f"{g.NextPoiConfig().system_prompt}\n\n{exp['user']}"
        assert row["completion"] == exp["completion"]
        assert row["target_poi_idx"] == exp["target"]
        assert row["history_poi_idx"] == exp["history"]
        assert row["n_checkins"] == len(exp["history"])
        assert row["split"] == exp["split"]
        assert row["target_category_idx"] == exp["target_category_idx"]
        assert row["num_pois"] == small_prepared.num_pois
        assert row["task"] == "next_poi"


def test_profile_system_part_and_llama2_format() -> None:
    rows = [("u1", "a1", 0), ("u1", "b1", 1), ("u1", "c1", 2), ("u2", "a1", 0.5), ("u2", "b1", 1.5)]
    data = g.prepare(make_checkins(rows), config=g.PrepareConfig(
        min_poi_checkins=0, min_user_checkins=0, train_frac=1.0, val_frac=0.0))
    profiles = pl.DataFrame({
        "user_id": ["u1", "u2"], "traits": [["extroverted", "open"], ["introverted"]], "age": ["25-34", "40"],
        "gender": ["female", "male"], "education": ["college", "high school"], "socioeco": ["middle", "low"],
        "preferences": [["coffee"], ["parks"]], "routines": [["gym at 7"], []], "summary": ["Likes cafes.", "x"],
        "status": ["ok", "failed"],
    })
    recs = g.build_next_poi(data, profiles, config=g.NextPoiConfig(prompt_format="llama2"))["train"]
    by_user = {r["user_id"]: r for r in recs.iter_rows(named=True)}
    sys_u1 = by_user["u1"]["messages"][0]["content"]
    assert sys_u1 == (
        "You are user u1 and your basic information is as follows:\nAge: 25-34; Gender: female; "
        "Education: college; SocioEco: middle.\nYou have the following traits: extroverted, open.\n"
        "You have the following preferences: coffee.\nYou have the following routines: gym at 7.\nLikes cafes."
    )
    # A failed profile falls back to the default system text.
    assert by_user["u2"]["messages"][0]["content"] == g.NextPoiConfig().system_prompt
    p = by_user["u1"]["prompt"]
    assert p.startswith("<s>[INST] <<SYS>>\n" + sys_u1 + "\n<</SYS>>\n\n")
    assert p.endswith(" [/INST]")
    assert by_user["u1"]["completion"] == f" {by_user['u1']['messages'][2]['content']} </s>"


def test_max_history_and_history_block(small_prepared: g.PreparedData) -> None:
    full = g.build_next_poi(small_prepared, config=g.NextPoiConfig(every_prefix=True))["train"]
    short = g.build_next_poi(small_prepared, config=g.NextPoiConfig(every_prefix=True, max_history=2))["train"]
    assert short["n_checkins"].max() == 2
    joined = full.join(short, on="record_id", suffix="_s")
    assert (joined["history_poi_idx"].list.tail(2) == joined["history_poi_idx_s"]).all()
    hist = g.build_next_poi(small_prepared, config=g.NextPoiConfig(history_checkins=3))["test"]
    with_block = hist.filter(pl.col("prompt").str.contains("There is also historical data: "))
    assert with_block.height == hist.height  # every test user has earlier check-ins
    assert with_block["prompt"][0].count(" visited POI id ") == with_block["n_checkins"][0] + 3
    # Reference: the user's three check-ins just before the trajectory's first one, oldest first.
    ck = small_prepared.checkins.sort("user_id", "utc_time")
    for row in hist.head(20).iter_rows(named=True):
        mine = ck.filter(pl.col("user_id") == row["user_id"])
        start = mine.filter(pl.col("trajectory_id") == row["trajectory_id"])["utc_time"].min()
        before = [_sentence(r) for r in mine.filter(pl.col("utc_time") < start).tail(3).iter_rows(named=True)]
        assert f". There is also historical data: {' '.join(before)}\nGiven the data, " in row["prompt"]


def test_write_records_formats(small_prepared: g.PreparedData, tmp_path) -> None:
    recs = g.build_next_poi(small_prepared)
    g.write_records(recs, tmp_path / "pq")
    assert pl.read_parquet(tmp_path / "pq" / "test.parquet").equals(recs["test"])
    g.write_records(recs, tmp_path / "js", format="jsonl")
    back = pl.read_ndjson(tmp_path / "js" / "val.jsonl")
    assert back["prompt"].to_list() == recs["val"]["prompt"].to_list()
    assert back["messages"].to_list() == recs["val"]["messages"].to_list()
    one = g.write_records(recs["train"], tmp_path / "train.jsonl")
    assert pl.read_ndjson(one).height == recs["train"].height
    assert not list(tmp_path.glob("**/*.tmp"))


def test_hf_dataset_writer(small_prepared: g.PreparedData, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    recs = g.build_next_poi(small_prepared)
    g.write_records(recs, tmp_path / "hf", format="hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(ds) == {"train", "val", "test"}
    assert ds["test"].num_rows == recs["test"].height
    assert ds["test"][0]["prompt"] == recs["test"]["prompt"][0]
    assert ds["test"][0]["messages"] == recs["test"]["messages"][0].to_list()


def test_genup_layout_round_trip(small_prepared: g.PreparedData, tmp_path) -> None:
    """Our records written in GenUP's published layout parse back to the same task fields."""
    datasets = pytest.importorskip("datasets")
    recs = g.build_next_poi(small_prepared)
    genup = {
        split: frame.select(
            system_prompt=pl.col("messages").list.get(0).struct.field("content"),
            inputs=pl.col("messages").list.get(1).struct.field("content"),
            targets=pl.col("completion"),
        )
        for split, frame in recs.items()
        if split != "val"
    }
    datasets.DatasetDict({s: datasets.Dataset(f.to_arrow()) for s, f in genup.items()}).save_to_disk(
        str(tmp_path / "genup")
    )
    back = g.read_genup_records(tmp_path / "genup")
    assert set(back) == {"train", "test"}
    for split, frame in back.items():
        ours = recs[split]
        for col in ("user_id", "prompt", "completion", "messages", "target_poi_idx", "n_checkins",
                    "target_time", "history_poi_idx", "num_pois"):
            assert frame[col].to_list() == ours[col].to_list(), col
    with pytest.raises(g.SftDataError, match="read_genup_records"):
        g.read_checkins(tmp_path / "genup")
    bad = genup["test"].with_columns(targets=pl.lit("I think POI 3"))
    with pytest.raises(g.SftDataError, match=r"row 0 is not a GenUP next-POI record"):
        g.read_genup_records(bad)


def test_row_order_of_the_input_does_not_matter(small_prepared: g.PreparedData) -> None:
    shuffled = g.PreparedData(
        checkins=small_prepared.checkins.sample(fraction=1.0, shuffle=True, seed=3),
        train=small_prepared.train, val=small_prepared.val, test=small_prepared.test,
        stats=small_prepared.stats,
    )
    a = g.build_next_poi(small_prepared)["test"].sort("record_id")
    b = g.build_next_poi(shuffled)["test"].sort("record_id")
    assert a.equals(b)
    with pytest.raises(g.SftDataError, match="missing column 'poi_idx'"):
        g.build_next_poi(g.PreparedData(
            checkins=small_prepared.checkins.drop("poi_idx"), train=small_prepared.train,
            val=small_prepared.val, test=small_prepared.test, stats=small_prepared.stats,
        ))
