"""The comparison, saving and naming logic of bench/run.py on synthetic pytest-benchmark JSON."""

from __future__ import annotations

import pytest

from _benchtool import device as device_mod
from _benchtool.compare import compare_package, format_table
from _benchtool.provenance import annotate, library_versions
from _benchtool.results import benches, merge_into_baseline

from ._synthetic import entry, run

SINK = "bench/otcoreset/bench_sinkhorn.py::test_sinkhorn[2048]"


def _rows(current, baseline, mode="all", **kw):
    return compare_package(
        "otcoreset",
        benches(current),
        benches(baseline) if baseline is not None else None,
        mode=mode,
        **kw,
    )


@pytest.mark.parametrize(
    ("slowdown", "fails"),
    [(1.15, True), (1.05, False), (1.0, False), (0.5, False), (1.099, False), (1.101, True)],
)
def test_median_regression_beyond_ten_percent_fails(slowdown: float, fails: bool) -> None:
    base = run(entry(SINK, 0.100, ratio=4.0, target=3.0))
    cur = run(entry(SINK, 0.100 * slowdown, ratio=4.0, target=3.0))
    (row,) = _rows(cur, base)
    assert row.failed is fails
    assert row.change == pytest.approx(slowdown - 1.0)
    assert row.baseline_median == pytest.approx(0.100)
    if fails:
        assert "median" in row.verdict
        assert row.verdict.startswith("FAIL")


def test_faster_is_reported_not_failed() -> None:
    (row,) = _rows(run(entry(SINK, 0.05)), run(entry(SINK, 0.1)))
    assert (row.failed, row.verdict) == (False, "faster")


def test_ratios_mode_ignores_absolute_times() -> None:
    (row,) = _rows(run(entry(SINK, 0.2, ratio=4.0, target=3.0)), run(entry(SINK, 0.1)), mode="ratios")
    assert not row.failed
    assert row.baseline_median is None
    assert row.change is None


@pytest.mark.parametrize("mode", ["ratios", "all"])
def test_ratio_below_target_fails(mode: str) -> None:
    (row,) = _rows(run(entry(SINK, 0.1, ratio=2.5, target=3.0)), None, mode=mode)
    assert row.failed
    assert "ratio 2.5 < target 3" in row.verdict


def test_ratio_at_target_passes_and_none_mode_never_fails() -> None:
    (row,) = _rows(run(entry(SINK, 0.1, ratio=3.0, target=3.0)), None, mode="ratios")
    assert not row.failed
    (row,) = _rows(run(entry(SINK, 9.0, ratio=0.1, target=3.0)), run(entry(SINK, 0.1)), mode="none")
    assert not row.failed
    assert row.verdict == "-"


def test_target_without_ratio_fails() -> None:
    (row,) = _rows(run(entry(SINK, 0.1, target=3.0, ratio=float("nan"))), None, mode="ratios")
    assert row.failed
    assert "no ratio" in row.verdict


def test_missing_baseline_for_new_device_is_recorded_not_failed() -> None:
    cur = run(entry(SINK, 0.1, ratio=4.0, target=3.0), entry(SINK + "x", 0.2))
    rows = _rows(cur, None)
    assert [r.verdict for r in rows] == ["new", "new"]
    assert not any(r.failed for r in rows)
    # and what gets recorded for that device is the run itself
    merged, written = merge_into_baseline(None, cur, default_size="quick", replace=False)
    assert written == 2
    assert [b["fullname"] for b in merged["benchmarks"]] == [SINK, SINK + "x"]
    assert "flags" not in merged["machine_info"]["cpu"]
    assert merged["benchmarks"][0]["extra_info"]["commit"] == "0123456789ab"


def test_benchmark_new_to_an_existing_baseline_is_not_failed() -> None:
    rows = _rows(run(entry(SINK, 0.1), entry("other::test", 5.0)), run(entry(SINK, 0.1)))
    assert [(r.verdict, r.failed) for r in rows] == [("ok", False), ("new", False)]


def test_sizes_are_compared_only_with_the_same_size() -> None:
    (row,) = _rows(run(entry(SINK, 10.0, bench_size="full")), run(entry(SINK, 0.1, bench_size="quick")))
    assert (row.verdict, row.failed) == ("new", False)


def test_failed_test_fails_its_row() -> None:
    (row,) = _rows(run(entry(SINK, 0.1)), None, mode="ratios", test_failures={SINK: "failure: boom"})
    assert row.failed
    assert "boom" in row.verdict


def test_table_has_the_promised_columns() -> None:
    rows = _rows(run(entry(SINK, 0.115, ratio=2.0, target=3.0)), run(entry(SINK, 0.1)))
    table = format_table(rows)
    header = table.splitlines()[0].split()
    for column in ("benchmark", "median", "baseline", "change", "ratio", "target", "verdict"):
        assert column in header
    assert "+15.0%" in table
    assert "115 ms" in table
    assert "100 ms" in table
    assert "FAIL" in table


def test_save_replaces_same_size_and_keeps_others() -> None:
    saved, _ = merge_into_baseline(
        None, run(entry(SINK, 1.0, bench_size="full"), entry(SINK, 0.1)), default_size="quick", replace=True
    )
    merged, written = merge_into_baseline(saved, run(entry(SINK, 0.2)), default_size="quick", replace=True)
    assert written == 1
    medians = {(b.fullname, b.bench_size): b.median for b in benches(merged)}
    assert medians == {(SINK, "full"): 1.0, (SINK, "quick"): 0.2}
    # recording (compare all) never overwrites
    kept, written = merge_into_baseline(merged, run(entry(SINK, 9.0)), default_size="quick", replace=False)
    assert written == 0
    assert {b.median for b in benches(kept)} == {1.0, 0.2}


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="compare mode"):
        compare_package("p", [], None, mode="bogus")


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("Intel(R) Xeon(R) Platinum 8375C", "intel-xeon-platinum-8375c"),
        ("  AMD EPYC 7B13 64-Core Processor ", "amd-epyc-7b13-64-core-processor"),
        ("???", "unknown"),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert device_mod.slugify(text) == slug


def test_cpu_device_names_model_and_cores() -> None:
    info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"
    model = device_mod.cpu_model(info)
    assert model == "Intel(R) Xeon(R) Platinum 8375C"
    dev = device_mod.cpu_device(model=model, cores=2)
    assert dev.slug == "intel-xeon-platinum-8375c-2c"
    assert dev.kind == "cpu"
    assert "2 cores" in dev.name
    assert device_mod.cpu_model("Hardware\t: BCM2835\n") == "BCM2835"


def test_detect_device_prefers_what_run_py_hands_down(monkeypatch: pytest.MonkeyPatch) -> None:
    env = device_mod.device_env(device_mod.Device(name="NVIDIA H200", slug="nvidia-h200", kind="cuda"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert device_mod.detect_device() == device_mod.Device(
        name="NVIDIA H200", slug="nvidia-h200", kind="cuda"
    )
    monkeypatch.delenv(device_mod.ENV_SLUG)
    monkeypatch.setattr(device_mod, "_gpu_may_exist", lambda: False)
    assert device_mod.detect_device().kind == "cpu"
    assert device_mod.detect_device().slug.endswith(f"-{device_mod.cpu_count()}c")
    assert device_mod.detect_device("CI box").slug == "ci-box"


def test_annotate_keeps_what_the_benchmark_set_but_owns_its_keys() -> None:
    entries = [
        {"extra_info": {"device": "cuda:0", "bench_size": "stale", "versions": {"torch": "mine"}}},
        {},
    ]
    info = {
        "device": "NVIDIA H100",
        "device_name": "NVIDIA H100",
        "device_slug": "nvidia-h100",
        "device_kind": "cuda",
        "bench_size": "full",
        "versions": {"torch": "2.5", "numpy": "2.0"},
    }
    annotate(entries, info)
    first, second = (e["extra_info"] for e in entries)
    assert first["device"] == "cuda:0"
    assert first["device_name"] == "NVIDIA H100"
    assert first["bench_size"] == "full"
    assert first["versions"] == {"torch": "mine", "numpy": "2.0"}
    assert second == info


def test_library_versions_come_from_metadata() -> None:
    versions = library_versions()
    assert versions["python"].count(".") == 2
    assert "pytest-benchmark" in versions
