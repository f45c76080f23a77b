"""The run-level report: what each stage did, the training curve, and the metric table."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from genrec_core import atomic_write_text
from genrec_pipeline._config import RunConfig
from genrec_pipeline.stages import Artifact

HEADLINES: dict[str, tuple[str, ...]] = {
    "next_poi": ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr"),
    "seqrec": ("ndcg@1", "ndcg@5", "ndcg@10", "hr@10", "hr@20", "sampled_ndcg@10", "sampled_hr@10"),
    "ctr": ("auc", "n"),
}


def _losses(log_path: Path) -> tuple[list[int], list[float], list[tuple[int, float]]]:
    steps, losses, evals = [], [], []
    if not log_path.is_file():
        return steps, losses, evals
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row and "step" in row:
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
        if "eval_loss" in row and "step" in row:
            evals.append((int(row["step"]), float(row["eval_loss"])))
    return steps, losses, evals


def plot_training_curve(log_path: Path, out: Path) -> Path | None:
    """Training (and evaluation) loss against step, from the trainer's JSONL log."""
    steps, losses, evals = _losses(log_path)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, label="train loss", color="tab:blue")
    if evals:
        ax.plot(
            [s for s, _ in evals], [v for _, v in evals], "o-", label="validation loss", color="tab:orange"
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title("Fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metric_table(metrics: Mapping[str, Mapping[str, Any]], task: str = "next_poi") -> list[list[str]]:
    headline = HEADLINES.get(task, HEADLINES["next_poi"])
    rows = [["system", *headline]]
    for system, values in metrics.items():
        rows.append([system, *(_fmt(values.get(m, "")) for m in headline)])
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def verdict(metrics: Mapping[str, Mapping[str, Any]], model: str = "model") -> str | None:
    """One plain sentence: does the fine-tuned model beat the popularity baseline on acc@1?"""
    if model not in metrics:
        return None
    pop = next((s for s in metrics if "popular" in s), None)
    if pop is None:
        return None
    ours, base = metrics[model].get("acc@1"), metrics[pop].get("acc@1")
    if ours is None or base is None:
        return None
    if ours > base:
        return f"The fine-tuned model beats the {pop} baseline on acc@1 ({ours:.4f} vs {base:.4f})."
    if ours == base:
        return f"The fine-tuned model ties the {pop} baseline on acc@1 ({ours:.4f})."
    return f"The fine-tuned model does NOT beat the {pop} baseline on acc@1 ({ours:.4f} vs {base:.4f})."


def write_run_report(
    config: RunConfig,
    run_dir: Path,
    artifacts: Mapping[str, Artifact],
    seconds: Mapping[str, float],
    reused: Collection[str] = (),
) -> tuple[Path, str]:
    """Write ``<run_dir>/report.md`` (and the training-curve PNG); return it and a text summary."""
    lines_md = [f"# genrec run `{config.name}`", "", f"Config: `{config.source}`", ""]
    lines_txt = [f"genrec run '{config.name}'  ({run_dir})"]
    stage_rows = [["stage", "seconds", "output", "summary"]]
    for stage, art in artifacts.items():
        brief = ", ".join(f"{k}={v}" for k, v in art.summary.items() if not isinstance(v, dict | list))
        if stage in reused:
            took = "cached"
        elif stage in seconds:
            took = f"{seconds[stage]:.1f}"
        else:
            took = "-"
        stage_rows.append([stage, took, str(art.path), brief])
    lines_md += ["## Stages", "", _md_table(stage_rows), ""]
    lines_txt += ["", _text_table([[*r[:2], r[3][:90]] for r in stage_rows])]

    train = artifacts.get("train")
    if train is not None and "log" in train.files:
        png = plot_training_curve(train["log"], run_dir / "training_loss.png")
        first, final = train.summary.get("first_loss"), train.summary.get("final_loss")
        if png is not None:
            lines_md += ["## Training", "", f"![training loss]({png.name})", ""]
        if first is not None and final is not None:
            trend = "fell" if final < first else "did not fall"
            sentence = (
                f"Training loss {trend}: {first:.4f} at the first logged step, {final:.4f} at the last."
            )
            lines_md += [sentence, ""]
            lines_txt += ["", sentence]

    evaluation = artifacts.get("evaluate")
    if evaluation is not None and "metrics" in evaluation.files and evaluation["metrics"].is_file():
        metrics = json.loads(evaluation["metrics"].read_text(encoding="utf-8"))
        systems = metrics.get("systems", metrics)
        systems = {k: v for k, v in systems.items() if isinstance(v, Mapping)}
        task = str(evaluation.summary.get("task", "next_poi"))
        rows = metric_table(systems, task)
        split = config["evaluate"]["split"]
        lines_md += [f"## {task} metrics ({split} split)", "", _md_table(rows), ""]
        lines_txt += ["", f"{task} metrics on the {split} split:", _text_table(rows)]
        said = verdict(systems) if task == "next_poi" else None
        if said:
            lines_md += [said, ""]
            lines_txt += ["", said]
        if "report" in evaluation.files:
            lines_md += [f"Full evaluation report: `{evaluation['report']}`", ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines_md) + "\n")
    lines_txt += ["", f"report: {report}"]
    return report, "\n".join(lines_txt)
