"""Reports, plots, compare / cross-city, and the command line end to end."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_evaluator import compare_runs, cross_city_matrix, run_baselines, write_report
from genrec_evaluator._cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data_dir(tmp_path: Path, poi_train: pl.DataFrame, poi_records: pl.DataFrame) -> tuple[Path, Path]:
    data = tmp_path / "prepared"
    data.mkdir()
    poi_train.write_parquet(data / "checkins.parquet")
    records = tmp_path / "records"
    records.mkdir()
    poi_records.write_parquet(records / "test.parquet")
    poi_records.with_columns(pl.lit("val").alias("split")).write_parquet(records / "val.parquet")
    return data, records


def test_write_report(tmp_path: Path, poi_records: pl.DataFrame, poi_train: pl.DataFrame) -> None:
    result = run_baselines(poi_records, poi_train)
    out = write_report(result, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"random", "popularity", "user_frequent", "markov"}
    assert metrics["markov"]["acc@5"] == result.metrics["markov"]["acc@5"]
    assert {"acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr"} <= set(metrics["markov"])
    assert "by_user_activity" in metrics["markov"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation: next_poi")
    assert "| markov |" in report
    assert "By user activity" in report
    for png in ("systems.png", "user_activity.png", "trajectory_length.png"):
        assert (out / "plots" / png).read_bytes()[:8] == PNG
        assert f"plots/{png}" in report
    saved = pl.read_parquet(out / "predictions" / "markov.parquet")
    assert saved.columns[:4] == ["record_id", "ranked", "generated", "valid"]
    assert saved["ranked"].to_list() == result.predictions["markov"]["ranked"].to_list()
    assert not list(out.rglob("*.tmp"))


def test_cli_baselines_compare_and_cross_city(
    data_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, records = data_dir
    runs = []
    for train_city, eval_city, split in (("A", "A", "test"), ("A", "B", "val"), ("B", "A", "test")):
        out = tmp_path / f"{train_city}-{eval_city}"
        argv = ["baselines", "--data", str(data), "--records", str(records), "--split", split, "--out", str(out),
                "--train-city", train_city, "--eval-city", eval_city, "--top-k", "20"]
        assert main(argv) == 0
        assert f"wrote {out}/metrics.json" in capsys.readouterr().out
        runs.append(out)
    assert json.loads((runs[0] / "run.json").read_text())["top_k"] == 20

    assert main(["compare", *map(str, runs[:2]), "--metrics", "acc@1", "mrr"]) == 0
    printed = capsys.readouterr().out
    assert "A-A" in printed
    assert "A-B" in printed
    assert "markov" in printed
    table = compare_runs(runs[:2])
    assert table.height == 8
    assert table.filter(pl.col("run") == "A-A", pl.col("system") == "markov")["mrr"][0] == pytest.approx(
        json.loads((runs[0] / "metrics.json").read_text())["markov"]["mrr"]
    )

    assert main(["cross-city", *map(str, runs), "--system", "markov", "--out", str(tmp_path / "xc")]) == 0
    matrix = pl.read_parquet(tmp_path / "xc" / "cross_city.parquet")
    assert matrix["train_city"].to_list() == ["A", "B"]
    assert matrix.columns == ["train_city", "A", "B"]
    acc = {r.name: json.loads((r / "metrics.json").read_text())["markov"]["acc@1"] for r in runs}
    assert matrix.row(0) == ("A", acc["A-A"], acc["A-B"])
    assert matrix.row(1)[1] == acc["B-A"]
    assert matrix.row(1)[2] is None
    assert (tmp_path / "xc" / "cross_city.png").read_bytes()[:8] == PNG


def test_cross_city_matrix_averages_repeats() -> None:
    runs = [
        {"train_city": "NYC", "eval_city": "TKY", "metrics": {"model": {"acc@1": 0.1}}},
        {"train_city": "NYC", "eval_city": "TKY", "metrics": {"model": {"acc@1": 0.3}}},
        {"train_city": "NYC", "eval_city": "NYC", "metrics": {"model": {"acc@1": 0.5}}},
    ]
    m = cross_city_matrix(runs)
    assert m.row(0) == ("NYC", 0.5, pytest.approx(0.2))


def test_cli_errors(data_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    poi_records: pl.DataFrame) -> None:
    data, records = data_dir
    rc = main(["baselines", "--data", str(data), "--records", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("genrec-evaluator: error: records not found")
    assert err.count("\n") == 1
    bad = tmp_path / "bad.parquet"
    poi_records.with_columns(pl.lit(1000).alias("target_poi_idx")).write_parquet(bad)
    assert main(["baselines", "--data", str(data), "--records", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown POI id target_poi_idx=1000" in capsys.readouterr().err
    empty = tmp_path / "empty.parquet"
    poi_records.head(0).write_parquet(empty)
    assert main(["baselines", "--data", str(data), "--records", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty test set" in capsys.readouterr().err
    with pytest.raises(Exception, match="empty test set"):
        main(["--debug", "baselines", "--data", str(data), "--records", str(empty), "--out", str(tmp_path / "o")])
    assert main(["compare", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    assert main(["baselines", "--data", str(data), "--records", str(records), "--out", str(tmp_path / "o"),
                 "--systems", "oracle"]) == 2
    assert "unknown baseline" in capsys.readouterr().err


def test_cli_hub_model_offline_is_one_line(data_dir: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, records = data_dir
    rc = main(["next-poi", "--records", str(records), "--model", "nobody-xyz/Llama-0B", "--train", str(data),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("genrec-evaluator: error: ") and err.count("\n") == 1
    assert "'nobody-xyz/Llama-0B'" in err and "hf download nobody-xyz/Llama-0B" in err
    assert "model not found" not in err


def test_cli_next_poi_with_tiny_llama(tiny_llama: Path, data_dir: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, records = data_dir
    out = tmp_path / "model-run"
    argv = ["next-poi", "--records", str(records), "--model", str(tiny_llama), "--train", str(data),
            "--out", str(out), "--limit", "2", "--format", "prompt"]
    assert main(argv) == 0
    assert "model: acc@1=" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["model", "random", "popularity", "user_frequent", "markov"]
    preds = pl.read_parquet(out / "predictions.parquet")
    assert preds.height == 2
    assert sorted(preds["ranked"][0].to_list()) == list(range(40))
    assert json.loads((out / "run.json").read_text())["mode"] == "ranked"
