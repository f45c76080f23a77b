"""GenUP's chain-of-thought variant: the reasoning prompt, the CoT record text and the answer parser,
checked against strings written by hand from GenUP's create_sft_dataset.py / gpt.py / eval_next_poi_cot.py."""

from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl
import pytest

from genrec_sftdata import (
    build_genup_cot_records,
    genup_cot_reasoning_text,
    parse_cot_answer,
    parse_cot_reasoning,
    read_genup_records,
)

SYSTEM = "You are user 0 and your basic information is as follows:\nAge: adult."
INPUTS = (
    "The following data is a trajectory of user 0: At 2012-06-10 15:44:25, user 0 visited POI id 3672 which is "
    "a Flea Market and has Category id 254.\nGiven the data, At 2012-06-11 14:05:49, Which POI id will user 0 "
    "visit? Note that POI id is an integer in the range from 0 to 4981."
)
TARGETS = "At 2012-06-11 14:05:49, user 0 will visit POI id 693."
REASONING = {"profile_analysis": "Social.", "potential_categories_of_interest_analysis": "Cafes.", "verdict": "Lunch."}


def _records() -> dict[str, pl.DataFrame]:
    frame = pl.DataFrame({"system_prompt": [SYSTEM], "inputs": [INPUTS], "targets": [TARGETS]})
    train = read_genup_records(frame, protocol="genup")["train"]
    return {"train": train, "test": train.with_columns(split=pl.lit("test"))}


def test_reasoning_text_is_genup_stringify() -> None:
    assert genup_cot_reasoning_text(REASONING) == (
        "Profile Analysis: Social.\nPotential Categories Of Interest Analysis: Cafes.\nVerdict: Lunch.\n"
    )
    # Values that are not strings are written as Python's str, as GenUP's f-string does.
    assert genup_cot_reasoning_text({"a_b": ["x", 1]}) == "A B: ['x', 1]\n"


def test_cot_record_text_is_llama_cot_prompt() -> None:
    recs = build_genup_cot_records(_records(), [REASONING])
    train, test = recs["train"], recs["test"]
    want = (
        "<s>[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + INPUTS + " [/INST]"
        "<think>Profile Analysis: Social.\nPotential Categories Of Interest Analysis: Cafes.\nVerdict: Lunch.\n"
        "</think><output>" + TARGETS + "</output></s>"
    )
    assert train["llama_prompt"][0] == want
    assert train["prompt"][0] + train["completion"][0] == want
    assert train["prompt"][0].endswith(" [/INST]")
    assert train["messages"][0][2]["content"].startswith("<think>Profile Analysis")
    # GenUP's test records keep the plain LLAMA_PROMPT.
    assert test["llama_prompt"][0] == "<s>[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + INPUTS + " [/INST] " + TARGETS + " </s>"


def test_missing_reasoning() -> None:
    recs = _records()
    with pytest.raises(Exception, match="no reasoning"):
        build_genup_cot_records(recs, [None])
    assert build_genup_cot_records(recs, [None], missing="drop")["train"].height == 0
    plain = build_genup_cot_records(recs, [None], missing="plain")["train"]
    assert plain["completion"][0] == " " + TARGETS + " </s>"


def test_reasoning_table_from_profiler() -> None:
    # The reasoning is written by a profiler backend: genrec-sftdata alone does not have one.
    profiler = pytest.importorskip("genrec_profiler")
    Completion, ProfileRequest, write_cot_reasoning = (
        profiler.Completion, profiler.ProfileRequest, profiler.write_cot_reasoning
    )

    class Fake:
        backend = "fake"
        model = "fake"
        prompt_token_budget = None

        def __init__(self) -> None:
            self.seen: list[ProfileRequest] = []

        def count_tokens(self, texts: Sequence[str]) -> list[int]:
            return [len(t) for t in texts]

        def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
            self.seen.extend(requests)
            return [Completion(text=json.dumps(REASONING)) for _ in requests]

    client = Fake()
    records = _records()
    table = write_cot_reasoning(records, client)
    assert table["status"].to_list() == ["ok"]
    assert table["reasoning"][0] == genup_cot_reasoning_text(REASONING)
    request = client.seen[0]
    assert request.json_mode and request.protocol == "genup_cot" and len(request.messages) == 1
    assert request.messages[0]["content"].startswith(SYSTEM + "\n\n" + INPUTS + "\n\n" + TARGETS + "\n\nWith a")
    cot = build_genup_cot_records(records, table)["train"]
    assert cot["completion"][0].startswith("<think>Profile Analysis: Social.\n")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<think>Lunch time.</think><output>At 2012-06-11 14:05:49, user 0 will visit POI id 693.</output></s>", "693"),
        ("693. </s>", "693"),  # the continuation GenUP decodes after its forced 'POI id '
        (" 12</output>", "12"),
        ("<think>3 visits at 14:00</think><output>At 2012-06-11 14:05:49, user 0 will visit POI id</output>", None),
        ("I cannot tell.", None),
    ],
)
def test_parse_cot_answer(text: str, want: str | None) -> None:
    assert parse_cot_answer(text) == want


def test_parse_cot_reasoning() -> None:
    assert parse_cot_reasoning("[/INST]<THINK> a\nb </think>x") == "a\nb"
    assert parse_cot_reasoning("no tags") == ""
