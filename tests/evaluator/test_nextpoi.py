"""evaluate_next_poi with a plugged Scorer (no torch) and with a tiny random Llama."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_evaluator import (
    EvaluationResult,
    EvaluatorError,
    Scorer,
    acc_at_k,
    evaluate_next_poi,
    mrr,
    ndcg_at_k,
)
from genrec_evaluator._nextpoi import NextPoiConfig, parse_poi_id, split_completion
from genrec_evaluator._protocols import Query


class DistanceScorer:
    """Prefers ids close to a fixed number parsed from the prompt's last history id: a real, plugged
    scorer whose ranking we can predict by hand."""

    def __init__(self, answers: Sequence[str] = ()) -> None:
        self.answers = list(answers)
        self.calls = 0

    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        anchor = int(query.prompt.split("POI ids ")[1].split(".")[0].split(", ")[-1])
        ids = np.array([int(c.strip(" .")) for c in continuations])
        return -np.abs(ids - anchor).astype(float)

    def generate(self, query: Query, *, seed: int) -> str:
        self.calls += 1
        return self.answers[(self.calls - 1) % len(self.answers)]


def test_completion_and_id_parsing() -> None:
    assert split_completion("At 10:00, user 3 will visit POI id 42.") == ("At 10:00, user 3 will visit POI id", " ", ".")
    assert split_completion(" At x, user 3 will visit POI id 42. </s>")[2] == ". </s>"
    with pytest.raises(EvaluatorError, match=r"record 'r9'.*field completion"):
        split_completion("I think it is 42", record_id="r9")
    assert parse_poi_id(" 17. At", 40) == 17
    assert parse_poi_id("17", 10) is None
    assert parse_poi_id(" POI 3", 40) is None


def test_plugged_scorer_ranked(poi_records: pl.DataFrame, poi_train: pl.DataFrame) -> None:
    scorer = DistanceScorer()
    assert isinstance(scorer, Scorer)
    result = evaluate_next_poi(poi_records, model=scorer, train=poi_train, config=NextPoiConfig(save_top=40))
    assert isinstance(result, EvaluationResult)
    assert result.systems == ["model", "random", "popularity", "user_frequent", "markov"]
    preds = result.predictions["model"]
    # Expected order by hand: ids sorted by distance to the last history id, ties to the smaller id.
    for row, ranked in zip(poi_records.iter_rows(named=True), preds["ranked"].to_list()):
        last = row["history_poi_idx"][-1]
        assert ranked == sorted(range(40), key=lambda i: (abs(i - last), i))
    lists, targets = preds["ranked"].to_list(), poi_records["target_poi_idx"].to_list()
    m = result.metrics["model"]
    assert m["acc@1"] == acc_at_k(lists, targets, 1)
    assert m["acc@10"] == acc_at_k(lists, targets, 10)
    assert m["ndcg@5"] == pytest.approx(ndcg_at_k(lists, targets, 5))
    assert m["mrr"] == pytest.approx(mrr(lists, targets))
    assert m["invalid"] == 0
    assert set(m["by_user_activity"]) <= {"inactive", "normal", "very active"}
    assert result.meta["baselines_fitted_on"] == "train check-ins"


def test_plugged_scorer_with_retriever(poi_records: pl.DataFrame, poi_train: pl.DataFrame) -> None:
    config = NextPoiConfig(candidates="popularity", top_n=5)
    result = evaluate_next_poi(poi_records, model=DistanceScorer(), train=poi_train, config=config)
    pop = result.predictions["popularity"]["ranked"].to_list()
    for ranked, top in zip(result.predictions["model"]["ranked"].to_list(), pop):
        assert sorted(ranked) == sorted(top[:5])
    # Targets outside the retrieved candidates are misses, not errors.
    ranks = result.predictions["model"]["target_rank"].to_numpy()
    assert np.all(np.isinf(ranks) | (ranks <= 5))


def test_generate_mode_counts_invalid(poi_records: pl.DataFrame) -> None:
    target0 = poi_records["target_poi_idx"][0]
    answers = [f" {target0}.", " banana", " 999.", " 3"]
    result = evaluate_next_poi(poi_records, model=DistanceScorer(answers), mode="generate")
    preds = result.predictions["model"]
    assert preds["valid"].to_list() == [True, False, False, True, True, False]
    assert preds["generated"].to_list()[:2] == [f" {target0}.", " banana"]
    m = result.metrics["model"]
    assert m["invalid"] == 3
    expected = np.mean([p == [t] for p, t in zip(preds["ranked"].to_list(), poi_records["target_poi_idx"])])
    assert m["acc@1"] == pytest.approx(expected)
    assert m["acc@1"] >= 1 / 6
    assert result.meta["baselines_fitted_on"].startswith("record histories")


def test_bad_input(poi_records: pl.DataFrame) -> None:
    with pytest.raises(EvaluatorError, match="empty test set"):
        evaluate_next_poi(poi_records.head(0), model=DistanceScorer())
    with pytest.raises(EvaluatorError, match=r"record 'r2' \(row 2\).*unknown POI id target_poi_idx=40"):
        evaluate_next_poi(poi_records.with_columns(pl.when(pl.col("record_id") == "r2").then(40).otherwise(pl.col("target_poi_idx")).alias("target_poi_idx")), model=DistanceScorer())
    with pytest.raises(EvaluatorError, match="has no target"):
        evaluate_next_poi(poi_records.with_columns(pl.lit(None, dtype=pl.Int64).alias("target_poi_idx")), model=DistanceScorer())
    with pytest.raises(EvaluatorError, match="field completion"):
        evaluate_next_poi(poi_records.with_columns(pl.lit("no id here").alias("completion")), model=DistanceScorer())
    with pytest.raises(EvaluatorError, match="mode must be"):
        NextPoiConfig(mode="beam")  # type: ignore[arg-type]


def test_tiny_llama_ranked_equals_brute_force(tiny_llama: Path, poi_records: pl.DataFrame, poi_train: pl.DataFrame) -> None:
    pytest.importorskip("torch")
    from genrec_evaluator._models import load_model
    from genrec_evaluator._nextpoi import _queries
    from genrec_evaluator._scoring import HFScorer

    records = poi_records.head(3)
    config = NextPoiConfig(dtype="float64", format="prompt", batch_size=16, save_top=40)
    result = evaluate_next_poi(records, model=tiny_llama, train=poi_train, config=config)
    model, tok = load_model(tiny_llama, dtype="float64")
    scorer = HFScorer(model, tok, fmt="prompt")
    for (query, sep, end), ranked in zip(_queries(records), result.predictions["model"]["ranked"].to_list()):
        brute = scorer.score_each(query, [f"{sep}{i}{end}" for i in range(40)])
        assert ranked == np.argsort(-brute, kind="stable").tolist()


def test_tiny_llama_generate_is_deterministic(tiny_llama: Path, poi_records: pl.DataFrame) -> None:
    pytest.importorskip("torch")
    config = NextPoiConfig(mode="generate", temperature=1.0, top_k=20, top_p=0.95, max_new_tokens=4, seed=7)
    a = evaluate_next_poi(poi_records.head(3), model=tiny_llama, config=config)
    b = evaluate_next_poi(poi_records.head(3), model=tiny_llama, config=config)
    assert a.predictions["model"]["generated"].to_list() == b.predictions["model"]["generated"].to_list()
    m = a.metrics["model"]
    assert m["invalid"] == int((~a.predictions["model"]["valid"]).sum())
    assert 0 <= m["acc@1"] <= 1
