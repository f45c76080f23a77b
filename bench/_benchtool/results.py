"""pytest-benchmark JSON as genrec reads and stores it.

A run file is what ``pytest --benchmark-json`` writes: ``machine_info``, ``commit_info``,
``benchmarks`` (each with ``name``, ``fullname``, ``params``, ``extra_info`` and ``stats``),
``datetime`` and ``version``. A saved baseline, ``bench/results/<device>/<package>.json``, is the
same format; its ``benchmarks`` are merged across saves, one entry per benchmark and bench size, so
that saving a ``quick`` run keeps the ``full`` entries (and a ``-k`` subset keeps the rest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec_core import atomic_write_json

# Set on every benchmark by bench/conftest.py: the GENREC_BENCH_SIZE the run used. Benchmarks set
# their own ``size`` (often the problem size), so the run's size has a key of its own.
SIZE_KEY = "bench_size"


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, kw_only=True)
class Bench:
    """One benchmark of one run, with the fields the comparison and the report need."""

    fullname: str  # "bench/otcoreset/bench_sinkhorn.py::test_sinkhorn[2048]"
    name: str  # "test_sinkhorn[2048]"
    bench_size: str  # "quick" / "full"
    median: float | None  # seconds
    extra_info: dict[str, Any]
    raw: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.fullname, self.bench_size)

    @property
    def function(self) -> str:
        """The benchmark without its parameters: one plot per function."""
        return self.fullname.split("[", 1)[0]

    @property
    def ratio(self) -> float | None:
        return as_float(self.extra_info.get("ratio"))

    @property
    def target(self) -> float | None:
        return as_float(self.extra_info.get("target"))


def bench_from_json(entry: dict[str, Any], *, default_size: str = "quick") -> Bench:
    extra = entry.get("extra_info") or {}
    stats = entry.get("stats") or {}
    fullname = str(entry.get("fullname") or entry.get("name") or "?")
    return Bench(
        fullname=fullname,
        name=str(entry.get("name") or fullname.rsplit("::", 1)[-1]),
        bench_size=str(extra.get(SIZE_KEY) or default_size),
        median=as_float(stats.get("median")),
        extra_info=dict(extra),
        raw=entry,
    )


def benches(run: dict[str, Any] | None, *, default_size: str = "quick") -> list[Bench]:
    if not run:
        return []
    return [bench_from_json(e, default_size=default_size) for e in run.get("benchmarks") or []]


def load_json(path: Path) -> dict[str, Any] | None:
    """A pytest-benchmark JSON file, or None when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks", []), list):
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def baseline_path(results_dir: Path, device_slug: str, package: str) -> Path:
    return results_dir / device_slug / f"{package}.json"


def _stamp(entry: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``entry`` that remembers when and at which commit it was measured, because a merged
    baseline file mixes entries from several runs."""
    entry = json.loads(json.dumps(entry, default=str))
    extra = entry.setdefault("extra_info", {})
    extra.setdefault("measured_at", run.get("datetime"))
    commit = run.get("commit_info") or {}
    if commit.get("id"):
        extra.setdefault("commit", str(commit["id"])[:12] + ("+dirty" if commit.get("dirty") else ""))
    return entry


def _slim_machine_info(machine_info: dict[str, Any]) -> dict[str, Any]:
    info = json.loads(json.dumps(machine_info, default=str))
    cpu = info.get("cpu")
    if isinstance(cpu, dict):
        cpu.pop("flags", None)  # hundreds of CPU feature names: noise in a committed file
    return info


def merge_into_baseline(
    saved: dict[str, Any] | None,
    run: dict[str, Any],
    *,
    default_size: str,
    replace: bool,
) -> tuple[dict[str, Any], int]:
    """The baseline file after taking ``run``'s benchmarks into ``saved``.

    ``replace=True`` (``--save``): the run's entries replace saved ones with the same benchmark and
    bench size. ``replace=False`` (recording under ``--compare all``): only entries the baseline
    lacks are added; a saved baseline is never overwritten by a comparison. Returns the new file
    content and how many entries were written.
    """
    old_entries = list((saved or {}).get("benchmarks") or [])
    index = {bench_from_json(e, default_size=default_size).key: i for i, e in enumerate(old_entries)}
    written = 0
    for entry in run.get("benchmarks") or []:
        key = bench_from_json(entry, default_size=default_size).key
        if key in index:
            if replace:
                old_entries[index[key]] = _stamp(entry, run)
                written += 1
        else:
            index[key] = len(old_entries)
            old_entries.append(_stamp(entry, run))
            written += 1
    base = saved if (saved and not replace) else run
    merged = {
        "machine_info": _slim_machine_info(base.get("machine_info") or {}),
        "commit_info": base.get("commit_info") or {},
        "benchmarks": sorted(
            old_entries, key=lambda e: (str(e.get("fullname")), str(e.get("extra_info", {}).get(SIZE_KEY)))
        ),
        "datetime": base.get("datetime"),
        "version": base.get("version"),
    }
    return merged, written
