"""Readers of real check-in formats into the check-in contract (docs/design.md §2)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from genrec_core.models import is_hub_id
from genrec_sftdata._contract import normalize_checkins, read_frame, require_columns, string_ids
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

ReadFormat = Literal["auto", "getnext", "tsmc", "gowalla", "parquet", "csv", "hf"]
FORMATS = ("auto", "getnext", "tsmc", "gowalla", "parquet", "csv", "hf")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# Gowalla-CA as LLM4POI ships it: "[{'url': '/categories/1', 'name': 'Coffee Shop'}]".
_CAT_NAME = r"'name':\s*'((?:[^'\\]|\\.)*)'"
_CAT_URL = r"'url':\s*'/categories/(\d+)'"


def _first_line(path: Path) -> str:
    with path.open("rb") as fh:
        return fh.readline(65536).decode("latin-1").rstrip("\r\n")


def _parquet_columns(path: Path) -> list[str]:
    try:
        return list(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise SftDataError(f"{path}: not a readable parquet file ({first.strip()})") from exc


def sniff_format(path: str | Path) -> str:
    """The format of ``path`` from its layout, header or first line."""
    p = Path(path)
    if not p.exists():
        # Only a bare ``org/name`` may mean the hub: ``bad/nope.csv`` is a missing file, not a lookup.
        if isinstance(path, str) and is_hub_id(path):
            return "hf"
        raise FileNotFoundError(f"{path}: no such file or folder")
    if p.is_dir():
        if any((p / m).exists() for m in _HF_MARKERS):
            return "hf"
        raise SftDataError(f"{p}: a folder but not a Hugging Face dataset (no {' / '.join(_HF_MARKERS)})")
    if p.stat().st_size == 0:
        raise SftDataError(f"{p}: empty file, expected check-ins")
    if p.suffix == ".parquet":
        cols = _parquet_columns(p)
        return "getnext" if ("POI_id" in cols or "PoiId" in cols) else "parquet"
    line = _first_line(p)
    tabs = line.split("\t")
    if len(tabs) == 8 and re.search(r"[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d [+-]\d{4} \d{4}$", tabs[7]):
        return "tsmc"
    if len(tabs) == 5 and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", tabs[1]):
        return "gowalla"
    header = [h.strip() for h in line.split(",")]
    if "POI_id" in header or "PoiId" in header:
        return "getnext"
    if "user_id" in header and "poi_id" in header:
        return "csv"
    raise SftDataError(
        f"{p}: unknown check-in format; first line: {line[:200]!r}. Expected a GETNext/LLM4POI CSV "
        "(header with POI_id), a TSMC2014 .txt (8 tab-separated fields), Gowalla totalCheckins (5 "
        "tab-separated fields), a contract CSV/parquet (user_id, poi_id, ...), or a HF dataset"
    )


def read_checkins(
    paths: str | Path | Sequence[str | Path],
    *,
    format: ReadFormat = "auto",
    spots: str | Path | None = None,
) -> pl.DataFrame:
    """Read check-ins from one or more files into the raw check-in contract.

    ``format="auto"`` sniffs each file and logs the choice. ``spots`` is Gowalla's optional spots file
    (``id, ..., spot_categories``) that gives Gowalla check-ins their categories. A Hugging Face
    dataset with splits keeps them in a ``split`` column (``validation`` becomes ``val``).
    """
    if format not in FORMATS:
        raise SftDataError(f"read_checkins: unknown format {format!r}; use one of {FORMATS}")
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise SftDataError("read_checkins: no input paths given")
    frames = []
    for item in items:
        fmt = sniff_format(item) if format == "auto" else format
        if format == "auto":
            logger.info("read_checkins: %s looks like format %r", item, fmt)
        frames.append(_read_one(item, fmt, spots))
    if len(frames) == 1:
        return frames[0]
    common = set.intersection(*(set(f.columns) for f in frames))
    cols = [c for c in frames[0].columns if c in common]
    return pl.concat([f.select(cols) for f in frames], how="vertical_relaxed")


def _read_one(item: str | Path, fmt: str, spots: str | Path | None) -> pl.DataFrame:
    name = str(item)
    if fmt == "hf":
        return normalize_checkins(_read_hf(item), source=name)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SftDataError(f"{path}: empty file, expected check-ins")
    if fmt == "getnext":
        frame = read_frame(path, what="check-in") if path.suffix == ".parquet" else _read_csv(path)
        frame = from_getnext(frame, source=name)
    elif fmt == "tsmc":
        frame = _read_tsmc(path)
    elif fmt == "gowalla":
        frame = _read_gowalla(path, spots)
    elif fmt == "parquet":
        if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
            raise SftDataError(f"{path}: --format parquet, but the file is named like a {path.suffix} file")
        frame = _read_parquet(path)
    elif fmt == "csv":
        frame = _read_csv(path, try_parse_dates=True)
    else:  # pragma: no cover - guarded by read_checkins
        raise SftDataError(f"{name}: unknown format {fmt!r}")
    return normalize_checkins(frame, source=name)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise SftDataError(f"{path}: not a readable parquet file ({first.strip()})") from exc


def _read_csv(path: Path, **kwargs: object) -> pl.DataFrame:
    try:
        return pl.read_csv(path, infer_schema_length=10000, **kwargs)  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{path}: cannot read as CSV: {exc}") from exc


def _parse_time(frame: pl.DataFrame, col: str, fmt: str, *, source: str, out: str, utc: bool) -> pl.Expr:
    """A strict-after-the-fact parse: unparsable values raise naming the row and the raw value."""
    raw = pl.col(col).cast(pl.String).str.strip_chars()
    parsed = raw.str.strptime(pl.Datetime("us"), fmt, strict=False)
    check = frame.select(bad=raw.is_not_null() & parsed.is_null(), ok=raw.is_null())
    bad_rows = check.with_row_index().filter(pl.col("bad") | pl.col("ok"))
    if bad_rows.height:
        row = int(bad_rows["index"][0])
        raise SftDataError(
            f"{source}: column {col!r} has an unparsable time at row {row}: {frame[col][row]!r} "
            f"(expected format {fmt!r}); example row: {frame.row(row, named=True)}"
        )
    if utc:
        parsed = parsed.dt.replace_time_zone("UTC")
    return parsed.alias(out)


def _category_from_string(col: str) -> tuple[pl.Expr, pl.Expr]:
    """(name, id) from Gowalla's "[{'url': '/categories/N', 'name': '...'}]" category strings."""
    s = pl.col(col).cast(pl.String)
    looks = s.str.starts_with("[{")
    name = pl.when(looks).then(s.str.extract(_CAT_NAME, 1).str.replace_all(r"\\'", "'")).otherwise(s)
    cid = pl.when(looks).then(s.str.extract(_CAT_URL, 1)).otherwise(None)
    return name, cid


# LLM4POI's raw CSV names (its Gowalla-CA file: UserId, PoiId, PoiCategoryId, ..., UTCTime).
_LLM4POI_NAMES = {
    "UserId": "user_id",
    "PoiId": "POI_id",
    "PoiCategoryId": "POI_catid",
    "PoiCategoryName": "POI_catname",
    "Latitude": "latitude",
    "Longitude": "longitude",
    "TimezoneOffset": "timezone",
    "UTCTime": "UTC_time",
}


def from_getnext(frame: pl.DataFrame, *, source: str = "GETNext CSV") -> pl.DataFrame:
    """GETNext / LLM4POI columns (``user_id, POI_id, POI_catid, POI_catname, latitude, longitude,
    timezone, UTC_time, local_time, trajectory_id, ...``) to the contract; handles the Gowalla-CA
    variant with category strings and UTC times only, also under LLM4POI's raw names (``UserId,
    PoiId, PoiCategoryId, Latitude, Longitude, UTCTime``)."""
    rename = {k: v for k, v in _LLM4POI_NAMES.items() if k in frame.columns and v not in frame.columns}
    frame = frame.rename(rename)
    require_columns(frame, ["user_id", "POI_id", "latitude", "longitude", "UTC_time"], source=source)
    # Ids through a float column (pandas with NaNs) are "1", never "1.0"; 1.5 is an error naming the row.
    frame = string_ids(frame, ("user_id", "POI_id", "POI_catid"), source=source)
    utc_raw = frame["UTC_time"].cast(pl.String).drop_nulls().head(1)
    sample = utc_raw[0] if len(utc_raw) else ""
    # "2012-11-09 21:54:47+00:00" (GETNext) or "2012-04-03 18:00:09" or "Tue Apr 03 ... 2012".
    if re.match(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} ", sample):
        utc_fmt = "%a %b %d %H:%M:%S %z %Y"
    elif re.search(r"[+-]\d\d:?\d\d$", sample):
        utc_fmt = "%Y-%m-%d %H:%M:%S%z" if "T" not in sample else "%Y-%m-%dT%H:%M:%S%z"
    elif sample.endswith("Z"):
        utc_fmt = "%Y-%m-%dT%H:%M:%SZ"
    else:
        utc_fmt = "%Y-%m-%d %H:%M:%S"
    exprs: list[pl.Expr] = [
        pl.col("user_id").cast(pl.String),
        pl.col("POI_id").cast(pl.String).alias("poi_id"),
        pl.col("latitude").cast(pl.Float64, strict=False),
        pl.col("longitude").cast(pl.Float64, strict=False),
    ]
    if utc_fmt.endswith("%z") or "%z" in utc_fmt:
        utc = (
            pl.col("UTC_time").cast(pl.String).str.strip_chars()
            .str.strptime(pl.Datetime("us", "UTC"), utc_fmt, strict=False)
        )
        bad = frame.select(b=utc.is_null()).with_row_index().filter(pl.col("b"))
        if bad.height:
            row = int(bad["index"][0])
            raise SftDataError(
                f"{source}: column 'UTC_time' has an unparsable time at row {row}: "
                f"{frame['UTC_time'][row]!r}; example row: {frame.row(row, named=True)}"
            )
        exprs.append(utc.dt.convert_time_zone("UTC").dt.cast_time_unit("us").alias("utc_time"))
    else:
        exprs.append(_parse_time(frame, "UTC_time", utc_fmt, source=source, out="utc_time", utc=True))
    if "local_time" in frame.columns:
        # GETNext writes local clock time with a spurious "+00:00": keep the clock, drop the offset.
        local_raw = pl.col("local_time").cast(pl.String).str.strip_chars().str.slice(0, 19)
        local = local_raw.str.replace("T", " ").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)
        bad = frame.select(b=local.is_null()).with_row_index().filter(pl.col("b"))
        if bad.height:
            row = int(bad["index"][0])
            raise SftDataError(
                f"{source}: column 'local_time' has an unparsable time at row {row}: "
                f"{frame['local_time'][row]!r}; example row: {frame.row(row, named=True)}"
            )
        exprs.append(local.alias("local_time"))
    if "timezone" in frame.columns:
        exprs.append(pl.col("timezone").cast(pl.Int64, strict=False).alias("timezone"))
    cat_name_col = "POI_catname" if "POI_catname" in frame.columns else None
    cat_id_col = "POI_catid" if "POI_catid" in frame.columns else None
    if cat_name_col is None and cat_id_col is None:
        raise SftDataError(f"{source}: missing column 'POI_catname' (or 'POI_catid'); columns: {frame.columns}")
    name_expr, id_from_name = _category_from_string(cat_name_col or cat_id_col)  # type: ignore[arg-type]
    if cat_id_col is not None:
        id_name, id_id = _category_from_string(cat_id_col)
        cid = pl.coalesce(id_id, id_from_name, pl.col(cat_id_col).cast(pl.String))
        if cat_name_col is None:
            name_expr = id_name
    else:
        cid = pl.coalesce(id_from_name, name_expr)
    exprs += [cid.alias("category_id"), name_expr.alias("category_name")]
    if "trajectory_id" in frame.columns:
        exprs.append(pl.col("trajectory_id").cast(pl.String).alias("source_trajectory_id"))
    if "POI_catid_code" in frame.columns:
        exprs.append(pl.col("POI_catid_code").alias("source_category_code"))
    out = frame.select(exprs)
    if "local_time" not in out.columns and "timezone" in out.columns:
        out = out.with_columns(
            local_time=pl.col("utc_time").dt.replace_time_zone(None)
            + pl.duration(minutes=pl.col("timezone").fill_null(0))
        )
    return out


def _read_tsmc(path: Path) -> pl.DataFrame:
    names = ["user_id", "poi_id", "category_id", "category_name", "latitude", "longitude", "timezone", "utc_raw"]
    # TSMC2014 is latin-1 (venue category names such as "Caf\xe9"): decode it exactly, hand Polars UTF-8.
    text = path.read_bytes().decode("latin-1").encode("utf-8")
    try:
        frame = pl.read_csv(
            io.BytesIO(text),
            separator="\t",
            has_header=False,
            new_columns=names,
            schema_overrides={n: pl.String for n in names},
            quote_char=None,
        )
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{path}: cannot read as TSMC2014 (8 tab-separated fields): {exc}") from exc
    if frame.width != 8:
        raise SftDataError(f"{path}: TSMC2014 rows have 8 tab-separated fields, found {frame.width}")
    utc = _parse_time(frame, "utc_raw", "%a %b %d %H:%M:%S %z %Y", source=str(path), out="utc_time", utc=False)
    tz = pl.col("timezone").cast(pl.Int64, strict=False)
    bad = frame.select(b=tz.is_null()).with_row_index().filter(pl.col("b"))
    if bad.height:
        row = int(bad["index"][0])
        raise SftDataError(
            f"{path}: column 7 (timezone offset, minutes) is not an integer at row {row}: {frame.row(row, named=True)}"
        )
    return frame.with_columns(utc, tz.alias("timezone")).with_columns(
        utc_time=pl.col("utc_time").dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
    ).with_columns(
        local_time=pl.col("utc_time").dt.replace_time_zone(None) + pl.duration(minutes=pl.col("timezone"))
    ).drop("utc_raw")


def _read_gowalla(path: Path, spots: str | Path | None) -> pl.DataFrame:
    names = ["user_id", "utc_raw", "latitude", "longitude", "poi_id"]
    try:
        frame = pl.read_csv(
            path, separator="\t", has_header=False, new_columns=names,
            schema_overrides={n: pl.String for n in names}, quote_char=None,
        )
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{path}: cannot read as Gowalla totalCheckins (5 tab-separated fields): {exc}") from exc
    utc = _parse_time(frame, "utc_raw", "%Y-%m-%dT%H:%M:%SZ", source=str(path), out="utc_time", utc=True)
    frame = frame.with_columns(
        utc, pl.col("latitude").cast(pl.Float64, strict=False), pl.col("longitude").cast(pl.Float64, strict=False)
    ).drop("utc_raw")
    if spots is None:
        return frame.with_columns(category_id=pl.lit("unknown"), category_name=pl.lit("Unknown"))
    spots_frame = _read_csv(Path(spots), schema_overrides={"id": pl.String})
    require_columns(spots_frame, ["id", "spot_categories"], source=str(spots))
    name, cid = _category_from_string("spot_categories")
    cats = spots_frame.select(
        pl.col("id").cast(pl.String).alias("poi_id"),
        cid.fill_null("unknown").alias("category_id"),
        name.fill_null("Unknown").alias("category_name"),
    ).unique(subset="poi_id", keep="first")
    return frame.join(cats, on="poi_id", how="left").with_columns(
        pl.col("category_id").fill_null("unknown"), pl.col("category_name").fill_null("Unknown")
    )


def _read_hf(item: str | Path) -> pl.DataFrame:
    import datasets

    p = Path(item)
    if p.exists():
        ds = datasets.load_from_disk(str(p))
    else:
        try:
            ds = datasets.load_dataset(str(item))
        except Exception as exc:  # offline, unknown repo, no access: one clear error naming the id
            raise SftDataError(f"{item}: cannot load the Hugging Face dataset: {type(exc).__name__}: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        rename = {"validation": "val", "valid": "val", "dev": "val"}
        parts = [
            _hf_to_contract(pl.from_arrow(d.data.table), f"{item}[{split}]").with_columns(  # type: ignore[arg-type]
                split=pl.lit(rename.get(split, split))
            )
            for split, d in ds.items()
        ]
        return pl.concat(parts, how="vertical_relaxed")
    return _hf_to_contract(pl.from_arrow(ds.data.table), str(item))  # type: ignore[arg-type]


def _hf_to_contract(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    if {"system_prompt", "inputs", "targets"} <= set(frame.columns):
        raise SftDataError(
            f"{source}: this is GenUP's SFT layout (system_prompt, inputs, targets), not check-ins; "
            "read it with genrec_sftdata.read_genup_records"
        )
    if "POI_id" in frame.columns or "PoiId" in frame.columns:
        return from_getnext(frame, source=source)
    return frame
