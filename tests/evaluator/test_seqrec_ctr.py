"""SeqRec grounding and CTR P(Yes) -> AUC."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_evaluator import (
    EvaluatorError,
    HashingEmbedder,
    Query,
    evaluate_ctr,
    evaluate_seqrec,
    read_ctr_records,
)
from genrec_evaluator._ctr import CtrConfig, p_yes_from_logprobs

VECTORS = {"alpha": [0.0, 0.0], "beta": [1.0, 0.0], "gamma": [3.0, 0.0], "delta": [0.0, 2.5], "guess": [0.9, 0.0]}


class TableEmbedder:
    """A plugged Embedder with hand-picked 2-D vectors."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([VECTORS[t] for t in texts], dtype=float)


def _items() -> pl.DataFrame:
    return pl.DataFrame({"item_id": [10, 11, 12, 13], "title": ["alpha", "beta", "gamma", "delta"]})


def test_seqrec_hand_computed() -> None:
    records = pl.DataFrame({
        "record_id": ["a", "b", "c"],
        "target_item_id": [11, 10, 13],
        "negative_item_ids": [[12], [11, 12], [10]],
        "history_item_ids": [[12, 12], [12, 11], [10]],
    })
    # "guess" (0.9, 0) is nearest to beta (d=0.1), then alpha (0.9), gamma (2.1), delta (~2.66).
    result = evaluate_seqrec(records, _items(), generations=['"guess"', "guess", "delta"], embedder=TableEmbedder())
    ranked = result.predictions["model"]["ranked"].to_list()
    assert ranked[0] == [11, 10, 12, 13]
    assert ranked[2][0] == 13
    np.testing.assert_array_equal(result.predictions["model"]["target_rank"].to_numpy(), [1, 2, 1])
    m = result.metrics["model"]
    assert m["hr@1"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1) / 3)
    # Among target + negatives: a: {beta, gamma} -> 1; b: {alpha, beta, gamma} -> 2; c: {delta, alpha} -> 1.
    assert m["sampled_hr@1"] == pytest.approx(2 / 3)
    assert m["exact_title"] == pytest.approx(1 / 3)
    # Popularity from histories: gamma 3, beta 1, alpha 1 -> [gamma, alpha, beta, delta].
    pop = result.metrics["popularity"]
    assert pop["hr@1"] == 0.0
    assert pop["ndcg@20"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert pop["sampled_hr@1"] == pytest.approx(0.0)


def test_seqrec_errors() -> None:
    records = pl.DataFrame({"record_id": ["a"], "target_item_id": [99]})
    with pytest.raises(EvaluatorError, match=r"record 'a' \(row 0\): unknown item id target_item_id=99"):
        evaluate_seqrec(records, _items(), generations=["alpha"], embedder=TableEmbedder())
    with pytest.raises(EvaluatorError, match="empty test set"):
        evaluate_seqrec(records.head(0), _items(), generations=[], embedder=TableEmbedder())
    with pytest.raises(EvaluatorError, match="needs generations or a model"):
        evaluate_seqrec(records.with_columns(pl.lit(10).alias("target_item_id")), _items())


def test_hashing_embedder_grounds_near_titles() -> None:
    emb = HashingEmbedder()
    titles = ["The Legend of Zelda", "Super Mario Kart", "Halo 3", "Halo: Reach"]
    vecs = emb.embed(titles)
    q = emb.embed(["Legend of Zelda"])[0]
    assert int(np.argmin(((vecs - q) ** 2).sum(1))) == 0
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0)


@pytest.mark.slow  # importing sentence-transformers and encoding ~800 titles: about a minute on 2 cores
def test_seqrec_amazon_with_sentence_encoder(shared_data: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from genrec_sftdata import build_seqrec

    items = pl.read_parquet(shared_data / "amazon_games" / "items.parquet")
    inter = pl.read_parquet(shared_data / "amazon_games" / "interactions.parquet")
    users = inter.filter(pl.col("user_id").is_in(inter["user_id"].unique().sort().head(300).to_list()))
    recs = build_seqrec(items, users)["test"].head(8)
    keep = set(recs["target_item_id"].to_list()) | {i for n in recs["negative_item_ids"].to_list() for i in n}
    items = items.filter(pl.col("item_id").is_in(sorted(keep)))
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
    oracle = [f'"{titles[t]}"' for t in recs["target_item_id"].to_list()]
    good = evaluate_seqrec(recs, items, generations=oracle)
    bad = evaluate_seqrec(recs, items, generations=["a red bicycle"] * recs.height)
    assert good.metrics["model"]["sampled_hr@1"] >= 0.875
    assert good.metrics["model"]["sampled_ndcg@10"] > bad.metrics["model"]["sampled_ndcg@10"]


class YesNoScorer:
    """A plugged scorer: log-likelihoods of "Yes" / "No" read from the prompt."""

    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        yes = float(query.prompt.split("=")[1])
        return np.array([yes, 0.0]) if list(continuations) == ["Yes", "No"] else np.zeros(len(continuations))

    def generate(self, query: Query, *, seed: int) -> str:
        return "Yes."


def test_ctr_with_plugged_scorer() -> None:
    from sklearn.metrics import roc_auc_score

    logits = [2.0, -1.0, 0.5, 0.1, -3.0, 1.5]
    labels = [1, 0, 0, 1, 0, 1]
    records = pl.DataFrame({"prompt": [f"x={v}" for v in logits], "label": labels})
    result = evaluate_ctr(records, model=YesNoScorer())
    p = result.predictions["model"]["p_yes"].to_numpy()
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array(logits))))
    assert result.metrics["model"]["auc"] == pytest.approx(roc_auc_score(labels, p))
    assert result.metrics["majority"]["accuracy"] == 0.5
    assert p_yes_from_logprobs(np.log(0.3), np.log(0.1)) == pytest.approx(0.75)
    with pytest.raises(EvaluatorError, match="field label must be 0 or 1"):
        evaluate_ctr(records.with_columns(pl.lit(2).alias("label")), model=YesNoScorer())
    with pytest.raises(EvaluatorError, match="empty test set"):
        evaluate_ctr(records.head(0), model=YesNoScorer())


def test_ctr_tallrec_with_tiny_llama(tiny_llama: Path, shared_data: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from sklearn.metrics import roc_auc_score

    from genrec_evaluator._models import load_model
    from genrec_evaluator._scoring import HFScorer

    sample = json.loads((shared_data / "movielens_ctr" / "test.json").read_text())[:12]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(sample))
    records = read_ctr_records(path)
    assert records["label"].to_list() == [int(s["output"].startswith("Yes")) for s in sample]
    result = evaluate_ctr(records, model=tiny_llama, config=CtrConfig(format="prompt"))
    p = result.predictions["model"]["p_yes"].to_numpy()
    assert result.metrics["model"]["auc"] == pytest.approx(roc_auc_score(records["label"].to_numpy(), p))
    # P(Yes) of the first record by hand: softmax over the logits of "Y" and "N" (the tokenizer's first tokens).
    model, tok = load_model(tiny_llama)
    ids = HFScorer(model, tok, fmt="prompt")._head(Query(prompt=records["prompt"][0], completion_prefix=""))
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    y, n = tok.convert_tokens_to_ids(["Y", "N"])
    assert p[0] == pytest.approx(float(torch.softmax(logits[[y, n]], -1)[0]), rel=1e-5)
