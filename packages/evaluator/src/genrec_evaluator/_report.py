"""Writing an evaluation to disk (predictions, metrics.json, report.md, PNG plots) and comparing runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_core import (
    PREDICTIONS,
    atomic_write,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    validate_metrics,
)
from genrec_evaluator._analysis import LENGTH_GROUPS, USER_GROUPS, cross_city_matrix
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._result import EvaluationResult

log = logging.getLogger(__name__)

HEADLINE = {
    "next_poi": ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr"),
    "seqrec": ("ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "hr@1", "hr@5", "hr@10", "hr@20"),
    "ctr": ("auc", "accuracy"),
}


def _headline(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for m in metrics.values():
        for k, v in m.items():
            if isinstance(v, int | float) and k not in keys:
                keys.append(k)
    return keys


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _save_png(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_systems(metrics: Mapping[str, Mapping[str, Any]], keys: Sequence[str], path: Path) -> Path:
    """Grouped bars: each metric in ``keys`` for each system (model against baselines)."""
    plt = _figure()
    systems = list(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(systems)) / 2), 4))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(keys))
    for i, s in enumerate(systems):
        ax.bar(x + i * width, [float(metrics[s].get(k, 0.0)) for k in keys], width, label=s)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, keys)
    ax.set_ylabel("value")
    ax.set_title("model against baselines")
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_groups(
    metrics: Mapping[str, Mapping[str, Any]], key: str, order: Sequence[str], metric: str, path: Path
) -> Path | None:
    """Grouped bars: ``metric`` per group (``key`` = ``by_user_activity`` / ``by_length``) per system."""
    systems = [s for s in metrics if key in metrics[s]]
    if not systems:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(systems)
    x = np.arange(len(order))
    for i, s in enumerate(systems):
        groups = metrics[s][key]
        ax.bar(x + i * width, [float(groups.get(g, {}).get(metric, 0.0)) for g in order], width, label=s)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, list(order))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} {key.replace('_', ' ')}")
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_cross_city(matrix: pl.DataFrame, path: str | Path, *, metric: str = "acc@1") -> Path:
    """Heat map of a :func:`cross_city_matrix` (rows: training city, columns: evaluation city)."""
    plt = _figure()
    cols = [c for c in matrix.columns if c != "train_city"]
    values = matrix.select(cols).to_numpy().astype(float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 1.2 + 0.9 * matrix.height))
    im = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(matrix.height), matrix["train_city"].to_list())
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    return _save_png(fig, Path(path))


def _flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s: {k: v for k, v in m.items() if not isinstance(v, dict)} for s, m in metrics.items()}


def write_report(result: EvaluationResult, out_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``result`` under ``out_dir``: ``predictions/<system>.parquet`` (and ``predictions.parquet``
    for the model), ``metrics.json``, ``run.json``, ``report.md`` and PNG plots. Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    validate_metrics(result.metrics, source=out / "metrics.json")
    predictions = {
        # CTR predictions are probabilities (p_yes, label), not the ranked lists the contract describes.
        system: frame if result.task == "ctr" else PREDICTIONS.validate(frame, source=f"predictions of {system}")
        for system, frame in result.predictions.items()
    }
    for system, frame in predictions.items():
        atomic_write_parquet(out / "predictions" / f"{system}.parquet", frame)
    if "model" in predictions:
        atomic_write_parquet(out / "predictions.parquet", predictions["model"])
    atomic_write_json(out / "metrics.json", result.metrics)  # in insertion order: the model first
    atomic_write_json(
        out / "run.json", {"task": result.task, "seconds": result.seconds, **result.meta}, sort_keys=True
    )
    flat = _flat_metrics(result.metrics)
    keys = [k for k in _headline(flat) if k != "n"]
    images: list[Path] = []
    if plots and flat:
        main = [k for k in HEADLINE.get(result.task, ()) if any(k in m for m in flat.values())] or keys
        images.append(plot_systems(flat, main, out / "plots" / "systems.png"))
        for key, order, name in (
            ("by_user_activity", USER_GROUPS, "user_activity.png"),
            ("by_length", LENGTH_GROUPS, "trajectory_length.png"),
        ):
            metric = "acc@1" if result.task == "next_poi" else main[0]
            img = plot_groups(result.metrics, key, order, metric, out / "plots" / name)
            if img is not None:
                images.append(img)
    atomic_write_text(out / "report.md", _report_md(result, keys, images, out))
    log.info("wrote evaluation to %s", out)
    return out


def _report_md(result: EvaluationResult, keys: Sequence[str], images: Sequence[Path], out: Path) -> str:
    lines = [f"# Evaluation: {result.task}", ""]
    n = next((m.get("n") for m in result.metrics.values() if "n" in m), None)
    lines.append(f"{n} records; systems: {', '.join(result.metrics)}. ")
    if "model" in result.meta:
        adapter = f", adapter `{result.meta['adapter']}`" if result.meta.get("adapter") else ""
        mode = f", mode {result.meta['mode']}" if result.meta.get("mode") else ""
        lines.append(f"Model: `{result.meta['model']}`{adapter}{mode}.")
    lines += ["", "## Overall", ""]
    rows = [[s, *[m.get(k, "") for k in keys]] for s, m in _flat_metrics(result.metrics).items()]
    lines += [_markdown_table(["system", *keys], rows), ""]
    for key, title in (
        ("by_user_activity", "By user activity (thirds of users by train trajectories)"),
        ("by_length", "By trajectory length (thirds of test trajectories)"),
    ):
        systems = [s for s in result.metrics if key in result.metrics[s]]
        if not systems:
            continue
        groups = USER_GROUPS if key == "by_user_activity" else LENGTH_GROUPS
        lines += [f"## {title}", "", "acc@1 (records)", ""]
        header = ["system", *[f"{g}" for g in groups]]
        rows = [
            [s, *[f"{result.metrics[s][key].get(g, {}).get('acc@1', float('nan')):.4f} ({result.metrics[s][key].get(g, {}).get('n', 0)})" for g in groups]]
            for s in systems
        ]
        lines += [_markdown_table(header, rows), ""]
    systems = [s for s in result.metrics if "by_category" in result.metrics[s]]
    if systems:
        first = result.metrics[systems[0]]["by_category"]
        top = sorted(first, key=lambda c: -first[c]["n"])[:15]
        lines += ["## By target category (15 most frequent), acc@1", ""]
        rows = [[c, first[c]["n"], *[result.metrics[s]["by_category"].get(c, {}).get("acc@1", float("nan")) for s in systems]] for c in top]
        lines += [_markdown_table(["category", "n", *systems], rows), ""]
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images]
        lines.append("")
    return "\n".join(lines)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"run": name, "metrics": ..., **run.json}`` of a folder written by :func:`write_report`."""
    run = Path(run_dir)
    path = run / "metrics.json" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.json (is this an evaluation output folder?)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluatorError(f"{path}: not valid JSON: {exc}") from exc
    meta_path = path.parent / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {"run": path.parent.name, **meta, "metrics": metrics}


def compare_runs(run_dirs: Sequence[str | Path], *, metrics: Sequence[str] | None = None) -> pl.DataFrame:
    """Side-by-side table: one row per (run, system), one column per metric."""
    if not run_dirs:
        raise EvaluatorError("compare needs at least one run folder")
    runs = [read_run(r) for r in run_dirs]
    names = [r["run"] for r in runs]
    if len(set(names)) < len(names):  # same folder names in different places: use the full paths
        names = [str(Path(r)) for r in run_dirs]
    rows: list[dict[str, Any]] = []
    for name, run in zip(names, runs):
        for system, m in run["metrics"].items():
            rows.append({"run": name, "system": system, **{k: v for k, v in m.items() if isinstance(v, int | float)}})
    frame = pl.DataFrame(rows)
    if metrics is not None:
        missing = [m for m in metrics if m not in frame.columns]
        if missing:
            raise EvaluatorError(f"metric(s) {missing} not in any run; have {frame.columns[2:]}")
        frame = frame.select("run", "system", *metrics)
    return frame


def write_cross_city(run_dirs: Sequence[str | Path], out_dir: str | Path, *, metric: str = "acc@1", system: str = "model") -> pl.DataFrame:
    """Cross-city matrix and heat map from runs whose ``run.json`` names ``train_city`` and ``eval_city``."""
    runs = [read_run(r) for r in run_dirs]
    for path, run in zip(run_dirs, runs):
        for key in ("train_city", "eval_city"):
            if not run.get(key):
                raise EvaluatorError(f"{path}/run.json: field {key} is missing (pass --train-city/--eval-city)")
        if system not in run["metrics"]:
            raise EvaluatorError(f"{path}/metrics.json: no system {system!r}; have {list(run['metrics'])}")
    matrix = cross_city_matrix(runs, metric=metric, system=system)
    out = Path(out_dir)
    atomic_write_parquet(out / "cross_city.parquet", matrix)
    plot_cross_city(matrix, out / "cross_city.png", metric=metric)
    return matrix
