"""Synthetic pytest-benchmark JSON for the tests of bench/run.py."""

from __future__ import annotations

from typing import Any


def entry(
    fullname: str,
    median: float,
    *,
    bench_size: str = "quick",
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    name = fullname.rsplit("::", 1)[-1]
    return {
        "group": None,
        "name": name,
        "fullname": fullname,
        "params": params,
        "param": None,
        "extra_info": {"bench_size": bench_size, **extra},
        "options": {},
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "median": median, "rounds": 5},
    }


def run(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU", "flags": ["sse", "avx"]}},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "benchmarks": list(entries),
        "datetime": "2026-11-23T18:00:00+00:00",
        "version": "5.3.1",
    }
