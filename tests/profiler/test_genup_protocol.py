"""GenUP's profiles: its prompt byte for byte (gpt.py), its schema and files (generate_user_profile.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from genrec_profiler import (
    Completion,
    OpenAIBackend,
    ProfilerConfig,
    ProfileRequest,
    ProfilerError,
    generate_profiles,
    parse_profile,
    read_genup_profiles,
    write_genup_profiles,
)

GENUP = {
    "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open"],
    "attributes": ["adult", "male", "college & beyond", "middle"],
    "preferences": ["American cuisine", "Coffee and socializing"],
    "routines": ["Frequent coffee shop visits", "Brunch on weekends"],
    "user_profile": "User 1000 is an adult male who enjoys coffee (POI IDs: 374, 4686).",
}

# gpt.py's prompt filled by hand for user 7 and the three check-ins below.
EXPECTED_PROMPT = (
    "Given the following check-ins of user 7, generate a 200-word user profile summary to be used as a system "
    "prompt to another LLM that simulates this person's behavior, preferences, routines, hobbies, schedule, etc. "
    "Predict this user's Big Five Inventory traits: (1) extroverted / introverted, (2) agreeable / antagonistic, "
    "(3) conscientious / unconscientious, (4) neurotic / emotionally stable, (5) open / closed to experience. "
    "Also predict their age: child (<13) / adolescent (13-17) / adult (18-64) / older adult (>64); their gender: "
    "male / female; their educational background: some schooling / high school / college & beyond; and their "
    "socioeconomic level: lower / middle / upper. Also include any patterns that is observed and POI IDs of "
    "important places that might be visited in the future in the user profile summary. This system prompt will "
    "be used to make future check-in predictions. Return your response in JSON format: {\"traits\": [trait1, "
    "trait2, trait3, trait4, trait5], \"attributes\": [age, gender, edu, socioeco], \"preferences\": "
    "[preference1, preference2, preference3, ...], \"routines\": [routine1, routine2, routine3, ...], "
    "\"user_profile\": \"200-word user profile summary\"}\n"
    "At 2012-04-03 18:00:09, user 7 visited POI id 12 which is a/an Coffee Shop with category id 3. "
    "At 2012-04-03 20:15:00, user 7 visited POI id 40 which is a/an Bar with category id 8. "
    "At 2012-04-04 08:05:30, user 7 visited POI id 12 which is a/an Coffee Shop with category id 3."
)


def three_checkins() -> pl.DataFrame:
    local = [datetime(2012, 4, 3, 18, 0, 9), datetime(2012, 4, 3, 20, 15), datetime(2012, 4, 4, 8, 5, 30)]
    return pl.DataFrame(
        {
            "user_id": ["7"] * 3,
            "poi_id": ["a", "b", "a"],
            "category_name": ["Coffee Shop", "Bar", "Coffee Shop"],
            "latitude": [40.7, 40.71, 40.7],
            "longitude": [-73.9, -73.91, -73.9],
            "local_time": local,
            "utc_time": [t + timedelta(hours=4) for t in local],
            "poi_idx": [12, 40, 12],
            "category_idx": [3, 8, 3],
            "split": ["train"] * 3,
        }
    )


class Recorder:
    backend = "recorder"
    model = "fake"
    prompt_token_budget = 10  # a cap the genup protocol must ignore

    def __init__(self) -> None:
        self.requests: list[ProfileRequest] = []

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def complete(self, requests):
        self.requests.extend(requests)
        return [Completion(text=json.dumps(GENUP)) for _ in requests]


def test_genup_prompt_byte_for_byte(tmp_path: Path) -> None:
    client = Recorder()
    result = generate_profiles(three_checkins(), config=ProfilerConfig(protocol="genup"), client=client,
                               out=tmp_path / "p.parquet")
    (request,) = client.requests
    assert request.messages == ({"role": "user", "content": EXPECTED_PROMPT},)
    assert request.json_mode and request.draft is None
    table = pl.read_parquet(result.path)
    assert table["n_checkins_used"].to_list() == [3] and table["n_checkins_cut"].to_list() == [0]
    assert table["status"].to_list() == ["ok"]
    write_genup_profiles(result.path, tmp_path / "files")
    assert json.loads((tmp_path / "files" / "user_profile_7.json").read_text()) == GENUP


def test_genup_protocol_refuses_caps() -> None:
    with pytest.raises(ProfilerError, match="max_checkins"):
        ProfilerConfig(protocol="genup", max_checkins=5)


def test_json_mode_is_sent_for_genup_requests() -> None:
    backend = OpenAIBackend(base_url="http://127.0.0.1:9", model="m", response_format="none")
    request = ProfileRequest(user_id="7", messages=({"role": "user", "content": "x"},), digest=None,  # type: ignore[arg-type]
                             json_mode=True)
    assert backend._payload(request)["response_format"] == {"type": "json_object"}
    backend.close()


def test_parse_profile_reads_genups_schema_natively() -> None:
    parsed = parse_profile(json.dumps(GENUP, indent=4))
    assert parsed.status == "ok" and parsed.schema == "genup" and parsed.repairs == ()
    assert (parsed.age, parsed.gender, parsed.education, parsed.socioeco) == ("adult", "male", "college & beyond", "middle")
    assert parsed.traits[-1] == "open to experience"
    assert parsed.summary == GENUP["user_profile"]
    bad = parse_profile(json.dumps({**GENUP, "attributes": ["adult", "male"]}))
    assert bad.status == "failed" and "attributes" in (bad.error or "")


def genup_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "nyc"
    folder.mkdir()
    other = {**GENUP, "attributes": ["Adult (18-64)", "female", "high school", "lower"], "hobbies": ["chess"],
             "user_profile": "  Spaces kept. "}
    for user, obj in (("1000", GENUP), ("2", other)):
        (folder / f"user_profile_{user}.json").write_text(json.dumps(obj, indent=4))
    return folder


def test_genup_files_round_trip(tmp_path: Path) -> None:
    folder = genup_folder(tmp_path)
    table = read_genup_profiles(folder)
    assert table["user_id"].to_list() == ["2", "1000"]  # GenUP's integer order
    assert table["status"].to_list() == ["repaired", "ok"]
    assert table["age"].to_list() == ["adult", "adult"] and table["backend"].to_list() == ["genup", "genup"]
    assert json.loads(table["extra"][0]) == {"hobbies": ["chess"]}
    table.write_parquet(tmp_path / "profiles.parquet")
    written = write_genup_profiles(tmp_path / "profiles.parquet", tmp_path / "out")
    assert len(written) == 2
    for name in ("user_profile_1000.json", "user_profile_2.json"):
        assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes()
    # GenUP's pushed table layout reads to the same profiles.
    pushed = pl.DataFrame({"user_id": ["1000"], **{k: [v] for k, v in GENUP.items()}})
    pushed.write_parquet(tmp_path / "pushed.parquet")
    again = read_genup_profiles(tmp_path / "pushed.parquet")
    assert again.select("traits", "age", "summary").rows() == table.filter(pl.col("user_id") == "1000").select(
        "traits", "age", "summary").rows()


def test_cli_parse_genup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genrec_profiler._cli import main

    folder = genup_folder(tmp_path)
    assert main(["parse", str(folder), "--out", str(tmp_path / "p.parquet")]) == 0
    out = capsys.readouterr().out
    assert "user 1000: ok" in out and "user 2: repaired" in out
    assert pl.read_parquet(tmp_path / "p.parquet").height == 2
    assert main(["parse", str(folder / "user_profile_1000.json"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["user_id"] == "1000" and line["status"] == "ok"
    assert main(["export-genup", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "files")]) == 0
    assert (tmp_path / "files" / "user_profile_2.json").read_bytes() == (folder / "user_profile_2.json").read_bytes()
    assert main(["parse", str(tmp_path / "missing")]) == 2
