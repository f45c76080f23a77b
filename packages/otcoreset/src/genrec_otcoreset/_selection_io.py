"""The selection table and its JSON log: the one way a coreset is written, by the CLI and the pipeline.

The table follows ``genrec_core.SELECTION``: ``record_id, selected, rank`` with ``rank`` the 1-based
order in which a record entered the coreset and null for records left out. The log sits beside it with
the same stem and ``.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_core import SELECTION, atomic_write_json, atomic_write_parquet
from genrec_otcoreset._errors import OtCoresetError
from genrec_otcoreset._select import SelectionResult

__all__ = ["read_selection", "selection_log", "selection_table", "write_selection"]


def selection_table(record_ids: Sequence[str], result: SelectionResult) -> pl.DataFrame:
    """The ``SELECTION`` table of ``result`` over the pool whose ids are ``record_ids`` (row order)."""
    n = len(record_ids)
    idx = np.asarray(result.indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise OtCoresetError(f"selection indices reach row {int(idx.max())} of a pool of {n} records")
    if np.unique(idx).size != idx.size:
        raise OtCoresetError("selection indices repeat a row")
    rank = np.zeros(n, dtype=np.int64)
    rank[idx] = np.arange(1, idx.size + 1)
    table = pl.DataFrame(
        {"record_id": pl.Series(list(record_ids), dtype=pl.String), "selected": rank > 0, "rank": rank}
    ).with_columns(pl.when(pl.col("selected")).then(pl.col("rank")).otherwise(None).alias("rank"))
    return SELECTION.validate(table, source="selection")


def selection_log(
    result: SelectionResult,
    *,
    pool: int,
    n_val: int,
    lam: float,
    labels: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON log of a selection: the method, its settings, the exact POO trace and the cost."""
    return {
        "method": result.method,
        "budget": int(np.asarray(result.indices).size),
        "pool": int(pool),
        "n_val": int(n_val),
        "lambda": float(lam),
        "labels": bool(labels),
        "poo": float(result.poo),
        "trace": [float(v) for v in result.trace],
        "swaps": int(result.swaps),
        "exact_solves": int(result.exact_solves),
        "seconds": float(result.seconds),
        **dict(extra or {}),
    }


def write_selection(
    out: str | os.PathLike[str],
    record_ids: Sequence[str],
    result: SelectionResult,
    *,
    n_val: int,
    lam: float,
    labels: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the selection table to ``out`` (parquet) and its log beside it (``.json``); returns both."""
    out = Path(out)
    if out.is_dir():
        raise OtCoresetError(f"--out {out}: is a folder; give the selection table's file name (.parquet)")
    table = selection_table(record_ids, result)
    log = selection_log(result, pool=len(record_ids), n_val=n_val, lam=lam, labels=labels, extra=extra)
    atomic_write_parquet(out, table)
    log_path = atomic_write_json(out.with_suffix(".json"), log)
    return out, log_path


def read_selection(path: str | os.PathLike[str]) -> pl.DataFrame:
    """A selection table, validated against ``genrec_core.SELECTION``."""
    return SELECTION.read(path)
