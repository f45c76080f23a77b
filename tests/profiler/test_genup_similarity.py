"""GenUP's reasoning prompt and profile-similarity settings (notebooks/06_profile_similarity.ipynb),
with a tiny fake encoder."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from genrec_profiler import GENUP_COT_PROMPT, genup_cot_prompt, profile_json_schema, similar_users


def test_cot_prompt_is_gpt_py_text() -> None:
    want = (
        "S\n\nI\n\nT\n\nWith a step-by-step reasoning, think and suggest why they might have intended on visiting "
        "that POI. Analyze the user's profiles, previous visits in trajectory, time of visit of the POI, and their "
        "routines. DO NOT mention or analyze the selected POI id at all. You may suggest POI categories that they "
        "might have wanted to visit at that hour and based on their profile and trajectory. Return your response in "
        'JSON format: {"profile_analysis": ..., "trajectory_analysis": ..., "time_of_visit_analysis": ..., '
        '"routines_and_preferences_analysis": ..., "potential_categories_of_interest_analysis": ..., '
        '"verdict": ...}. All values should be in string format.'
    )
    assert genup_cot_prompt("S", "I", "T") == want
    assert "{system_prompt}" in GENUP_COT_PROMPT
    schema = profile_json_schema("genup_cot")
    assert schema["required"][0] == "profile_analysis" and len(schema["required"]) == 6


def _profile(uid: str, text: str) -> dict[str, object]:
    obj = {"traits": ["open"], "attributes": ["adult", "male", "high school", "middle"], "preferences": ["cafes"],
           "routines": ["walks"], "user_profile": text}
    return {"user_id": uid, "summary": text, "raw": json.dumps(obj), "status": "ok"}


def test_similarity_genup_settings() -> None:
    frame = pl.DataFrame([_profile("10", "b"), _profile("2", "a"), _profile("3", "c")])
    seen: list[str] = []
    vecs = {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.0, 1.0]}

    def encoder(texts: Sequence[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([vecs[t.rsplit("\n", 1)[1]] for t in texts])

    table = similar_users(frame, encoder=encoder, protocol="genup")
    # GenUP embeds the whole system prompt, users in integer-id order.
    assert seen[0] == (
        "You are user 2 and your basic information is as follows:\n"
        "Age: adult; Gender: male; Education: high school; SocioEco: middle.\n"
        "You have the following traits: open.\nYou have the following preferences: cafes.\n"
        "You have the following routines: walks.\na"
    )
    assert table["user_id"].to_list() == ["2", "3", "10"]
    row = table.row(0, named=True)
    # k=100 keeps every other user here; cosine, rounded to 4 decimals.
    assert row["similar_user_ids"] == ["10", "3"]
    assert row["similarities"] == [pytest.approx(0.7071, abs=0), 0.0]
    assert row["similarities"][0] == 0.7071
    # Defaults stay ours: the summary is embedded and k=5.
    seen.clear()
    ours = similar_users(frame, encoder=lambda t: np.array([vecs[x] for x in t]))
    assert ours["user_id"].to_list() == ["10", "2", "3"]
    with pytest.raises(Exception, match="protocol"):
        similar_users(frame, encoder=encoder, protocol="nope")
