"""Intervals, paired tests and the honest-protocol flags, checked against scipy where it has the test."""

from __future__ import annotations

import json
import math
from itertools import product

import numpy as np
import polars as pl
import pytest

from genrec_core import validate_metrics
from genrec_evaluator import evaluate_ctr, evaluate_next_poi, run_baselines, write_report
from genrec_evaluator._analysis import answer_in_history
from genrec_evaluator._stats import (
    Uncertainty,
    binom_two_sided_half,
    bootstrap_auc,
    compare_auc,
    compare_columns,
    delong_test,
    mcnemar_exact,
    mean_intervals,
    sign_flip_test,
    verdict,
)

from .conftest import make_poi_records, make_train


def test_interval_contains_point_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        x = (rng.random(n) < 0.3).astype(float)
        ci, boot = mean_intervals({"acc@1": x}, Uncertainty(n_boot=500, seed=1))
        assert boot.shape == (500, 1)
        assert ci["acc@1"]["low"] <= x.mean() <= ci["acc@1"]["high"]
        widths.append(ci["acc@1"]["high"] - ci["acc@1"]["low"])
    assert widths[0] > widths[1] > widths[2]
    # the normal approximation's width 2 * 1.96 * sqrt(p (1 - p) / n), within Monte Carlo error
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 5000), rel=0.15)


def test_bootstrap_is_seeded_and_paired() -> None:
    x = np.random.default_rng(3).random(200)
    u = Uncertainty(n_boot=300, seed=7)
    a = mean_intervals({"m": x}, u)[1]
    b = mean_intervals({"m": x * 2}, u)[1]
    assert np.allclose(2 * a, b)  # same records, same resamples
    c = mean_intervals({"m": x}, Uncertainty(n_boot=300, seed=8))[1]
    assert not np.allclose(a, c)


def test_bootstrap_matches_scipy_percentile() -> None:
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(5).exponential(size=300)
    ci, _ = mean_intervals({"m": x}, Uncertainty(n_boot=4000, seed=0))
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    se = x.std() / math.sqrt(x.size)
    assert ci["m"]["low"] == pytest.approx(ref.low, abs=0.1 * se)
    assert ci["m"]["high"] == pytest.approx(ref.high, abs=0.1 * se)


@pytest.mark.parametrize(("k", "n"), [(0, 0), (0, 5), (1, 9), (3, 20), (10, 20), (40, 100), (12, 13), (480, 1000)])
def test_binomial_p_matches_scipy(k: int, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    ref = 1.0 if n == 0 else stats.binomtest(k, n, 0.5).pvalue
    assert binom_two_sided_half(k, n) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mcnemar_counts_discordant_pairs() -> None:
    a = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    p, wins, losses = mcnemar_exact(a, b)
    assert (wins, losses) == (8, 1)
    assert p == pytest.approx(2 * sum(math.comb(9, i) for i in range(2)) / 2**9)


def test_sign_flip_exact_matches_scipy_permutation_test() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a, b = rng.random(12) + 0.2, rng.random(12)
    p, exact = sign_flip_test(a - b, n_perm=1000, seed=0)
    assert exact
    ref = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", n_resamples=10**6
    ).pvalue
    assert p == pytest.approx(ref, rel=1e-9)


def test_sign_flip_monte_carlo_close_to_exact() -> None:
    d = np.random.default_rng(4).normal(0.1, 1.0, size=40)
    p_mc, exact = sign_flip_test(d, n_perm=20000, seed=0)
    assert not exact
    # the t-test's p approximates the permutation p for a mean of 40 differences
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    p_t = math.erfc(abs(t) / math.sqrt(2))
    assert p_mc == pytest.approx(p_t, abs=0.05)


def _delong_brute(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(s: np.ndarray) -> np.ndarray:
        d = s[pos][:, None] - s[neg][None, :]
        return (d > 0) + 0.5 * (d == 0)

    pa, pb = psi(a), psi(b)
    v10 = np.vstack([pa.mean(1), pb.mean(1)])
    v01 = np.vstack([pa.mean(0), pb.mean(0)])
    s = np.cov(v10) / pos.size + np.cov(v01) / neg.size
    z = (pa.mean() - pb.mean()) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return math.erfc(abs(z) / math.sqrt(2))


def test_delong_matches_brute_force_and_auc_bootstrap() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 120)
    a = y + rng.normal(0, 1.0, 120)
    b = np.round(y + rng.normal(0, 1.5, 120), 1)  # ties
    assert delong_test(y, a, b) == pytest.approx(_delong_brute(y, a, b), rel=1e-9)
    assert delong_test(y, a, a) == 1.0
    boot = bootstrap_auc(y, [a], Uncertainty(n_boot=200, seed=0))[:, 0]
    from genrec_evaluator import auc

    assert boot.min() <= auc(y, a) <= boot.max()
    # weighted AUC under unit weights is the AUC
    from genrec_evaluator._stats import _weighted_auc

    assert _weighted_auc(y, b, np.ones((1, y.size)))[0] == pytest.approx(auc(y, b))


def test_planted_difference_beats_and_identical_cannot_be_told_apart() -> None:
    rng = np.random.default_rng(0)
    n = 400
    strong = {"acc@1": (rng.random(n) < 0.5).astype(float), "mrr": rng.random(n) * 0.8 + 0.2}
    weak = {"acc@1": (rng.random(n) < 0.2).astype(float), "mrr": rng.random(n) * 0.5}
    u = Uncertainty(n_boot=500, seed=0)
    win = compare_columns(strong, weak, u)
    assert win["acc@1"]["p"] < 0.05 and win["acc@1"]["verdict"] == "beats"
    assert win["acc@1"]["test"] == "mcnemar-exact" and win["mrr"]["verdict"] == "beats"
    assert win["acc@1"]["low"] > 0 and win["acc@1"]["low"] <= win["acc@1"]["diff"] <= win["acc@1"]["high"]
    lose = compare_columns(weak, strong, u)
    assert lose["acc@1"]["verdict"] == "is beaten by" and lose["mrr"]["verdict"] == "is beaten by"
    same = compare_columns(strong, strong, u)
    assert all(c["verdict"] == "cannot be told apart from" and c["p"] == 1.0 for c in same.values())
    assert verdict(0.1, 0.2) == "cannot be told apart from"
    y = rng.integers(0, 2, n)
    good, noise = y + rng.normal(0, 0.5, n), rng.random(n)
    assert compare_auc(y, good, noise, u)["verdict"] == "beats"


class _Oracle:
    """Puts the answer first on ``hit`` of the records, else a fixed wrong order."""

    def __init__(self, records: pl.DataFrame, hit: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.answer = {c: (t if rng.random() < hit else None) for c, t in zip(records["completion"], records["target_poi_idx"])}
        self.by_prefix = {c.rsplit("POI id", 1)[0] + "POI id": c for c in records["completion"]}

    def score(self, query, continuations):
        target = self.answer[self.by_prefix[query.completion_prefix]]
        ids = np.array([int("".join(ch for ch in c if ch.isdigit())) for c in continuations])
        return np.where(ids == target, 1.0, -ids / 1e4)

    def generate(self, query, *, seed):
        target = self.answer[self.by_prefix[query.completion_prefix]]
        return "oops" if seed % 5 == 0 else f" {target if target is not None else 0}."


def _records(n: int) -> pl.DataFrame:
    recs = make_poi_records(n=n, num_pois=40)
    # distinct completions so the oracle can tell records apart
    return recs.with_columns(
        (pl.lit("At t") + pl.col("record_id") + pl.lit(", user ") + pl.col("user_id")
         + pl.lit(" will visit POI id ") + pl.col("target_poi_idx").cast(pl.String) + pl.lit(".")).alias("completion")
    )


def test_next_poi_report_says_beats_with_intervals(tmp_path) -> None:
    recs = _records(80)
    from genrec_evaluator import NextPoiConfig

    result = evaluate_next_poi(recs, model=_Oracle(recs, 0.6), train=make_train(), config=NextPoiConfig(n_boot=300, limit=70))
    m = result.metrics
    for system, sm in m.items():
        for key in ("acc@1", "acc@10", "ndcg@5", "mrr"):
            assert sm["ci"][key]["low"] <= sm[key] <= sm["ci"][key]["high"], (system, key)
        for group in sm["by_length"].values():
            assert group["ci"]["acc@1"]["low"] <= group["acc@1"] <= group["ci"]["acc@1"]["high"]
    assert isinstance(m["model"]["acc@1"], float) and m["model"]["n"] == 70
    vs = m["model"]["vs"]["popularity"]["acc@1"]
    assert vs["verdict"] == "beats" and vs["p"] < 0.05 and vs["test"] == "mcnemar-exact" and vs["n"] == 70
    assert set(m["model"]["by_history"]) <= {"in history", "not in history"}
    write_report(result, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    validate_metrics(on_disk)
    assert on_disk["model"]["vs"]["popularity"]["acc@1"]["verdict"] == "beats"
    report = (tmp_path / "report.md").read_text()
    assert "The model beats popularity on acc@1" in report
    assert ("mcnemar-exact p = " in report) or ("mcnemar-exact p < " in report)
    assert "a subset: 70 of 80 records (the first 70 (limit))" in report
    assert "Answer already in the prompt's history" in report
    protocol = json.loads((tmp_path / "run.json").read_text())["protocol"]
    assert protocol["full_split"] is False and protocol["n"] == 70 and protocol["split_records"] == 80
    assert 0.0 <= protocol["answer_in_history"]["share"] <= 1.0
    assert "(n=" in report  # group columns carry their n


def test_generate_mode_reports_invalid_rate(tmp_path) -> None:
    recs = _records(20)
    result = evaluate_next_poi(recs, model=_Oracle(recs, 1.0), train=make_train(), mode="generate")
    assert result.metrics["model"]["invalid"] == 4 and result.metrics["model"]["invalid_rate"] == pytest.approx(0.2)
    assert result.meta["protocol"]["invalid_rate"] == pytest.approx(0.2)
    write_report(result, tmp_path, plots=False)
    assert "Invalid outputs" in (tmp_path / "report.md").read_text()


def test_identical_systems_cannot_be_told_apart(tmp_path) -> None:
    from genrec_evaluator import BaselineConfig

    result = run_baselines(_records(30), make_train(), config=BaselineConfig(n_boot=200, split_records=30))
    assert "vs" not in result.metrics["popularity"]
    assert result.meta["protocol"]["full_split"] is True
    # the model is a copy of the popularity baseline: every comparison with it is a tie
    from genrec_evaluator._baselines import next_poi_metrics

    preds = {"model": result.predictions["popularity"], "popularity": result.predictions["popularity"]}
    m = next_poi_metrics(result.records, preds, {}, Uncertainty(n_boot=200))
    assert all(c["verdict"] == "cannot be told apart from" for c in m["model"]["vs"]["popularity"].values())


def test_answer_in_history_from_column_or_prompt() -> None:
    recs = pl.DataFrame({
        "target_poi_idx": [3, 4, 5],
        "history_poi_idx": [[1, 3], [2], []],
        "prompt": ["", "", "At noon, user 1 visited POI id 5 which is a Bar."],
    })
    flags, source = answer_in_history(recs)
    assert flags.tolist() == [True, False, True] and source == "history_poi_idx + prompt"
    flags, source = answer_in_history(recs.drop("history_poi_idx"))
    assert flags.tolist() == [False, False, True] and source == "prompt"
    assert answer_in_history(recs.select("target_poi_idx")) is None


def test_ctr_intervals_and_comparisons(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)

    class Clairvoyant:
        def __init__(self) -> None:
            self.i = 0

        def score(self, query, continuations):
            y = int(query.prompt.split()[-1])
            return np.array([0.0, -2.0]) if y else np.array([-2.0, 0.0])

        def generate(self, query, *, seed):
            return ""

    recs = pl.DataFrame({"prompt": [f"label {int(y) if rng.random() < 0.8 else 1 - int(y)}" for y in labels], "label": labels})
    from genrec_evaluator import CtrConfig

    result = evaluate_ctr(recs, model=Clairvoyant(), config=CtrConfig(n_boot=300))
    m = result.metrics
    for s in m:
        assert m[s]["ci"]["auc"]["low"] <= m[s]["auc"] <= m[s]["ci"]["auc"]["high"]
        assert m[s]["ci"]["accuracy"]["low"] <= m[s]["accuracy"] <= m[s]["ci"]["accuracy"]["high"]
    assert m["model"]["vs"]["random"]["auc"]["verdict"] == "beats"
    assert m["model"]["vs"]["majority"]["accuracy"]["test"] == "mcnemar-exact"
    write_report(result, tmp_path, plots=False)
    validate_metrics(json.loads((tmp_path / "metrics.json").read_text()))
    assert "The model beats random on auc" in (tmp_path / "report.md").read_text()


def test_exhaustive_small_sign_flip() -> None:
    d = np.array([0.5, 0.25, -0.1, 0.3])
    stats = np.array([abs(sum(s * x for s, x in zip(signs, d))) for signs in product((1, -1), repeat=4)])
    p, exact = sign_flip_test(d, n_perm=10, seed=0)
    assert exact and p == pytest.approx(np.mean(stats >= abs(d.sum()) - 1e-12))


def test_plot_helpers_carry_intervals_and_n() -> None:
    from genrec_evaluator._report import _errors, group_tick_labels

    bars = _errors([0.5, 0.2], [{"low": 0.4, "high": 0.7}, None])
    assert bars is not None and np.allclose(bars, [[0.1, 0.0], [0.2, 0.0]])
    assert _errors([0.5], [None]) is None
    metrics = {"model": {"n": 12, "by_length": {"short": {"n": 9}, "long": {"n": 3}}}}
    assert group_tick_labels(metrics, "by_length", ["short", "middle", "long"]) == ["short (n=9)", "middle (n=0)", "long (n=3)"]


def test_seqrec_intervals_and_comparisons(tmp_path) -> None:
    from genrec_evaluator import HashingEmbedder, evaluate_seqrec

    titles = [f"item {i} {'x' * (i % 7)}" for i in range(30)]
    items = pl.DataFrame({"item_id": list(range(30)), "title": titles})
    targets = [i % 30 for i in range(60)]
    records = pl.DataFrame({
        "record_id": [f"r{i}" for i in range(60)], "target_item_id": targets,
        "history_item_ids": [[(t + 1) % 30, (t + 2) % 30] for t in targets],
    })
    # the model names the target exactly on every record: it must beat popularity
    result = evaluate_seqrec(records, items, generations=[titles[t] for t in targets], embedder=HashingEmbedder())
    m = result.metrics
    assert m["model"]["ci"]["hr@1"]["low"] <= m["model"]["hr@1"] <= m["model"]["ci"]["hr@1"]["high"]
    assert m["model"]["vs"]["popularity"]["hr@1"]["verdict"] == "beats"
    assert m["model"]["vs"]["popularity"]["ndcg@10"]["test"].startswith("sign-flip")
    assert result.meta["protocol"]["invalid_rate"] == 0.0
    write_report(result, tmp_path, plots=False)
    assert "The model beats popularity on ndcg@10" in (tmp_path / "report.md").read_text()
