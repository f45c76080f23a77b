"""``bench/results/README.md``: the latest saved result of every benchmark, one table per device, and
one PNG per benchmark function of time against problem size (with the in-run baseline and the
physical floor where the benchmark records them).

Keys read from a benchmark's ``extra_info`` (all optional):
``problem_size`` (else ``n``, else a numeric ``size`` or the largest number in a ``size`` dict, else the
first numeric parametrize value) for
the x axis; ``floor_s`` (or any ``*_floor_s``, e.g. ``memory_floor_s``), the physical floor in
seconds (memory or compute bound); ``baseline_s``, the
in-run baseline's time; ``baseline_final_s``, the baseline's time to its end when the run stopped it
early (``baseline_s`` is then a lower bound; drawn hollow, as an estimate, where it is larger);
``ratio``, ``target``, ``baseline`` for the table.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import format_seconds
from .results import Bench, as_float, benches, load_json

X_KEYS = ("problem_size", "n", "size")
PLOTS = "plots"


@dataclass(frozen=True, kw_only=True)
class Saved:
    device: str  # slug (folder name)
    package: str
    bench: Bench


def load_saved(results_dir: Path) -> dict[str, list[Saved]]:
    """Every saved baseline entry, by device slug."""
    out: dict[str, list[Saved]] = {}
    if not results_dir.is_dir():
        return out
    for device_dir in sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = []
        for path in sorted(device_dir.glob("*.json")):
            run = load_json(path)
            entries.extend(Saved(device=device_dir.name, package=path.stem, bench=b) for b in benches(run))
        if entries:
            out[device_dir.name] = entries
    return out


def problem_size(bench: Bench) -> tuple[float | None, str | None]:
    """The x value of a benchmark and the name of the parameter it came from."""
    for key in X_KEYS:
        raw = bench.extra_info.get(key)
        if isinstance(raw, dict):  # size={"users": 800, "checkins": 94256}: the largest count
            numeric = [(as_float(v), str(k)) for k, v in raw.items() if as_float(v) is not None]
            if numeric:
                value, sub = max(numeric)  # type: ignore[type-var]
                return value, f"{key}.{sub}"
            continue
        value = as_float(raw)
        if value is not None:
            return value, key
    params = bench.raw.get("params") or {}
    if isinstance(params, dict):
        for key, raw in params.items():
            value = as_float(raw)
            if value is not None:
                return value, key
    return None, None


def floor_seconds(bench: Bench) -> float | None:
    """The physical floor the benchmark states: ``floor_s``, else the first ``*_floor_s`` key."""
    value = as_float(bench.extra_info.get("floor_s"))
    if value is not None:
        return value
    for key, raw in bench.extra_info.items():
        if key.endswith("_floor_s") and as_float(raw) is not None:
            return as_float(raw)
    return None


def baseline_to_end(bench: Bench) -> float | None:
    """``baseline_final_s`` where the run stopped its baseline early (larger than ``baseline_s``)."""
    final = as_float(bench.extra_info.get("baseline_final_s"))
    measured = as_float(bench.extra_info.get("baseline_s"))
    if final is None or (measured is not None and final <= measured):
        return None
    return final


def _series_label(bench: Bench, x_key: str | None, x: float | None) -> str:
    params = bench.raw.get("params") or {}
    parts = []
    if isinstance(params, dict):
        for key, value in sorted(params.items()):
            if key == x_key or (x is not None and as_float(value) == x):
                continue
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def plot_name(function: str) -> str:
    """``bench/otcoreset/bench_sinkhorn.py::test_sinkhorn`` -> ``otcoreset-bench_sinkhorn-test_sinkhorn.png``."""
    text = function.replace(".py::", "-").replace("::", "-")
    text = re.sub(r"^bench/", "", text)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") + ".png"


def _plot_function(function: str, items: list[Bench], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    points = []
    for bench in items:
        x, key = problem_size(bench)
        points.append((bench, x, key))
    numeric = all(x is not None for _, x, _ in points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        series: dict[str, list[tuple[Any, Bench]]] = defaultdict(list)
        for bench, x, key in points:
            label = _series_label(bench, key, x) if numeric else ""
            if bench.bench_size != "quick":
                label = f"{label}, {bench.bench_size}" if label else bench.bench_size
            series[label].append((x if numeric else f"{bench.name} ({bench.bench_size})", bench))
        x_name = next((key for _, _, key in points if key), "problem size") if numeric else "benchmark"
        for label, pts in sorted(series.items()):
            if numeric:
                pts.sort(key=lambda p: p[0])
            xs = [p[0] for p in pts]
            suffix = f" [{label}]" if label else ""
            medians = [b.median for _, b in pts]
            ax.plot(xs, medians, "o-", label=f"ours (median){suffix}")
            baseline = [as_float(b.extra_info.get("baseline_s")) for _, b in pts]
            if any(v is not None for v in baseline):
                name = next(
                    (str(b.extra_info["baseline"]) for _, b in pts if b.extra_info.get("baseline")),
                    "baseline",
                )
                ax.plot(xs, baseline, "s--", label=f"{name}{suffix}")
                to_end = [baseline_to_end(b) for _, b in pts]
                if any(v is not None for v in to_end):
                    ax.plot(
                        xs, to_end, "s:", markerfacecolor="none", label=f"{name}, to its end (estimated){suffix}"
                    )
            floor = [floor_seconds(b) for _, b in pts]
            if any(v is not None for v in floor):
                ax.plot(xs, floor, "k:", marker="_", label=f"physical floor{suffix}")
        values = [
            v
            for b, _, _ in points
            for v in (
                b.median,
                as_float(b.extra_info.get("baseline_s")),
                baseline_to_end(b),
                floor_seconds(b),
            )
            if v is not None
        ]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)  # linear: start at zero so a small difference does not look large
        xs_all = [x for _, x, _ in points if x is not None]
        if numeric and xs_all and min(xs_all) > 0 and len(set(xs_all)) > 1 and max(xs_all) / min(xs_all) > 20:
            ax.set_xscale("log")
        if not numeric:
            ax.tick_params(axis="x", labelrotation=20)
        ax.set_xlabel(x_name)
        ax.set_ylabel("seconds")
        ax.set_title(function.rsplit("::", 1)[-1], fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90, metadata={"Software": None})
    finally:
        plt.close(fig)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# extra_info keys that have a column of their own, or are provenance rather than a result.
_SHOWN = frozenset(
    {"ratio", "target", "baseline", "floor_s", "baseline_s", "measured_at", "commit", "versions"}
    | {"device", "device_name", "device_slug", "device_kind", "bench_size"}
)


def _other(bench: Bench, limit: int = 5) -> str:
    """The benchmark's other recorded figures (``gbps=41.2, peak_mb=512``), numbers only."""
    parts = []
    for key, value in bench.extra_info.items():
        number = as_float(value)
        if key in _SHOWN or key.endswith("_floor_s") or number is None:
            continue
        parts.append(f"{key}={number:.4g}")
    return ", ".join(parts[:limit]) or "-"


def _verdict(bench: Bench) -> str:
    if bench.target is None:
        return ""
    if bench.ratio is None:
        return "no ratio"
    return "meets target" if bench.ratio >= bench.target else "**below target**"


def _device_header(slug: str, items: Iterable[Saved]) -> list[str]:
    items = list(items)
    names = sorted(
        {str(s.bench.extra_info.get("device_name")) for s in items if s.bench.extra_info.get("device_name")}
    )
    dates = sorted(
        str(s.bench.extra_info.get("measured_at")) for s in items if s.bench.extra_info.get("measured_at")
    )
    lines = [f"## {slug}", ""]
    if names:
        lines.append(f"Device: {', '.join(names)}.")
    if dates:
        lines.append(f"Measured {dates[0][:10]} to {dates[-1][:10]}.")
    return [*lines, ""]


def write_report(results_dir: Path) -> tuple[Path, list[Path]]:
    """Regenerate ``results_dir/README.md`` and ``results_dir/<device>/plots/*.png``. Returns the
    README and the PNGs written."""
    saved = load_saved(results_dir)
    lines = [
        "# Benchmark results",
        "",
        "Generated by `uv run python bench/run.py --report` from the saved baselines in this folder",
        "(`<device>/<package>.json`, pytest-benchmark JSON); do not edit by hand. Ratio is the in-run",
        "baseline's time over ours (higher is better), target the minimum its issue asks for. See",
        "`bench/README.md` for how to run, save and compare.",
        "",
    ]
    pngs: list[Path] = []
    if not saved:
        lines += ["No saved baselines yet: run `uv run python bench/run.py --save --report`.", ""]
    for slug, items in saved.items():
        plots_dir = results_dir / slug / PLOTS
        if plots_dir.is_dir():
            for old in plots_dir.glob("*.png"):
                old.unlink()
        lines += _device_header(slug, items)
        lines += [
            "| package | benchmark | size | median | ratio | target | baseline | verdict | vs floor | other figures | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_function: dict[tuple[str, str], list[Bench]] = defaultdict(list)
        for s in sorted(items, key=lambda s: (s.package, s.bench.fullname, s.bench.bench_size)):
            b = s.bench
            floor = floor_seconds(b)
            vs_floor = f"{b.median / floor:.2f}x" if (floor and b.median) else "-"
            lines.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (
                        s.package,
                        b.name,
                        b.bench_size,
                        format_seconds(b.median),
                        _fmt(b.ratio),
                        _fmt(b.target),
                        b.extra_info.get("baseline", "-"),
                        _verdict(b),
                        vs_floor,
                        _other(b),
                        b.extra_info.get("commit", "-"),
                    )
                )
                + " |"
            )
            by_function[(s.package, b.function)].append(b)
        lines.append("")
        for (_package, function), group in sorted(by_function.items()):
            if not any(b.median is not None for b in group):
                continue
            png = plots_dir / plot_name(function)
            _plot_function(function, group, png)
            pngs.append(png)
            rel = png.relative_to(results_dir).as_posix()
            lines += [f"### {function}", "", f"![{function}]({rel})", ""]
    readme = results_dir / "README.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(readme)
    return readme, pngs
