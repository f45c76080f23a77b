"""next_poi SFT records in the GenUP style, built with Polars list expressions (no row loops)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from genrec_core import CHECKINS, SFT_RECORDS
from genrec_sftdata._checks import check_bool, check_int, check_str
from genrec_sftdata._contract import SPLITS, require_columns, string_ids, validated
from genrec_sftdata._errors import SftDataError
from genrec_sftdata._prepare import PreparedData, load_prepared

logger = logging.getLogger(__name__)

#: Upper bounds of :class:`NextPoiConfig` (README, "SFT records"): far above any context window.
MAX_HISTORY = 100_000
MAX_LENGTH = 10_000_000

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_SYSTEM = (
    "You are a next point-of-interest recommender. Given a user's check-ins, predict the POI id "
    "the user will visit next."
)
PROFILE_COLUMNS = ("age", "gender", "education", "socioeco", "traits", "preferences", "routines", "summary")


@dataclass(frozen=True, kw_only=True)
class NextPoiConfig:
    """How next_poi records are rendered."""

    every_prefix: bool = field(
        default=False,
        metadata={"help": "one record per check-in after the first (default: one per trajectory, as GenUP)"},
    )
    max_history: int | None = field(
        default=None, metadata={"help": "keep at most this many most recent trajectory check-ins"}
    )
    history_checkins: int = field(
        default=0,
        metadata={"help": "LLM4POI-style block: up to this many of the user's earlier check-ins (0: off)"},
    )
    prompt_format: Literal["plain", "llama2"] = field(
        default="plain",
        metadata={"help": "plain text, or the literal Llama-2 '[INST] <<SYS>>' format GenUP trained on"},
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM, metadata={"help": "system text for users without a profile"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "token budget of prompt + completion (needs a tokenizer)"}
    )
    splits: tuple[str, ...] = field(default=SPLITS, metadata={"help": "splits to build"})
    protocol: Literal["genrec", "genup"] = field(
        default="genrec",
        metadata={
            "help": "genrec: our records (options above); genup: GenUP's records exactly (LLM4POI's question/"
            "answer text, GenUP's system prompt and <s>[INST] string, whole trajectories)"
        },
    )
    profile_fields: Literal["summary", "summary+routines+preferences", "all"] = field(
        default="all",
        metadata={
            "help": "profile ablation of the system prompt: the profile text only; plus preferences and "
            "routines; or all fields (plus traits and attributes)"
        },
    )

    def __post_init__(self) -> None:
        c = "NextPoiConfig"
        check_bool(c, "every_prefix", self.every_prefix)
        check_int(c, "max_history", self.max_history, lo=1, hi=MAX_HISTORY, optional=True)
        check_int(c, "history_checkins", self.history_checkins, lo=0, hi=MAX_HISTORY)
        check_str(c, "system_prompt", self.system_prompt)
        check_int(c, "max_length", self.max_length, lo=1, hi=MAX_LENGTH, optional=True)
        if isinstance(self.splits, str) or not isinstance(self.splits, (tuple, list)):
            raise SftDataError(f"NextPoiConfig: field splits must be a tuple of split names, got {self.splits!r}")
        if self.protocol not in ("genrec", "genup"):
            raise SftDataError(f"NextPoiConfig: field protocol must be 'genrec' or 'genup', got {self.protocol!r}")
        if self.profile_fields not in ("summary", "summary+routines+preferences", "all"):
            raise SftDataError(
                "NextPoiConfig: field profile_fields must be 'summary', 'summary+routines+preferences' or 'all', "
                f"got {self.profile_fields!r}"
            )
        if self.protocol == "genup":
            # GenUP has none of these: each would change the text GenUP trains on.
            for name, off in (("every_prefix", False), ("max_history", None), ("history_checkins", 0),
                              ("max_length", None)):
                if getattr(self, name) != off:
                    raise SftDataError(
                        f"NextPoiConfig: field {name} is a genrec option; protocol='genup' builds GenUP's records "
                        "as published (one per trajectory, kept whole, no history block, no token budget)"
                    )
        if self.prompt_format not in ("plain", "llama2"):
            raise SftDataError(
                f"NextPoiConfig: field prompt_format must be 'plain' or 'llama2', got {self.prompt_format!r}"
            )
        if self.max_history is not None and self.max_history < 1:
            raise SftDataError(f"NextPoiConfig: field max_history must be >= 1, got {self.max_history!r}")
        if self.history_checkins < 0:
            raise SftDataError(
                f"NextPoiConfig: field history_checkins must be >= 0, got {self.history_checkins!r}"
            )
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise SftDataError(f"NextPoiConfig: field splits has unknown split {bad[0]!r}; use {SPLITS}")


def _fmt_time(col: str | pl.Expr) -> pl.Expr:
    expr = pl.col(col) if isinstance(col, str) else col
    return expr.dt.strftime(TIME_FORMAT)


def checkin_sentence_expr() -> pl.Expr:
    """GenUP's sentence for one check-in over contract columns:
    ``At <local_time>, user <user_id> visited POI id <poi_idx> which is a/an <category_name> with
    category id <category_idx>.``"""
    return pl.concat_str(
        pl.lit("At "),
        _fmt_time("local_time"),
        pl.lit(", user "),
        pl.col("user_id").cast(pl.String),
        pl.lit(" visited POI id "),
        pl.col("poi_idx").cast(pl.String).fill_null("unknown"),
        pl.lit(" which is a/an "),
        pl.col("category_name"),
        pl.lit(" with category id "),
        pl.col("category_idx").cast(pl.String).fill_null("unknown"),
        pl.lit("."),
    ).alias("sentence")


def _join_list(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.List(pl.String)).list.join(", ")


def profile_system_expr(default: str, profile_fields: str = "all") -> pl.Expr:
    """GenUP's system part from the profile columns; ``default`` where the user has no usable profile.

    ``profile_fields`` drops the lines of the fields an ablation leaves out (``"summary"``: the summary
    alone; ``"summary+routines+preferences"``: the preference and routine lines and the summary)."""
    parts: list[pl.Expr] = []
    if profile_fields == "all":
        parts += [
            pl.lit("You are user "),
            pl.col("user_id"),
            pl.lit(" and your basic information is as follows:\nAge: "),
            pl.col("age").cast(pl.String).fill_null("unknown"),
            pl.lit("; Gender: "),
            pl.col("gender").cast(pl.String).fill_null("unknown"),
            pl.lit("; Education: "),
            pl.col("education").cast(pl.String).fill_null("unknown"),
            pl.lit("; SocioEco: "),
            pl.col("socioeco").cast(pl.String).fill_null("unknown"),
            pl.lit(".\nYou have the following traits: "),
            _join_list("traits").fill_null(""),
            pl.lit(".\n"),
        ]
    if profile_fields in ("all", "summary+routines+preferences"):
        parts += [
            pl.lit("You have the following preferences: "),
            _join_list("preferences").fill_null(""),
            pl.lit(".\nYou have the following routines: "),
            _join_list("routines").fill_null(""),
            pl.lit(".\n"),
        ]
    text = pl.concat_str(*parts, pl.col("summary").fill_null(""))
    return pl.when(pl.col("__has_profile")).then(text).otherwise(pl.lit(default))


def _profiles_frame(profiles: pl.DataFrame) -> pl.DataFrame:
    require_columns(profiles, ["user_id", *PROFILE_COLUMNS], source="profiles")
    profiles = string_ids(profiles, source="profiles")
    usable = pl.lit(True)
    if "status" in profiles.columns:
        usable = pl.col("status").fill_null("failed") != "failed"
    for col in ("traits", "preferences", "routines"):
        if not isinstance(profiles.schema[col], pl.List):
            raise SftDataError(
                f"profiles: column {col!r} must be list[str], got {profiles.schema[col]}; "
                f"example row: {profiles.row(0, named=True)}"
            )
    return (
        profiles.filter(usable)
        .select(pl.col("user_id").cast(pl.String), *PROFILE_COLUMNS)
        .unique(subset="user_id", keep="last", maintain_order=True)
        .with_columns(__has_profile=pl.lit(True))
    )


def build_next_poi(
    data: PreparedData | str | Path,
    profiles: pl.DataFrame | None = None,
    *,
    config: NextPoiConfig | None = None,
    tokenizer: Any = None,
) -> dict[str, pl.DataFrame]:
    """next_poi SFT records per split (docs/design.md §2 columns plus ``history_poi_idx``, ``num_pois``,
    ``target_category_idx``).

    One record per trajectory (its last check-in is the target, the earlier ones are the prompt), or
    one per check-in after the first with ``config.every_prefix``. With ``config.max_length`` and a
    Hugging Face ``tokenizer``, the oldest check-ins are dropped until the record fits; ``n_cut``
    records how many.
    """
    cfg = config or NextPoiConfig()
    if cfg.protocol == "genup":
        from genrec_sftdata._genup_build import build_genup_records

        return build_genup_records(data, profiles, config=cfg)
    if not isinstance(data, PreparedData):
        data = load_prepared(data)
    if cfg.max_length is not None and tokenizer is None:
        raise SftDataError("build_next_poi: field max_length needs a tokenizer (pass tokenizer=...)")
    num_pois = data.num_pois
    checkins = validated(CHECKINS, data.checkins, source="build_next_poi: checkins")
    # Trajectory order is time order, whatever order the caller's table is in.
    ck = checkins.filter(pl.col("split").is_in(list(cfg.splits))).sort(
        "user_id", "utc_time", "poi_id", maintain_order=True
    )
    ck = ck.with_columns(checkin_sentence_expr())

    traj = ck.group_by("split", "trajectory_id", maintain_order=True).agg(
        pl.col("user_id").first(),
        pl.col("sentence"),
        pl.col("poi_idx"),
        pl.col("category_idx"),
        pl.col("local_time"),
        pl.col("utc_time").first().alias("__start"),
        pl.len().alias("__n"),
    )
    if cfg.every_prefix:
        traj = traj.with_columns(__k=pl.int_ranges(1, pl.col("__n"))).explode("__k")
    else:
        traj = traj.with_columns(__k=(pl.col("__n") - 1).cast(pl.Int64))
    rec = traj.filter(pl.col("__k") >= 1).with_columns(pl.col("__k").cast(pl.Int64))
    first = pl.lit(0) if cfg.max_history is None else pl.max_horizontal(pl.col("__k") - cfg.max_history, 0)
    rec = rec.with_columns(__first=first.cast(pl.Int64)).with_columns(
        target_poi_idx=pl.col("poi_idx").list.get(pl.col("__k")),
        target_category_idx=pl.col("category_idx").list.get(pl.col("__k")),
        target_time=pl.col("local_time").list.get(pl.col("__k")),
        __sentences=pl.col("sentence").list.slice(pl.col("__first"), pl.col("__k") - pl.col("__first")),
        history_poi_idx=pl.col("poi_idx").list.slice(pl.col("__first"), pl.col("__k") - pl.col("__first")),
    )
    unknown = rec.filter(pl.col("target_poi_idx").is_null()).height
    if unknown:
        logger.info("build_next_poi: skipped %d targets whose POI has no train code", unknown)
        rec = rec.filter(pl.col("target_poi_idx").is_not_null())

    if cfg.history_checkins:
        rec = _attach_history(rec, checkins, cfg.history_checkins)
    else:
        rec = rec.with_columns(__hist=pl.lit(None, dtype=pl.List(pl.String)))

    if profiles is not None:
        rec = rec.join(_profiles_frame(profiles), on="user_id", how="left").with_columns(
            pl.col("__has_profile").fill_null(False)
        )
    else:
        rec = rec.with_columns(*[pl.lit(None).alias(c) for c in PROFILE_COLUMNS], __has_profile=pl.lit(False))
    rec = rec.with_columns(system=profile_system_expr(cfg.system_prompt, cfg.profile_fields))

    if cfg.max_length is not None:
        rec = _apply_token_budget(rec, cfg, tokenizer, num_pois)
    else:
        rec = rec.with_columns(n_cut=pl.lit(0, dtype=pl.Int64))

    rec = _render(rec, cfg, num_pois)
    out_cols = [
        "record_id", "task", "user_id", "split", "prompt", "completion", "messages",
        "target_poi_idx", "trajectory_id", "n_checkins", "target_time", "history_poi_idx",
        "num_pois", "target_category_idx", "n_cut", "protocol", "text_has_bos",
    ]
    rec = rec.with_columns(protocol=pl.lit("genrec"), text_has_bos=pl.lit(cfg.prompt_format == "llama2"))
    rec = validated(SFT_RECORDS, rec.select(out_cols), source="build_next_poi")
    result = {s: rec.filter(pl.col("split") == s) for s in cfg.splits}
    for split, frame in result.items():
        logger.info("build_next_poi: %s has %d records", split, frame.height)
    return result


def _attach_history(rec: pl.DataFrame, checkins: pl.DataFrame, k: int) -> pl.DataFrame:
    """Up to ``k`` of the user's check-ins that happened before the current trajectory started."""
    ck = (
        checkins.sort("user_id", "utc_time")
        .with_columns(checkin_sentence_expr())
        .select("user_id", "utc_time", "sentence")
    )
    keys = rec.select("user_id", "trajectory_id", "__start").unique()
    hist = (
        keys.join(ck, on="user_id", how="inner")
        .filter(pl.col("utc_time") < pl.col("__start"))
        .sort("user_id", "trajectory_id", "utc_time")
        .group_by("trajectory_id", maintain_order=True)
        .agg(__hist=pl.col("sentence").tail(k))
    )
    return rec.join(hist, on="trajectory_id", how="left")


def _user_text(sentences: pl.Expr, hist: pl.Expr, num_pois: int) -> pl.Expr:
    """GenUP's instruction: the trajectory, a newline, the question (LLM4POI's history block, when
    asked for, sits between them, as in LLM4POI's prompts)."""
    history_block = (
        pl.when(hist.list.len() > 0)
        .then(pl.concat_str(pl.lit(" There is also historical data: "), hist.list.join(" ")))
        .otherwise(pl.lit(""))
    )
    return pl.concat_str(
        pl.lit("The following data is a trajectory of user "),
        pl.col("user_id"),
        pl.lit(": "),
        sentences.list.join(" "),
        history_block.fill_null(""),
        pl.lit("\nGiven the data, At "),
        _fmt_time("target_time"),
        pl.lit(", Which POI id will user "),
        pl.col("user_id"),
        pl.lit(" visit? Note that POI id is an integer in the range from 0 to "),
        pl.lit(str(num_pois)),
        pl.lit("."),
    )


def _completion_text() -> pl.Expr:
    return pl.concat_str(
        pl.lit("At "),
        _fmt_time("target_time"),
        pl.lit(", user "),
        pl.col("user_id"),
        pl.lit(" will visit POI id "),
        pl.col("target_poi_idx").cast(pl.String),
        pl.lit("."),
    )


def _render(rec: pl.DataFrame, cfg: NextPoiConfig, num_pois: int) -> pl.DataFrame:
    rec = rec.with_columns(
        __user=_user_text(pl.col("__sentences"), pl.col("__hist"), num_pois),
        __completion=_completion_text(),
    )
    if cfg.prompt_format == "llama2":
        prompt = pl.concat_str(
            pl.lit("<s>[INST] <<SYS>>\n"), pl.col("system"), pl.lit("\n<</SYS>>\n\n"), pl.col("__user"),
            pl.lit(" [/INST]"),
        )
        completion = pl.concat_str(pl.lit(" "), pl.col("__completion"), pl.lit(" </s>"))
    else:
        prompt = pl.concat_str(pl.col("system"), pl.lit("\n\n"), pl.col("__user"))
        completion = pl.col("__completion")
    messages = pl.concat_list(
        pl.struct(role=pl.lit("system"), content=pl.col("system")),
        pl.struct(role=pl.lit("user"), content=pl.col("__user")),
        pl.struct(role=pl.lit("assistant"), content=pl.col("__completion")),
    )
    return rec.with_columns(
        record_id=pl.concat_str(
            pl.lit("next_poi:"), pl.col("split"), pl.lit(":"), pl.col("trajectory_id"), pl.lit(":"),
            pl.col("__k").cast(pl.String),
        ),
        task=pl.lit("next_poi"),
        prompt=prompt,
        completion=completion,
        messages=messages,
        n_checkins=pl.col("__sentences").list.len().cast(pl.Int64),
        num_pois=pl.lit(num_pois, dtype=pl.Int64),
        target_poi_idx=pl.col("target_poi_idx").cast(pl.Int64),
        target_category_idx=pl.col("target_category_idx").cast(pl.Int64),
        history_poi_idx=pl.col("history_poi_idx").cast(pl.List(pl.Int64)),
    )


def _count_tokens(tokenizer: Any, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.int64)
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in enc), dtype=np.int64, count=len(texts))


def _record_tokens(rec: pl.DataFrame, cfg: NextPoiConfig, tokenizer: Any, num_pois: int) -> np.ndarray:
    rendered = _render(rec, cfg, num_pois)
    texts = rendered.select(pl.concat_str("prompt", "completion")).to_series().to_list()
    return _count_tokens(tokenizer, texts)


def _apply_token_budget(rec: pl.DataFrame, cfg: NextPoiConfig, tokenizer: Any, num_pois: int) -> pl.DataFrame:
    """Keep the most recent check-ins whose prompt + completion fit in ``cfg.max_length`` tokens.

    Sentences are counted one by one (with the joining space) to choose how many to keep; then whole
    records are counted again and trimmed further where joining changed the count, so the budget holds
    exactly for the rendered text.
    """
    assert cfg.max_length is not None
    rec = rec.with_columns(__rid=pl.int_range(pl.len(), dtype=pl.Int64))
    # Everything but the trajectory check-ins: system, question, history block, completion.
    overhead = _record_tokens(rec.with_columns(pl.col("__sentences").list.head(0)), cfg, tokenizer, num_pois)
    budget = pl.DataFrame({"__rid": rec["__rid"], "__budget": cfg.max_length - overhead})
    sentences = rec.select(pl.col("__sentences").explode().drop_nulls().unique()).to_series()
    counts = pl.DataFrame({"__s": sentences, "__c": _count_tokens(tokenizer, [" " + x for x in sentences.to_list()])})
    # Newest first: the j-th most recent sentence is kept when the newest j fit.
    n_keep = (
        rec.select("__rid", pl.col("__sentences").list.reverse())
        .explode("__sentences")
        .drop_nulls("__sentences")
        .join(counts, left_on="__sentences", right_on="__s", how="left", maintain_order="left")
        .with_columns(__cum=pl.col("__c").cum_sum().over("__rid"))
        .join(budget, on="__rid", how="left", maintain_order="left")
        .group_by("__rid")
        .agg(__keep=(pl.col("__cum") <= pl.col("__budget")).sum().cast(pl.Int64))
    )
    rec = rec.join(n_keep, on="__rid", how="left", maintain_order="left").with_columns(
        pl.col("__keep").fill_null(0)
    )
    rec = _trim(rec)
    for _ in range(8):
        total = _record_tokens(rec, cfg, tokenizer, num_pois)
        over = (total > cfg.max_length) & (rec["__keep"].to_numpy() > 0)
        if not over.any():
            break
        rec = _trim(rec.with_columns(__keep=pl.Series(rec["__keep"].to_numpy() - over.astype(np.int64))))
    # Per-sentence counts can also overestimate; give back check-ins while the whole record still fits.
    for _ in range(8):
        idx = np.nonzero(rec["n_cut"].to_numpy() > 0)[0]
        if len(idx) == 0:
            break
        trial = _trim(rec[idx].with_columns(pl.col("__keep") + 1))
        fits = _record_tokens(trial, cfg, tokenizer, num_pois) <= cfg.max_length
        if not fits.any():
            break
        grow = np.zeros(rec.height, dtype=np.int64)
        grow[idx[fits]] = 1
        rec = _trim(rec.with_columns(pl.col("__keep") + pl.Series(grow)))
    too_long = int((_record_tokens(rec, cfg, tokenizer, num_pois) > cfg.max_length).sum())
    if too_long:
        logger.warning(
            "build_next_poi: %d records exceed max_length=%d even without check-ins", too_long, cfg.max_length
        )
    logger.info("build_next_poi: the token budget cut %d check-ins in all", int(rec["n_cut"].sum()))
    return rec.drop("__rid", "__keep", "__orig_sentences", "__orig_history")


def _trim(rec: pl.DataFrame) -> pl.DataFrame:
    if "__orig_sentences" not in rec.columns:
        rec = rec.with_columns(
            __orig_sentences=pl.col("__sentences"), __orig_history=pl.col("history_poi_idx")
        )
    n = pl.col("__orig_sentences").list.len()
    return rec.with_columns(
        __sentences=pl.col("__orig_sentences").list.tail(pl.col("__keep")),
        history_poi_idx=pl.col("__orig_history").list.tail(pl.col("__keep")),
        n_cut=(n - pl.col("__keep")).cast(pl.Int64),
    )
