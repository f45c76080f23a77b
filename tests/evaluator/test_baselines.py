"""Baselines on a hand-built city (exact lists) and on the real NYC slice."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from genrec_evaluator import EvaluatorError, run_baselines, user_activity_groups
from genrec_evaluator._analysis import trajectory_length_groups
from genrec_evaluator._baselines import BaselineConfig


def _train() -> pl.DataFrame:
    # user a: trajectory a_1 = 0 -> 1 -> 2, a_2 = 0 -> 1; user b: b_1 = 3 -> 3 -> 0 -> 2.
    rows = [
        ("a", "a_1", 0), ("a", "a_1", 1), ("a", "a_1", 2),
        ("a", "a_2", 0), ("a", "a_2", 1),
        ("b", "b_1", 3), ("b", "b_1", 3), ("b", "b_1", 0), ("b", "b_1", 2),
    ]
    t0 = datetime(2024, 1, 1)
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "trajectory_id": [r[1] for r in rows],
            "poi_idx": [r[2] for r in rows],
            "category_idx": [r[2] % 2 for r in rows],
            "category_name": ["even" if r[2] % 2 == 0 else "odd" for r in rows],
            "utc_time": [t0 + timedelta(hours=i) for i in range(len(rows))],
            "split": ["train"] * len(rows),
        }
    )


def _records() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": ["r1", "r2", "r3"],
            "user_id": ["a", "b", "c"],
            "trajectory_id": ["a_9", "b_9", "c_9"],
            "history_poi_idx": [[0], [3, 3], [2]],
            "target_poi_idx": [1, 0, 3],
            "target_category_idx": [1, 0, 1],
            "num_pois": [5, 5, 5],
        }
    )


def test_hand_computed_lists() -> None:
    result = run_baselines(_records(), _train(), config=BaselineConfig(top_k=5))
    ranked = {s: p["ranked"].to_list() for s, p in result.predictions.items()}
    # Global counts: 0:3, 1:2, 2:2, 3:2, 4:0 -> ties by smaller id; POI 4 was never seen.
    assert ranked["popularity"] == [[0, 1, 2, 3]] * 3
    # User a: 0:2, 1:2, 2:1; user b: 3:2, 0:1, 2:1; user c is unknown -> global.
    assert ranked["user_frequent"] == [[0, 1, 2, 3], [3, 0, 2, 1], [0, 1, 2, 3]]
    # Transitions: 0->1 (x2), 0->2, 1->2, 3->3, 3->0. r1 last 0: [1, 2] then user a; r2 last 3: [0, 3]
    # (ties by id) then user b; r3 last 2: no transition -> user c (none) -> global.
    assert ranked["markov"] == [[1, 2, 0, 3], [0, 3, 2, 1], [0, 1, 2, 3]]
    assert result.metrics["markov"]["acc@1"] == pytest.approx(2 / 3)
    assert result.metrics["markov"]["mrr"] == pytest.approx((1 + 1 + 1 / 4) / 3)
    assert result.metrics["popularity"]["acc@1"] == pytest.approx(1 / 3)
    assert result.metrics["popularity"]["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert len(ranked["random"][0]) == 5
    assert sorted(ranked["random"][0]) == [0, 1, 2, 3, 4]
    assert result.metrics["markov"]["by_category"]["odd"]["n"] == 2


def test_groups_are_thirds() -> None:
    train = pl.DataFrame(
        {"user_id": [f"u{i}" for i in range(6) for _ in range(i)], "trajectory_id": [f"u{i}_{j}" for i in range(6) for j in range(i)]}
    )
    records = pl.DataFrame({"user_id": [f"u{i}" for i in range(6)]})
    groups = dict(user_activity_groups(records, train).select("user_id", "user_group").iter_rows())
    assert groups == {"u0": "inactive", "u1": "inactive", "u2": "normal", "u3": "normal", "u4": "very active", "u5": "very active"}
    recs = pl.DataFrame({"trajectory_id": ["t1", "t2", "t3"], "history_poi_idx": [[1, 2, 3], [1], [1, 2]]})
    lengths = dict(trajectory_length_groups(recs).select("trajectory_id", "length_group").iter_rows())
    assert lengths == {"t2": "short", "t3": "middle", "t1": "long"}


def test_bad_records() -> None:
    train = _train()
    with pytest.raises(EvaluatorError, match=r"record 'r2' \(row 1\).*unknown POI id target_poi_idx=7"):
        run_baselines(_records().with_columns(pl.Series("target_poi_idx", [1, 7, 0])), train)
    with pytest.raises(EvaluatorError, match=r"record 'r1' \(row 0\) has no target"):
        run_baselines(_records().with_columns(pl.Series("target_poi_idx", [None, 1, 0], dtype=pl.Int64)), train)
    with pytest.raises(EvaluatorError, match="empty test set"):
        run_baselines(_records().head(0), train)
    with pytest.raises(EvaluatorError, match=r"missing column\(s\) \['target_poi_idx'\]"):
        run_baselines(_records().drop("target_poi_idx"), train)
    with pytest.raises(EvaluatorError, match="unknown baseline"):
        BaselineConfig(systems=("oracle",))


def test_nyc_markov_beats_popularity_beats_random(nyc: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    checkins, records = nyc
    result = run_baselines(records, checkins)
    m = {s: v["acc@10"] for s, v in result.metrics.items()}
    assert result.metrics["markov"]["n"] == records.height > 500
    assert m["markov"] > m["popularity"] > m["random"]
    assert result.metrics["markov"]["mrr"] > result.metrics["popularity"]["mrr"] > result.metrics["random"]["mrr"]
    assert result.metrics["markov"]["acc@1"] > result.metrics["popularity"]["acc@1"]
    groups = result.metrics["markov"]["by_user_activity"]
    assert set(groups) == {"inactive", "normal", "very active"}
    assert sum(g["n"] for g in groups.values()) == records.height
    assert sum(g["n"] for g in result.metrics["markov"]["by_length"].values()) == records.height
