"""protocol="genup": GenUP's eval_next_poi.py decoding and parsing, and its two analyses, against rules
worked out by hand from GenUP's scripts (and, where pandas is installed, against pandas running the
same selection GenUP's scripts run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from genrec_evaluator import (
    EvaluatorError,
    NextPoiConfig,
    Query,
    evaluate_next_poi,
    genup_activity_groups,
    genup_answer,
    genup_city,
    genup_family,
    genup_generation_settings,
    genup_split_prompt,
    genup_user_activity,
    genup_value_groups,
)
from genrec_evaluator._analysis import LENGTH_GROUPS, USER_GROUPS, trajectory_length_groups

SCRIPT = {"temperature": 0.6, "top_k": 40, "top_p": 0.1, "typical_p": 1.0, "repetition_penalty": 1.176, "max_new_tokens": 5}
TKY_CA = {"temperature": 0.65, "top_k": 50, "top_p": 0.92, "typical_p": 0.95, "repetition_penalty": 1.0, "max_new_tokens": 5}
MOSCOW_SP = {"temperature": 0.6, "top_k": 50, "top_p": 0.1, "typical_p": 0.95, "repetition_penalty": 1.0, "max_new_tokens": 5}


@pytest.mark.parametrize(
    ("model", "city", "expected"),
    [
        # README: Llama-2 NYC command passes no sampling flags -> eval_next_poi.py defaults.
        ("w11wo/Llama-2-7b-longlora-32k-merged", "FourSquare-NYC-POI", SCRIPT),
        ("w11wo/Llama-2-7b-longlora-32k-merged-FourSquare-NYC-POI", "tky", SCRIPT),
        ("llama2", "ca", SCRIPT),
        # README / eval_next_poi.sh: Meta-Llama-3.1-8B on FourSquare-TKY-POI.
        ("meta-llama/Meta-Llama-3.1-8B", "FourSquare-TKY-POI", TKY_CA),
        # README: Meta-Llama-3.2-1B-FourSquare-TKY-POI on Gowalla-CA-POI.
        ("w11wo/Meta-Llama-3.2-1B-FourSquare-TKY-POI", "w11wo/Gowalla-CA-POI", TKY_CA),
        ("meta-llama/Llama-3.2-1B", "ca", TKY_CA),
        # README: Llama-3.1-8B on Moscow, Meta-Llama-3.2-1B on Sao Paulo.
        ("w11wo/Llama-3.1-8B-FourSquare-Moscow-POI", "FourSquare-Moscow-POI", MOSCOW_SP),
        ("w11wo/Meta-Llama-3.2-1B-FourSquare-SaoPaulo-POI", "FourSquare-SaoPaulo-POI", MOSCOW_SP),
        # No command for Llama-3.x on NYC: the script's defaults.
        ("llama3", "nyc", SCRIPT),
        ("meta-llama/Meta-Llama-3.1-8B", "New York", SCRIPT),
        # Not a Llama: nothing published, the script's defaults.
        ("smollm2", None, SCRIPT),
        (None, None, SCRIPT),
    ],
)
def test_genup_generation_settings_table(model: str | None, city: str | None, expected: dict[str, Any]) -> None:
    assert genup_generation_settings(model, city) == expected


def test_genup_settings_need_a_city_for_llama3() -> None:
    with pytest.raises(EvaluatorError, match="--city"):
        genup_generation_settings("meta-llama/Meta-Llama-3.1-8B", None)


def test_city_and_family_names(tmp_path: Path) -> None:
    assert [genup_city(c) for c in ("w11wo/FourSquare-NYC-POI", "FourSquare-TKY-POI", "w11wo/Gowalla-CA-POI",
                                     "FourSquare-Moscow-POI", "FourSquare-SaoPaulo-POI", "tokyo", "records/")] == [
        "nyc", "tky", "ca", "moscow", "sao_paulo", "tky", None]
    assert genup_family("w11wo/Llama-2-7b-longlora-32k-merged") == "llama2"
    assert genup_family("meta-llama/Meta-Llama-3.1-8B") == "llama3"
    assert genup_family("smollm2") is None


def test_genup_cut_and_answer() -> None:
    line = ("<s>[INST] <<SYS>>\nYou are user 1.\n<</SYS>>\n\nThe following data is a trajectory of user 1: ... "
            "[/INST] At 2013-01-03 10:13:27, user 1 will visit POI id 123. </s>")
    prompt, target = genup_split_prompt(line)  # type: ignore[misc]
    assert prompt.startswith("<s>[INST] <<SYS>>") and prompt.endswith("will visit POI id ")
    assert target == "123"
    assert genup_split_prompt("no answer here") is None
    # Every digit of the 5 new tokens, in order: "12. 5" is "125", not 12.
    assert genup_answer("123. </s>") == "123"
    assert genup_answer("12. 5") == "125"
    assert genup_answer(" banana") == ""


# -- analyses -----------------------------------------------------------------------------------------


def test_length_groups_by_value_with_ties() -> None:
    # Nine records; n = 9 // 3 = 3. The 3 smallest values are 1, 1, 1 -> every length <= 1 is short
    # (four records); the 3 largest are 4, 4, 3 -> every length >= 3 is long (four); the 2 is middle.
    lengths = [3, 1, 4, 1, 2, 1, 4, 3, 1]
    expected = ["long", "short", "long", "short", "middle", "short", "long", "long", "short"]
    assert genup_value_groups(lengths, LENGTH_GROUPS) == expected
    # Ours keeps equal thirds (ties broken by id): 3 / 3 / 3.
    ours = trajectory_length_groups(pl.DataFrame({"trajectory_id": [f"t{i}" for i in range(9)], "n_checkins": lengths}))
    assert ours["length_group"].value_counts().sort("length_group")["count"].to_list() == [3, 3, 3]
    # Fewer than 3 records: nothing is short or long. All equal: short wins over long.
    assert genup_value_groups([5, 7], LENGTH_GROUPS) == ["middle", "middle"]
    assert genup_value_groups([2, 2, 2, 2], LENGTH_GROUPS) == ["short"] * 4


def test_activity_groups_take_n_users_each_with_ties_to_the_earliest() -> None:
    # Series order (count descending): u0 5, u1..u4 3, u5 1; n = 6 // 3 = 2. nlargest(2) = u0, u1;
    # nsmallest(2) = u5 and the earliest 3, u1, which then ends up inactive (assigned last).
    users = [f"u{i}" for i in range(6)]
    counts = [5, 3, 3, 3, 3, 1]
    assert genup_activity_groups(users, counts, USER_GROUPS) == [
        "very active", "inactive", "normal", "normal", "normal", "inactive"]


def test_genup_user_activity_counts_train_rows() -> None:
    # a 3, b 2, c d e f 1 (first seen in that order); n = 2: very active a, b; inactive c, d.
    groups = genup_user_activity(["a", "b", "a", "c", "b", "a", "d", "e", "f"])
    got = dict(zip(groups["user_id"].to_list(), groups["user_group"].to_list()))
    assert got == {"a": "very active", "b": "very active", "c": "inactive", "d": "inactive", "e": "normal", "f": "normal"}
    assert dict(zip(groups["user_id"].to_list(), groups["n_train_trajectories"].to_list()))["a"] == 3


def test_rules_match_pandas_running_genups_selection() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.integers(1, 6, size=int(rng.integers(3, 40))).tolist()
        # trajectory_length_analysis.py: value sets of nlargest / nsmallest, isin, short last.
        s = pd.Series(values)
        n = len(s) // 3
        ref = pd.Series("middle", index=s.index)
        ref[s.isin(s.nlargest(n).values)] = "long"
        ref[s.isin(s.nsmallest(n).values)] = "short"
        assert genup_value_groups(values, LENGTH_GROUPS) == ref.tolist()
        # user_cold_start_analysis.py: index sets of nlargest / nsmallest over a count-sorted series
        # (built here already in our order, which is what a stable sort gives).
        counts = sorted(values, reverse=True)
        users = [f"u{i}" for i in range(len(counts))]
        series = pd.Series(counts, index=users)
        ref_u = pd.Series("normal", index=users)
        ref_u[ref_u.index.isin(series.nlargest(n).index)] = "very active"
        ref_u[ref_u.index.isin(series.nsmallest(n).index)] = "inactive"
        assert genup_activity_groups(users, counts, USER_GROUPS) == ref_u.tolist()


# -- evaluation ---------------------------------------------------------------------------------------


def _genup_rows(n_train: int = 9, n_test: int = 6, num_pois: int = 40, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """GenUP's SFT layout (create_sft_dataset.py): system_prompt, inputs, targets, llama_prompt."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, str]]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            user = [1, 2, 1, 3, 1, 2, 4, 5, 6][i % 9] if split == "train" else [1, 2, 3, 4, 5, 6][i % 6]
            visits = [3, 1, 4, 1, 2, 1][i % 6] if split == "test" else 2
            pois = rng.integers(0, num_pois, size=visits + 1).tolist()
            traj = " ".join(
                f"At 2012-04-0{d + 1} 0{d}:00:00, user {user} visited POI id {p} which is a Bar and has Category id 3."
                for d, p in enumerate(pois[:-1])
            )
            inputs = (f"The following data is a trajectory of user {user}: {traj}\nGiven the data, At 2012-04-09 "
                      f"10:00:00, Which POI id will user {user} visit? Note that POI id is an integer in the range "
                      f"from 0 to {num_pois}.")
            system = f"You are user {user} and your basic information is as follows:\nAge: 30."
            targets = f"At 2012-04-09 10:00:00, user {user} will visit POI id {pois[-1]}."
            llama = f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{inputs} [/INST] {targets} </s>"
            rows.append({"system_prompt": system, "inputs": inputs, "targets": targets, "llama_prompt": llama})
        out[split] = rows
    return out


def _genup_dataset(folder: Path) -> Path:
    """A hub-snapshot-shaped copy of a GenUP dataset: data/<split>-00000-of-00001.parquet."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in _genup_rows().items():
        pl.DataFrame(rows).write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


class _Replies:
    """A scorer whose generate_genup returns canned text and keeps the prompts it was given."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.seen: list[str] = []

    def score(self, query: Query, continuations: list[str]) -> np.ndarray:
        raise AssertionError("genup never ranks")

    def generate(self, query: Query, *, seed: int) -> str:
        raise AssertionError("genup uses generate_genup when the scorer has it")

    def generate_genup(self, text: str, *, seed: int) -> str:
        self.seen.append(text)
        return self.replies[len(self.seen) - 1]


def _read(folder: Path) -> dict[str, pl.DataFrame]:
    from genrec_sftdata import read_genup_records

    return read_genup_records(str(folder), protocol="genup")


def test_evaluate_genup_parses_like_genup(tmp_path: Path) -> None:
    parts = _read(_genup_dataset(tmp_path / "ds"))
    test, train = parts["test"], parts["train"]
    targets = [str(t) for t in test["target_poi_idx"].to_list()]
    # hit; digits spread over tokens (a hit: GenUP keeps every digit); no digits; another id; the target
    # with a leading zero (a miss for GenUP's string compare); the target, then more digits (a miss).
    replies = [f"{targets[0]}. </s>", f" {targets[1][0]} {targets[1][1:]}.", " banana",
               f"{(int(targets[3]) + 1) % 40}.", f"0{targets[4]}", f"{targets[5]}. At 99"]
    scorer = _Replies(replies)
    result = evaluate_next_poi(test, model=scorer, config=NextPoiConfig(protocol="genup", n_boot=20), train_records=train)
    assert all(t.startswith("<s>[INST] <<SYS>>\n") and t.endswith("will visit POI id ") for t in scorer.seen)
    preds = result.predictions["model"]
    ranks = preds["target_rank"].to_list()
    genup_hits = [genup_answer(r) == t for r, t in zip(replies, targets)]
    assert [r == 1 for r in ranks] == genup_hits
    assert result.metrics["model"]["acc@1"] == pytest.approx(np.mean(genup_hits))
    assert genup_hits == [True, True, False, False, False, False]
    assert preds["valid"].to_list() == [True, True, False, True, False, False]
    assert result.meta["mode"] == "generate" and result.meta["protocol"]["name"] == "genup"
    # Length groups by value over `inputs` visits [3, 1, 4, 1, 2, 1]: n = 2, short <= 1, long >= 3.
    assert result.records["trajectory_length"].to_list() == [3, 1, 4, 1, 2, 1]
    assert result.records["length_group"].to_list() == ["long", "short", "long", "short", "middle", "short"]
    # User groups over every train user by train rows: 1 x3, 2 x2, 3 4 5 6 x1 (first seen in that order).
    users = dict(zip(result.records["user_id"].to_list(), result.records["user_group"].to_list()))
    assert users == {"1": "very active", "2": "very active", "3": "inactive", "4": "inactive", "5": "normal", "6": "normal"}
    assert result.meta["baselines_fitted_on"].startswith("train records")


def test_genup_refuses_ranked_and_keeps_genrec_defaults() -> None:
    with pytest.raises(EvaluatorError, match="no ranked mode"):
        NextPoiConfig(protocol="genup", mode="ranked")
    from genrec_evaluator import GENREC_GENERATION, generation_settings

    assert generation_settings(NextPoiConfig()) == GENREC_GENERATION
    assert generation_settings(NextPoiConfig(protocol="genup", family="llama2"))["top_k"] == 40
    assert generation_settings(NextPoiConfig(protocol="genup", family="llama3", city="tky", top_k=7))["top_k"] == 7


def test_genup_bos_rule(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from genrec_core.models import build_tiny_model
    from genrec_evaluator._models import load_model
    from genrec_evaluator._scoring import HFScorer

    # Llama-2: the text's "<s>" is the only BOS (GenUP turns the tokenizer's off); Llama-3: the
    # tokenizer's <|begin_of_text|>, then "<s>" as plain text.
    for family, first in (("llama2", ["<s>", "["]), ("llama3", ["<|begin_of_text|>", "<"])):
        model, tok = load_model(build_tiny_model(tmp_path / family, family=family))
        ids = HFScorer(model, tok).genup_input_ids("<s>[INST] hi")
        assert tok.convert_ids_to_tokens(ids[:2]) == first


def test_cli_evaluates_a_genup_adapter(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from genrec_core.models import build_tiny_model
    from genrec_evaluator._cli import main

    base = build_tiny_model(tmp_path / "base", family="llama2")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(str(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    data = _genup_dataset(tmp_path / "FourSquare-NYC-POI")
    out = tmp_path / "run"
    # No --model: like GenUP, the base model is the one the adapter's config names.
    rc = main(["next-poi", "--protocol", "genup", "--adapter", str(tmp_path / "adapter"), "--records", str(data),
               "--out", str(out), "--n-boot", "20", "--limit", "4"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    protocol = run.get("protocol") or run.get("meta", {}).get("protocol")
    assert protocol["name"] == "genup"
    assert protocol["generation"] == SCRIPT
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["n"] == 4
    # The length groups were formed over the whole test split (6 records), then 4 scored.
    assert "by_length" in metrics["model"]
    assert "Protocol genup" in (out / "report.md").read_text()


@pytest.mark.parametrize("command", ["baselines", "next-poi", "seqrec", "ctr"])
def test_help_renders(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats help texts: a bare "%" in a field's help broke --help before.
    from genrec_evaluator._cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    if command == "next-poi":
        assert "--protocol {genrec,genup}" in capsys.readouterr().out
