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
from genrec_evaluator._analysis import HISTORY_GROUPS, LENGTH_GROUPS, USER_GROUPS, cross_city_matrix
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._result import EvaluationResult
from genrec_evaluator._stats import format_p, summary_sentences

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


def _errors(values: Sequence[float], cis: Sequence[Mapping[str, float] | None]) -> np.ndarray | None:
    """Asymmetric error bars (2, k) from intervals; ``None`` when no interval is known."""
    if not any(cis):
        return None
    low = [v - c["low"] if c and c.get("low") is not None else 0.0 for v, c in zip(values, cis)]
    high = [c["high"] - v if c and c.get("high") is not None else 0.0 for v, c in zip(values, cis)]
    # Float round-off can put a point a hair outside its own interval; bars cannot be negative.
    return np.clip(np.array([low, high], dtype=float), 0.0, None)


def plot_systems(metrics: Mapping[str, Mapping[str, Any]], keys: Sequence[str], path: Path) -> Path:
    """Grouped bars: each metric in ``keys`` for each system (model against baselines), with the
    interval under ``ci`` as error bars and the record count in the legend."""
    plt = _figure()
    systems = list(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(systems)) / 2), 4))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(keys))
    for i, s in enumerate(systems):
        values = [float(metrics[s].get(k, 0.0) or 0.0) for k in keys]
        cis = [metrics[s].get("ci", {}).get(k) for k in keys]
        label = f"{s} (n={metrics[s]['n']})" if "n" in metrics[s] else s
        ax.bar(x + i * width, values, width, label=label, yerr=_errors(values, cis), capsize=2)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, keys)
    ax.set_ylabel("value (bars: 95% interval)")
    ax.set_title("model against baselines")
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def group_tick_labels(metrics: Mapping[str, Mapping[str, Any]], key: str, order: Sequence[str]) -> list[str]:
    """``"short (n=9)"``: each group with its record count (the same records for every system)."""
    labels = []
    for g in order:
        n = next((m[key][g]["n"] for m in metrics.values() if g in m.get(key, {})), 0)
        labels.append(f"{g} (n={n})")
    return labels


def plot_groups(
    metrics: Mapping[str, Mapping[str, Any]], key: str, order: Sequence[str], metric: str, path: Path
) -> Path | None:
    """Grouped bars: ``metric`` per group (``key`` = ``by_user_activity`` / ``by_length`` / ``by_history``)
    per system, with intervals as error bars and each group's n in its label."""
    systems = [s for s in metrics if key in metrics[s]]
    if not systems:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(systems)
    x = np.arange(len(order))
    for i, s in enumerate(systems):
        groups = metrics[s][key]
        values = [float(groups.get(g, {}).get(metric, 0.0)) for g in order]
        cis = [groups.get(g, {}).get("ci", {}).get(metric) for g in order]
        ax.bar(x + i * width, values, width, label=s, yerr=_errors(values, cis), capsize=2)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, group_tick_labels(metrics, key, order))
    ax.set_ylabel(f"{metric} (bars: 95% interval)")
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


PRIMARY = {"next_poi": "acc@1", "seqrec": "ndcg@10", "ctr": "auc"}
GROUP_SECTIONS = (
    ("by_user_activity", USER_GROUPS, "user_activity.png", "By user activity (thirds of users by train trajectories)"),
    ("by_length", LENGTH_GROUPS, "trajectory_length.png", "By trajectory length (thirds of test trajectories)"),
    ("by_history", HISTORY_GROUPS, "answer_in_history.png", "By whether the answer POI already appears in the prompt"),
)


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
        images.append(plot_systems(result.metrics, main, out / "plots" / "systems.png"))
        for key, order, name, _ in GROUP_SECTIONS:
            metric = "acc@1" if result.task == "next_poi" else main[0]
            img = plot_groups(result.metrics, key, order, metric, out / "plots" / name)
            if img is not None:
                images.append(img)
    atomic_write_text(out / "report.md", _report_md(result, keys, images, out))
    log.info("wrote evaluation to %s", out)
    return out


def _with_ci(m: Mapping[str, Any], key: str) -> str:
    v = m.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "" if v is None else str(v)
    ci = m.get("ci", {}).get(key)
    if isinstance(v, int) and not ci:
        return str(v)
    text = f"{v:.4f}"
    if ci and ci.get("low") is not None and np.isfinite(ci["low"]):
        text += f" [{ci['low']:.4f}, {ci['high']:.4f}]"
    return text


def _protocol_lines(result: EvaluationResult) -> list[str]:
    p = result.meta.get("protocol") or {}
    lines = []
    if p.get("name") == "genup":
        lines.append(
            "- Protocol genup: GenUP's eval_next_poi.py (its llama_prompt cut before the answer, digits-only "
            "answers compared as strings) and its analyses (user thirds over every train user, length groups "
            "by value)."
        )
    if p.get("description") and p.get("name") != "genup":
        lines.append(f"- Protocol {p['name']}: {p['description']}")
    if p.get("generation"):
        g = p["generation"]
        # Beam search (bigrec, goracs) draws nothing, so no seed is part of its decoding.
        seeded = "" if p.get("name") in ("bigrec", "goracs") else f" (seed {result.meta.get('config', {}).get('seed', 0)} + record index)"
        lines.append("- Decoding: " + ", ".join(f"{k} {v}" for k, v in g.items()) + seeded + ".")
    if "scored" in p:
        lines.append(f"- Scored: {p['scored']}.")
    u = p.get("uncertainty")
    if u:
        lines.append(
            f"- Intervals: {u['level']:.0%} {u['method']} ({u['n_boot']} resamples, seed {u['seed']}), shown as "
            "`value [low, high]`. Comparisons are paired on the same records: exact McNemar for hit rates and "
            "accuracy, a sign-flip permutation test for NDCG and MRR, DeLong for AUC; two-sided, alpha = 0.05."
        )
    h = p.get("answer_in_history")
    if h:
        acc = h.get("acc@1", {}).get("model")
        tail = ""
        if acc:
            parts = [f"{acc[g]:.4f} {g}" for g in HISTORY_GROUPS if acc.get(g) is not None]
            tail = f" Model acc@1: {', '.join(parts)}."
        lines.append(
            f"- Answer already in the prompt's history: {h['share']:.1%} of records ({h['n_in']} of "
            f"{h['n_in'] + h['n_out']}; read from {h['source']}).{tail}"
        )
    if "invalid_rate" in p and result.meta.get("mode") != "ranked":
        lines.append(f"- Invalid outputs (no parseable answer, counted as misses): {p['invalid_rate']:.1%} of records.")
    return lines


def _report_md(result: EvaluationResult, keys: Sequence[str], images: Sequence[Path], out: Path) -> str:
    lines = [f"# Evaluation: {result.task}", ""]
    n = next((m.get("n") for m in result.metrics.values() if "n" in m), None)
    lines.append(f"{n} records; systems: {', '.join(result.metrics)}. ")
    if "model" in result.meta:
        adapter = f", adapter `{result.meta['adapter']}`" if result.meta.get("adapter") else ""
        mode = f", mode {result.meta['mode']}" if result.meta.get("mode") else ""
        lines.append(f"Model: `{result.meta['model']}`{adapter}{mode}.")
    protocol = _protocol_lines(result)
    if protocol:
        lines += ["", "## Protocol", "", *protocol]
    primary = PRIMARY.get(result.task, "acc@1")
    level = (result.meta.get("protocol") or {}).get("uncertainty", {}).get("level", 0.95)
    summary = summary_sentences(result.metrics, primary, level=level)
    if summary:
        lines += ["", "## Summary", "", *summary]
    lines += ["", "## Overall", ""]
    shown = [k for k in keys if k not in ("invalid", "invalid_rate")]
    extra = [k for k in ("invalid_rate",) if k in keys]
    rows = [[s, m.get("n", ""), *[_with_ci(m, k) for k in shown], *[_fmt(m.get(k, "")) for k in extra]]
            for s, m in result.metrics.items()]
    lines += [_markdown_table(["system", "n", *shown, *extra], rows), ""]
    vs = result.metrics.get("model", {}).get("vs", {})
    if vs:
        lines += ["## Model against each baseline (paired, same records)", "",
                  "difference model - baseline [95% interval], two-sided p", ""]
        metrics_vs = [k for k in shown if any(k in c for c in vs.values())]
        rows = [[b, *[(f"{c[k]['diff']:+.4f} [{c[k]['low']:+.4f}, {c[k]['high']:+.4f}], {format_p(c[k]['p'])}" if k in c else "")
                      for k in metrics_vs]] for b, c in vs.items()]
        lines += [_markdown_table(["baseline", *metrics_vs], rows), ""]
    metric = "acc@1" if result.task == "next_poi" else primary
    for key, groups, _, title in GROUP_SECTIONS:
        systems = [s for s in result.metrics if key in result.metrics[s]]
        if not systems:
            continue
        lines += [f"## {title}", "", f"{metric} [95% interval]", ""]
        header = ["system", *group_tick_labels(result.metrics, key, groups)]
        rows = [[s, *[_with_ci(result.metrics[s][key].get(g, {}), metric) for g in groups]] for s in systems]
        lines += [_markdown_table(header, rows), ""]
    systems = [s for s in result.metrics if "by_category" in result.metrics[s]]
    if systems:
        first = result.metrics[systems[0]]["by_category"]
        top = sorted(first, key=lambda c: -first[c]["n"])[:15]
        lines += ["## By target category (15 most frequent), acc@1 [95% interval]", ""]
        rows = [[c, first[c]["n"], *[_with_ci(result.metrics[s]["by_category"].get(c, {}), "acc@1") for s in systems]] for c in top]
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
