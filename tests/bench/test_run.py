"""bench/run.py end to end: a tiny synthetic bench tree in tmp_path, run through the real pytest
subprocess path (with the real bench/conftest.py), plus its usage errors in process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _benchtool.cli import main
from _benchtool.runner import STACKS_HEADER, junit_outcomes, log_tail, run_package

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "bench"
RUN_PY = BENCH_DIR / "run.py"

GOOD = """
import os

import pytest


@pytest.mark.parametrize("n", [10, 1000])
def test_sum(benchmark, n):
    data = list(range(n))
    benchmark.pedantic(sum, args=(data,), rounds=3, iterations=1)
    benchmark.extra_info.update(ratio=5.0, target=2.0, baseline="loop", n=n,
                                size=os.environ["GENREC_BENCH_SIZE"], floor_s=n * 1e-10)


@pytest.mark.gpu
def test_needs_gpu(benchmark):
    raise AssertionError("deselected on a CPU machine")
"""

BAD = """
def test_slow_path(benchmark):
    benchmark.pedantic(sum, args=([1, 2],), rounds=2, iterations=1)
    benchmark.extra_info.update(ratio=0.5, target=3.0)


def test_crashes(benchmark):
    benchmark.pedantic(sum, args=([1],), rounds=1, iterations=1)
    raise RuntimeError("kernel exploded")
"""

HANG = """
import time


def test_hangs(benchmark):
    benchmark.pedantic(time.sleep, args=(600,), rounds=1, iterations=1)
"""


def _tree(root: Path, packages: dict[str, str]) -> Path:
    bench = root / "bench"
    bench.mkdir(exist_ok=True)
    # the real conftest and helpers, so the subprocess exercises what the repository runs
    shutil.copy(BENCH_DIR / "conftest.py", bench / "conftest.py")
    if not (bench / "_benchtool").exists():
        shutil.copytree(
            BENCH_DIR / "_benchtool", bench / "_benchtool", ignore=shutil.ignore_patterns("__pycache__")
        )
    for name, source in packages.items():
        (bench / name).mkdir(exist_ok=True)
        if source:
            (bench / name / f"bench_{name}.py").write_text(textwrap.dedent(source))
    return bench


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_end_to_end_on_a_synthetic_bench_tree(tmp_path: Path) -> None:
    pytest.importorskip("pytest_benchmark")
    bench = _tree(tmp_path, {"good": GOOD, "empty": ""})
    common = ["--bench-root", str(bench), "--device", "Test Box", "--run-dir", str(tmp_path / "run")]

    first = _run(tmp_path, *common, "--package", "good", "--package", "empty", "--compare", "all")
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "empty: no benchmarks yet, skipped" in out
    assert "good: ok, 2 benchmarks, wall time" in out  # the gpu-marked one is deselected
    assert "recorded new baseline entries: 2" in out
    saved = json.loads((bench / "results" / "test-box" / "good.json").read_text())
    extra = saved["benchmarks"][0]["extra_info"]
    assert extra["device_slug"] == "test-box"
    assert extra["device"] == "Test Box"
    assert extra["device_name"] == "Test Box"
    assert extra["bench_size"] == "quick"
    assert extra["size"] == "quick"  # GENREC_BENCH_SIZE reached the benchmark
    assert "pytest-benchmark" in extra["versions"]
    assert saved["machine_info"]["genrec"]["device_slug"] == "test-box"

    _tree(tmp_path, {"bad": BAD})
    second = _run(tmp_path, *common, "--package", "bad")
    assert second.returncode == 1, second.stdout + second.stderr
    out = second.stdout
    assert "bad: failed, 2 benchmarks" in out
    assert "bench/bad/bench_bad.py::test_crashes: failure: RuntimeError: kernel exploded" in out
    assert "ratio 0.5 < target 3" in out
    table = out[out.index("benchmark  ") :]
    for column in ("median", "baseline median", "change", "ratio", "target", "verdict"):
        assert column in table.splitlines()[0]
    assert "FAILED: 2 benchmarks" in out


def test_a_hung_package_is_killed_at_its_timeout(tmp_path: Path) -> None:
    pytest.importorskip("pytest_benchmark")
    bench = _tree(tmp_path, {"hang": HANG})
    start = time.perf_counter()
    result = run_package(
        "hang",
        bench_root=bench,
        run_dir=tmp_path / "run",
        config=REPO_ROOT / "pyproject.toml",
        env=dict(os.environ),
        markexpr="",
        timeout=8.0,
    )
    assert time.perf_counter() - start < 60
    assert result.status == "timeout"
    assert result.failed
    assert "timed out after 8 s while running bench/hang/bench_hang.py::test_hangs" in result.failures["hang"]
    # the stacks of the hung process, from bench/conftest.py's SIGUSR1 handler, end the log
    tail = log_tail(result.log)
    assert tail.startswith(STACKS_HEADER)
    assert "bench_hang.py" in tail


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or os.name != "posix", reason="needs /proc")
def test_terminating_the_runner_ends_the_package_process_too(tmp_path: Path) -> None:
    """``kill`` (SIGTERM) of bench/run.py must not leave the package's pytest (its own session) running."""
    pytest.importorskip("pytest_benchmark")
    import signal

    bench = _tree(tmp_path, {"hang": HANG})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(RUN_PY), "--bench-root", str(bench), "--package", "hang", "--run-dir", str(run_dir)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        marker = str(bench / "hang")
        # the package's pytest has started its benchmark once bench/conftest.py made the stacks file
        while not (run_dir / "hang.stacks.txt").exists() or not _processes_mentioning(marker):
            assert proc.poll() is None, "bench/run.py ended before the package started"
            assert time.monotonic() < deadline, "the package never started"
            time.sleep(0.2)
        children = [pid for pid in _processes_mentioning(marker) if pid != proc.pid]
        assert children
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        end = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in children):
            assert time.monotonic() < end, f"the package's pytest survived: {children}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _processes_mentioning(str(bench / "hang")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (init reaps orphans, but not at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    assert main(["--bench-root", str(bench), "--package", "nonsense"]) == 2
    assert "unknown package 'nonsense'" in capsys.readouterr().err
    assert main(["--size", "huge"]) == 2
    assert main(["--bench-root", str(tmp_path / "missing")]) == 2
    assert main(["--bench-root", str(bench), "--timeout-per-package", "0"]) == 2
    broken = tmp_path / "results" / "dev" / "p.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    capsys.readouterr()
    assert (
        main(["--bench-root", str(bench), "--results-dir", str(tmp_path / "results"), "--report-only"]) == 2
    )
    assert f"{broken}: not valid JSON" in capsys.readouterr().err


def test_nothing_to_run_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "bench"
    (bench / "trainer").mkdir(parents=True)
    assert main(["--bench-root", str(bench), "--device", "x"]) == 0
    assert main(["--bench-root", str(bench), "--device", "x", "--package", "trainer"]) == 0
    assert "trainer: no benchmarks yet, skipped" in capsys.readouterr().out


def test_junit_outcomes_rebuild_node_ids(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="bench.p.bench_x" name="test_a[1]" file="bench/p/bench_x.py"/>'
        '<testcase classname="bench.p.bench_x.TestK" name="test_b" file="bench/p/bench_x.py">'
        '<failure message="AssertionError: slow&#10;more">tb</failure></testcase>'
        '<testcase classname="bench.p.bench_x" name="test_c" file="bench/p/bench_x.py">'
        '<skipped message="no gpu"/></testcase>'
        "</testsuite></testsuites>"
    )
    outcomes = junit_outcomes(xml)
    assert outcomes.failed == {"bench/p/bench_x.py::TestK::test_b": "failure: AssertionError: slow"}
    assert outcomes.skipped == 1
    assert junit_outcomes(tmp_path / "absent.xml").failed == {}
