"""Amazon review data (5-core reviews and product metadata) and GORACS's SeqRec and CTR records.

GORACS (github.com/Mithas-114/GORACS, ``codes/data/data_process_SeqRec.ipynb`` and
``data_process_CTRPre.ipynb``) prepares Amazon Games, Movies and Food as follows; the rules are
reimplemented here from that description, as Polars expressions:

- titles from the metadata (a later line for the same ASIN wins); Movies and Food append
  ``" - <brand>"`` (Movies whenever the line has a brand field, Food only when it is non-empty); an
  item is kept when its title is longer than 1 character (Games, Food) or 50 (Movies);
- reviews of items without a kept title are dropped, then each user's reviews are sorted by
  ``unixReviewTime`` (stable: file order breaks ties), users in order of first appearance;
- a user with items ``x_0..x_{L-1}`` gives one sample per position ``i`` from ``min(10, L-1)`` to
  ``L-1``, with history ``x_{max(i-10,0)}..x_{i-1}``; Movies skips samples with fewer than 3 history
  items;
- all samples are sorted by target time (stable) and split: the last ``test_size`` are test, the
  ``valid_size`` before them valid, the rest train (5,000 / 5,000 for Games and Movies; 10% / 10%,
  rounded, for Food);
- CTR labels are ``int(overall) > 3``.

The text is GORACS's, fed through its Alpaca template (``generate_prompt``: header, instruction,
input, ``### Response:``); ``completion`` is the JSON's ``output``.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from genrec_core import SFT_RECORDS
from genrec_sftdata._checks import check_bool, check_int, check_number
from genrec_sftdata._contract import SPLITS, validated
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

Domain = Literal["games", "movies", "food"]
DOMAINS: tuple[str, ...] = ("games", "movies", "food")

# GORACS's generate_prompt header (note the space before the blank line: it is in their template).
GORACS_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
)

_SEQREC_TEXT = {
    "games": (
        "Given a list of video games the user has played before, please recommend a new video game that the user "
        "likes to the user.",
        "The user has played the following video games before:",
    ),
    "movies": (
        # "ad TVs" is GORACS's wording, kept so the prompts match theirs token for token.
        "Given a list of movies ad TVs the user has watched before, please recommend the title of a new movie or TV "
        "that the user will like to watch in the following time.",
        "The user has watched the following movies and TVs before:",
    ),
    "food": (
        "Given a list of food the user has purchased before, please recommend the name of a new food that the user "
        "will like to purchase in the following time.",
        "The user has purchased the following food before:",
    ),
}
_CTR_TARGET = {"games": ("movie", "movie "), "movies": ("movie", "movie "), "food": ("food product", "food product named ")}


def _open_text(path: Path) -> Iterator[str]:
    with path.open("rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8") as fh:
        yield from fh


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        # The 2014 release writes Python literals ({'asin': '...'}): parse them as data, never execute.
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError) as exc:
            raise SftDataError(f"{path}: line {lineno} is neither JSON nor a Python literal: {line[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise SftDataError(f"{path}: line {lineno} is not an object: {line[:200]!r}")
    return obj


def _records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such Amazon file")
    for lineno, line in enumerate(_open_text(p), start=1):
        if line.strip():
            yield lineno, _parse_line(line, p, lineno)


def read_amazon_reviews(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Amazon 5-core reviews (``Video_Games_5.json[.gz]``, 2018; ``reviews_Video_Games_5.json.gz``,
    2014): one object per line, JSON or Python literal, gzip or not.

    Returns ``user_id`` (reviewerID), ``item_id`` (asin), ``rating`` (overall), ``timestamp``
    (unixReviewTime), in file order; a review without a rating or time has nulls there (GORACS skips
    those). A line without reviewerID or asin raises, naming the line.
    """
    users, items, ratings, times = [], [], [], []
    for lineno, obj in _records(path):
        if "reviewerID" not in obj or "asin" not in obj:
            raise SftDataError(f"{path}: line {lineno} has no {'reviewerID' if 'reviewerID' not in obj else 'asin'}")
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        r, t = obj.get("overall"), obj.get("unixReviewTime")
        ratings.append(None if r is None else float(r))
        times.append(None if t is None else int(t))
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": ratings, "timestamp": times},
        schema={"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64, "timestamp": pl.Int64},
    )


# GORACS reads the Movies and Food metadata with regular expressions over the raw line, after turning
# every apostrophe into "_" (so a title keeps "_" for "'", and a Food title ends at its first "_").
_GORACS_PATTERNS = {
    "movies": (r'"asin": "(.*?)"', r'"title": "(.*?)"', r'"brand": "(.*?)"', False),
    "food": (r"_asin_:\s*_(.*?)_", r"_title_:\s*_(.*?)_", r"_brand_:\s*_(.*?)_", True),
}


def read_amazon_meta(path: str | os.PathLike[str], *, goracs_regex: str | None = None) -> pl.DataFrame:
    """Amazon product metadata (``meta_Video_Games.json[.gz]``): ``item_id`` (asin), ``title``,
    ``brand`` (null when the line has no brand field), one row per line in file order (duplicates kept).
    Python-literal lines (the 2014 release) are parsed with ``ast.literal_eval``, never evaluated.

    ``goracs_regex="movies"`` or ``"food"`` reads the fields the way GORACS's notebooks do (regular
    expressions over the line with apostrophes replaced by ``_``), so titles match its prompts.
    """
    asins, titles, brands = [], [], []
    if goracs_regex is not None:
        import re

        if goracs_regex not in _GORACS_PATTERNS:
            return read_amazon_meta(path)
        pa, pt, pb, asin_on_replaced = _GORACS_PATTERNS[goracs_regex]
        ra, rt, rb = re.compile(pa), re.compile(pt), re.compile(pb)
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such Amazon file")
        for line in _open_text(p):
            replaced = line.replace("'", "_")
            a = ra.findall(replaced if asin_on_replaced else line)
            if not a:
                continue
            t, b = rt.findall(replaced), rb.findall(replaced)
            asins.append(a[0])
            titles.append(t[0] if t else None)
            brands.append(b[0] if b else None)
    else:
        for _, obj in _records(path):
            if "asin" not in obj:
                continue
            asins.append(str(obj["asin"]))
            title = obj.get("title")
            titles.append(None if title is None else str(title))
            brand = obj.get("brand")
            brands.append(None if brand is None else str(brand))
    return pl.DataFrame(
        {"item_id": asins, "title": titles, "brand": brands},
        schema={"item_id": pl.String, "title": pl.String, "brand": pl.String},
    )


#: Upper bounds of :class:`GoracsConfig` (README, "Amazon reviews and GORACS").
MAX_HISTORY = 10_000
MAX_TITLE_LEN = 10_000
MAX_NEGATIVES = 100_000


@dataclass(frozen=True, kw_only=True)
class GoracsConfig:
    """GORACS's preparation of an Amazon domain; ``None`` fields take the domain's published value."""

    domain: str = field(default="games", metadata={"help": "games, movies or food (sets the rules below)"})
    history_len: int = field(default=10, metadata={"help": "history window (and first target position)"})
    min_title_len: int | None = field(default=None, metadata={"help": "keep titles longer than this (games/food 1, movies 50)"})
    append_brand: str | None = field(
        default=None, metadata={"help": "'never', 'present' (movies: whenever a brand field exists) or 'nonempty' (food)"}
    )
    min_history: int = field(default=-1, metadata={"help": "skip samples with fewer history items (movies: 3); -1: domain default"})
    test_size: int | None = field(default=None, metadata={"help": "last N samples are test (games/movies 5000)"})
    valid_size: int | None = field(default=None, metadata={"help": "the N before them are valid (games/movies 5000)"})
    split_frac: float | None = field(default=None, metadata={"help": "food: test and valid are round(frac * n) each (0.1)"})
    published_titles: bool = field(
        default=True, metadata={"help": "read Movies/Food metadata files with GORACS's regular expressions"}
    )
    num_negatives: int = field(default=99, metadata={"help": "SeqRec test records: sampled negative items"})
    seed: int = field(default=42, metadata={"help": "seed of the negative sampling"})

    def __post_init__(self) -> None:
        c = "GoracsConfig"
        if self.domain not in DOMAINS:
            raise SftDataError(f"GoracsConfig: field domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.append_brand not in (None, "never", "present", "nonempty"):
            raise SftDataError(f"GoracsConfig: field append_brand must be never, present or nonempty, got {self.append_brand!r}")
        check_int(c, "history_len", self.history_len, lo=1, hi=MAX_HISTORY)
        check_int(c, "min_title_len", self.min_title_len, lo=0, hi=MAX_TITLE_LEN, optional=True)
        check_int(c, "min_history", self.min_history, lo=-1, hi=MAX_HISTORY)
        check_int(c, "test_size", self.test_size, lo=0, optional=True)
        check_int(c, "valid_size", self.valid_size, lo=0, optional=True)
        check_number(c, "split_frac", self.split_frac, lo=0, lo_open=True, hi=0.5, optional=True)
        check_bool(c, "published_titles", self.published_titles)
        check_int(c, "num_negatives", self.num_negatives, lo=0, hi=MAX_NEGATIVES)
        check_int(c, "seed", self.seed, lo=0)

    def resolved(self) -> dict[str, Any]:
        d = self.domain
        frac = self.split_frac if self.split_frac is not None else (0.1 if d == "food" and self.test_size is None else None)
        return {
            "min_title_len": self.min_title_len if self.min_title_len is not None else (50 if d == "movies" else 1),
            "append_brand": self.append_brand or {"games": "never", "movies": "present", "food": "nonempty"}[d],
            "min_history": self.min_history if self.min_history >= 0 else (3 if d == "movies" else 0),
            "test_size": self.test_size if self.test_size is not None else 5000,
            "valid_size": self.valid_size if self.valid_size is not None else 5000,
            "split_frac": frac,
        }


def goracs_titles(meta: pl.DataFrame, config: GoracsConfig | None = None) -> pl.DataFrame:
    """``item_id, title`` of the items GORACS keeps (title rule and brand suffix of the domain)."""
    r = (config or GoracsConfig()).resolved()
    title = pl.col("title")
    if r["append_brand"] == "present":
        title = pl.when(pl.col("brand").is_not_null()).then(pl.concat_str(title, pl.lit(" - "), pl.col("brand"))).otherwise(title)
    elif r["append_brand"] == "nonempty":
        title = pl.when(pl.col("brand").str.len_chars() > 0).then(pl.concat_str(title, pl.lit(" - "), pl.col("brand"))).otherwise(title)
    return (
        meta.filter(pl.col("title").is_not_null())
        .select("item_id", title.alias("title"))
        .filter(pl.col("title").str.len_chars() > r["min_title_len"])
        .unique("item_id", keep="last", maintain_order=True)
    )


def goracs_samples(reviews: pl.DataFrame, meta: pl.DataFrame, config: GoracsConfig | None = None) -> pl.DataFrame:
    """GORACS's samples in its order (by target time), with ``split``: one row per target, columns
    ``user_id, history_asins, history_item_ids, history_titles, history_ratings, target_asin,
    target_item_id, target_title, rating, timestamp, split``. Item ids are the ASIN's rank among all
    ASINs of the review file (GORACS numbers them in Python set order, which is not reproducible)."""
    cfg = config or GoracsConfig()
    r = cfg.resolved()
    titles = goracs_titles(meta, cfg)
    ids = reviews.select(pl.col("item_id").unique().sort()).with_row_index("iid").with_columns(pl.col("iid").cast(pl.Int64))
    h = cfg.history_len
    kept = (
        reviews.with_row_index("__row")
        .join(titles, on="item_id", how="inner")
        .filter(pl.col("rating").is_not_null() & pl.col("timestamp").is_not_null())
        .join(ids, on="item_id", how="left")
        .with_columns(__first=pl.col("__row").min().over("user_id"))
        .sort("__first", "timestamp", "__row")
    )
    seqs = kept.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").alias("__a"), pl.col("iid").alias("__i"), pl.col("title").alias("__t"),
        pl.col("rating").alias("__r"), pl.col("timestamp").alias("__ts"),
    )
    samples = (
        seqs.with_columns(__n=pl.col("__a").list.len())
        .with_columns(__pos=pl.int_ranges(pl.min_horizontal(pl.lit(h), pl.col("__n") - 1), pl.col("__n")))
        .explode("__pos")
        .drop_nulls("__pos")
        .with_columns(__st=pl.max_horizontal(pl.col("__pos") - h, pl.lit(0)))
        .filter(pl.col("__pos") - pl.col("__st") >= r["min_history"])
        .with_row_index("__order")
    )
    span = (pl.col("__st"), pl.col("__pos") - pl.col("__st"))
    out = samples.select(
        "__order",
        "user_id",
        pl.col("__a").list.slice(*span).alias("history_asins"),
        pl.col("__i").list.slice(*span).alias("history_item_ids"),
        pl.col("__t").list.slice(*span).alias("history_titles"),
        pl.col("__r").list.slice(*span).alias("history_ratings"),
        pl.col("__a").list.get(pl.col("__pos")).alias("target_asin"),
        pl.col("__i").list.get(pl.col("__pos")).alias("target_item_id"),
        pl.col("__t").list.get(pl.col("__pos")).alias("target_title"),
        pl.col("__r").list.get(pl.col("__pos")).alias("rating"),
        pl.col("__ts").list.get(pl.col("__pos")).alias("timestamp"),
    ).sort("timestamp", "__order", maintain_order=True).drop("__order")
    n = out.height
    if r["split_frac"] is not None:
        n_test = n_valid = round(n * r["split_frac"])
    else:
        n_test, n_valid = r["test_size"], r["valid_size"]
    n_train = max(n - n_test - n_valid, 0)
    rank = pl.int_range(pl.len(), dtype=pl.Int64)
    logger.info("goracs %s: %d samples: train %d, val %d, test %d", cfg.domain, n, n_train,
                min(n_valid, n - n_train), max(n - n_train - n_valid, 0))
    return out.with_columns(
        split=pl.when(rank < n_train).then(pl.lit("train"))
        .when(rank < n_train + n_valid).then(pl.lit("val")).otherwise(pl.lit("test"))
    )


def _quoted_list(col: str) -> pl.Expr:
    return pl.col(col).list.eval(pl.concat_str(pl.lit('"'), pl.element(), pl.lit('"'))).list.join(", ")


def _alpaca(instruction: pl.Expr, inp: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        pl.lit(GORACS_HEADER + "### Instruction:\n"), instruction, pl.lit("\n\n### Input:\n"), inp,
        pl.lit("\n\n### Response:\n"),
    )


def _messages(instruction: pl.Expr, inp: pl.Expr, output: pl.Expr) -> pl.Expr:
    return pl.concat_list(
        pl.struct(role=pl.lit("system"), content=instruction),
        pl.struct(role=pl.lit("user"), content=inp),
        pl.struct(role=pl.lit("assistant"), content=output),
    )


def build_goracs(
    reviews: pl.DataFrame | str | os.PathLike[str],
    meta: pl.DataFrame | str | os.PathLike[str],
    *,
    task: Literal["seqrec", "ctr"] = "seqrec",
    config: GoracsConfig | None = None,
) -> dict[str, pl.DataFrame]:
    """GORACS's SeqRec or CTR records for an Amazon domain as SFT records, ``{"train", "val", "test"}``.

    ``reviews`` / ``meta``: tables from :func:`read_amazon_reviews` / :func:`read_amazon_meta`, or
    their files. Besides the contract columns the records keep GORACS's ``instruction, input, output``
    and the sample's ``target_title``, ``target_asin``, ``timestamp``, ``history_titles``.
    """
    cfg = config or GoracsConfig()
    if task not in ("seqrec", "ctr"):
        raise SftDataError(f"build_goracs: task must be 'seqrec' or 'ctr', got {task!r}")
    rev = reviews if isinstance(reviews, pl.DataFrame) else read_amazon_reviews(reviews)
    met = meta if isinstance(meta, pl.DataFrame) else read_amazon_meta(
        meta, goracs_regex=cfg.domain if cfg.published_titles else None
    )
    s = goracs_samples(rev, met, cfg).with_row_index("__k")
    if task == "seqrec":
        instruction, prefix = _SEQREC_TEXT[cfg.domain]
        inp = pl.concat_str(pl.lit(prefix), _quoted_list("history_titles"), pl.lit("\n "))
        output = pl.concat_str(pl.lit('"'), pl.col("target_title"), pl.lit('"'))
        extra: list[Any] = ["history_item_ids", "target_item_id"]
    else:
        noun, lead = _CTR_TARGET[cfg.domain]
        instruction = (
            f"Given the user's preference and unpreference, identify whether the user will like the target {noun} "
            'by answering "Yes" or "No".'
        )
        liked = pl.col("history_ratings").list.eval(pl.element().cast(pl.Int64) > 3)
        s = s.with_columns(
            __liked=pl.col("history_titles").list.gather(liked.list.eval(pl.element().arg_true())),
            __disliked=pl.col("history_titles").list.gather(liked.list.eval((~pl.element()).arg_true())),
            label=(pl.col("rating").cast(pl.Int64) > 3).cast(pl.Int64),
        )
        inp = pl.concat_str(
            pl.lit("User Preference: "), _quoted_list("__liked"), pl.lit("\nUser Unpreference: "), _quoted_list("__disliked"),
            pl.lit(f"\nWhether the user will like the target {lead}\""), pl.col("target_title"), pl.lit('"?'),
        )
        output = pl.when(pl.col("label") == 1).then(pl.lit("Yes")).otherwise(pl.lit("No"))
        extra = ["label", "target_item_id", "history_item_ids"]
    ins = pl.lit(instruction)
    out = s.with_columns(
        record_id=pl.concat_str(pl.lit(f"goracs-{cfg.domain}-{task}:"), pl.col("split"), pl.lit(":"), pl.col("__k").cast(pl.String)),
        task=pl.lit(task),
        instruction=ins,
        input=inp,
        output=output,
    ).with_columns(
        prompt=_alpaca(pl.col("instruction"), pl.col("input")),
        completion=pl.col("output"),
        messages=_messages(pl.col("instruction"), pl.col("input"), pl.col("output")),
    ).select(
        "record_id", "task", "user_id", "split", "prompt", "completion", "messages", *extra,
        "instruction", "input", "output", "target_title", "target_asin", "timestamp", "history_titles",
    )
    if task == "seqrec":
        out = out.with_columns(_negatives(out, s, cfg))
    out = validated(SFT_RECORDS, out, source=f"build_goracs({cfg.domain}, {task})")
    return {split: out.filter(pl.col("split") == split) for split in SPLITS}


def _negatives(out: pl.DataFrame, samples: pl.DataFrame, cfg: GoracsConfig) -> pl.Series:
    """Seeded negatives for test records only, as GORACS draws them: ``num_negatives`` distinct items
    (here by id) that the user never interacted with, fewer when the user leaves fewer. Other splits get
    an empty list."""
    universe = np.sort(
        pl.concat([samples["target_item_id"], samples["history_item_ids"].explode()]).drop_nulls().unique().to_numpy()
    )
    seen = (
        pl.concat([
            samples.select("user_id", pl.col("target_item_id").alias("item_id")),
            samples.select("user_id", pl.col("history_item_ids").alias("item_id")).explode("item_id"),
        ])
        .drop_nulls()
        .group_by("user_id")
        .agg(pl.col("item_id").unique())
    )
    by_user = dict(zip(seen["user_id"].to_list(), seen["item_id"].to_list()))
    rng = np.random.default_rng(cfg.seed)
    values: list[list[int]] = []
    for user, split in zip(out["user_id"].to_list(), out["split"].to_list()):
        if split != "test" or cfg.num_negatives == 0:
            values.append([])
            continue
        pool = np.setdiff1d(universe, np.asarray(by_user.get(user, []), dtype=np.int64), assume_unique=True)
        k = min(cfg.num_negatives, len(pool))
        values.append(rng.choice(pool, size=k, replace=False).tolist() if k else [])
    return pl.Series("negative_item_ids", values, dtype=pl.List(pl.Int64))
