"""``profile_stats``: what a profiling run produced (attribute distributions, failures, cost)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from genrec_profiler._schema import TRAIT_POLES

_ATTRIBUTES = ("age", "gender", "education", "socioeco")
#: Below this share of profiles valid as the model wrote them, or above this share of free-text items
#: copied from the prompt's statistics or draft, a run's profiles are not the model's work.
VALID_WARN = 0.9
COPIED_WARN = 0.5


@dataclass(frozen=True, kw_only=True)
class ProfileStats:
    """Distributions are shares (0..1) over the users whose profile did not fail."""

    n_users: int
    status: dict[str, int]
    attributes: dict[str, dict[str, float]]
    traits: dict[str, dict[str, float]]
    summary_words: dict[str, float]
    failures: tuple[tuple[str, str], ...]
    tokens_in: int
    tokens_out: int
    seconds: float
    checkins_cut_users: int
    backends: tuple[str, ...]
    #: Share of profiles valid as the model wrote them (status ``ok``: no repair, no draft value).
    valid_rate: float = 0.0
    #: Over all recovered fields (``sources`` column): share written by the model, repaired, or taken
    #: from the draft.
    field_sources: dict[str, float] = field(default_factory=dict)
    #: Number of distinct values per categorical field (and Big Five dimension) over profiles that did
    #: not fail: 1 means every user got the same answer.
    distinct: dict[str, int] = field(default_factory=dict)
    #: Mean characters of a summary, of a preference and of a routine.
    mean_chars: dict[str, float] = field(default_factory=dict)
    #: Answers that ran out of tokens (``finish_reason`` length) and that the budget closed early.
    truncated: int = 0
    #: Needs the check-ins (``data=``), else None: share of preference / routine / summary items found
    #: verbatim in the prompt's digest or in the statistical draft.
    copied: float | None = None
    #: Needs the check-ins, else None: share of users whose preferences name one of their 3 most
    #: visited categories (a category counts when one of its words of 4+ letters appears).
    top3_agreement: float | None = None

    def warnings(self) -> list[str]:
        """One line per quality problem: valid under 90%, copied over 50%."""
        out = []
        if self.n_users and self.valid_rate < VALID_WARN:
            out.append(f"WARNING: only {self.valid_rate:.0%} of profiles are valid as the model wrote them "
                       f"(repaired {self.status.get('repaired', 0)}, failed {self.status.get('failed', 0)})")
        if self.copied is not None and self.copied > COPIED_WARN:
            out.append(f"WARNING: {self.copied:.0%} of the profiles' text is copied verbatim from the prompt's "
                       "statistics or draft")
        return out

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def to_text(self) -> str:
        """A short human-readable report (what ``genrec-profiler stats`` prints)."""
        lines = [
            f"users: {self.n_users}  " + "  ".join(f"{k}: {v}" for k, v in self.status.items()),
            f"backend/model: {', '.join(self.backends) or '-'}",
        ]
        for name, dist in {**self.attributes, **self.traits}.items():
            lines.append(f"{name}: " + ", ".join(f"{v} {share:.0%}" for v, share in dist.items()))
        w = self.summary_words
        if w:
            lines.append(
                f"summary words: mean {w['mean']:.0f}, median {w['median']:.0f}, min {w['min']:.0f}, max {w['max']:.0f}"
            )
        lines.append(
            f"tokens in/out: {self.tokens_in}/{self.tokens_out}  seconds: {self.seconds:.1f}  "
            f"users with check-ins cut: {self.checkins_cut_users}"
        )
        lines.append(
            f"valid as written: {self.valid_rate:.0%}  truncated: {self.truncated}  field sources: "
            + (", ".join(f"{k} {v:.0%}" for k, v in self.field_sources.items()) or "-")
        )
        if self.distinct:
            lines.append("distinct values: " + ", ".join(f"{k} {v}" for k, v in self.distinct.items()))
        if self.mean_chars:
            lines.append("mean chars: " + ", ".join(f"{k} {v:.0f}" for k, v in self.mean_chars.items()))
        if self.copied is not None:
            lines.append(f"copied from digest/draft: {self.copied:.0%}  preferences naming a top-3 category: "
                         f"{self.top3_agreement:.0%}")
        lines.extend(self.warnings())
        for user, error in self.failures[:10]:
            lines.append(f"failed {user}: {error}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures")
        return "\n".join(lines)


def _shares(column: pl.Series) -> dict[str, float]:
    counts = column.fill_null("<missing>").value_counts(sort=True)
    total = counts["count"].sum()
    return {str(v): c / total for v, c in zip(counts[column.name].to_list(), counts["count"].to_list())} if total else {}


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(" .,;:")


def _against_checkins(good: pl.DataFrame, data: Any) -> tuple[float | None, float | None]:
    """(copied share, top-3 agreement) of the profiles that did not fail, against the check-ins."""
    from genrec_profiler._digest import compute_digests
    from genrec_profiler._generate import _load
    from genrec_profiler._template import template_profile

    _, train, _, _ = _load(data)
    users = good["user_id"].cast(pl.String).to_list()
    train = train.filter(pl.col("user_id").cast(pl.String).is_in(users))
    digests = compute_digests(train)
    items = copied = agree = judged = 0
    for row in good.iter_rows(named=True):
        digest = digests.get(str(row["user_id"]))
        if digest is None:
            continue
        judged += 1
        context = _norm_text(digest.render() + " " + json.dumps(template_profile(digest)))
        texts = [*(row.get("preferences") or []), *(row.get("routines") or []), *([row["summary"]] if row.get("summary") else [])]
        for text in texts:
            items += 1
            norm = _norm_text(text)
            copied += bool(norm) and norm in context
        named = _norm_text(" ".join(row.get("preferences") or []))
        words = {w for name, _ in digest.top_categories[:3] for w in re.findall(r"[a-z]{4,}", name.lower())}
        agree += any(re.search(rf"\b{re.escape(w)}", named) for w in words)
    return (copied / items if items else None), (agree / judged if judged else None)


def profile_stats(profiles: str | os.PathLike[str] | pl.DataFrame, data: Any = None) -> ProfileStats:
    """Statistics of a profiles table (a parquet path, including an unfinished run's parts, or a frame).

    With ``data`` (the prepared folder or check-ins the profiles were written from) also the quality
    measures that need the check-ins: ``copied`` and ``top3_agreement``. ``ProfileStats.warnings()``
    gives the lines a report should show (valid under 90%, copied over 50%)."""
    if isinstance(profiles, pl.DataFrame):
        frame = profiles
    else:
        from genrec_profiler._generate import read_profiles

        frame = read_profiles(profiles, validate=False)
    status = {s: int(frame.filter(pl.col("status") == s).height) for s in ("ok", "repaired", "failed")}
    good = frame.filter(pl.col("status") != "failed")
    attributes = {name: _shares(good[name]) for name in _ATTRIBUTES if name in good.columns}
    traits: dict[str, dict[str, float]] = {}
    if good.height and "traits" in good.columns:
        for i, (dim, _, _) in enumerate(TRAIT_POLES):
            traits[dim] = _shares(good["traits"].list.get(i, null_on_oob=True).alias(dim))
    words = good["summary"].fill_null("").str.split(" ").list.len() if good.height else pl.Series([], dtype=pl.UInt32)
    summary_words = (
        {"mean": float(words.mean()), "median": float(words.median()), "min": float(words.min()), "max": float(words.max())}  # type: ignore[arg-type]
        if len(words)
        else {}
    )
    failed = frame.filter(pl.col("status") == "failed")
    def _sum(col: str) -> float:
        return float(frame[col].sum()) if col in frame.columns and frame.height else 0.0

    backends = (
        tuple(sorted(set(frame.select(pl.concat_str("backend", pl.lit("/"), "model")).to_series().drop_nulls().to_list())))
        if {"backend", "model"} <= set(frame.columns)
        else ()
    )
    sources: dict[str, int] = {}
    if "sources" in frame.columns:
        for text in frame["sources"].drop_nulls().to_list():
            for src in json.loads(text).values():
                sources[src] = sources.get(src, 0) + 1
    n_fields = sum(sources.values())
    distinct = {name: int(good[name].drop_nulls().n_unique()) for name in _ATTRIBUTES if name in good.columns}
    for dim, dist in traits.items():
        distinct[dim] = len([v for v in dist if v != "<missing>"])
    mean_chars: dict[str, float] = {}
    if good.height:
        mean_chars["summary"] = float(good["summary"].fill_null("").str.len_chars().mean())  # type: ignore[arg-type]
        for name in ("preferences", "routines"):
            if name in good.columns:
                lengths = good[name].explode().drop_nulls().str.len_chars()
                mean_chars[name] = float(lengths.mean()) if len(lengths) else 0.0  # type: ignore[arg-type]
    truncated = int((frame["finish_reason"] == "length").sum()) if "finish_reason" in frame.columns else 0
    copied = agreement = None
    if data is not None and good.height:
        copied, agreement = _against_checkins(good, data)
    return ProfileStats(
        valid_rate=status["ok"] / frame.height if frame.height else 0.0,
        field_sources={k: v / n_fields for k, v in sorted(sources.items())} if n_fields else {},
        distinct=distinct,
        mean_chars=mean_chars,
        truncated=truncated,
        copied=copied,
        top3_agreement=agreement,
        n_users=frame.height,
        status=status,
        attributes=attributes,
        traits=traits,
        summary_words=summary_words,
        failures=tuple(zip(failed["user_id"].to_list(), failed["error"].fill_null("").to_list())),
        tokens_in=int(_sum("tokens_in")),
        tokens_out=int(_sum("tokens_out")),
        seconds=_sum("seconds"),
        checkins_cut_users=int((frame["n_checkins_cut"] > 0).sum()) if "n_checkins_cut" in frame.columns else 0,
        backends=backends,
    )
