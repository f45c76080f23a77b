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


def _cell(values: Mapping[str, Any], metric: str) -> str:
    """``0.3100 [0.2700, 0.3500]``: the value and its 95% interval when metrics.json has one."""
    value = values.get(metric, "")
    ci = values.get("ci", {}).get(metric) if isinstance(values.get("ci"), Mapping) else None
    if isinstance(value, float) and isinstance(ci, Mapping) and "low" in ci and "high" in ci:
        return f"{value:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"
    return _fmt(value)


def metric_table(metrics: Mapping[str, Mapping[str, Any]], task: str = "next_poi") -> list[list[str]]:
    """One row per system: each headline metric with its 95% bootstrap interval, then ``n``."""
    headline = [m for m in HEADLINES.get(task, HEADLINES["next_poi"]) if m != "n"]
    present = [m for m in headline if any(m in v for v in metrics.values())] or headline
    rows = [["system", *present, "n"]]
    for system, values in metrics.items():
        rows.append([system, *(_cell(values, m) for m in present), _fmt(values.get("n", ""))])
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


#: The metric each task's verdicts are stated on (the evaluator's headline metric).
VERDICT_METRIC = {"next_poi": "acc@1", "seqrec": "ndcg@10", "ctr": "auc"}


def _p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def verdicts(metrics: Mapping[str, Mapping[str, Any]], task: str = "next_poi", model: str = "model") -> list[str]:
    """One sentence per baseline from the evaluator's paired test of the model against it on the
    task's headline metric (``metrics[model]["vs"][baseline][metric]``): the verdict (``beats``, ``is
    beaten by``, ``cannot be told apart from``, at p < 0.05), both values, the difference with its
    interval, and p. Raw numbers alone are never compared: a difference inside the noise is a tie."""
    if model not in metrics:
        return []
    metric = VERDICT_METRIC.get(task, "acc@1")
    if task == "seqrec" and metric not in metrics[model] and "sampled_ndcg@10" in metrics[model]:
        metric = "sampled_ndcg@10"
    out = []
    for baseline, tests in (metrics[model].get("vs") or {}).items():
        test = tests.get(metric) if isinstance(tests, Mapping) else None
        if not isinstance(test, Mapping) or "verdict" not in test:
            continue
        ours, theirs = metrics[model].get(metric), metrics.get(baseline, {}).get(metric)
        values = f"{ours:.4f} vs {theirs:.4f}, " if isinstance(ours, float) and isinstance(theirs, float) else ""
        diff = ""
        if all(isinstance(test.get(k), float | int) for k in ("diff", "low", "high")):
            diff = f"difference {test['diff']:+.4f} [{test['low']:+.4f}, {test['high']:+.4f}], "
        p = _p(float(test["p"])) if isinstance(test.get("p"), float | int) else "p unknown"
        out.append(f"The fine-tuned model {test['verdict']} {baseline} on {metric} ({values}{diff}{p}, "
                   f"{test.get('test', 'paired test')}, n={test.get('n', metrics[model].get('n', '?'))}).")  # fmt: skip
    return out


def verdict(metrics: Mapping[str, Mapping[str, Any]], model: str = "model") -> str | None:
    """The sentence on the popularity baseline (next-POI), from the paired test."""
    lines = verdicts(metrics, "next_poi", model)
    return next((line for line in lines if "popular" in line), lines[0] if lines else None)


def protocol_lines(run: Mapping[str, Any], systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a reader needs to weigh the numbers, from the evaluation's ``run.json`` (``protocol``):
    which protocol, whether the full split or a subset was scored, the share of answers already in the
    prompt's history (with acc@1 on each side), and the model's invalid-output rate."""
    proto = run.get("protocol") or {}
    lines = []
    name = proto.get("name")
    if name:
        lines.append(f"Protocol: {name}.")
    if "scored" in proto:
        lines.append(f"Scored {proto['scored']}" + ("." if proto.get("full_split") else " (not the full split)."))
    seen = proto.get("answer_in_history")
    if isinstance(seen, Mapping) and "share" in seen:
        line = (f"Answer already in the prompt's history: {seen['share']:.1%} of records "
                f"({seen.get('n_in', '?')} in, {seen.get('n_out', '?')} out)")  # fmt: skip
        acc = (seen.get("acc@1") or {}).get("model")
        if isinstance(acc, Mapping) and acc:
            parts = [f"{g} {v:.4f}" for g, v in acc.items() if isinstance(v, float | int)]
            line += "; model acc@1 " + ", ".join(parts) if parts else ""
        lines.append(line + ".")
    invalid = proto.get("invalid_rate", systems.get("model", {}).get("invalid_rate"))
    if isinstance(invalid, float | int):
        lines.append(f"Invalid model outputs: {invalid:.1%}.")
    return lines


def profile_lines(profiles: Mapping[str, Any] | None, records: Mapping[str, Any] | None) -> list[str]:
    """The profile quality block: valid / repaired / failed counts, the valid rate and what
    ``genrec_profiler.profile_stats`` measured, how many records fell back to the generic system
    prompt, and a warning line when fewer than 90% of the profiles are valid as written."""
    lines: list[str] = []
    if profiles:
        quality = profiles.get("quality") or {}
        status = quality.get("status") or {k: profiles.get(k, 0) for k in ("ok", "repaired", "failed")}
        total = sum(int(v) for v in status.values()) or int(profiles.get("users", 0) or 0)
        valid = quality.get("valid_rate")
        if valid is None and total:
            valid = int(status.get("ok", 0)) / total
        head = f"Profiles: {total} users, valid {status.get('ok', 0)}, repaired {status.get('repaired', 0)}, " \
               f"failed {status.get('failed', 0)}"
        if isinstance(valid, float | int):
            head += f" (valid as written: {valid:.0%})"
        lines.append(head + ".")
        extra = []
        if isinstance(quality.get("copied"), float | int):
            extra.append(f"copied from the prompt {quality['copied']:.0%}")
        if isinstance(quality.get("top3_agreement"), float | int):
            extra.append(f"preferences naming a top-3 category {quality['top3_agreement']:.0%}")
        if extra:
            lines.append("Profile quality: " + ", ".join(extra) + ".")
        warnings = list(quality.get("warnings") or [])
        if not warnings and isinstance(valid, float | int) and total and valid < 0.9:
            warnings.append(f"WARNING: only {valid:.0%} of profiles are valid as the model wrote them")
        lines += warnings
    generic = (records or {}).get("generic_prompt")
    if isinstance(generic, int):
        lines.append(f"Records with the generic system prompt (no profile for their user): {generic}.")
    return lines


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

    profile_block = profile_lines(
        artifacts["profiles"].summary if "profiles" in artifacts else None,
        artifacts["records"].summary if "records" in artifacts else None,
    )
    if profile_block:
        lines_md += ["## Profiles", "", *[f"- {line}" for line in profile_block], ""]
        lines_txt += ["", *profile_block]

    evaluation = artifacts.get("evaluate")
    if evaluation is not None and "metrics" in evaluation.files and evaluation["metrics"].is_file():
        metrics = json.loads(evaluation["metrics"].read_text(encoding="utf-8"))
        systems = metrics.get("systems", metrics)
        systems = {k: v for k, v in systems.items() if isinstance(v, Mapping)}
        task = str(evaluation.summary.get("task", "next_poi"))
        rows = metric_table(systems, task)
        split = config["evaluate"]["split"]
        lines_md += [f"## {task} metrics ({split} split, 95% bootstrap intervals)", "", _md_table(rows), ""]
        lines_txt += ["", f"{task} metrics on the {split} split (95% bootstrap intervals):", _text_table(rows)]
        said = verdicts(systems, task)
        if said:
            lines_md += [*[f"- {line}" for line in said], ""]
            lines_txt += ["", *said]
        run_json = evaluation.files.get("run")
        if run_json is not None and Path(run_json).is_file():
            flags = protocol_lines(json.loads(Path(run_json).read_text(encoding="utf-8")), systems)
            if flags:
                lines_md += ["### Protocol", "", *[f"- {line}" for line in flags], ""]
                lines_txt += ["", *flags]
        if "report" in evaluation.files:
            lines_md += [f"Full evaluation report: `{evaluation['report']}`", ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines_md) + "\n")
    lines_txt += ["", f"report: {report}"]
    return report, "\n".join(lines_txt)
