"""The check-in contract (genrec_core's ``RAW_CHECKINS`` / ``CHECKINS``) and the normalisation that
brings a reader's frame to it: times parsed and put in UTC, local time derived, then the contract's
types and row rules."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import polars as pl

from genrec_core import CHECKINS, RAW_CHECKINS, SPLITS, Contract, ContractError, read_table
from genrec_sftdata._errors import SftDataError

__all__ = [
    "PREPARED_COLUMNS", "RAW_COLUMNS", "SPLITS", "normalize_checkins", "read_frame", "require_columns", "string_ids",
    "validated",
]

RAW_COLUMNS: dict[str, Any] = RAW_CHECKINS.schema
PREPARED_COLUMNS: dict[str, Any] = CHECKINS.schema


def validated(
    contract: Contract, frame: pl.DataFrame | str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None
) -> pl.DataFrame:
    """``contract.validate`` (or ``contract.read`` for a path) with its one-line message raised as this
    package's error type, so that callers catching :class:`SftDataError` see contract violations too."""
    try:
        if isinstance(frame, (str, os.PathLike)):
            return contract.read(frame)
        return contract.validate(frame, source=source)
    except ContractError as exc:
        raise SftDataError(str(exc)) from exc


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
    """Bring a frame to the raw check-in contract: parse times stored as text, put ``utc_time`` in UTC,
    derive a missing local/UTC time from ``timezone`` minutes, then validate (types, no empty ids or
    times, coordinates in range) with an error that names the file, column, row and value."""
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
    if "utc_time" in df.columns:
        utc = df.schema["utc_time"]
        if not isinstance(utc, pl.Datetime):
            raise SftDataError(
                f"{source}: column 'utc_time' must be a datetime, got {utc}; example row 0: {df.row(0, named=True)}"
            )
        # The local time below is derived from UTC wall-clock values: convert before deriving.
        utc_expr = pl.col("utc_time").cast(pl.Datetime(utc.time_unit))
        if utc.time_zone is None:
            utc_expr = utc_expr.dt.replace_time_zone("UTC")
        else:
            utc_expr = pl.col("utc_time").dt.convert_time_zone("UTC")
        df = df.with_columns(utc_time=utc_expr.dt.cast_time_unit("us"))
        if "local_time" not in df.columns:
            local = pl.col("utc_time").dt.replace_time_zone(None)
            if "timezone" in df.columns:
                local = local + pl.duration(minutes=pl.col("timezone").cast(pl.Int64))
            df = df.with_columns(local_time=local)
    # Text coordinates (readers that keep every field as text) are numbers to the contract.
    text_coords = [c for c in ("latitude", "longitude") if c in df.columns and df.schema[c] == pl.String]
    try:
        df = df.with_columns(pl.col(c).str.strip_chars().cast(pl.Float64) for c in text_coords)
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{source}: cannot read {' / '.join(text_coords)} as numbers: {exc}") from exc
    df = validated(RAW_CHECKINS, df, source=source)
    return df.with_columns(
        pl.col("category_id").fill_null("unknown"), pl.col("category_name").fill_null("Unknown")
    )


def string_ids(
    frame: pl.DataFrame, ids: tuple[str, ...] = ("user_id",), *, ints: tuple[str, ...] = (), source: str
) -> pl.DataFrame:
    """``frame`` with its identifier columns (those present) as strings and ``ints`` as Int64, cast by
    genrec_core's contract rules: a float id that is integral becomes ``"1"``, never ``"1.0"``, and any
    other float is an error naming the row. ``ints`` columns are only touched when they are floats."""
    from genrec_core import Column

    cols = tuple(Column(c, pl.String, required=False) for c in ids if c in frame.columns)
    # Integer columns are checked only when float (where 1.5 would truncate); text ids cast later.
    cols += tuple(Column(c, pl.Int64, required=False) for c in ints if c in frame.columns and frame.schema[c].is_float())
    if not cols:
        return frame
    return validated(Contract(name="ids", doc="", columns=cols), frame, source=source)


def read_frame(path: str | os.PathLike[str], *, what: str = "table", **csv_options: Any) -> pl.DataFrame:
    """A parquet, CSV or JSON-lines file (by its ending) as a frame, through ``genrec_core.read_table``:
    a missing file is ``FileNotFoundError``, an empty or unreadable one an ``SftDataError``, each one
    line naming the file and what it was expected to be."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such {what} file")
    try:
        return read_table(path, what=what, **csv_options)
    except ContractError as exc:
        raise SftDataError(str(exc)) from exc
