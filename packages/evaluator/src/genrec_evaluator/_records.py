"""Checks on next-POI records: clear errors for bad input, before any model runs."""

from __future__ import annotations

import polars as pl

from genrec_evaluator._errors import EvaluatorError

REQUIRED = ("record_id", "user_id", "target_poi_idx")


def check_next_poi_records(
    records: pl.DataFrame, *, source: str = "records", num_pois: int | None = None
) -> pl.DataFrame:
    """Validate next-POI records and return them with ``num_pois`` and ``history_poi_idx`` filled in.

    Raises :class:`EvaluatorError` naming the source, row and field for: an empty table, a missing
    column, a record without a target, or a target outside ``0 .. num_pois - 1``.
    """
    if records.height == 0:
        raise EvaluatorError(f"{source}: empty test set (0 records to evaluate)")
    missing = [c for c in REQUIRED if c not in records.columns]
    if missing:
        raise EvaluatorError(f"{source}: missing column(s) {missing}; have {records.columns}")
    null_rows = records.with_row_index("_row").filter(pl.col("target_poi_idx").is_null())
    if null_rows.height:
        row = null_rows.row(0, named=True)
        raise EvaluatorError(
            f"{source}: record {row['record_id']!r} (row {row['_row']}) has no target: "
            f"field target_poi_idx is null ({null_rows.height} such records)"
        )
    out = records.with_columns(
        pl.col("target_poi_idx").cast(pl.Int64), pl.col("user_id").cast(pl.String),
        pl.col("record_id").cast(pl.String),
    )
    if "num_pois" not in out.columns:
        if num_pois is None:
            raise EvaluatorError(
                f"{source}: no num_pois column and no --train data to count POIs from"
            )
        out = out.with_columns(pl.lit(num_pois, dtype=pl.Int64).alias("num_pois"))
    elif num_pois is not None:
        out = out.with_columns(pl.col("num_pois").fill_null(num_pois))
    if "history_poi_idx" not in out.columns:
        out = out.with_columns(pl.lit([], dtype=pl.List(pl.Int64)).alias("history_poi_idx"))
    out = out.with_columns(pl.col("history_poi_idx").cast(pl.List(pl.Int64)))
    bad = out.with_row_index("_row").filter(
        (pl.col("target_poi_idx") < 0) | (pl.col("target_poi_idx") >= pl.col("num_pois"))
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise EvaluatorError(
            f"{source}: record {row['record_id']!r} (row {row['_row']}): unknown POI id "
            f"target_poi_idx={row['target_poi_idx']} (valid ids are 0..{row['num_pois'] - 1}; "
            f"{bad.height} such records)"
        )
    return out
