"""``profile_stats``: what a profiling run produced (attribute distributions, failures, cost)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import polars as pl

from genrec_profiler._schema import TRAIT_POLES

_ATTRIBUTES = ("age", "gender", "education", "socioeco")


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
        for user, error in self.failures[:10]:
            lines.append(f"failed {user}: {error}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures")
        return "\n".join(lines)


def _shares(column: pl.Series) -> dict[str, float]:
    counts = column.fill_null("<missing>").value_counts(sort=True)
    total = counts["count"].sum()
    return {str(v): c / total for v, c in zip(counts[column.name].to_list(), counts["count"].to_list())} if total else {}


def profile_stats(profiles: str | os.PathLike[str] | pl.DataFrame) -> ProfileStats:
    """Statistics of a profiles table (a parquet path, including an unfinished run's parts, or a frame)."""
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
    return ProfileStats(
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
