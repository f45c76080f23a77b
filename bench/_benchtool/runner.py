"""Run one package's benchmarks in a pytest subprocess and collect what happened.

Each package runs in its own process (``--benchmark-json`` and ``--junitxml`` to files in the run
folder, output to a log) so that one package's imports, threads or GPU state cannot colour
another's timings, and so that a hung benchmark can be killed with its whole process group.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import load_json

BENCH_FILES = "bench_*.py"
# pytest exit codes (pytest.ExitCode): 5 means nothing was collected, which for a package whose
# benchmarks are not written yet (or all deselected) is not a failure.
NO_TESTS_COLLECTED = 5
# Where bench/conftest.py lets faulthandler write the stacks of all threads on SIGUSR1, which we
# send to a package that ran out of time, before killing it.
STACKS_ENV = "GENREC_BENCH_STACKS"
STACKS_HEADER = "=== stacks of the timed-out pytest process (faulthandler) ==="


@dataclass(frozen=True, kw_only=True)
class PackageRun:
    package: str
    status: str  # "ok", "empty" (nothing to run), "failed", "timeout", "error"
    returncode: int | None
    seconds: float
    run: dict[str, Any] | None  # the pytest-benchmark JSON
    failures: dict[str, str] = field(default_factory=dict)  # node id (or package) -> what went wrong
    skipped: int = 0
    log: Path | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout", "error")


def discover_packages(bench_root: Path) -> list[str]:
    """Folders under ``bench_root`` that hold at least one ``bench_*.py`` file."""
    if not bench_root.is_dir():
        return []
    found = []
    for child in sorted(bench_root.iterdir()):
        if not child.is_dir() or child.name.startswith(("_", ".")) or child.name == "results":
            continue
        if any(child.rglob(BENCH_FILES)):
            found.append(child.name)
    return found


@dataclass(frozen=True, kw_only=True)
class Outcomes:
    failed: dict[str, str]  # pytest node id -> "failure: first line of the message"
    skipped: int


def _nodeid(case: ET.Element) -> str:
    """The pytest node id of a JUnit ``testcase`` (xunit1 records the file; the class, if any, is the
    part of ``classname`` after the module's dotted path)."""
    name = case.get("name") or ""
    classname = case.get("classname") or ""
    file = case.get("file")
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".").replace("\\", ".")
    cls = classname[len(module) + 1 :] if classname.startswith(module + ".") else ""
    return "::".join(part for part in (file.replace("\\", "/"), *cls.split("."), name) if part)


def junit_outcomes(path: Path) -> Outcomes:
    """Failed or errored tests (by node id, with the first line of their message) and the number
    skipped, from pytest's ``--junitxml`` file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return Outcomes(failed={}, skipped=0)
    failed = {}
    skipped = 0
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                message = (child.get("message") or child.text or "").strip().splitlines()
                first = message[0] if message else ""
                failed[_nodeid(case)] = f"{child.tag}: {first[:200]}"
            elif child.tag == "skipped":
                skipped += 1
    return Outcomes(failed=failed, skipped=skipped)


def pytest_command(
    package_dir: Path,
    *,
    config: Path,
    rootdir: Path,
    json_path: Path,
    junit_path: Path,
    markexpr: str,
    extra_args: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(package_dir),
        "-c",
        str(config),
        "--rootdir",
        str(rootdir),
        "-o",
        f"python_files={BENCH_FILES}",
        "-p",
        "no:cacheprovider",
        # hypothesis' plugin costs seconds of import per package on a 2-core machine; no benchmark
        # uses it.
        "-p",
        "no:hypothesispytest",
        "-m",
        markexpr,
        f"--benchmark-json={json_path}",
        f"--junitxml={junit_path}",
        "-o",
        "junit_family=xunit1",  # xunit1 records each test's file, from which we rebuild node ids
        "-v",  # names each benchmark as it starts: the log shows which one hung
        *extra_args,
    ]


def _dump_stacks(proc: subprocess.Popen[bytes], stacks_path: Path) -> None:
    """Ask pytest for its threads' stacks (bench/conftest.py registers faulthandler on SIGUSR1 and
    creates ``stacks_path`` once it has). Without the file the signal would just kill it."""
    if not hasattr(signal, "SIGUSR1") or not stacks_path.exists():
        return
    try:
        os.kill(proc.pid, signal.SIGUSR1)
    except ProcessLookupError:
        return
    time.sleep(1.0)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # SIGINT first: pytest ends the session as on Ctrl-C, and servers or workers a benchmark started
    # (same process group) get the chance to clean up. Then harder.
    for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_package(
    package: str,
    *,
    bench_root: Path,
    run_dir: Path,
    config: Path,
    env: Mapping[str, str],
    markexpr: str,
    timeout: float,
    extra_args: Sequence[str] = (),
) -> PackageRun:
    """Run ``bench_root/package`` under pytest-benchmark; never raises for what happens inside."""
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / f"{package}.json"
    junit_path = run_dir / f"{package}.junit.xml"
    log_path = run_dir / f"{package}.log"
    stacks_path = run_dir / f"{package}.stacks.txt"
    for stale in (json_path, junit_path, stacks_path):
        stale.unlink(missing_ok=True)
    cmd = pytest_command(
        bench_root / package,
        config=config,
        rootdir=bench_root.parent,
        json_path=json_path,
        junit_path=junit_path,
        markexpr=markexpr,
        extra_args=extra_args,
    )
    start = time.perf_counter()
    with log_path.open("wb") as log:
        log.write(("$ " + shlex.join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=bench_root.parent,
            env={**env, STACKS_ENV: str(stacks_path)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so a timeout kills workers too
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _dump_stacks(proc, stacks_path)
            _kill_group(proc)
            returncode = None
        except BaseException:  # Ctrl-C: its own session does not get our SIGINT, so end it here
            _kill_group(proc)
            raise
    seconds = time.perf_counter() - start
    try:
        run = load_json(json_path)
    except ValueError:
        run = None
    outcomes = junit_outcomes(junit_path)
    failures = dict(outcomes.failed)
    if returncode is None:
        status = "timeout"
        running = _last_started(log_path)
        where = f" while running {running}" if running else ""
        failures[package] = f"timed out after {timeout:g} s{where} (killed); see {log_path}"
        stacks = stacks_path.read_text(errors="replace") if stacks_path.exists() else ""
        if stacks.strip():
            with log_path.open("a") as log_file:  # the stacks end the log, where log_tail looks
                log_file.write(f"\n{STACKS_HEADER}\n{stacks}")
    elif returncode == 0:
        status = "ok"
    elif returncode == NO_TESTS_COLLECTED:
        status = "empty"
    elif returncode == 1:
        status = "failed"
    else:
        status = "error"
        if not failures:
            failures[package] = f"pytest exited with code {returncode}; see {log_path}"
    if status == "ok" and not (run and run.get("benchmarks")):
        status = "empty"
    return PackageRun(
        package=package,
        status=status,
        returncode=returncode,
        seconds=seconds,
        run=run,
        failures=failures,
        skipped=outcomes.skipped,
        log=log_path,
    )


def _last_started(log_path: Path) -> str | None:
    """The node id of the last benchmark pytest -v announced in ``log_path`` without a result."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        head = line.split(" ", 1)[0]
        if "::" in head and not line.rstrip().endswith("]"):  # "node PASSED [ 50%]" has a result
            return head
        if "::" in head:
            return None
    return None


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` of a package's log; after a timeout, the stacks of the hung process (where
    it hung) rather than what pytest printed while being killed."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    if STACKS_HEADER in text:
        start = text.index(STACKS_HEADER)
        return "\n".join(text[start : start + lines])
    return "\n".join(text[-lines:])
