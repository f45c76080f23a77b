"""Uncertainty and paired tests over records (numpy only: no scipy, no torch).

Every metric here is either a mean of a per-record value (acc@k, ndcg@k, mrr, accuracy) or AUC. A
percentile bootstrap resamples records with replacement; drawing a resample is the same as drawing
multinomial counts ``w`` over the records, so the resampled mean of every column of a per-record
matrix ``X`` is one product ``w @ X / n``. The counts depend only on ``(seed, n)``, so two systems
scored on the same records see the same resamples: their bootstrap distributions are paired, and the
interval of a difference is read off the difference of the two.

Paired tests on the same records:

- binary per-record outcomes (acc@k, hr@k, accuracy): exact McNemar, the two-sided binomial test of
  the discordant pairs at 1/2;
- graded outcomes (ndcg@k, mrr): a sign-flip permutation test of the mean paired difference (exact
  enumeration when at most ``EXACT_FLIP_MAX`` differences are non-zero, Monte Carlo otherwise);
- AUC: DeLong's test for two correlated ROC curves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import numpy as np

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._metrics import auc, rank_columns, ranking_metrics

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95
ALPHA = 0.05
EXACT_FLIP_MAX = 16
METHOD = "percentile bootstrap over records"
# Bound the (resamples x records) count matrix held at once, whatever the test-set size.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True, kw_only=True)
class Uncertainty:
    """How intervals and permutation tests are drawn."""

    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    level: float = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise EvaluatorError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0.0 < self.level < 1.0:
            raise EvaluatorError(f"level must be between 0 and 1, got {self.level}")

    def describe(self) -> dict[str, Any]:
        return {"level": self.level, "method": METHOD, "n_boot": self.n_boot, "seed": self.seed}


def bootstrap_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resample counts, ``(rows, n)`` float64 chunks whose rows sum to ``n``; ``n_boot`` rows in all."""
    if n < 1:
        raise EvaluatorError("bootstrap needs at least one record")
    # Seeded by (seed, n): the same records always get the same resamples, whichever system asks.
    rng = np.random.default_rng([seed, n])
    rows = max(1, _CHUNK_CELLS // n)
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = idx + (np.arange(b) * n)[:, None]
        yield np.bincount(flat.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def bootstrap_means(values: np.ndarray, u: Uncertainty) -> np.ndarray:
    """``(n_boot, m)`` resampled means of the ``m`` columns of ``values`` (``(n, m)`` or ``(n,)``)."""
    x = np.asarray(values, dtype=np.float64)
    x2 = x.reshape(x.shape[0], -1)
    n = x2.shape[0]
    parts = [w @ x2 / n for w in bootstrap_counts(n, u.n_boot, u.seed)]
    return np.concatenate(parts, axis=0)


def percentile_interval(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 (linear interpolation between order statistics)."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail], axis=0)
    return low, high


def interval(low: SupportsFloat, high: SupportsFloat) -> dict[str, float]:
    return {"low": float(low), "high": float(high)}


def mean_intervals(columns: Mapping[Any, np.ndarray], u: Uncertainty) -> tuple[dict[Any, dict[str, float]], np.ndarray]:
    """Interval of the mean of each per-record column, and the bootstrap matrix (columns in order)."""
    names = list(columns)
    x = np.column_stack([np.asarray(columns[k], dtype=np.float64) for k in names])
    boot = bootstrap_means(x, u)
    low, high = percentile_interval(boot, u.level)
    return {k: interval(lo, hi) for k, lo, hi in zip(names, low, high)}, boot


def joint_intervals(
    columns: Mapping[str, Mapping[str, np.ndarray]], u: Uncertainty
) -> dict[str, dict[str, dict[str, float]]]:
    """``{system: {metric: interval}}`` from per-record columns of several systems on the same
    records, bootstrapped together (one draw of resamples for all)."""
    flat = {(s, k): v for s, cols in columns.items() for k, v in cols.items()}
    ci, _ = mean_intervals(flat, u)
    out: dict[str, dict[str, dict[str, float]]] = {s: {} for s in columns}
    for (s, k), c in ci.items():
        out[s][k] = c
    return out


# -- AUC ---------------------------------------------------------------------------------------------


def _weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC (ties half) of one score vector under each row of weights ``w`` ``(b, n)``."""
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    pos = (w * (y == 1))[:, order]
    neg = (w * (y == 0))[:, order]
    pos_g = np.add.reduceat(pos, starts, axis=1)
    neg_g = np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    num = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auc(labels: np.ndarray, scores: Sequence[np.ndarray], u: Uncertainty) -> np.ndarray:
    """``(n_boot, len(scores))`` resampled AUCs of each score vector (a resample lacking a class is nan)."""
    y = np.asarray(labels)
    parts = []
    for w in bootstrap_counts(y.size, u.n_boot, u.seed):
        parts.append(np.column_stack([_weighted_auc(y, np.asarray(s, dtype=np.float64), w) for s in scores]))
    return np.concatenate(parts, axis=0)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it outranks (ties half),
    and per negative, the share of positives that outrank it."""
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    v10 = (np.searchsorted(neg_sorted, pos, "left") + np.searchsorted(neg_sorted, pos, "right")) / (2.0 * neg.size)
    below = (np.searchsorted(pos_sorted, neg, "left") + np.searchsorted(pos_sorted, neg, "right")) / 2.0
    v01 = (pos.size - below) / pos.size
    return v10, v01


def delong_test(labels: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> float:
    """Two-sided p-value of DeLong's test that two scores, on the same records, have equal AUC."""
    y = np.asarray(labels)
    a, b = np.asarray(s_a, dtype=np.float64), np.asarray(s_b, dtype=np.float64)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        return 1.0
    v10a, v01a = _placements(a[y == 1], a[y == 0])
    v10b, v01b = _placements(b[y == 1], b[y == 0])
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = v10a.mean() - v10b.mean()
    if var <= 1e-15:
        return 1.0 if abs(diff) < 1e-12 else 0.0
    return float(math.erfc(abs(diff) / math.sqrt(2.0 * var)))


# -- paired tests on per-record outcomes -----------------------------------------------------------


def binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided binomial p-value of ``k`` successes in ``n`` trials at probability 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    if 2 * k == n:
        return 1.0
    # log C(n, i) for i = 0..k by the ratio C(n, i+1) / C(n, i) = (n - i) / (i + 1).
    i = np.arange(k)
    log_c = np.concatenate([[0.0], np.cumsum(np.log(n - i) - np.log(i + 1))])
    log_terms = log_c - n * math.log(2.0)
    top = log_terms.max()
    tail = math.exp(top) * float(np.exp(log_terms - top).sum())
    return float(min(1.0, 2.0 * tail))


def mcnemar_exact(hits_a: np.ndarray, hits_b: np.ndarray) -> tuple[float, int, int]:
    """(p, a-only, b-only): exact McNemar test of two paired binary outcomes."""
    a = np.asarray(hits_a, dtype=bool)
    b = np.asarray(hits_b, dtype=bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    return binom_two_sided_half(only_a, only_a + only_b), only_a, only_b


def sign_flip_test(diff: np.ndarray, *, n_perm: int, seed: int) -> tuple[float, bool]:
    """(p, exact): two-sided sign-flip permutation test that paired differences are centred on zero.

    The statistic is the mean difference; under the null each difference is as likely negated. The
    p-value counts sign patterns at least as extreme as the observed one (the observed pattern
    included, so p > 0 under Monte Carlo).
    """
    d = np.asarray(diff, dtype=np.float64)
    nz = d[d != 0.0]
    if nz.size == 0:
        return 1.0, True
    observed = abs(nz.sum())
    # Sums that differ only by float round-off must count as ties.
    tol = 1e-9 * max(1.0, np.abs(nz).sum())
    if nz.size <= EXACT_FLIP_MAX:
        patterns = ((np.arange(2**nz.size)[:, None] >> np.arange(nz.size)) & 1) * 2.0 - 1.0
        stats = np.abs(patterns @ nz)
        return float(np.mean(stats >= observed - tol)), True
    rng = np.random.default_rng([seed, nz.size, 1])
    rows = max(1, _CHUNK_CELLS // nz.size)
    extreme = 0
    done = 0
    while done < n_perm:
        b = min(rows, n_perm - done)
        signs = rng.integers(0, 2, size=(b, nz.size)) * 2.0 - 1.0
        extreme += int(np.sum(np.abs(signs @ nz) >= observed - tol))
        done += b
    return float((extreme + 1) / (n_perm + 1)), False


def scope(n: int, split_records: int | None, how: str | None) -> dict[str, Any]:
    """Whether the full split was scored: ``n``, ``split_records`` and a plain ``scored`` phrase."""
    total = split_records if split_records is not None else n
    if n >= total:
        return {"n": n, "split_records": total, "full_split": True, "scored": f"the full split ({n} records)"}
    return {"n": n, "split_records": total, "full_split": False,
            "scored": f"a subset: {n} of {total} records ({how or 'a sample chosen by the caller'})"}


def verdict(diff: float, p: float, *, alpha: float = ALPHA) -> str:
    """``beats``, ``is beaten by`` or ``cannot be told apart from`` (two-sided ``p`` against ``alpha``)."""
    if p < alpha and diff > 0:
        return "beats"
    if p < alpha and diff < 0:
        return "is beaten by"
    return "cannot be told apart from"


def format_p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


# -- metric sets with intervals, and comparisons -------------------------------------------------------


def _is_binary(name: str) -> bool:
    base = name.removeprefix("sampled_")
    return base.startswith(("acc@", "hr@")) or base in ("accuracy", "exact_title")


def ranking_metrics_ci(ranks: np.ndarray, u: Uncertainty) -> dict[str, Any]:
    """:func:`ranking_metrics` plus ``ci``: each metric's ``{"low", "high"}``."""
    out: dict[str, Any] = ranking_metrics(ranks)
    out["ci"] = mean_intervals(rank_columns(ranks), u)[0]
    return out


def compare_columns(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], u: Uncertainty
) -> dict[str, dict[str, Any]]:
    """Paired comparison of system ``a`` against ``b`` on the same records, per metric in both.

    Each entry: ``diff`` (a - b), its bootstrap interval ``low``/``high``, the two-sided ``p`` of
    ``test`` (``mcnemar-exact`` for hit indicators, ``sign-flip permutation`` otherwise), ``n``, and
    ``verdict`` (``beats`` / ``is beaten by`` / ``cannot be told apart from``).
    """
    names = [k for k in a if k in b]
    if not names:
        return {}
    diffs = {k: np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64) for k in names}
    n = len(next(iter(diffs.values())))
    ci, _ = mean_intervals(diffs, u)
    out: dict[str, dict[str, Any]] = {}
    for k in names:
        diff = float(diffs[k].mean())
        entry: dict[str, Any] = {"diff": diff, **ci[k]}
        if _is_binary(k):
            p, only_a, only_b = mcnemar_exact(np.asarray(a[k]) > 0.5, np.asarray(b[k]) > 0.5)
            entry.update(p=p, test="mcnemar-exact", wins=only_a, losses=only_b)
        else:
            p, exact = sign_flip_test(diffs[k], n_perm=u.n_boot, seed=u.seed)
            entry.update(p=p, test="sign-flip permutation" + (" (exact)" if exact else f" ({u.n_boot} draws)"))
        entry.update(n=n, verdict=verdict(diff, p))
        out[k] = entry
    return out


def compare_auc(labels: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, u: Uncertainty) -> dict[str, Any]:
    """Paired AUC comparison: difference, its bootstrap interval and DeLong's two-sided p."""
    boot = bootstrap_auc(labels, [s_a, s_b], u)
    d = boot[:, 0] - boot[:, 1]
    d = d[np.isfinite(d)]
    low, high = percentile_interval(d, u.level) if d.size else (np.nan, np.nan)
    diff = auc(labels, s_a) - auc(labels, s_b)
    p = delong_test(labels, s_a, s_b)
    return {"diff": float(diff), **interval(low, high), "p": p, "test": "delong",
            "n": int(np.asarray(labels).size), "verdict": verdict(diff, p)}


def auc_interval(labels: np.ndarray, scores: np.ndarray, u: Uncertainty) -> dict[str, float]:
    boot = bootstrap_auc(labels, [scores], u)[:, 0]
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return interval(np.nan, np.nan)
    low, high = percentile_interval(boot, u.level)
    return interval(low, high)


def summary_sentences(
    metrics: Mapping[str, Mapping[str, Any]], metric: str, *, model: str = "model", level: float = DEFAULT_LEVEL
) -> list[str]:
    """One sentence per baseline the model was compared with, on ``metric``."""
    vs = metrics.get(model, {}).get("vs", {})
    out = []
    for base, comps in vs.items():
        c = comps.get(metric)
        if c is None:
            continue
        ours, theirs = metrics[model].get(metric), metrics[base].get(metric)
        out.append(
            f"The model {c['verdict']} {base} on {metric}: {ours:.4f} vs {theirs:.4f}, difference "
            f"{c['diff']:+.4f} ({level:.0%} CI {c['low']:+.4f} to {c['high']:+.4f}), "
            f"{c['test']} {format_p(c['p'])}, n = {c['n']}."
        )
    return out
