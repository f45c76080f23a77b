"""SeqRec (BIGRec style) and CTR (TALLRec style) SFT records, and the TALLRec JSON reader."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_core import SFT_RECORDS
from genrec_sftdata._checks import check_int, check_number, check_str
from genrec_sftdata._contract import SPLITS, read_frame, require_columns, string_ids, validated
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

#: Upper bounds of :class:`SeqRecConfig` / :class:`CtrConfig` (README, "SFT records"): a history longer
#: than any prompt can hold, negatives beyond any candidate list.
MAX_HISTORY = 10_000
MAX_NEGATIVES = 100_000

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
_SPLIT_NAMES = {"train": "train", "valid": "val", "validation": "val", "val": "val", "dev": "val", "test": "test"}


def _alpaca(instruction: pl.Expr, inp: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        pl.lit(ALPACA_HEADER + "### Instruction:\n"), instruction, pl.lit("\n\n### Input:\n"), inp,
        pl.lit("\n\n### Response:\n"),
    )


def _messages(system: pl.Expr, user: pl.Expr, assistant: pl.Expr) -> pl.Expr:
    return pl.concat_list(
        pl.struct(role=pl.lit("system"), content=system),
        pl.struct(role=pl.lit("user"), content=user),
        pl.struct(role=pl.lit("assistant"), content=assistant),
    )


def _frame(obj: pl.DataFrame | str | Path, what: str) -> pl.DataFrame:
    """A table given as a frame or a file, with ``user_id`` as strings and ``item_id`` as integers by the
    contract rules (a float id 1.0 is user ``"1"``; 1.5 is an error naming the row)."""
    if isinstance(obj, pl.DataFrame):
        frame, source = obj, what
    else:
        frame, source = read_frame(obj, what=what, try_parse_dates=True), str(obj)
    return string_ids(frame, ("user_id",), ints=("item_id",), source=source)


@dataclass(frozen=True, kw_only=True)
class SeqRecConfig:
    """How SeqRec records are built (BIGRec style)."""

    history_len: int = field(default=10, metadata={"help": "at most this many most recent titles in the prompt"})
    num_negatives: int = field(default=99, metadata={"help": "sampled negatives per record (never the user's items)"})
    seed: int = field(default=0, metadata={"help": "seed of the negative sampling"})
    train_frac: float = field(default=0.8, metadata={"help": "global chronological split (flat interactions)"})
    val_frac: float = field(default=0.1, metadata={"help": "global chronological split (flat interactions)"})
    item_noun: str = field(default="video games", metadata={"help": "what the items are, in the prompt"})
    verb: str = field(default="played", metadata={"help": "what the user did with them, in the prompt"})
    max_records_per_split: int | None = field(
        default=None, metadata={"help": "keep a seeded sample of at most this many records per split"}
    )

    def __post_init__(self) -> None:
        c = "SeqRecConfig"
        check_int(c, "history_len", self.history_len, lo=1, hi=MAX_HISTORY)
        check_int(c, "num_negatives", self.num_negatives, lo=0, hi=MAX_NEGATIVES)
        check_int(c, "seed", self.seed, lo=0)
        _check_fracs(c, self.train_frac, self.val_frac)
        check_str(c, "item_noun", self.item_noun)
        check_str(c, "verb", self.verb)
        check_int(c, "max_records_per_split", self.max_records_per_split, lo=1, optional=True)


def _check_fracs(owner: str, train_frac: Any, val_frac: Any) -> None:
    check_number(owner, "train_frac", train_frac, lo=0, lo_open=True, hi=1)
    check_number(owner, "val_frac", val_frac, lo=0, hi=1, hi_open=True)
    if train_frac + val_frac > 1 + 1e-12:
        raise SftDataError(f"{owner}: fields train_frac + val_frac must be <= 1, got {train_frac!r} + {val_frac!r}")


def _seq_targets(interactions: pl.DataFrame, cfg: SeqRecConfig, source: str) -> pl.DataFrame:
    """One row per target: user_id, split, position, full sequence (list of item ids)."""
    cols = interactions.columns
    if "item_ids" in cols:
        # Per-user sequences split per user (the Amazon shape): train, then valid, then test.
        require_columns(interactions, ["user_id", "split", "item_ids"], source=source)
        bad = interactions.filter(~pl.col("split").is_in(list(_SPLIT_NAMES)))
        if bad.height:
            raise SftDataError(
                f"{source}: column 'split' must be one of {sorted(_SPLIT_NAMES)}; example row: {bad.row(0, named=True)}"
            )
        parts = interactions.select(
            pl.col("user_id"),
            pl.col("split").replace_strict(_SPLIT_NAMES),
            pl.col("item_ids").cast(pl.List(pl.Int64)),
        ).with_columns(__o=pl.col("split").replace_strict({s: i for i, s in enumerate(SPLITS)}, return_dtype=pl.Int8))
        long = (
            parts.sort("user_id", "__o", maintain_order=True)
            .explode("item_ids")
            .drop_nulls("item_ids")
            .rename({"item_ids": "item_id"})
            .drop("__o")
        )
    else:
        require_columns(interactions, ["user_id", "item_id", "timestamp"], source=source)
        n = interactions.height
        n_train, n_trainval = int(n * cfg.train_frac), int(n * (cfg.train_frac + cfg.val_frac))
        rank = pl.int_range(pl.len(), dtype=pl.Int64)
        long = (
            interactions.sort("timestamp", "user_id", "item_id")
            .with_columns(
                split=pl.when(rank < n_train).then(pl.lit("train"))
                .when(rank < n_trainval).then(pl.lit("val")).otherwise(pl.lit("test"))
            )
            .sort("user_id", "timestamp", "item_id")
            .select("user_id", "split", pl.col("item_id").cast(pl.Int64))
        )
    return long.with_columns(__pos=pl.int_range(pl.len(), dtype=pl.Int64).over("user_id"))


def _sample_negatives(
    rec: pl.DataFrame, seen: pl.DataFrame, universe: np.ndarray, k: int, seed: int, chunk: int = 50_000
) -> pl.Series:
    """``k`` distinct items per record, never one the record's user interacted with.

    Rejection sampling in NumPy over chunks of records (each chunk with its own seed, so memory stays
    bounded): draw a few more than ``k`` per record, drop the user's items and repeats, keep the first
    ``k``, and redraw only for the rare records left short.
    """
    if k == 0:
        return pl.Series("negative_item_ids", [[]] * rec.height, dtype=pl.List(pl.Int64))
    n_items = len(universe)
    users = seen.select("user_id").unique(maintain_order=True).with_row_index("__u", offset=0)
    seen_keys = (
        seen.join(users, on="user_id")
        .select(pl.col("__u").cast(pl.Int64) * n_items + pl.col("item_id").replace_strict(
            pl.Series(universe), pl.int_range(n_items, dtype=pl.Int64, eager=True), default=-1
        ))
        .to_series()
        .sort()
        .to_numpy()
    )
    rec_u = (
        rec.select("user_id").join(users, on="user_id", how="left", maintain_order="left")["__u"]
        .fill_null(-1).cast(pl.Int64).to_numpy()
    )
    out = np.empty((rec.height, k), dtype=np.int64)
    for lo in range(0, rec.height, chunk):
        hi = min(rec.height, lo + chunk)
        out[lo:hi] = _sample_chunk(rec_u[lo:hi], seen_keys, n_items, k, np.random.default_rng([seed, lo]), rec, lo)
    return pl.Series("negative_item_ids", universe[out], dtype=pl.Array(pl.Int64, k)).cast(pl.List(pl.Int64))


def _valid_first_k(cand: np.ndarray, user: np.ndarray, seen_keys: np.ndarray, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    keys = user[:, None] * n_items + cand
    pos = np.clip(np.searchsorted(seen_keys, keys), 0, max(len(seen_keys) - 1, 0))
    is_seen = (seen_keys[pos] == keys) if len(seen_keys) else np.zeros_like(keys, dtype=bool)
    # Repeats within a row: mark every occurrence after the first.
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    valid = ~(is_seen | dup)
    enough = valid.sum(axis=1) >= k
    return valid, enough


def _sample_chunk(
    user: np.ndarray, seen_keys: np.ndarray, n_items: int, k: int, rng: np.random.Generator, rec: pl.DataFrame, lo: int
) -> np.ndarray:
    n = len(user)
    res = np.empty((n, k), dtype=np.int64)
    todo = np.arange(n)
    m = k + 16 + k // 4
    for _ in range(50):
        if len(todo) == 0:
            return res
        cand = rng.integers(0, n_items, (len(todo), m))
        valid, enough = _valid_first_k(cand, user[todo], seen_keys, n_items, k)
        rows = np.nonzero(enough)[0]
        if len(rows):
            v = valid[rows]
            # Column index of the first k valid draws per row.
            idx = np.argsort(~v, axis=1, kind="stable")[:, :k]
            res[todo[rows]] = np.take_along_axis(cand[rows], idx, axis=1)
        todo = todo[~enough]
        m = min(n_items, 2 * m)
    example = rec.row(lo + int(todo[0]), named=True)
    raise SftDataError(
        f"cannot draw {k} negatives for user {example['user_id']!r}: too few items the user has not "
        f"interacted with ({n_items} items in all)"
    )


def _quoted(titles: pl.Expr) -> pl.Expr:
    return titles.list.eval(pl.concat_str(pl.lit('"'), pl.element(), pl.lit('"'))).list.join(", ")


def build_seqrec(
    items: pl.DataFrame | str | Path,
    interactions: pl.DataFrame | str | Path,
    *,
    config: SeqRecConfig | None = None,
) -> dict[str, pl.DataFrame]:
    """SeqRec records (docs/design.md §2) from item titles and user sequences, BIGRec style.

    ``items``: ``item_id, title``. ``interactions``: either per-user sequences ``user_id, split,
    item_ids`` (train/valid/test parts in time order, as in the Amazon data) or flat ``user_id,
    item_id, timestamp`` rows split globally by time. Every interaction with at least one earlier
    interaction of its user is a target; the prompt lists up to ``history_len`` earlier titles.
    """
    cfg = config or SeqRecConfig()
    items_f = _frame(items, "items")
    inter_f = _frame(interactions, "interactions")
    require_columns(items_f, ["item_id", "title"], source="items")
    titles = items_f.select(pl.col("item_id").cast(pl.Int64), pl.col("title").cast(pl.String).fill_null(""))
    long = _seq_targets(inter_f, cfg, "interactions")
    unknown = long.join(titles, on="item_id", how="anti")
    if unknown.height:
        raise SftDataError(
            f"interactions: item_id {unknown['item_id'][0]} (user {unknown['user_id'][0]!r}) has no row in items"
        )
    long = long.join(titles, on="item_id", how="left").sort("user_id", "__pos")
    seqs = long.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").alias("__items"), pl.col("title").alias("__titles"), pl.col("split").alias("__splits")
    )
    h = cfg.history_len
    rec = (
        seqs.with_columns(__pos=pl.int_ranges(1, pl.col("__items").list.len()))
        .explode("__pos")
        .drop_nulls("__pos")
        .with_columns(__start=pl.max_horizontal(pl.col("__pos") - h, pl.lit(0)))
        .with_columns(
            split=pl.col("__splits").list.get(pl.col("__pos")),
            target_item_id=pl.col("__items").list.get(pl.col("__pos")),
            target_title=pl.col("__titles").list.get(pl.col("__pos")),
            history_item_ids=pl.col("__items").list.slice(pl.col("__start"), pl.col("__pos") - pl.col("__start")),
            __hist_titles=pl.col("__titles").list.slice(pl.col("__start"), pl.col("__pos") - pl.col("__start")),
        )
    )
    if cfg.max_records_per_split is not None:
        rec = rec.filter(
            pl.int_range(pl.len()).shuffle(seed=cfg.seed).over("split") < cfg.max_records_per_split
        )
    seen = long.select("user_id", "item_id").unique()
    universe = np.sort(titles["item_id"].unique().to_numpy())
    rec = rec.with_columns(_sample_negatives(rec, seen, universe, cfg.num_negatives, cfg.seed))
    instruction = (
        f"Given a list of {cfg.item_noun} the user has {cfg.verb} before, please recommend a new "
        f"{cfg.item_noun.rstrip('s') if cfg.item_noun.endswith('s') else cfg.item_noun} that the user likes to the user."
    )
    user_text = pl.concat_str(
        pl.lit(f"The user has {cfg.verb} the following {cfg.item_noun} before: "), _quoted(pl.col("__hist_titles"))
    )
    completion = pl.concat_str(pl.lit('"'), pl.col("target_title"), pl.lit('"'))
    out = rec.with_columns(
        record_id=pl.concat_str(
            pl.lit("seqrec:"), pl.col("split"), pl.lit(":"), pl.col("user_id").cast(pl.String), pl.lit(":"),
            pl.col("__pos").cast(pl.String),
        ),
        task=pl.lit("seqrec"),
        user_id=pl.col("user_id").cast(pl.String),
        prompt=_alpaca(pl.lit(instruction), user_text),
        completion=completion,
        messages=_messages(pl.lit(instruction), user_text, completion),
        n_history=pl.col("history_item_ids").list.len().cast(pl.Int64),
    ).select(
        "record_id", "task", "user_id", "split", "prompt", "completion", "messages",
        "history_item_ids", "target_item_id", "negative_item_ids", "target_title", "n_history",
    )
    out = validated(SFT_RECORDS, out, source="build_seqrec")
    result = {s: out.filter(pl.col("split") == s) for s in SPLITS}
    for split, frame in result.items():
        logger.info("build_seqrec: %s has %d records", split, frame.height)
    return result


# --------------------------------------------------------------------------------------------- CTR

CTR_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target movie "
    'by answering "Yes." or "No.".'
)


@dataclass(frozen=True, kw_only=True)
class CtrConfig:
    """How CTR records are built (TALLRec style)."""

    history_len: int = field(default=10, metadata={"help": "earlier rated items shown (liked + disliked)"})
    positive_threshold: float = field(default=3.0, metadata={"help": "rating > this is a positive (Yes.)"})
    train_frac: float = field(default=0.8, metadata={"help": "global chronological split"})
    val_frac: float = field(default=0.1, metadata={"help": "global chronological split"})
    item_noun: str = field(default="movie", metadata={"help": "what the items are, in the prompt"})

    def __post_init__(self) -> None:
        c = "CtrConfig"
        check_int(c, "history_len", self.history_len, lo=1, hi=MAX_HISTORY)
        check_number(c, "positive_threshold", self.positive_threshold)
        _check_fracs(c, self.train_frac, self.val_frac)
        check_str(c, "item_noun", self.item_noun)


def _ctr_texts(instruction: pl.Expr, inp: pl.Expr, output: pl.Expr) -> dict[str, pl.Expr]:
    return {
        "prompt": _alpaca(instruction, inp),
        "completion": output,
        "messages": _messages(instruction, inp, output),
    }


def build_ctr(
    ratings: pl.DataFrame | str | Path,
    items: pl.DataFrame | str | Path,
    *,
    config: CtrConfig | None = None,
) -> dict[str, pl.DataFrame]:
    """CTR records (TALLRec style) from ratings ``user_id, item_id, rating, timestamp`` and item titles.

    Every rating with at least one earlier rating of its user is a target; its prompt lists the user's
    up to ``history_len`` earlier items as liked (rating > threshold) and disliked; the completion is
    ``Yes.`` or ``No.`` and ``label`` is 1 or 0. Splits are global and chronological.
    """
    cfg = config or CtrConfig()
    r = _frame(ratings, "ratings")
    require_columns(r, ["user_id", "item_id", "rating", "timestamp"], source="ratings")
    it = _frame(items, "items")
    require_columns(it, ["item_id", "title"], source="items")
    titles = it.select(pl.col("item_id").cast(pl.Int64), pl.col("title").cast(pl.String))
    n = r.height
    n_train, n_trainval = int(n * cfg.train_frac), int(n * (cfg.train_frac + cfg.val_frac))
    rank = pl.int_range(pl.len(), dtype=pl.Int64)
    long = (
        r.with_columns(pl.col("item_id").cast(pl.Int64), pl.col("user_id").cast(pl.String))
        .sort("timestamp", "user_id", "item_id")
        .with_columns(
            split=pl.when(rank < n_train).then(pl.lit("train"))
            .when(rank < n_trainval).then(pl.lit("val")).otherwise(pl.lit("test"))
        )
        .join(titles, on="item_id", how="left")
        .with_columns(pl.col("title").fill_null(pl.col("item_id").cast(pl.String)))
        .sort("user_id", "timestamp", "item_id")
        .with_columns(liked=pl.col("rating") > cfg.positive_threshold)
    )
    seqs = long.group_by("user_id", maintain_order=True).agg(
        pl.col("title").alias("__t"), pl.col("liked").alias("__l"), pl.col("split").alias("__s"),
        pl.col("item_id").alias("__i"),
    )
    h = cfg.history_len
    rec = (
        seqs.with_columns(__pos=pl.int_ranges(1, pl.col("__t").list.len()))
        .explode("__pos")
        .drop_nulls("__pos")
        .with_columns(__start=pl.max_horizontal(pl.col("__pos") - h, pl.lit(0)))
        .with_columns(
            split=pl.col("__s").list.get(pl.col("__pos")),
            target_title=pl.col("__t").list.get(pl.col("__pos")),
            target_item_id=pl.col("__i").list.get(pl.col("__pos")),
            label=pl.col("__l").list.get(pl.col("__pos")).cast(pl.Int64),
            __ht=pl.col("__t").list.slice(pl.col("__start"), pl.col("__pos") - pl.col("__start")),
            __hl=pl.col("__l").list.slice(pl.col("__start"), pl.col("__pos") - pl.col("__start")),
        )
        .with_columns(
            __liked=pl.col("__ht").list.gather(pl.col("__hl").list.eval(pl.element().arg_true())),
            __disliked=pl.col("__ht").list.gather(pl.col("__hl").list.eval((~pl.element()).arg_true())),
        )
    )
    inp = pl.concat_str(
        pl.lit("User Preference: "), _quoted(pl.col("__liked")),
        pl.lit("\nUser Unpreference: "), _quoted(pl.col("__disliked")),
        pl.lit(f'\nWhether the user will like the target {cfg.item_noun} "'), pl.col("target_title"), pl.lit('"?'),
    )
    instruction = pl.lit(CTR_INSTRUCTION.replace("movie", cfg.item_noun))
    output = pl.when(pl.col("label") == 1).then(pl.lit("Yes.")).otherwise(pl.lit("No."))
    out = rec.with_columns(
        record_id=pl.concat_str(
            pl.lit("ctr:"), pl.col("split"), pl.lit(":"), pl.col("user_id"), pl.lit(":"), pl.col("__pos").cast(pl.String)
        ),
        task=pl.lit("ctr"),
        instruction=instruction,
        input=inp,
        output=output,
        **_ctr_texts(instruction, inp, output),
    ).select(
        "record_id", "task", "user_id", "split", "prompt", "completion", "messages", "label",
        "target_item_id", "target_title", "instruction", "input", "output",
    )
    out = validated(SFT_RECORDS, out, source="build_ctr")
    return {s: out.filter(pl.col("split") == s) for s in SPLITS}


def read_tallrec_json(path: str | Path, *, split: str | None = None) -> pl.DataFrame:
    """TALLRec-format JSON (a list of ``{"instruction", "input", "output"}``) as CTR SFT records.

    ``split`` defaults to the file name (``valid.json`` is val). ``label`` is 1 for ``Yes.``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TALLRec JSON file")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SftDataError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list) or (data and not isinstance(data[0], dict)):
        raise SftDataError(f"{path}: expected a JSON list of objects with instruction/input/output")
    frame = pl.DataFrame(data, infer_schema_length=None) if data else pl.DataFrame(
        schema={"instruction": pl.String, "input": pl.String, "output": pl.String}
    )
    require_columns(frame, ["instruction", "input", "output"], source=str(path))
    out_norm = pl.col("output").str.strip_chars()
    bad = frame.with_row_index().filter(~out_norm.is_in(["Yes.", "No."]))
    if bad.height:
        raise SftDataError(
            f"{path}: field 'output' must be 'Yes.' or 'No.' at row {bad['index'][0]}: {bad['output'][0]!r}"
        )
    split = split or _SPLIT_NAMES.get(path.stem, path.stem)
    instruction, inp, output = pl.col("instruction"), pl.col("input"), out_norm
    return frame.with_row_index("__i").with_columns(
        record_id=pl.concat_str(pl.lit(f"ctr:{split}:{path.stem}:"), pl.col("__i").cast(pl.String)),
        task=pl.lit("ctr"),
        user_id=pl.lit(None, dtype=pl.String),
        split=pl.lit(split),
        label=(output == "Yes.").cast(pl.Int64),
        target_title=pl.col("input").str.extract(r'target \w+ "(.*)"\?\s*$', 1),
        **_ctr_texts(instruction, inp, output),
    ).select(
        "record_id", "task", "user_id", "split", "prompt", "completion", "messages", "label",
        "target_title", "instruction", "input", pl.col("output").str.strip_chars(),
    )
