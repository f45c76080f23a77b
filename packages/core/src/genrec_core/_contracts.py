"""The tables stages exchange, as code: columns, types, allowed values, and one validator.

Every table genrec writes or reads between stages has a :class:`Contract` here. ``contract.validate``
checks a frame against it and returns the frame with the contract's columns in their contract types
(extra columns are kept: add columns freely, never rename). The first problem found raises a
:class:`ContractError` whose one-line message names the source (file), the column and the first bad
row with its value. ``contract.read`` reads a parquet, CSV or JSON-lines file and validates it.
docs/design.md §2 describes the same tables in prose; this module is the authority.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from genrec_core._errors import GenrecError

__all__ = [
    "CHECKINS",
    "CONTRACTS",
    "FEATURES",
    "METRICS_SYSTEM_KEYS",
    "PREDICTIONS",
    "PROFILES",
    "RAW_CHECKINS",
    "SELECTION",
    "SFT_RECORDS",
    "SPLITS",
    "TASKS",
    "TASK_COLUMNS",
    "Column",
    "Contract",
    "ContractError",
    "contracts_markdown",
    "read_table",
    "validate_metrics",
]

SPLITS = ("train", "val", "test")
TASKS = ("next_poi", "seqrec", "ctr")
PROFILE_STATUS = ("ok", "repaired", "failed")


class ContractError(GenrecError):
    """A table does not hold to its contract; the message names the source, column and row."""


@dataclass(frozen=True)
class Column:
    """One column of a contract.

    ``dtype`` is the contract type. ``required`` columns must be present; ``nullable=False`` columns
    may hold no null; ``values`` lists the allowed values; ``minimum`` bounds numbers from below;
    ``finite`` rejects NaN and infinities; ``unique`` rejects repeats.
    """

    name: str
    dtype: Any
    doc: str = ""
    required: bool = True
    nullable: bool = True
    values: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    finite: bool = False
    unique: bool = False


def _row_message(frame: pl.DataFrame, mask: pl.Series | pl.Expr, column: str) -> tuple[int, Any]:
    idx = frame.with_row_index("__row").filter(mask).row(0, named=True)
    return int(idx["__row"]), idx[column]


def _is_id_type(dtype: Any) -> bool:
    return dtype == pl.String


def _cast_column(frame: pl.DataFrame, col: Column, *, source: str) -> pl.Series:
    """``frame[col.name]`` in the contract type, or a ContractError naming the first bad row."""
    series = frame[col.name]
    have = series.dtype
    want = col.dtype
    if have == want or have == pl.Null:
        return series.cast(want) if have == pl.Null else series
    if _is_id_type(want):
        if have.is_integer():
            return series.cast(pl.String)
        if have.is_float():
            # Ids that went through a float column (a parquet written by pandas with NaNs) must not
            # become "1.0": integral floats are ids, anything else is an error.
            bad = series.is_not_null() & ((series != series.floor()) | series.is_nan() | series.is_infinite())
            if bad.any():
                row = int(bad.arg_true()[0])
                raise ContractError(
                    f"{source}: column {col.name!r} holds ids, but row {row} has the non-integral number "
                    f"{series[row]!r}"
                )
            return series.cast(pl.Int64).cast(pl.String)
        if have == pl.Categorical or have == pl.Enum:
            return series.cast(pl.String)
    if want.is_integer() and have.is_float():
        bad = series.is_not_null() & ((series != series.floor()) | series.is_nan() | series.is_infinite())
        if bad.any():
            row = int(bad.arg_true()[0])
            raise ContractError(
                f"{source}: column {col.name!r} must hold integers, but row {row} has {series[row]!r}"
            )
        return series.cast(want)
    if (want.is_integer() and have.is_integer()) or (want.is_float() and have.is_numeric()):
        return series.cast(want)
    if want == pl.Boolean and have.is_integer():
        bad = series.is_not_null() & ~series.is_in([0, 1])
        if not bad.any():
            return series.cast(pl.Boolean)
    if isinstance(want, pl.List) and isinstance(have, pl.List | pl.Array):
        try:
            return series.cast(want, strict=True)
        except pl.exceptions.PolarsError:
            pass
    if isinstance(want, pl.Datetime) and isinstance(have, pl.Datetime):
        out = series.dt.cast_time_unit(want.time_unit)
        if want.time_zone is not None:
            out = (
                out.dt.replace_time_zone(want.time_zone)
                if have.time_zone is None
                else out.dt.convert_time_zone(want.time_zone)
            )
        elif have.time_zone is not None:
            out = out.dt.replace_time_zone(None)
        return out
    if isinstance(want, pl.Datetime) and have == pl.Date:
        return series.cast(want)
    raise ContractError(
        f"{source}: column {col.name!r} must be {want}, got {have}"
        + (f" (first value {series[0]!r})" if len(series) else "")
    )


@dataclass(frozen=True)
class Contract:
    """A table's columns and the rules its rows follow."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    #: Further columns checked only on rows whose ``condition_column`` has the given value.
    conditional: Mapping[str, tuple[Column, ...]] = field(default_factory=dict)
    condition_column: str | None = None

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def schema(self) -> dict[str, Any]:
        """Column name to contract type, for every column (required or optional)."""
        return {c.name: c.dtype for c in self.columns}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)

    def validate(self, frame: pl.DataFrame, *, source: str | os.PathLike[str] | None = None) -> pl.DataFrame:
        """``frame`` in the contract's types; raises :class:`ContractError` at the first problem."""
        where = str(source) if source is not None else f"{self.name} table"
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        have = frame.columns
        for name in self.required:
            if name not in have:
                close = difflib.get_close_matches(name, have, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ContractError(
                    f"{where}: missing column {name!r}{hint} of the {self.name} table; columns present: {have}"
                )
        columns = [c for c in self.columns if c.name in have]
        if self.condition_column is not None and self.condition_column in have:
            present = set(frame[self.condition_column].drop_nulls().unique().to_list())
            for value, extra in self.conditional.items():
                if value not in present:
                    continue
                for col in extra:
                    if col.name in have:
                        columns.append(col)
                    elif col.required:
                        raise ContractError(
                            f"{where}: rows with {self.condition_column}={value!r} need column {col.name!r}; "
                            f"columns present: {have}"
                        )
        cast = [_cast_column(frame, c, source=where).alias(c.name) for c in columns]
        frame = frame.with_columns(cast) if cast else frame
        for col in columns:
            self._check_rows(frame, col, where)
        return frame

    def _check_rows(self, frame: pl.DataFrame, col: Column, where: str) -> None:
        s = frame[col.name]
        scope = pl.lit(True)
        if self.condition_column is not None and col not in self.columns:
            value = next(v for v, cols in self.conditional.items() if col in cols)
            scope = pl.col(self.condition_column) == value
        if not col.nullable:
            mask = scope & pl.col(col.name).is_null()
            if frame.select(mask.any()).item():
                row, _ = _row_message(frame, mask, col.name)
                raise ContractError(f"{where}: column {col.name!r} is empty at row {row}")
        if col.values is not None:
            mask = scope & pl.col(col.name).is_not_null() & ~pl.col(col.name).is_in(list(col.values))
            if frame.select(mask.any()).item():
                row, value = _row_message(frame, mask, col.name)
                raise ContractError(
                    f"{where}: column {col.name!r} has {value!r} at row {row}; allowed: {list(col.values)}"
                )
        if col.finite and s.dtype.is_float():
            mask = scope & (pl.col(col.name).is_nan() | pl.col(col.name).is_infinite())
            if frame.select(mask.any()).item():
                row, value = _row_message(frame, mask, col.name)
                raise ContractError(f"{where}: column {col.name!r} is not finite at row {row}: {value!r}")
        if col.minimum is not None and s.dtype.is_numeric():
            mask = scope & (pl.col(col.name) < col.minimum)
            if frame.select(mask.any()).item():
                row, value = _row_message(frame, mask, col.name)
                raise ContractError(
                    f"{where}: column {col.name!r} is below {col.minimum} at row {row}: {value!r}"
                )
        if col.maximum is not None and s.dtype.is_numeric():
            mask = scope & (pl.col(col.name) > col.maximum)
            if frame.select(mask.any()).item():
                row, value = _row_message(frame, mask, col.name)
                raise ContractError(
                    f"{where}: column {col.name!r} is above {col.maximum} at row {row}: {value!r}"
                )
        if col.unique:
            mask = pl.col(col.name).is_duplicated() & pl.col(col.name).is_not_null()
            if frame.select(mask.any()).item():
                row, value = _row_message(frame, mask, col.name)
                raise ContractError(f"{where}: column {col.name!r} repeats {value!r} (first at row {row})")

    def read(self, path: str | os.PathLike[str]) -> pl.DataFrame:
        """Read ``path`` (parquet, CSV, JSON lines) and validate it; errors name the file."""
        return self.validate(read_table(path, what=self.name), source=path)

    def describe(self) -> str:
        """The contract as a Markdown table (the docs print it)."""
        lines = [f"**{self.name}**: {self.doc}", "", "| column | type | rule |", "|---|---|---|"]
        rows = [(c, "") for c in self.columns] + [
            (c, f"when {self.condition_column} = {v}") for v, cols in self.conditional.items() for c in cols
        ]
        for c, cond in rows:
            rule = [r for r in (
                "required" if c.required else "optional",
                "no nulls" if not c.nullable else "",
                f"one of {list(c.values)}" if c.values else "",
                f">= {c.minimum}" if c.minimum is not None else "",
                f"<= {c.maximum}" if c.maximum is not None else "",
                "finite" if c.finite else "",
                "unique" if c.unique else "",
                cond,
            ) if r]
            lines.append(f"| `{c.name}` | `{c.dtype}` | {', '.join(rule)}{'. ' + c.doc if c.doc else ''} |")
        return "\n".join(lines)


def read_table(path: str | os.PathLike[str], *, what: str = "table", **csv_options: Any) -> pl.DataFrame:
    """A parquet, CSV (``.csv``, ``.tsv``, ``.txt``) or JSON-lines file, by its ending, as a frame.

    A missing, empty or unreadable file is one line naming it and ``what`` it was expected to be.
    ``csv_options`` go to ``polars.read_csv``.
    """
    path = Path(path)
    if not path.exists():
        raise ContractError(f"{path}: no such {what} file")
    if path.is_dir():
        raise ContractError(f"{path}: is a folder, expected a {what} file (.parquet, .csv or .jsonl)")
    suffix = path.suffix.lower()
    kind = "CSV" if suffix in (".csv", ".tsv", ".txt") else "JSON-lines" if suffix in (".jsonl", ".ndjson") else "parquet"
    if path.stat().st_size == 0:
        raise ContractError(f"{path}: empty file, expected a {kind} {what} file")
    try:
        if kind == "CSV":
            return pl.read_csv(path, **{"infer_schema_length": 10_000, **csv_options})
        if kind == "JSON-lines":
            return pl.read_ndjson(path)
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ContractError(f"{path}: not a readable {kind} {what} file ({first})") from exc


_STR = pl.String
_STRS = pl.List(pl.String)

RAW_CHECKINS = Contract(
    name="raw check-ins",
    doc="one row per check-in, as a reader returns it before `prepare`",
    columns=(
        Column("user_id", _STR, nullable=False),
        Column("poi_id", _STR, nullable=False),
        Column("category_id", _STR),
        Column("category_name", _STR),
        Column("latitude", pl.Float64, nullable=False, finite=True, minimum=-90.0, maximum=90.0),
        Column("longitude", pl.Float64, nullable=False, finite=True, minimum=-180.0, maximum=180.0),
        Column("local_time", pl.Datetime("us"), nullable=False, doc="wall-clock time at the venue"),
        Column("utc_time", pl.Datetime("us", "UTC"), nullable=False),
    ),
)

CHECKINS = Contract(
    name="check-ins",
    doc="after `prepare`: one row per check-in, sorted by user then time, with codes fitted on train",
    columns=(
        *RAW_CHECKINS.columns,
        Column("trajectory_id", _STR, nullable=False),
        Column("split", _STR, nullable=False, values=SPLITS),
        Column("user_idx", pl.Int64, minimum=0, doc="0-based; the id prompts show"),
        Column("poi_idx", pl.Int64, minimum=0),
        Column("category_idx", pl.Int64, minimum=0),
    ),
)

PROFILES = Contract(
    name="profiles",
    doc="one row per user, written by the profiler (GenUP's profile fields plus provenance)",
    columns=(
        Column("user_id", _STR, nullable=False, unique=True),
        Column("traits", _STRS, doc="five Big Five poles"),
        Column("age", _STR),
        Column("gender", _STR),
        Column("education", _STR),
        Column("socioeco", _STR),
        Column("preferences", _STRS),
        Column("routines", _STRS),
        Column("summary", _STR),
        Column("backend", _STR, required=False),
        Column("model", _STR, required=False),
        Column("raw", _STR, required=False, doc="what the model said"),
        Column("status", _STR, required=False, values=PROFILE_STATUS),
        Column("error", _STR, required=False),
    ),
)

TASK_COLUMNS: dict[str, tuple[Column, ...]] = {
    "next_poi": (
        Column("target_poi_idx", pl.Int64, minimum=0),
        Column("trajectory_id", _STR),
        Column("n_checkins", pl.Int64, minimum=0),
        Column("target_time", pl.Datetime("us"), required=False),
    ),
    "seqrec": (
        Column("history_item_ids", pl.List(pl.Int64)),
        Column("target_item_id", pl.Int64),
        Column("negative_item_ids", pl.List(pl.Int64), required=False),
    ),
    "ctr": (Column("label", pl.Int64, values=(0, 1)),),
}

SFT_RECORDS = Contract(
    name="SFT records",
    doc="one row per prediction target: the prompt the model reads and the completion it should write",
    columns=(
        Column("record_id", _STR, nullable=False, unique=True),
        Column("task", _STR, nullable=False, values=TASKS),
        Column("user_id", _STR),
        Column("split", _STR, nullable=False, values=SPLITS),
        Column("prompt", _STR, nullable=False),
        Column("completion", _STR, nullable=False),
        Column(
            "messages",
            pl.List(pl.Struct({"role": _STR, "content": _STR})),
            required=False,
            doc="the same record as chat messages",
        ),
    ),
    conditional=TASK_COLUMNS,
    condition_column="task",
)

FEATURES = Contract(
    name="coreset features",
    doc="one row per record (train pool or validation), in the row order of `embeddings.npy` beside it",
    columns=(
        Column("record_id", _STR, nullable=False, unique=True),
        Column("grad_norm", pl.Float64, nullable=False, finite=True, minimum=0.0),
        Column("label", pl.Int64, required=False, minimum=0, doc="class label for the label-enhanced variant (CTR: 0/1)"),
    ),
)

SELECTION = Contract(
    name="coreset selection",
    doc="one row per training record: whether the coreset keeps it, and in which order it entered",
    columns=(
        Column("record_id", _STR, nullable=False, unique=True),
        Column("selected", pl.Boolean, nullable=False),
        Column("rank", pl.Int64, minimum=1, doc="1-based order among the selected; null when not selected"),
    ),
)

PREDICTIONS = Contract(
    name="predictions",
    doc="one row per evaluated record and system",
    columns=(
        Column("record_id", _STR, nullable=False),
        Column("ranked", pl.List(pl.Int64), doc="candidate ids, best first"),
        Column("generated", _STR, doc="the text the model wrote (generate mode)"),
        Column("valid", pl.Boolean),
        Column("target_rank", pl.Float64, required=False, doc="1-based rank of the answer; null if absent"),
    ),
)

CONTRACTS: dict[str, Contract] = {
    "raw_checkins": RAW_CHECKINS,
    "checkins": CHECKINS,
    "profiles": PROFILES,
    "records": SFT_RECORDS,
    "features": FEATURES,
    "selection": SELECTION,
    "predictions": PREDICTIONS,
}

#: Every system in ``metrics.json`` maps metric names to numbers; these keys each system has.
METRICS_SYSTEM_KEYS = ("n",)


def validate_metrics(obj: Any, *, source: str | os.PathLike[str] = "metrics.json") -> dict[str, dict[str, Any]]:
    """Check the ``metrics.json`` contract: ``{system: {metric: number | {group: {...}}, "n": int}}``.

    A metric value is a finite number, null, a dict of per-group metrics (``by_user_activity`` and the
    like), or a dict describing an interval (``{"value", "low", "high", ...}``).
    """
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict) or not obj:
        raise ContractError(f"{source}: expected an object mapping each system to its metrics")
    for system, metrics in obj.items():
        if not isinstance(metrics, dict):
            raise ContractError(f"{source}: system {system!r} must map metric names to values")
        for key in METRICS_SYSTEM_KEYS:
            if key not in metrics:
                raise ContractError(f"{source}: system {system!r} has no {key!r}")
        for name, value in metrics.items():
            if isinstance(value, bool) or not (value is None or isinstance(value, (int, float, dict, list, str))):
                raise ContractError(f"{source}: {system}.{name} is {value!r}, not a number or a group")
            if isinstance(value, float) and not math.isfinite(value):
                raise ContractError(f"{source}: {system}.{name} is not finite: {value!r}")
    return obj


def contracts_markdown() -> str:
    """Every contract as Markdown, the block docs/design.md §2 carries (a test keeps them equal)."""
    return "\n\n".join(c.describe() for c in CONTRACTS.values())
