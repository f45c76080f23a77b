"""protocol="genup": GenUP's records byte for byte. Expected strings are written out by hand from
GenUP's create_sft_dataset.py (create_system_prompt, process_qa_pair, LLAMA_PROMPT) and LLM4POI's
to_nextpoi_kqt.py (generate_qa_pairs)."""

from __future__ import annotations

import json

import polars as pl
import pytest

import genrec_sftdata as g

PROFILE = {
    "traits": ["introverted", "agreeable", "conscientious", "emotionally stable", "open"],
    "attributes": ["adult", "female", "college & beyond", "middle"],
    "preferences": ["Coffee Shop", "Parks"],
    "routines": ["Morning coffee", "Weekend walks"],
    "user_profile": "User 7 likes coffee.",
}
SYSTEM = (
    "You are user 7 and your basic information is as follows:\n"
    "Age: adult; Gender: female; Education: college & beyond; SocioEco: middle.\n"
    "You have the following traits: introverted, agreeable, conscientious, emotionally stable, open.\n"
    "You have the following preferences: Coffee Shop, Parks.\n"
    "You have the following routines: Morning coffee, Weekend walks.\n"
    "User 7 likes coffee."
)


def llm4poi_rows() -> pl.DataFrame:
    """User 7: trajectory 1 (three check-ins on day 1), trajectory 2 (three on day 2), trajectory 3 (one)."""
    rows = [
        (1, 0, 1, "Cafe", "2012-04-03 08:00:00", 1000),
        (1, 1, 2, "Park", "2012-04-03 09:00:00", 2000),
        (1, 2, 1, "Cafe", "2012-04-03 10:00:00", 3000),
        (2, 3, 1, "Cafe", "2012-04-04 09:00:00", 90000),
        (2, 4, 2, "Park", "2012-04-04 10:00:00", 91000),
        (2, 5, 3, "Bar", "2012-04-04 12:00:00", 92000),
        (3, 6, 3, "Bar", "2012-04-05 22:00:00", 180000),
    ]
    return pl.DataFrame(
        {
            "UserId": [7] * len(rows),
            "PoiId": [r[1] for r in rows],
            "PoiCategoryId": [r[2] for r in rows],
            "PoiCategoryName": [r[3] for r in rows],
            "UTCTimeOffset": [r[4] for r in rows],
            "UTCTimeOffsetEpoch": [r[5] for r in rows],
            "pseudo_session_trajectory_id": [r[0] for r in rows],
        }
    )


Q1 = (
    "<question>: The following data is a trajectory of user 7: "
    "At 2012-04-03 08:00:00, user 7 visited POI id 0 which is a Cafe and has Category id 1. "
    "At 2012-04-03 09:00:00, user 7 visited POI id 1 which is a Park and has Category id 2. "
    "Given the data, At 2012-04-03 10:00:00, Which POI id will user 7 visit? "
    "Note that POI id is an integer in the range from 0 to 10."
)
Q2 = (
    "<question>: The following data is a trajectory of user 7: "
    "At 2012-04-04 09:00:00, user 7 visited POI id 3 which is a Cafe and has Category id 1. "
    "At 2012-04-04 10:00:00, user 7 visited POI id 4 which is a Park and has Category id 2. "
    "There is also historical data: "
    "At 2012-04-03 08:00:00, user 7 visited POI id 0 which is a Cafe and has Category id 1. "
    "At 2012-04-03 09:00:00, user 7 visited POI id 1 which is a Park and has Category id 2. "
    "At 2012-04-03 10:00:00, user 7 visited POI id 2 which is a Cafe and has Category id 1. "
    "Given the data, At 2012-04-04 12:00:00, Which POI id will user 7 visit? "
    "Note that POI id is an integer in the range from 0 to 10."
)
INPUTS1 = (
    "The following data is a trajectory of user 7: "
    "At 2012-04-03 08:00:00, user 7 visited POI id 0 which is a Cafe and has Category id 1. "
    "At 2012-04-03 09:00:00, user 7 visited POI id 1 which is a Park and has Category id 2. "
    "Given the data, At 2012-04-03 10:00:00, Which POI id will user 7 visit? "
    "Note that POI id is an integer in the range from 0 to 10.\n"
    "Given the data, At 2012-04-03 10:00:00, Which POI id will user 7 visit? "
    "Note that POI id is an integer in the range from 0 to 10."
)
INPUTS2 = (
    "The following data is a trajectory of user 7: "
    "At 2012-04-04 09:00:00, user 7 visited POI id 3 which is a Cafe and has Category id 1. "
    "At 2012-04-04 10:00:00, user 7 visited POI id 4 which is a Park and has Category id 2.\n"
    "Given the data, At 2012-04-04 12:00:00, Which POI id will user 7 visit? "
    "Note that POI id is an integer in the range from 0 to 10."
)
LLAMA2 = (
    "<s>[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + INPUTS2
    + " [/INST] At 2012-04-04 12:00:00, user 7 will visit POI id 5. </s>"
)


def test_system_prompt_is_genups_create_system_prompt() -> None:
    assert g.genup_system_prompt(PROFILE, "7") == SYSTEM


def test_profile_ablations() -> None:
    assert g.genup_system_prompt(PROFILE, "7", profile_fields="summary") == "User 7 likes coffee."
    assert g.genup_system_prompt(PROFILE, "7", profile_fields="summary+routines+preferences") == (
        "You have the following preferences: Coffee Shop, Parks.\n"
        "You have the following routines: Morning coffee, Weekend walks.\n"
        "User 7 likes coffee."
    )
    with pytest.raises(g.SftDataError, match="profile_fields"):
        g.genup_system_prompt(PROFILE, "7", profile_fields="traits")


def test_llm4poi_question_answer_pairs() -> None:
    qa = g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10)
    assert qa["question"].to_list()[:2] == [Q1, Q2]
    assert qa["answer"].to_list()[:2] == [
        "<answer>: At 2012-04-03 10:00:00, user 7 will visit POI id 2.",
        "<answer>: At 2012-04-04 12:00:00, user 7 will visit POI id 5.",
    ]
    # One check-in with history: LLM4POI replaces the question header (and GenUP drops the pair).
    assert qa["question"][2].startswith("There is historical data for user 7: At 2012-04-03 08:00:00, user 7 ")
    # history_rows caps the historical block at its most recent rows.
    capped = g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10, history_rows=1)["question"][1]
    assert "There is also historical data: At 2012-04-03 10:00:00, user 7 visited POI id 2 " in capped
    assert "POI id 0 which" not in capped.split("There is also")[1]


def test_genup_record_byte_for_byte() -> None:
    qa = g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10)
    recs = g.genup_records_from_qa(qa, {"7": PROFILE}, split="train")
    assert recs.height == 2  # the one-check-in pair has no '<question>:' and is dropped, as in GenUP
    first, second = recs.row(0, named=True), recs.row(1, named=True)
    assert first["inputs"] == INPUTS1  # no history: GenUP's cut keeps the question twice
    assert second["system_prompt"] == SYSTEM
    assert second["inputs"] == INPUTS2
    assert second["targets"] == "At 2012-04-04 12:00:00, user 7 will visit POI id 5."
    assert second["llama_prompt"] == LLAMA2
    assert second["prompt"] + second["completion"] == LLAMA2
    assert second["prompt"].endswith(" [/INST]") and second["completion"].startswith(" At ")
    assert second["protocol"] == "genup" and second["text_has_bos"]
    # The presence-only history (what build_genup_records uses) gives the same records.
    lean = g.genup_records_from_qa(g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10, history="presence"),
                                   {"7": PROFILE}, split="train")
    assert lean["llama_prompt"].to_list() == recs["llama_prompt"].to_list()


def test_genup_profile_from_table_rows() -> None:
    raw_row = {"user_id": "7", "raw": json.dumps(PROFILE, indent=4), "summary": "normalised", "status": "repaired"}
    assert g.genup_profile(raw_row) == PROFILE  # the raw GenUP object, not the normalised columns
    cols = {"user_id": "8", "raw": None, "traits": ["open to experience"], "age": "adult", "gender": "male",
            "education": "high school", "socioeco": "upper", "preferences": ["p"], "routines": ["r"],
            "summary": "S."}
    assert g.genup_system_prompt(g.genup_profile(cols), "8") == (
        "You are user 8 and your basic information is as follows:\n"
        "Age: adult; Gender: male; Education: high school; SocioEco: upper.\n"
        "You have the following traits: open to experience.\n"
        "You have the following preferences: p.\n"
        "You have the following routines: r.\n"
        "S."
    )
    assert g.genup_profile({"user_id": "9", "raw": "garbage", "summary": None}) is None


def test_build_next_poi_genup_over_prepared(small_prepared: g.PreparedData) -> None:
    users = small_prepared.train["user_id"].unique().sort().to_list()
    profiles = {u: {**PROFILE, "user_profile": f"User {u}."} for u in users[:-1]}
    cfg = g.NextPoiConfig(protocol="genup")
    records = g.build_next_poi(small_prepared, profiles, config=cfg)  # type: ignore[arg-type]
    train = records["train"]
    assert train.height > 0 and set(records) == {"train", "val", "test"}
    assert (train["prompt"] + train["completion"] == train["llama_prompt"]).all()
    assert train["prompt"].str.starts_with("<s>[INST] <<SYS>>\n").all()
    assert train["protocol"].unique().to_list() == ["genup"] and train["text_has_bos"].all()
    assert (train["n_cut"] == 0).all()
    row = train.filter(pl.col("user_id") == users[0]).row(0, named=True)
    assert row["system_prompt"] == g.genup_system_prompt(profiles[users[0]], users[0])
    assert row["inputs"].count(" which is a ") == row["n_checkins"]
    assert row["targets"] == f"At {row['target_time']:%Y-%m-%d %H:%M:%S}, user {row['user_id']} will visit POI id {row['target_poi_idx']}."
    # Same pairs as LLM4POI's construction over the mapped check-ins.
    lf = g.llm4poi_frame(small_prepared.checkins)
    split = small_prepared.checkins["split"]
    qa = g.llm4poi_qa_pairs(lf.filter(split == "test"), lf.filter(split == "train"),
                            num_pois=small_prepared.num_pois)
    direct = g.genup_records_from_qa(qa, profiles, split="test", default_system=cfg.system_prompt)
    assert sorted(direct["llama_prompt"].to_list()) == sorted(records["test"]["llama_prompt"].to_list())
    # Users without a profile get the default system prompt and are flagged.
    assert not train.filter(pl.col("user_id") == users[-1])["has_profile"].any()


def test_genup_refuses_genrec_options() -> None:
    for opts in ({"max_history": 5}, {"every_prefix": True}, {"history_checkins": 3}, {"max_length": 100}):
        with pytest.raises(g.SftDataError, match="protocol='genup'"):
            g.NextPoiConfig(protocol="genup", **opts)  # type: ignore[arg-type]


def test_genrec_profile_fields_and_protocol_column(small_prepared: g.PreparedData) -> None:
    users = small_prepared.train["user_id"].unique().sort().to_list()
    profiles = pl.DataFrame(
        {
            "user_id": users, "traits": [["open to experience"]] * len(users), "age": ["adult"] * len(users),
            "gender": ["male"] * len(users), "education": ["high school"] * len(users),
            "socioeco": ["upper"] * len(users), "preferences": [["p"]] * len(users),
            "routines": [["r"]] * len(users), "summary": ["S."] * len(users),
        }
    )
    full = g.build_next_poi(small_prepared, profiles)["train"]
    assert full["protocol"].unique().to_list() == ["genrec"] and not full["text_has_bos"].any()
    summary = g.build_next_poi(small_prepared, profiles, config=g.NextPoiConfig(profile_fields="summary"))["train"]
    assert summary["prompt"].str.starts_with("S.\n\nThe following data").all()
    mid = g.build_next_poi(
        small_prepared, profiles, config=g.NextPoiConfig(profile_fields="summary+routines+preferences")
    )["train"]
    assert mid["prompt"].str.starts_with(
        "You have the following preferences: p.\nYou have the following routines: r.\nS.\n\n"
    ).all()


def test_read_genup_records_sources(tmp_path) -> None:
    qa = g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10)
    recs = g.genup_records_from_qa(qa, {"7": PROFILE}, split="train").select(
        "system_prompt", "inputs", "targets", "llama_prompt"
    )
    # A hub snapshot's layout: data/<split>-*.parquet.
    (tmp_path / "hub" / "data").mkdir(parents=True)
    recs.write_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    recs.tail(1).write_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    out = g.read_genup_records(tmp_path / "hub", protocol="genup")
    assert set(out) == {"train", "test"}
    row = out["train"].row(1, named=True)
    assert row["prompt"] + row["completion"] == LLAMA2
    assert row["llama_prompt"] == LLAMA2 and row["text_has_bos"] and row["protocol"] == "genup"
    assert row["target_poi_idx"] == 5 and row["history_poi_idx"] == [3, 4] and row["num_pois"] == 10
    plain = g.read_genup_records(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")["train"].row(1, named=True)
    assert plain["prompt"] == SYSTEM + "\n\n" + INPUTS2 and plain["protocol"] == "genrec"


def test_cli_genup_records(tmp_path, capsys) -> None:
    from genrec_sftdata._cli import main

    qa = g.llm4poi_qa_pairs(llm4poi_rows(), num_pois=10)
    g.genup_records_from_qa(qa, {"7": PROFILE}, split="train").select("system_prompt", "inputs", "targets").write_parquet(
        tmp_path / "train.parquet"
    )
    assert main(["genup-records", "--source", str(tmp_path / "train.parquet"), "--protocol", "genup",
                 "--out", str(tmp_path / "sft")]) == 0
    back = pl.read_parquet(tmp_path / "sft" / "train.parquet")
    assert back["llama_prompt"][1] == LLAMA2
    assert main(["genup-records", "--source", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "x")]) == 2
