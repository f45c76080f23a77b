"""The check-in contract (DESIGN.md §2): column names, dtypes, and the checks that guard them."""

from __future__ import annotations

import difflib
from typing import Any

import polars as pl

from genrec_sftdata._errors import SftDataError

RAW_COLUMNS: dict[str, Any] = {
    "user_id": pl.String,
    "poi_id": pl.String,
    "category_id": pl.String,
    "category_name": pl.String,
    "latitude": pl.Float64,
    "longitude": pl.Float64,
    "local_time": pl.Datetime("us"),
    "utc_time": pl.Datetime("us", "UTC"),
}
PREPARED_COLUMNS: dict[str, Any] = {
    **RAW_COLUMNS,
    "trajectory_id": pl.String,
    "split": pl.String,
    "user_idx": pl.Int64,
    "poi_idx": pl.Int64,
    "category_idx": pl.Int64,
}
SPLITS = ("train", "val", "test")


def _example(df: pl.DataFrame, mask: pl.Expr) -> tuple[int, dict[str, Any]]:
    bad = df.with_row_index("__row").filter(mask).head(1)
    row = bad.row(0, named=True)
    return int(row.pop("__row")), row


def _parse_string_time(df: pl.DataFrame, col: str, *, source: str) -> pl.Series:
    """Times stored as text (a CSV the reader could not type): ISO 8601, with or without an offset.
    An unparsable value raises naming its row."""
    raw = df[col].str.strip_chars()
    parsed = None
    for fmt in ("%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f"):
        try:
            attempt = raw.str.to_datetime(fmt, strict=False, time_unit="us")
        except pl.exceptions.PolarsError:
            continue
        if parsed is None or attempt.null_count() < parsed.null_count():
            parsed = attempt
    bad = raw.is_not_null() & (parsed.is_null() if parsed is not None else pl.Series([True] * len(raw)))
    if bad.any():
        row = int(bad.arg_true()[0])
        raise SftDataError(
            f"{source}: column {col!r} has an unparsable time at row {row}: {raw[row]!r} "
            f"(expected ISO 8601 like '2012-04-03 18:00:09'); example row: {df.row(row, named=True)}"
        )
    assert parsed is not None
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is not None:
        parsed = parsed.dt.convert_time_zone("UTC")
        if col == "local_time":
            parsed = parsed.dt.replace_time_zone(None)
    return parsed.alias(col)


def require_columns(df: pl.DataFrame | pl.LazyFrame, columns: list[str], *, source: str) -> None:
    """Raise naming the missing column, the closest present one, and the columns found."""
    have = df.collect_schema().names() if isinstance(df, pl.LazyFrame) else df.columns
    for col in columns:
        if col not in have:
            close = difflib.get_close_matches(col, have, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SftDataError(f"{source}: missing column {col!r}{hint}; columns present: {have}")


def normalize_checkins(df: pl.DataFrame, *, source: str) -> pl.DataFrame:
    """Cast a frame to the raw contract, derive a missing local/UTC time from ``timezone`` minutes,
    and reject unusable rows with an error that names the file, column, row and value."""
    for col in ("utc_time", "local_time"):
        if col in df.columns and df.schema[col] == pl.String:
            df = df.with_columns(_parse_string_time(df, col, source=source))
    cols = df.columns
    if "utc_time" not in cols and "local_time" in cols and "timezone" in cols:
        df = df.with_columns(
            utc_time=(
                pl.col("local_time").cast(pl.Datetime("us"))
                - pl.duration(minutes=pl.col("timezone").cast(pl.Int64))
            ).dt.replace_time_zone("UTC")
        )
    require_columns(df, [c for c in RAW_COLUMNS if c != "local_time"], source=source)
    utc = df.schema["utc_time"]
    if not isinstance(utc, pl.Datetime):
        raise SftDataError(
            f"{source}: column 'utc_time' must be a datetime, got {utc}; example row 0: {df.row(0, named=True)}"
        )
    utc_expr = pl.col("utc_time").cast(pl.Datetime(utc.time_unit))
    if utc.time_zone is None:
        utc_expr = utc_expr.dt.replace_time_zone("UTC")
    else:
        utc_expr = pl.col("utc_time").dt.convert_time_zone("UTC")
    df = df.with_columns(utc_time=utc_expr.dt.cast_time_unit("us"))
    if "local_time" not in df.columns:
        if "timezone" in df.columns:
            local = pl.col("utc_time").dt.replace_time_zone(None) + pl.duration(
                minutes=pl.col("timezone").cast(pl.Int64)
            )
        else:
            local = pl.col("utc_time").dt.replace_time_zone(None)
        df = df.with_columns(local_time=local)
    local_t = df.schema["local_time"]
    if not isinstance(local_t, pl.Datetime):
        raise SftDataError(f"{source}: column 'local_time' must be a datetime, got {local_t}")
    if local_t.time_zone is not None:
        df = df.with_columns(pl.col("local_time").dt.replace_time_zone(None))
    try:
        df = df.with_columns(
            pl.col("user_id").cast(pl.String),
            pl.col("poi_id").cast(pl.String),
            pl.col("category_id").cast(pl.String),
            pl.col("category_name").cast(pl.String),
            pl.col("latitude").cast(pl.Float64),
            pl.col("longitude").cast(pl.Float64),
            pl.col("local_time").dt.cast_time_unit("us"),
        )
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{source}: cannot cast columns to the check-in contract: {exc}") from exc
    for col in ("user_id", "poi_id", "local_time", "utc_time", "latitude", "longitude"):
        if df[col].null_count():
            row, example = _example(df, pl.col(col).is_null())
            raise SftDataError(f"{source}: column {col!r} is empty or unparsable at row {row}: {example}")
    bad_coord = (
        pl.col("latitude").is_nan()
        | pl.col("longitude").is_nan()
        | (pl.col("latitude").abs() > 90)
        | (pl.col("longitude").abs() > 180)
    )
    if df.select(bad_coord.any()).item():
        row, example = _example(df, bad_coord)
        col = "latitude" if abs(example["latitude"]) > 90 or example["latitude"] != example["latitude"] else "longitude"
        raise SftDataError(
            f"{source}: column {col!r} is NaN or out of range at row {row} "
            f"(latitude in [-90, 90], longitude in [-180, 180]): {example}"
        )
    return df.with_columns(
        pl.col("category_id").fill_null("unknown"), pl.col("category_name").fill_null("Unknown")
    )
