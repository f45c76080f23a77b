"""The shipped configs for real work, run down to what this machine can: their data stages on local
copies of the real data (../shared/data), and a tiny random Llama in place of the big model."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_pipeline import load_config, run

pytest.importorskip("torch")


def _tiny_overrides(tiny: Path, root: Path) -> dict[str, str]:
    return {
        "run.root": f'"{root}"',
        "run.progress": "false",
        "train.recipe": '""',
        "train.options": (
            f'{{model = "{tiny}", max_steps = 4, batch_size = 2, max_length = 384, truncation = true, '
            'device = "cpu", eval_every = 0, save_every = 0, log_every = 1, quantization = "none"}'
        ),
        "coreset.model": f'"{tiny}"',
        "coreset.batch_size": "8",
    }


@pytest.mark.integration
def test_nyc_slice_end_to_end(shared_data: Path, tiny_llama: Path, tmp_path: Path) -> None:
    nyc = shared_data / "foursquare_nyc"
    overrides = {
        **_tiny_overrides(tiny_llama, tmp_path / "runs"),
        "data.train": f'"{nyc / "NYC_val.csv"}"',
        "data.test": f'"{nyc / "NYC_test.csv"}"',
        "evaluate.max_records": "20",
    }
    result = run(load_config("nyc-local", overrides=overrides))
    data = result.artifacts["data"]
    train = pl.read_parquet(data["train"])
    test = pl.read_parquet(data["test"])
    assert set(test["user_id"]) <= set(train["user_id"])  # LLM4POI: unseen users dropped
    assert train["utc_time"].max() <= test["utc_time"].min()  # history before future
    metrics = json.loads(result.artifacts["evaluate"]["metrics"].read_text())
    # On real check-ins the Markov baseline beats global popularity.
    pop = next(v for k, v in metrics.items() if "popular" in k)
    markov = next(v for k, v in metrics.items() if "markov" in k)
    assert markov["acc@10"] >= pop["acc@10"]
    assert "model" in metrics


@pytest.mark.integration
@pytest.mark.slow
def test_goracs_games_seqrec_config(shared_data: Path, tiny_llama: Path, tmp_path: Path) -> None:
    games = shared_data / "amazon_games"
    overrides = {
        **_tiny_overrides(tiny_llama, tmp_path / "runs"),
        "records.items": f'"{games / "items.parquet"}"',
        "records.interactions": f'"{games / "interactions.parquet"}"',
        "records.options.max_records_per_split": "120",
        "coreset.budget": "30",
        "coreset.max_swaps": "3",
        "coreset.options.max_val": "40",
        "evaluate.max_records": "10",
        "evaluate.options": '{device = "cpu", dtype = "float32", grounding = "hashing", max_new_tokens = 8}',
    }
    config = load_config("goracs-games-seqrec", overrides=overrides)
    result = run(config)
    assert "data" not in result.artifacts and "profiles" not in result.artifacts
    records = pl.read_parquet(result.artifacts["records"]["train"])
    assert records["task"].unique().to_list() == ["seqrec"]
    assert records["negative_item_ids"].list.len().unique().to_list() == [99]
    selection = pl.read_parquet(result.artifacts["coreset"]["selection"])
    assert int(selection["selected"].sum()) == 30
    assert result.artifacts["train"].summary["records"] == 30
    metrics = json.loads(result.artifacts["evaluate"]["metrics"].read_text())
    assert "model" in metrics and all("ndcg@10" in v for v in metrics.values())


@pytest.mark.integration
@pytest.mark.slow
def test_goracs_movielens_ctr_config(shared_data: Path, tiny_llama: Path, tmp_path: Path) -> None:
    src = shared_data / "movielens_ctr"
    # The shared slice has no training file: carve one from valid.json so every split exists.
    valid = json.loads((src / "valid.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps(valid[:300]))
    (tmp_path / "valid.json").write_text(json.dumps(valid[300:420]))
    overrides = {
        **_tiny_overrides(tiny_llama, tmp_path / "runs"),
        "records.tallrec": json.dumps(
            [str(tmp_path / "train.json"), str(tmp_path / "valid.json"), str(src / "test.json")]
        ),
        "coreset.budget": "40",
        "coreset.max_swaps": "3",
        "evaluate.max_records": "30",
        "evaluate.options": '{device = "cpu", dtype = "float32"}',
    }
    result = run(load_config("goracs-movielens-ctr", overrides=overrides))
    selection = pl.read_parquet(result.artifacts["coreset"]["selection"])
    train = pl.read_parquet(result.artifacts["records"]["train"]).join(selection, on="record_id")
    chosen = train.filter(pl.col("selected"))
    val = pl.read_parquet(result.artifacts["records"]["val"])
    # Label-enhanced: each label's share of the budget follows its validation frequency.
    want_yes = round(40 * val["label"].mean())
    assert abs(int(chosen["label"].sum()) - want_yes) <= 1
    metrics = json.loads(result.artifacts["evaluate"]["metrics"].read_text())
    assert 0.0 <= metrics["model"]["auc"] <= 1.0
