"""Fixtures for the evaluator tests: next-POI check-ins and records following docs/design.md §2.

The NYC fixture converts the GETNext CSVs in ``../shared/data`` with polars (val = history/train,
test = future), independently of genrec_sftdata, so that these tests do not depend on its progress.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest


def _checkins_from_getnext(val: Path, test: Path) -> pl.DataFrame:
    frames = []
    for path, split in ((val, "train"), (test, "test")):
        frames.append(
            pl.read_csv(path, schema_overrides={"user_id": pl.String, "POI_catid_code": pl.Int64}).select(
                pl.col("user_id").cast(pl.String),
                pl.col("POI_id").alias("poi_id"),
                pl.col("POI_catid").alias("category_id"),
                pl.col("POI_catname").alias("category_name"),
                "latitude",
                "longitude",
                pl.col("local_time").str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S"),
                pl.col("UTC_time").str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC").alias("utc_time"),
                pl.col("trajectory_id").cast(pl.String),
                pl.lit(split).alias("split"),
            )
        )
    checkins = pl.concat(frames).sort("user_id", "utc_time")
    train = checkins.filter(pl.col("split") == "train")
    codes = {}
    for col, out in (("user_id", "user_idx"), ("poi_id", "poi_idx"), ("category_id", "category_idx")):
        codes[out] = train.select(pl.col(col).unique().sort()).with_row_index(out).with_columns(
            pl.col(out).cast(pl.Int64)
        )
        checkins = checkins.join(codes[out], on=col, how="left", maintain_order="left")
    return checkins


def _records_from_checkins(checkins: pl.DataFrame, split: str = "test") -> pl.DataFrame:
    """One record per trajectory of ``split``: predict its last check-in from the ones before."""
    num_pois = int(checkins.filter(pl.col("split") == "train")["poi_idx"].max()) + 1
    part = checkins.filter(pl.col("split") == split).sort("trajectory_id", "utc_time")
    traj = part.group_by("trajectory_id", maintain_order=True).agg(
        pl.col("user_id").first(),
        pl.col("poi_idx").alias("pois"),
        pl.col("category_idx").last().alias("target_category_idx"),
        pl.col("local_time").last().alias("target_time"),
    )
    return (
        traj.filter(pl.col("pois").list.len() >= 2)
        .filter(pl.col("pois").list.eval(pl.element().is_null()).list.any().not_())
        .select(
            (pl.lit("nyc-") + pl.col("trajectory_id")).alias("record_id"),
            pl.lit("next_poi").alias("task"),
            "user_id",
            pl.lit(split).alias("split"),
            pl.col("pois").list.last().alias("target_poi_idx"),
            "trajectory_id",
            (pl.col("pois").list.len() - 1).alias("n_checkins"),
            "target_time",
            pl.col("pois").list.head(pl.col("pois").list.len() - 1).alias("history_poi_idx"),
            pl.lit(num_pois, dtype=pl.Int64).alias("num_pois"),
            "target_category_idx",
        )
    )


@pytest.fixture(scope="session")
def nyc(shared_data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(check-ins, test records) of the real NYC slice."""
    root = shared_data / "foursquare_nyc"
    checkins = _checkins_from_getnext(root / "NYC_val.csv", root / "NYC_test.csv")
    return checkins, _records_from_checkins(checkins)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # Two cores shared with other jobs: one intra-op thread avoids spin-wait oversubscription.
    torch.set_num_threads(1)
    from genrec_core.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", max_positions=1024)


def make_poi_records(n: int = 6, num_pois: int = 40, seed: int = 0) -> pl.DataFrame:
    """Next-POI records with prompts and GenUP completions, over a small city of ``num_pois`` POIs."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        user = f"u{i % 3}"
        history = [rng.randrange(num_pois) for _ in range(rng.randint(1, 4))]
        target = rng.randrange(num_pois)
        prompt = f"User {user} visited POI ids {', '.join(map(str, history))}. Where next?\n"
        completion = f"At 2024-01-0{1 + i % 7} 1{i % 10}:00:00, user {user} will visit POI id {target}."
        rows.append(
            {
                "record_id": f"r{i}",
                "task": "next_poi",
                "user_id": user,
                "split": "test",
                "prompt": prompt,
                "completion": completion,
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                "target_poi_idx": target,
                "trajectory_id": f"{user}_{i}",
                "n_checkins": len(history),
                "history_poi_idx": history,
                "num_pois": num_pois,
                "target_category_idx": target % 3,
            }
        )
    return pl.DataFrame(rows)


def make_train(num_pois: int = 40, seed: int = 1) -> pl.DataFrame:
    import random

    rng = random.Random(seed)
    rows = []
    for u in range(3):
        for t in range(u + 1):
            for _ in range(5):
                poi = rng.randrange(num_pois)
                rows.append({"user_id": f"u{u}", "trajectory_id": f"u{u}_t{t}", "poi_idx": poi,
                             "category_idx": poi % 3, "category_name": f"cat{poi % 3}", "split": "train"})
    rows.append({"user_id": "u0", "trajectory_id": "u0_t9", "poi_idx": num_pois - 1, "category_idx": 0,
                 "category_name": "cat0", "split": "train"})
    return pl.DataFrame(rows)


@pytest.fixture
def poi_records() -> pl.DataFrame:
    return make_poi_records()


@pytest.fixture
def poi_train() -> pl.DataFrame:
    return make_train()


@pytest.fixture(scope="session")
def other_tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A tiny Llama of another width: adapters trained on it do not fit ``tiny_llama``."""
    from genrec_core.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "other-llama", hidden=48, seed=1, max_positions=1024)
