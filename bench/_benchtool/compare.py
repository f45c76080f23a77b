"""The verdicts: a ratio below its target fails (``--compare ratios`` and ``all``); a median more
than ``threshold`` slower than the saved baseline of the same device fails (``all`` only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .results import Bench

MODES = ("ratios", "all", "none")
DEFAULT_THRESHOLD = 0.10


@dataclass(frozen=True, kw_only=True)
class Row:
    package: str
    bench: Bench
    baseline_median: float | None
    change: float | None  # median / baseline_median - 1; +0.15 is 15% slower
    verdict: str  # "ok", "new", "faster", "FAIL: ..."
    failed: bool


def compare_package(
    package: str,
    current: Sequence[Bench],
    baseline: Sequence[Bench] | None,
    *,
    mode: str,
    threshold: float = DEFAULT_THRESHOLD,
    test_failures: Mapping[str, str] | None = None,
) -> list[Row]:
    """One row per current benchmark. ``baseline`` is the saved baseline of this device (None: no
    file for this device, so every benchmark is new); ``test_failures`` maps the node ids of
    benchmarks whose test failed (after timing) to what went wrong."""
    if mode not in MODES:
        raise ValueError(f"compare mode must be one of {MODES}, got {mode!r}")
    saved = {b.key: b for b in baseline or []}
    rows = []
    for bench in current:
        problems = []
        notes = []
        if test_failures and bench.fullname in test_failures:
            problems.append(f"test {test_failures[bench.fullname]}")
        if mode in ("ratios", "all") and bench.target is not None:
            if bench.ratio is None:
                problems.append("no ratio recorded")
            elif bench.ratio < bench.target:
                problems.append(f"ratio {bench.ratio:.3g} < target {bench.target:.3g}")
        base_median = change = None
        if mode == "all":
            old = saved.get(bench.key)
            base_median = old.median if old else None
            if base_median and bench.median is not None:
                change = bench.median / base_median - 1.0
                if change > threshold:
                    problems.append(f"median {change:+.1%} vs baseline (limit {threshold:+.0%})")
                elif change < -threshold:
                    notes.append("faster")
            else:
                notes.append("new")
        if problems:
            verdict = "FAIL: " + "; ".join(problems)
        else:
            verdict = notes[0] if notes else ("ok" if mode != "none" else "-")
        rows.append(
            Row(
                package=package,
                bench=bench,
                baseline_median=base_median,
                change=change,
                verdict=verdict,
                failed=bool(problems),
            )
        )
    return rows


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


HEADER = ("benchmark", "size", "median", "baseline median", "change", "ratio", "target", "verdict")


def table_cells(row: Row) -> tuple[str, ...]:
    b = row.bench
    return (
        b.fullname,
        b.bench_size,
        format_seconds(b.median),
        format_seconds(row.baseline_median),
        "-" if row.change is None else f"{row.change:+.1%}",
        _fmt(b.ratio),
        _fmt(b.target),
        row.verdict,
    )


def format_table(rows: Iterable[Row]) -> str:
    """A plain-text table, columns padded to width, for the terminal and CI logs."""
    cells = [HEADER, *(table_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
