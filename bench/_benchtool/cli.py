"""``python bench/run.py``: run the benchmarks, compare them, save baselines, regenerate the page."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .compare import DEFAULT_THRESHOLD, MODES, Row, compare_package, format_table
from .device import detect_device, device_env
from .provenance import SIZE_ENV, SIZES
from .report import write_report
from .results import baseline_path, benches, load_json, merge_into_baseline, write_json_atomic
from .runner import discover_packages, log_tail, run_package

PROG = "bench/run.py"
BENCH_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = BENCH_DIR.parent
# The stages that have (or will have) a bench/<name>/ folder; naming one of these before its
# benchmarks exist is not an error, naming anything else is a typo.
KNOWN_PACKAGES = ("sftdata", "profiler", "otcoreset", "trainer", "evaluator", "pipeline")


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run genrec's pytest-benchmark suites (one subprocess per package), check each ratio "
            "against its target, compare medians with the saved baseline of this device, save "
            "baselines and regenerate bench/results/README.md. Arguments after `--` go to pytest."
        ),
    )
    parser.add_argument(
        "--package",
        action="append",
        metavar="NAME",
        help="benchmark only this package (repeatable); default: every bench/<name>/ with bench_*.py files",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default=os.environ.get(SIZE_ENV) or "quick",
        help=f"problem sizes, passed to the benchmarks as {SIZE_ENV} (default: %(default)s)",
    )
    parser.add_argument(
        "--compare",
        choices=MODES,
        default="ratios",
        help=(
            "ratios: fail when a ratio is below its target; all: also fail when a median is more than "
            "--threshold slower than this device's saved baseline (a device or benchmark without one "
            "is recorded, not failed); none: only report (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="largest tolerated median slowdown under --compare all, as a fraction (default: %(default)s)",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="store this run as the baseline of this device in <results-dir>/<device>/<package>.json",
    )
    parser.add_argument(
        "--report", action="store_true", help="regenerate <results-dir>/README.md and its plots after the run"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate the results page from saved baselines; run nothing",
    )
    parser.add_argument(
        "--device",
        metavar="NAME",
        help="name the device instead of detecting it (the GPU, else CPU model and core count)",
    )
    parser.add_argument(
        "--timeout-per-package",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="kill a package's benchmarks after this long and count it as failed (default: %(default)s)",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only benchmarks matching (pytest -k)")
    parser.add_argument(
        "-m",
        dest="markexpr",
        metavar="EXPR",
        help="pytest marker expression (default: 'not slow' for quick, plus 'not gpu' without CUDA)",
    )
    parser.add_argument(
        "--bench-root",
        type=Path,
        default=BENCH_DIR,
        help="folder holding the <package>/bench_*.py folders (default: %(default)s)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="saved baselines and the results page (default: <bench-root>/results)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="where this run's JSON, JUnit XML and logs go (default: a new temporary folder)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print each package's full pytest output"
    )
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _markexpr(size: str, has_cuda: bool) -> str:
    parts = []
    if size == "quick":
        parts.append("not slow")
    if not has_cuda:
        parts.append("not gpu")
    return " and ".join(parts)


def _select_packages(requested: Sequence[str] | None, bench_root: Path) -> tuple[list[str], list[str]]:
    """(packages to run, requested packages that have no benchmarks yet)."""
    available = discover_packages(bench_root)
    if not requested:
        return available, []
    run, missing = [], []
    for name in dict.fromkeys(requested):
        if name in available:
            run.append(name)
        elif name in KNOWN_PACKAGES or (bench_root / name).is_dir():
            missing.append(name)
        else:
            choices = ", ".join(sorted({*KNOWN_PACKAGES, *available}))
            raise UsageError(f"unknown package {name!r} (choose from {choices})")
    return run, missing


def _run(args: argparse.Namespace, pytest_args: list[str]) -> int:
    bench_root: Path = args.bench_root.resolve()
    if not bench_root.is_dir():
        raise UsageError(f"--bench-root {bench_root} is not a folder")
    if args.threshold < 0:
        raise UsageError(f"--threshold must be >= 0, got {args.threshold}")
    if args.timeout_per_package <= 0:
        raise UsageError(f"--timeout-per-package must be > 0, got {args.timeout_per_package}")
    results_dir: Path = (args.results_dir or bench_root / "results").resolve()

    if args.report_only:
        readme, pngs = write_report(results_dir)
        print(f"results page: {readme} ({len(pngs)} plots)")
        return 0

    packages, missing = _select_packages(args.package, bench_root)
    device = detect_device(args.device)
    markexpr = args.markexpr if args.markexpr is not None else _markexpr(args.size, device.kind == "cuda")
    run_dir: Path | None = args.run_dir.resolve() if args.run_dir else None
    if run_dir is None and packages:
        run_dir = Path(tempfile.mkdtemp(prefix="genrec-bench-"))
    extra = [*(["-k", args.keyword] if args.keyword else []), *pytest_args]
    env = {**os.environ, SIZE_ENV: args.size, **device_env(device)}

    print(f"device: {device.name} (results folder: {device.slug})")
    print(f"size: {args.size}; compare: {args.compare}; markers: {markexpr or '(all)'}")
    if run_dir is not None:
        print(f"run folder (JSON, JUnit XML, logs): {run_dir}")
    for name in missing:
        print(f"{name}: no benchmarks yet, skipped")
    if not packages:
        print(f"no benchmarks found under {bench_root}")

    total_start = time.perf_counter()
    rows: list[Row] = []
    summary: list[str] = []
    failed_packages: list[str] = []
    written: list[str] = []
    for package in packages:
        print(f"\n== {package} ==", flush=True)
        result = run_package(
            package,
            bench_root=bench_root,
            run_dir=run_dir or Path(tempfile.mkdtemp(prefix="genrec-bench-")),
            config=REPO_ROOT / "pyproject.toml",
            env=env,
            markexpr=markexpr,
            timeout=args.timeout_per_package,
            extra_args=extra,
        )
        current = benches(result.run, default_size=args.size)
        print(
            f"{package}: {result.status}, {len(current)} benchmarks"
            f"{f', {result.skipped} skipped' if result.skipped else ''}, wall time {result.seconds:.1f} s",
            flush=True,
        )
        summary.append(
            f"  {package:<12} {result.status:<8} {len(current):>4} benchmarks  {result.seconds:7.1f} s"
        )
        if args.verbose:
            print(log_tail(result.log, lines=10**9))
        if result.failed:
            failed_packages.append(package)
            for where, what in result.failures.items():
                print(f"  FAILED {where}: {what}")
            if not args.verbose:
                print(f"  last lines of {result.log}:")
                print("    " + log_tail(result.log).replace("\n", "\n    "))

        target = baseline_path(results_dir, device.slug, package)
        saved = load_json(target) if args.compare == "all" or args.save else None
        rows += compare_package(
            package,
            current,
            benches(saved, default_size=args.size) if saved else None,
            mode=args.compare,
            threshold=args.threshold,
            test_failures=result.failures,
        )
        if not current or result.status != "ok":
            if args.save and current:
                print(f"  not saved: {package} did not pass")
            continue
        if args.save or args.compare == "all":
            merged, count = merge_into_baseline(
                saved, result.run or {}, default_size=args.size, replace=args.save
            )
            if count:
                write_json_atomic(target, merged)
                what = "saved" if args.save else "recorded new baseline entries"
                written.append(f"{what}: {count} in {target}")

    total = time.perf_counter() - total_start
    if rows:
        print()
        print(format_table(rows))
    print()
    for line in written:
        print(line)
    if args.report:
        readme, pngs = write_report(results_dir)
        print(f"results page: {readme} ({len(pngs)} plots)")
    if run_dir is not None:
        print(f"run folder (JSON, JUnit XML, logs): {run_dir}")
    if summary:
        print("wall time per package:")
        print("\n".join(summary))
    print(f"total wall time: {total:.1f} s for {len(packages)} packages")

    bad_rows = [r for r in rows if r.failed]
    if failed_packages or bad_rows:
        if failed_packages:
            print(f"FAILED: benchmarks errored in {', '.join(failed_packages)}")
        if bad_rows:
            print(f"FAILED: {len(bad_rows)} benchmarks (test failed, ratio below target, or regressed):")
            for row in bad_rows:
                print(f"  {row.bench.fullname} [{row.bench.bench_size}]: {row.verdict}")
        return 1
    print("benchmarks passed")
    return 0


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the package's pytest runs in its own session
    (so that a timeout can kill its whole group), and without this a ``kill`` of bench/run.py would
    leave it running, orphaned, competing with whatever runs next."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # the runner kills the package's process group on the way out

    wanted = [sig for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig is not None]
    previous = {sig: signal.signal(sig, stop) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    ours, pytest_args = _split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(ours)
    except SystemExit as exc:  # argparse: 2 on a usage error, 0 after --help
        return int(exc.code or 0)
    try:
        with _exit_on_termination():
            return _run(args, pytest_args)
    except (UsageError, ValueError, FileNotFoundError) as exc:  # bad option, unreadable results file
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
