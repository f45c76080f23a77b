"""The baselines GORACS compares with: EL2N, CCS, D2-Pruning."""

from __future__ import annotations

import numpy as np
import pytest

from genrec_otcoreset import OtCoresetError, select
from genrec_otcoreset._baselines import ccs, ccs_budgets, ccs_strata, d2_pruning, el2n, knn_graph
from genrec_otcoreset._cost import build_cost, exact_poo


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = rng.normal(size=(40, 6)).astype(np.float32)
    g = rng.gamma(2.0, size=120)
    s = rng.uniform(size=120)
    return x, g, y, s


@pytest.mark.parametrize("method", ["el2n", "ccs", "d2"])
def test_budget_distinct_deterministic_and_exact_poo(data, method):
    x, g, y, s = data
    kw = dict(embeddings=x, grad_norms=g, val_embeddings=y, budget=25, method=method, scores=s, device="cpu")
    a = select(**kw, seed=3)
    b = select(**kw, seed=3)
    assert a.indices.size == 25 and np.unique(a.indices).size == 25
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.method == method and a.seconds > 0 and a.trace == (a.poo,)
    assert a.poo == pytest.approx(exact_poo(build_cost(x, g, y, lam=0.1, device="cpu"), a.indices), abs=1e-9)
    # Labels: run per label, shares by validation frequency.
    lab = np.arange(120) % 2
    vlab = np.arange(40) % 4 == 0
    res = select(**kw, labels=lab, val_labels=vlab.astype(int))
    assert np.unique(res.indices).size == 25 and (lab[res.indices] == 1).sum() == 6


def test_el2n_keeps_the_largest_scores():
    assert el2n(np.array([0.2, 0.9, 0.5, 0.9, 0.1]), 3).tolist() == [1, 3, 2]


def test_scores_default_to_grad_norms(data):
    x, g, y, _ = data
    res = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=5, method="el2n", device="cpu")
    assert res.indices.tolist() == np.argsort(-g, kind="stable")[:5].tolist()


def test_ccs_strata_budgets_and_cutoff():
    # Scores 0..9: 5 strata of width 9*1.0001/5 hold 2 each.
    s = np.arange(10, dtype=float)
    assert np.bincount(ccs_strata(s, 5)).tolist() == [2, 2, 2, 2, 2]
    # Sizes 1, 5, 0, 3 and budget 7: smallest first: 1 -> min(1, 7//3)=1, 3 -> min(3, 6//2)=3, 5 -> 3.
    assert ccs_budgets(np.array([1, 5, 0, 3]), 7).tolist() == [1, 3, 0, 3]
    # The top-up gives what the floors left to the largest strata with room.
    assert ccs_budgets(np.array([4, 4, 4]), 11).tolist() == [3, 4, 4]
    # Cutoff 0.2 of 10 drops the two hardest (8, 9); 4 strata over 0..7 hold 2 each; budget 4: one each.
    picked = ccs(s, 4, seed=0, strata=4, cutoff=0.2)
    assert sorted(int(v) // 2 for v in picked) == [0, 1, 2, 3]
    assert not set(picked.tolist()) & {8, 9}
    # A cutoff that would leave too few records prunes only what the budget allows.
    assert sorted(ccs(s, 9, seed=0, strata=3, cutoff=0.5).tolist()) == list(range(9))
    np.testing.assert_array_equal(ccs(s, 4, seed=0, strata=4, cutoff=0.2), picked)


def test_knn_graph_excludes_self_and_orders_by_distance():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    nbr, dist = knn_graph(x, 2)
    assert nbr.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    np.testing.assert_allclose(dist, [[1, 3], [1, 2], [2, 3], [4, 6]])


def test_d2_picks_the_densest_first_and_down_weights_its_neighbours():
    # Two tight pairs far apart; with k=1 each pair is its own graph component.
    x = np.array([[0.0], [0.1], [10.0], [10.1]])
    s = np.array([1.0, 0.9, 0.5, 0.45])
    # Forward: density_i = s_i + exp(-d) * s_j over its neighbour.
    dens = s + np.exp(-0.1) * s[[1, 0, 3, 2]]
    assert np.argmax(dens) == 0
    # Reverse with gamma=1: node 1 drops by exp(-0.1) * dens[0] below node 2, which goes second.
    assert dens[1] - np.exp(-0.1) * dens[0] < dens[2]
    assert d2_pruning(x, s, 2, k=1, gamma=1.0).tolist() == [0, 2]
    # gamma large: the reverse message vanishes, node 1 keeps its density and goes second.
    assert d2_pruning(x, s, 2, k=1, gamma=1e6).tolist() == [0, 1]
    assert d2_pruning(x, s, 4, k=1).tolist() == [0, 2, 1, 3]


def test_baseline_option_errors(data):
    x, g, y, s = data
    kw = dict(embeddings=x, grad_norms=g, val_embeddings=y, budget=5, device="cpu")
    with pytest.raises(OtCoresetError, match="scores must be 1-D"):
        select(**kw, method="el2n", scores=s[:3])
    with pytest.raises(OtCoresetError, match="scores has NaN"):
        select(**kw, method="ccs", scores=np.full(120, np.nan))
    with pytest.raises(OtCoresetError, match="ccs_cutoff"):
        select(**kw, method="ccs", ccs_cutoff=1.0)
    with pytest.raises(OtCoresetError, match="d2_neighbors"):
        select(**kw, method="d2", d2_neighbors=0)
    with pytest.raises(OtCoresetError, match="strata"):
        select(**kw, method="ccs", strata=0)


def test_select_command_uses_the_el2n_column(tmp_path, data, capsys):
    import json

    from genrec_otcoreset import FeatureSet, save_features
    from genrec_otcoreset._cli import main

    x, g, y, s = data
    ids = tuple(f"r{i}" for i in range(120))
    save_features(FeatureSet(record_ids=ids, embeddings=x, grad_norms=g, el2n=s), tmp_path / "train")
    save_features(FeatureSet(record_ids=ids[:40], embeddings=y, grad_norms=g[:40]), tmp_path / "val")
    base = ["--no-progress", "select", "--features", str(tmp_path / "train"), "--val-features", str(tmp_path / "val"),
            "--budget", "7", "--device", "cpu"]
    assert main([*base, "--method", "el2n", "--out", str(tmp_path / "sel.parquet")]) == 0
    log = json.loads((tmp_path / "sel.json").read_text())
    assert log["method"] == "el2n" and log["score"] == "el2n" and log["seconds"] > 0 and log["poo"] > 0
    import polars as pl

    table = pl.read_parquet(tmp_path / "sel.parquet").filter(pl.col("selected")).sort("rank")
    assert table["record_id"].to_list() == [ids[i] for i in el2n(s, 7)]
    # A folder without the column: one line, unless grad norms are asked for.
    save_features(FeatureSet(record_ids=ids, embeddings=x, grad_norms=g), tmp_path / "old")
    old = [*base[:3], str(tmp_path / "old"), *base[4:]]
    assert main([*old, "--method", "ccs", "--out", str(tmp_path / "c.parquet")]) == 2
    assert "has no el2n column" in capsys.readouterr().err
    assert main([*old, "--method", "ccs", "--score", "grad_norm", "--out", str(tmp_path / "c.parquet")]) == 0
