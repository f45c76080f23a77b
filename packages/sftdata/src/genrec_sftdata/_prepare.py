"""LLM4POI preprocessing in Polars: filters, a global chronological split, trajectories, codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_core import CHECKINS
from genrec_sftdata._checks import check_bool, check_int, check_number
from genrec_sftdata._contract import PREPARED_COLUMNS, SPLITS, normalize_checkins, validated
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

#: Upper bounds of :class:`PrepareConfig` (README, "Preprocessing").
MAX_MIN_COUNT = 1_000_000_000
MAX_GAP_HOURS = 1_000_000.0

Source = pl.DataFrame | pl.LazyFrame | str | Path | Sequence[str | Path] | Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """LLM4POI's preprocessing rules; each is a parameter, defaults as in LLM4POI."""

    min_poi_checkins: int = field(default=10, metadata={"help": "drop POIs with fewer check-ins (first)"})
    min_user_checkins: int = field(default=10, metadata={"help": "then drop users with fewer check-ins"})
    train_frac: float = field(default=0.8, metadata={"help": "share of check-ins (by time) in train"})
    val_frac: float = field(default=0.1, metadata={"help": "share of check-ins (by time) in val"})
    max_gap_hours: float = field(
        default=24.0, metadata={"help": "cut a trajectory where a user's gap exceeds this many hours"}
    )
    min_trajectory_checkins: int = field(
        default=2, metadata={"help": "drop trajectories (isolated check-ins) shorter than this"}
    )
    drop_unseen: bool = field(
        default=True, metadata={"help": "drop val/test rows whose user or POI never appears in train"}
    )
    drop_duplicates: bool = field(
        default=True, metadata={"help": "drop repeated (user_id, poi_id, utc_time) rows, counted"}
    )
    keep_split: bool = field(
        default=True, metadata={"help": "keep a split given by the input (files per split / split column)"}
    )

    def __post_init__(self) -> None:
        c = "PrepareConfig"
        for name in ("min_poi_checkins", "min_user_checkins", "min_trajectory_checkins"):
            check_int(c, name, getattr(self, name), lo=0, hi=MAX_MIN_COUNT)
        check_number(c, "train_frac", self.train_frac, lo=0, lo_open=True, hi=1)
        check_number(c, "val_frac", self.val_frac, lo=0, hi=1, hi_open=True)
        if self.train_frac + self.val_frac > 1 + 1e-12:
            raise SftDataError(
                f"PrepareConfig: fields train_frac + val_frac must be <= 1, got {self.train_frac!r} + {self.val_frac!r}"
            )
        # The gap becomes a duration in microseconds (int64): a bound far above any real gap.
        check_number(c, "max_gap_hours", self.max_gap_hours, lo=0, lo_open=True, hi=MAX_GAP_HOURS)
        for name in ("drop_unseen", "drop_duplicates", "keep_split"):
            check_bool(c, name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    """The output of :func:`prepare`: the check-ins table and its three splits."""

    checkins: pl.DataFrame
    train: pl.DataFrame
    val: pl.DataFrame
    test: pl.DataFrame
    stats: dict[str, Any]
    path: Path | None = None

    @property
    def num_pois(self) -> int:
        """N, the number of POI codes fitted on train (candidate ids are 0..N-1)."""
        return int(self.stats["num_pois"])


def _as_frame(source: Any, what: str) -> tuple[pl.DataFrame, str]:
    from genrec_sftdata._readers import read_checkins

    if isinstance(source, pl.LazyFrame):
        return source.collect(), what
    if isinstance(source, pl.DataFrame):
        return source, what
    if isinstance(source, (str, Path)):
        return read_checkins(source), str(source)
    if isinstance(source, Sequence):
        return read_checkins(list(source)), ", ".join(map(str, source))
    raise SftDataError(f"prepare: unsupported {what} of type {type(source).__name__}: {source!r}")


def _load(source: Source) -> tuple[pl.DataFrame, str, bool]:
    """(frame, description, has_given_split)."""
    if isinstance(source, Mapping):
        unknown = sorted(set(source) - set(SPLITS))
        if unknown:
            raise SftDataError(f"prepare: unknown split {unknown[0]!r} in the input mapping; use {SPLITS}")
        parts, names = [], []
        for split, part in source.items():
            frame, name = _as_frame(part, f"split {split}")
            parts.append(normalize_checkins(frame, source=name).with_columns(split=pl.lit(split)))
            names.append(f"{split}={name}")
        common = set.intersection(*(set(p.columns) for p in parts))
        cols = [c for c in parts[0].columns if c in common]
        return pl.concat([p.select(cols) for p in parts], how="vertical_relaxed"), "; ".join(names), True
    frame, name = _as_frame(source, "input")
    frame = normalize_checkins(frame, source=name)
    return frame, name, "split" in frame.columns


def _removed(rule: str, before: int, after: int, removed: dict[str, int]) -> None:
    removed[rule] = before - after
    logger.info("prepare: rule %s removed %d of %d rows", rule, before - after, before)


def split_stats(checkins: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Users, POIs, categories, check-ins and trajectories per split (one group-by)."""
    agg = checkins.group_by("split").agg(
        users=pl.col("user_id").n_unique(),
        pois=pl.col("poi_id").n_unique(),
        categories=pl.col("category_id").n_unique(),
        checkins=pl.len(),
        trajectories=pl.col("trajectory_id").n_unique(),
    )
    out = {s: {"users": 0, "pois": 0, "categories": 0, "checkins": 0, "trajectories": 0} for s in SPLITS}
    for row in agg.iter_rows(named=True):
        split = row.pop("split")
        out[split] = {k: int(v) for k, v in row.items()}
    total = checkins.select(
        users=pl.col("user_id").n_unique(),
        pois=pl.col("poi_id").n_unique(),
        categories=pl.col("category_id").n_unique(),
        checkins=pl.len(),
        trajectories=pl.col("trajectory_id").n_unique(),
    )
    out["all"] = {k: int(v) for k, v in total.row(0, named=True).items()}
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n"


def prepare(
    source: Source,
    *,
    out: str | Path | None = None,
    config: PrepareConfig | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> PreparedData:
    """Apply LLM4POI's preprocessing to raw check-ins and return (and optionally write) the tables.

    ``source`` is a frame, a path (any format :func:`read_checkins` knows), a list of paths, or a
    mapping ``{"train": ..., "val": ..., "test": ...}`` of already-split inputs (kept as given when
    ``config.keep_split``). With ``out``, writes ``{checkins,train,val,test}.parquet`` and
    ``stats.json`` there as one set (plus ``extra_files``, name -> JSON object, in the same set), under
    the folder's lock, taken before the input is read.
    """
    cfg = config or PrepareConfig()
    if out is None:
        return _prepare(source, cfg, None, {})
    from genrec_sftdata._writers import output_lock

    # Locked before the input is read: a second run into the same folder stops at once.
    with output_lock(out, what="prepared-data folder") as path:
        return _prepare(source, cfg, path, extra_files or {})


def _prepare(source: Source, cfg: PrepareConfig, out: Path | None, extra_files: Mapping[str, Any]) -> PreparedData:
    df, name, given_split = _load(source)
    given_split = given_split and cfg.keep_split
    removed: dict[str, int] = {}
    n_input = df.height
    # Re-preparing a prepared table: its derived columns are recomputed, not kept.
    df = df.drop([c for c in ("trajectory_id", "user_idx", "poi_idx", "category_idx") if c in df.columns])

    # Integer keys in id order: every sort and group below runs on integers, and sorting by them gives
    # the same order (and tie-breaks) as sorting by the string ids.
    users = df.select(pl.col("user_id").unique().sort()).with_row_index("__u")
    pois = df.select(pl.col("poi_id").unique().sort()).with_row_index("__p")
    df = df.join(users, on="user_id", how="left", maintain_order="left").join(
        pois, on="poi_id", how="left", maintain_order="left"
    )

    if cfg.drop_duplicates:
        before = df.height
        df = df.filter(pl.struct("__u", "__p", "utc_time").is_first_distinct())
        _removed("duplicates", before, df.height, removed)
    if cfg.min_poi_checkins > 1:
        before = df.height
        df = df.filter(pl.len().over("__p") >= cfg.min_poi_checkins)
        _removed("min_poi_checkins", before, df.height, removed)
    if cfg.min_user_checkins > 1:
        before = df.height
        df = df.filter(pl.len().over("__u") >= cfg.min_user_checkins)
        _removed("min_user_checkins", before, df.height, removed)
    if df.height == 0:
        raise SftDataError(
            f"{name}: no check-ins left after the POI/user filters "
            f"(min_poi_checkins={cfg.min_poi_checkins}, min_user_checkins={cfg.min_user_checkins})"
        )

    split_code = {s: i for i, s in enumerate(SPLITS)}
    if given_split:
        bad = df.filter(~pl.col("split").is_in(list(SPLITS)))
        if bad.height:
            raise SftDataError(f"{name}: column 'split' must be one of {SPLITS}; example row: {bad.row(0, named=True)}")
        df = df.with_columns(__o=pl.col("split").replace_strict(split_code, return_dtype=pl.Int8)).drop("split")
    else:
        n = df.height
        n_train, n_trainval = int(n * cfg.train_frac), int(n * (cfg.train_frac + cfg.val_frac))
        # The rank of each row in (time, user, POI) order, without moving the (wide) rows: sort only
        # the keys' positions, then scatter the split codes back.
        order = df.select(pl.arg_sort_by("utc_time", "__u", "__p", maintain_order=True)).to_series().to_numpy()
        codes = np.full(n, 2, dtype=np.int8)
        codes[order[:n_train]] = 0
        codes[order[n_train:n_trainval]] = 1
        df = df.with_columns(__o=pl.Series(codes, dtype=pl.Int8))

    # Trajectories: a new one where the user changes, the split changes, or the gap is too long.
    # Numbered per user (1, 2, ...) before any trajectory is dropped, as LLM4POI numbers them.
    gap = pl.duration(microseconds=round(cfg.max_gap_hours * 3_600_000_000))
    new_user = (pl.col("__u") != pl.col("__u").shift(1)).fill_null(True)
    new = (
        new_user
        | (pl.col("__o") != pl.col("__o").shift(1))
        | ((pl.col("utc_time") - pl.col("utc_time").shift(1)) > gap)
    ).fill_null(True)
    df = (
        df.sort("__u", "__o", "utc_time", "__p")
        .with_columns(__tid=new.cast(pl.Int64).cum_sum(), __new_user=new_user)
        .with_columns(__k=pl.col("__tid") - pl.when("__new_user").then(pl.col("__tid")).forward_fill() + 1)
        .drop("__new_user")
    )

    short = pl.len().over("__tid") < cfg.min_trajectory_checkins
    if cfg.min_trajectory_checkins > 1:
        before = df.height
        df = df.filter(~((pl.col("__o") == 0) & short))
        _removed("min_trajectory_checkins[train]", before, df.height, removed)
    if cfg.drop_unseen:
        train = df.filter(pl.col("__o") == 0)
        before = df.height
        df = df.filter(
            (pl.col("__o") == 0)
            | (pl.col("__u").is_in(train["__u"].unique().implode()) & pl.col("__p").is_in(train["__p"].unique().implode()))
        )
        _removed("drop_unseen", before, df.height, removed)
    if cfg.min_trajectory_checkins > 1:
        before = df.height
        df = df.filter(~short)
        _removed("min_trajectory_checkins[val,test]", before, df.height, removed)

    train = df.filter(pl.col("__o") == 0)
    if train.height == 0:
        raise SftDataError(f"{name}: the train split is empty after preprocessing; nothing to fit codes on")
    df = _fit_codes(df, train)
    if given_split:
        # Given splits may interleave in time; a global time split already runs in (user, time) order.
        df = df.sort("__u", "utc_time", "__o", "__p")
    per_split = _split_stats_int(df)
    df = df.with_columns(
        split=pl.col("__o").replace_strict(dict(enumerate(SPLITS)), return_dtype=pl.String),
        trajectory_id=pl.concat_str(pl.col("user_id"), pl.lit("_"), pl.col("__k").cast(pl.String)),
    ).drop("__u", "__p", "__o", "__tid", "__k")
    extras = [c for c in df.columns if c not in PREPARED_COLUMNS]
    df = validated(CHECKINS, df.select(*PREPARED_COLUMNS, *extras), source=f"prepare({name})")

    stats: dict[str, Any] = {
        "source": name,
        "input_rows": n_input,
        "removed": removed,
        "splits": per_split,
        "num_pois": int(train["__p"].n_unique()),
        "num_users": int(train["__u"].n_unique()),
        "num_categories": int(df["category_idx"].n_unique()),
        "given_split": given_split,
        "config": asdict(cfg),
    }
    for split in SPLITS:
        s = per_split[split]
        logger.info(
            "prepare: %s has %d check-ins, %d users, %d POIs, %d trajectories",
            split, s["checkins"], s["users"], s["pois"], s["trajectories"],
        )
    parts = {s: df.filter(pl.col("split") == s) for s in SPLITS}
    path = None
    if out is not None:
        from genrec_sftdata._writers import write_set

        def write(tmp: Path) -> None:
            for fname, frame in (("checkins", df), *parts.items()):
                frame.write_parquet(tmp / f"{fname}.parquet")
            (tmp / "stats.json").write_text(_json(stats), encoding="utf-8")
            for fname, obj in extra_files.items():
                (tmp / fname).write_text(_json(obj), encoding="utf-8")

        path = write_set(out, write, what="prepared-data folder")
        logger.info("prepare: wrote %s/{checkins,train,val,test}.parquet and stats.json", path)
    return PreparedData(checkins=df, train=parts["train"], val=parts["val"], test=parts["test"], stats=stats, path=path)


def _split_stats_int(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    """split_stats on the integer keys (the same numbers, without hashing strings)."""
    aggs = {
        "users": pl.col("__u").n_unique(),
        "pois": pl.col("__p").n_unique(),
        "categories": pl.col("category_idx").n_unique(),
        "checkins": pl.len(),
        "trajectories": pl.col("__tid").n_unique(),
    }
    per = df.group_by("__o").agg(**aggs)
    out = {s: dict.fromkeys(aggs, 0) for s in SPLITS}
    for row in per.iter_rows(named=True):
        split = SPLITS[row.pop("__o")]
        out[split] = {k: int(v) for k, v in row.items()}
    out["all"] = {k: int(v) for k, v in df.select(**aggs).row(0, named=True).items()}
    return out


def _fit_codes(df: pl.DataFrame, train: pl.DataFrame) -> pl.DataFrame:
    """0-based codes fitted on train, in sorted order of the ids (stable whatever the row order)."""
    users = train.select(pl.col("__u").unique().sort()).with_row_index("user_idx")
    pois = train.select(pl.col("__p").unique().sort()).with_row_index("poi_idx")
    cats = train.select(pl.col("category_id").unique().sort()).with_row_index("category_idx")
    # Categories first seen after train (possible when drop_unseen is off) get codes after train's.
    extra = df.select(pl.col("category_id").unique()).join(cats, on="category_id", how="anti").sort("category_id")
    if extra.height:
        cats = pl.concat([cats, extra.with_row_index("category_idx", offset=cats.height)])
    return (
        df.join(users, on="__u", how="left", maintain_order="left")
        .join(pois, on="__p", how="left", maintain_order="left")
        .join(cats, on="category_id", how="left", maintain_order="left")
        .with_columns(pl.col("user_idx", "poi_idx", "category_idx").cast(pl.Int64))
    )


def load_prepared(directory: str | Path) -> PreparedData:
    """Read what :func:`prepare` wrote in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such prepared-data folder")
    frames: dict[str, pl.DataFrame] = {}
    for name in ("checkins", *SPLITS):
        file = directory / f"{name}.parquet"
        if not file.is_file():
            raise SftDataError(f"{file}: missing; a prepared folder holds checkins/train/val/test.parquet")
        frames[name] = validated(CHECKINS, file)
    stats_file = directory / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    if "num_pois" not in stats:
        train = frames["train"]
        stats["num_pois"] = int(train["poi_idx"].n_unique())
    return PreparedData(
        checkins=frames["checkins"],
        train=frames["train"],
        val=frames["val"],
        test=frames["test"],
        stats=stats,
        path=directory,
    )
