"""LLM4POI preprocessing: genrec_sftdata.prepare (Polars) against a straightforward pandas
implementation of the same rules (pandas_prepare.py beside this file), on a synthetic city.

- ``test_prepare_tky``: time at TKY size (about 400,000 check-ins; quick: about 100,000). The issue
  asks for at least 10x.
- ``test_prepare_memory``: time and peak resident memory of each implementation in its own process,
  at 5 million check-ins (quick: about 120,000), to show memory stays bounded.

``GENREC_BENCH_SIZE=quick|full`` (default quick).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import genrec_sftdata as g

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # pandas_prepare lives beside this file

from pandas_prepare import pandas_prepare  # noqa: E402

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
TKY_USERS = {"quick": 800, "full": 3300}[SIZE]  # 120 check-ins per user on average
BIG_USERS = {"quick": 1000, "full": 42_000}[SIZE]  # full: about 5.2 million check-ins
BASELINE = "pandas (bench/sftdata/pandas_prepare.py, same rules)"


def _same_tables(ours: g.PreparedData, ref) -> None:  # type: ignore[no-untyped-def]
    assert ours.checkins.height == len(ref)
    assert ours.checkins["trajectory_id"].to_list() == ref["trajectory_id"].tolist()


def test_prepare_tky(benchmark: pytest.FixtureRequest) -> None:
    raw = g.synthesize_city(n_users=TKY_USERS, seed=0)
    pdf = raw.to_pandas()
    baseline_times = []
    ref = None
    for _ in range(1 if SIZE == "full" else 2):
        t0 = time.perf_counter()
        ref = pandas_prepare(pdf)
        baseline_times.append(time.perf_counter() - t0)
    ours = benchmark.pedantic(g.prepare, args=(raw,), rounds=3, iterations=1, warmup_rounds=1)
    _same_tables(ours, ref)
    # Best of each: on a shared machine the minimum is the least disturbed by other jobs.
    ours_s = benchmark.stats.stats.min
    baseline_s = min(baseline_times)
    benchmark.extra_info.update(
        ratio=baseline_s / ours_s,
        baseline=BASELINE,
        baseline_s=baseline_s,
        target=10.0,
        size={"users": TKY_USERS, "checkins": raw.height},
        problem_size=raw.height,
        device="cpu",
    )


_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r})
import polars as pl
impl, path = sys.argv[1], sys.argv[2]
if impl == "ours":
    import genrec_sftdata as g
else:
    from pandas_prepare import pandas_prepare
raw = pl.read_parquet(path)
if impl != "ours":
    raw = raw.to_pandas()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
rows = g.prepare(raw).checkins.height if impl == "ours" else len(pandas_prepare(raw))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "rows": rows, "peak_rss_mb": peak / 1024, "before_rss_mb": before / 1024}}))
"""


def _run_child(impl: str, path: Path) -> dict[str, float]:
    code = _CHILD.format(here=str(HERE))
    proc = subprocess.run(
        [sys.executable, "-c", code, impl, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_prepare_memory(benchmark: pytest.FixtureRequest, tmp_path: Path) -> None:
    raw = g.synthesize_city(n_users=BIG_USERS, seed=1)
    path = tmp_path / "city.parquet"
    raw.write_parquet(path)
    n, input_mb = raw.height, raw.estimated_size("mb")
    del raw
    base = _run_child("pandas", path)
    runs: list[dict[str, float]] = []

    def ours() -> None:
        runs.append(_run_child("ours", path))

    benchmark.pedantic(ours, rounds=1, iterations=1)
    mine = runs[-1]
    assert mine["rows"] == base["rows"]
    benchmark.extra_info.update(
        ratio=base["seconds"] / mine["seconds"],
        baseline=BASELINE,
        baseline_s=base["seconds"],
        target=1.0,  # the issue asks for bounded memory here; the 10x target is test_prepare_tky
        size={"users": BIG_USERS, "checkins": n, "input_mb": round(input_mb, 1)},
        problem_size=n,
        device="cpu",
        seconds=mine["seconds"],
        peak_rss_mb=round(mine["peak_rss_mb"], 1),
        baseline_peak_rss_mb=round(base["peak_rss_mb"], 1),
        # Peak resident memory of the whole process, and its growth during the run over the input's size.
        peak_growth_mb=round(mine["peak_rss_mb"] - mine["before_rss_mb"], 1),
        baseline_peak_growth_mb=round(base["peak_rss_mb"] - base["before_rss_mb"], 1),
        growth_over_input=round((mine["peak_rss_mb"] - mine["before_rss_mb"]) / input_mb, 2),
    )
