"""bench/results/README.md and its plots, generated from saved baselines in a tmp folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _benchtool.cli import main
from _benchtool.report import baseline_to_end, floor_seconds, plot_name, problem_size, write_report
from _benchtool.results import bench_from_json

from ._synthetic import entry, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SINK = "bench/otcoreset/bench_sinkhorn.py::test_sinkhorn"


def _save(results: Path, device: str, package: str, data: dict) -> None:
    (results / device).mkdir(parents=True, exist_ok=True)
    (results / device / f"{package}.json").write_text(json.dumps(data))


def test_report_writes_readme_and_one_png_per_benchmark(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    sinkhorn = [
        entry(f"{SINK}[{n}]", n * n * 1e-9, params={"n": n}, ratio=4.0, target=3.0, baseline="POT",
              floor_s=n * n * 2e-10, baseline_s=n * n * 4e-9, measured_at="2026-11-23T18:00:00", commit="abc")
        for n in (256, 1024, 4096)
    ]  # fmt: skip
    _save(results, "amd-epyc-2c", "otcoreset", run(*sinkhorn))
    _save(
        results,
        "amd-epyc-2c",
        "sftdata",
        run(entry("bench/sftdata/bench_prep.py::test_prepare", 2.0, ratio=8.0, target=10.0, gbps=41.5)),
    )
    _save(
        results,
        "nvidia-h100",
        "otcoreset",
        run(entry(f"{SINK}[16384]", 0.05, params={"n": 16384}, device_name="NVIDIA H100", device="cuda:0")),
    )
    stale = results / "amd-epyc-2c" / "plots" / "gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)

    readme, pngs = write_report(results)

    text = readme.read_text()
    assert readme == results / "README.md"
    assert "## amd-epyc-2c" in text
    assert "## nvidia-h100" in text
    assert "Device: NVIDIA H100." in text
    assert "| otcoreset | test_sinkhorn[4096] | quick |" in text
    assert "meets target" in text
    assert "**below target**" in text  # sftdata's 8x under its 10x target
    assert "5.00x" in text  # median / floor for the sinkhorn rows
    assert "| gbps=41.5 |" in text
    assert len(pngs) == 3  # sinkhorn on two devices, prepare on one
    assert not stale.exists()
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert f"]({png.relative_to(results).as_posix()})" in text

    # the CLI's --report-only regenerates the same page without running anything
    readme.unlink()
    assert main(["--bench-root", str(tmp_path), "--results-dir", str(results), "--report-only"]) == 0
    assert readme.read_text() == text


def test_report_without_results_says_how_to_make_them(tmp_path: Path) -> None:
    readme, pngs = write_report(tmp_path / "results")
    assert pngs == []
    assert "No saved baselines yet" in readme.read_text()


def test_problem_size_and_plot_names() -> None:
    assert problem_size(bench_from_json(entry("a::t[x]", 1.0, problem_size=7, n=3))) == (7.0, "problem_size")
    assert problem_size(bench_from_json(entry("a::t[x]", 1.0, size="quick", params={"b": 64}))) == (64.0, "b")
    assert problem_size(bench_from_json(entry("a::t[x]", 1.0, params={"dtype": "f32"}))) == (None, None)
    sized = entry("a::t", 1.0, size={"users": 800, "checkins": 94256, "name": "tky"})
    assert problem_size(bench_from_json(sized)) == (94256.0, "size.checkins")
    assert floor_seconds(bench_from_json(entry("a::t", 1.0, memory_floor_s=0.25))) == 0.25
    assert floor_seconds(bench_from_json(entry("a::t", 1.0, floor_s=0.5, memory_floor_s=0.25))) == 0.5
    assert floor_seconds(bench_from_json(entry("a::t", 1.0))) is None
    assert plot_name(SINK) == "otcoreset-bench_sinkhorn-test_sinkhorn.png"
    # a baseline stopped early: its estimated time to the end is drawn only where it adds something
    assert baseline_to_end(bench_from_json(entry("a::t", 1.0, baseline_s=1500, baseline_final_s=9323))) == 9323
    assert baseline_to_end(bench_from_json(entry("a::t", 1.0, baseline_s=1020, baseline_final_s=1020))) is None
    assert baseline_to_end(bench_from_json(entry("a::t", 1.0, baseline_s=10))) is None
