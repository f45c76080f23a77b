"""Reading records and check-ins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from genrec_evaluator._errors import EvaluatorError

log = logging.getLogger(__name__)


def _read_table_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in {".jsonl", ".ndjson"}:
            return pl.read_ndjson(path)
        if suffix == ".json":
            return pl.read_json(path)
        if suffix == ".arrow":
            try:
                return pl.read_ipc_stream(path)
            except Exception:  # an Arrow file rather than a stream
                return pl.read_ipc(path)
        if suffix == ".csv":
            return pl.read_csv(path, try_parse_dates=True)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise EvaluatorError(f"{path}: cannot read table: {exc}") from exc
    raise EvaluatorError(f"{path}: unsupported table format {suffix!r} (parquet, jsonl, json, arrow, csv)")


def _read_table_dir(path: Path, split: str | None) -> pl.DataFrame:
    if split is not None:
        for name in (f"{split}.parquet", f"{split}.jsonl", f"{split}.json"):
            if (path / name).is_file():
                return _read_table_file(path / name)
        if (path / split).is_dir():
            return _read_table_dir(path / split, None)
    # A `datasets.save_to_disk` folder: Arrow stream shards.
    shards = sorted(path.glob("*.arrow"))
    if not shards:
        shards = sorted(path.glob("*.parquet"))
    if not shards:
        raise EvaluatorError(
            f"{path}: no records found (looked for {split}.parquet, {split}/, *.arrow, *.parquet)"
        )
    return pl.concat([_read_table_file(p) for p in shards], how="diagonal_relaxed")


def read_records(path: str | Path, *, split: str | None = "test") -> pl.DataFrame:
    """Read SFT records from a file (parquet, jsonl, json, arrow) or a folder of them.

    A folder may hold ``<split>.parquet``, a ``<split>/`` sub-folder (a ``DatasetDict`` saved to disk),
    or shards. When the table has a ``split`` column, only rows of ``split`` are kept.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"records not found: {path}")
    frame = _read_table_dir(path, split) if path.is_dir() else _read_table_file(path)
    if split is not None and "split" in frame.columns:
        frame = frame.filter(pl.col("split") == split)
    log.info("read %d records from %s", frame.height, path)
    return frame


def load_checkins(data_dir: str | Path) -> pl.DataFrame:
    """All prepared check-ins (train, val and test) from a ``genrec_sftdata.prepare`` output folder."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise FileNotFoundError(f"prepared data not found: {data_dir}")
    if data_dir.is_file():
        return _read_table_file(data_dir)
    load_prepared: Callable[[Path], Any] | None
    try:
        from genrec_sftdata import load_prepared
    except ImportError:  # the base package without genrec-sftdata: plain parquet only
        load_prepared = None
    if load_prepared is not None and not (data_dir / "checkins.parquet").is_file():
        return load_prepared(data_dir).checkins
    for name in ("checkins.parquet", "checkins.jsonl", "train.parquet"):
        if (data_dir / name).is_file():
            return _read_table_file(data_dir / name)
    if load_prepared is not None:
        return load_prepared(data_dir).checkins
    raise EvaluatorError(f"{data_dir}: no prepared check-ins (expected checkins.parquet)")
