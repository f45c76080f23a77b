"""``genrec study STUDY``: one base config, a grid of variants, one table and one plot a reviewer can
check.

Every variant (and seed) is the base config plus overrides, run by the ordinary :func:`run`; the
variants keep the base's ``[run].name``, so the stage folders they have in common (keyed by content)
are computed once and shared. Each variant is then compared with its reference variant on the same
test records, from the per-record predictions the evaluate stage wrote, with the evaluator's paired
tests (exact McNemar for hit rates, sign-flip permutation for NDCG/MRR, DeLong for AUC); across seeds
the mean gets a Student-t interval and a paired t-test over seeds.
"""

from __future__ import annotations

import json
import math
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from genrec_core import atomic_write, atomic_write_json, atomic_write_parquet, atomic_write_text
from genrec_pipeline._config import STAGES, RunConfig, load_config
from genrec_pipeline._errors import PipelineError

HEADLINE = {"next_poi": "acc@1", "seqrec": "ndcg@10", "ctr": "auc"}
DEFAULT_METRICS = {
    "next_poi": ("acc@1", "acc@10", "ndcg@10", "mrr"),
    "seqrec": ("ndcg@10", "hr@10", "mrr"),
    "ctr": ("auc",),
}
LEVEL = 0.95
_RANK_METRIC = re.compile(r"^(acc|hr|ndcg)@([1-9][0-9]*)$|^mrr$")
_STUDY_KEYS = ("name", "base", "reference", "metrics", "seeds", "set", "system", "description", "n_boot", "seed")
_VARIANT_KEYS = ("name", "label", "set", "reference")

# -- the study file ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    label: str
    overrides: Mapping[str, Any]
    reference: str


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """A parsed study: the base config, the shared overrides, the variants and how they are compared."""

    name: str
    base: str
    variants: tuple[Variant, ...]
    reference: str
    metrics: tuple[str, ...] = ()  # empty: the task's defaults
    seeds: tuple[int | None, ...] = (None,)  # None: the base config's own [run].seed
    overrides: Mapping[str, Any] = field(default_factory=dict)
    system: str = "model"
    description: str = ""
    n_boot: int = 1000
    seed: int = 0
    source: str = "<dict>"


def _shipped_study(name: str) -> Path:
    return Path(str(resources.files("genrec_pipeline") / "configs" / "studies" / f"{name}.toml"))


def shipped_studies() -> dict[str, Path]:
    """The grid studies shipped with the package, by name (cross-city study files are left out)."""
    folder = Path(str(resources.files("genrec_pipeline") / "configs" / "studies"))
    out = {}
    for path in sorted(folder.glob("*.toml")):
        if "study" in tomllib.loads(path.read_text(encoding="utf-8")):
            out[path.stem] = path
    return out


def _flatten(where: str, value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys down to the leaves: ``{"profiles": {"enabled": false}}`` and
    ``{"profiles.enabled": false}`` mean the same, and a leaf override never replaces a whole table."""
    if not isinstance(value, Mapping):
        raise PipelineError(f"{where} must be a table of TABLE.KEY = value overrides, got {value!r}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(_flatten(where, item, dotted + "."))
        else:
            out[dotted] = item
    return out


def _literal(value: Any) -> str:
    """``value`` as the TOML text ``--set`` takes, so a variant's typed value arrives with its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_literal(v)}" for k, v in value.items()) + "}"
    raise PipelineError(f"cannot pass {value!r} ({type(value).__name__}) as a config value")


def _texts(values: Mapping[str, Any], *, raw_strings: bool = False) -> dict[str, str]:
    """Overrides as ``--set`` text. Study files hold typed values (a string is a string); a caller's
    strings are TOML text already (``'"a/b.csv"'``, ``'20'``), as ``load_config(overrides=...)`` takes."""
    return {k: v if raw_strings and isinstance(v, str) else _literal(v) for k, v in values.items()}


def read_study(study: str | Path | Mapping[str, Any]) -> StudySpec:
    """Parse and check a study: a TOML file, a shipped study name, or the same content as a dict."""
    base_dir: Path | None = None
    if isinstance(study, Mapping):
        data: Mapping[str, Any] = study
        where = "study"
    else:
        file = Path(study)
        if not file.is_file():
            shipped = _shipped_study(str(study))
            if not shipped.is_file():
                known = ", ".join(shipped_studies())
                raise PipelineError(f"study file does not exist: {study} (shipped studies: {known})")
            file = shipped
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise PipelineError(f"{file}: not valid TOML: {exc}") from exc
        where, base_dir = str(file), file.parent
    if "cross_city" in data:
        raise PipelineError(f"{where}: a [cross_city] study; run it with `genrec cross-city`")
    head = data.get("study", {k: v for k, v in data.items() if k != "variants"})
    if not isinstance(head, Mapping):
        raise PipelineError(f"{where}: [study] must be a table")
    unknown = sorted(set(head) - set(_STUDY_KEYS))
    if unknown:
        raise PipelineError(f"{where}: unknown key [study].{unknown[0]}; known keys: {', '.join(sorted(_STUDY_KEYS))}")
    extra = sorted(set(data) - {"study", "variants"}) if "study" in data else []
    if extra:
        raise PipelineError(f"{where}: unknown table [{extra[0]}]; a study has [study] and [[variants]]")
    base = head.get("base")
    if not isinstance(base, str) or not base:
        raise PipelineError(f"{where}: [study].base must name a run config (a shipped name or a path)")
    if base_dir is not None and (base_dir / base).is_file():
        base = str(base_dir / base)
    name = head.get("name", Path(where).stem if base_dir is not None else "study")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise PipelineError(f"{where}: [study].name must be a plain folder name, got {name!r}")
    reference = head.get("reference")
    rows = data.get("variants")
    if not isinstance(rows, list) or len(rows) < 2:
        raise PipelineError(f"{where}: a study needs at least two [[variants]]")
    variants: list[Variant] = []
    for i, row in enumerate(rows):
        at = f"{where}: [[variants]] #{i + 1}"
        if not isinstance(row, Mapping):
            raise PipelineError(f"{at} must be a table")
        bad = sorted(set(row) - set(_VARIANT_KEYS))
        if bad:
            raise PipelineError(f"{at}: unknown key {bad[0]}; known keys: {', '.join(_VARIANT_KEYS)}")
        vname = row.get("name")
        if not isinstance(vname, str) or not vname:
            raise PipelineError(f"{at}: needs a name")
        ref = row.get("reference", reference)
        if not isinstance(ref, str) or not ref:
            raise PipelineError(f"{at} ({vname}): no reference variant ([study].reference or the variant's reference)")
        overrides = _flatten(f"{at} ({vname}): set", row.get("set", {}))
        if "run.name" in overrides or "run.root" in overrides:
            raise PipelineError(f"{at} ({vname}): set run.name / run.root would stop the variants sharing stages")
        variants.append(Variant(name=vname, label=str(row.get("label", vname)), overrides=overrides, reference=ref))
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PipelineError(f"{where}: variant {dup[0]!r} is named twice")
    for v in variants:
        if v.reference not in names:
            raise PipelineError(f"{where}: variant {v.name}: reference {v.reference!r} is not a variant ({', '.join(names)})")
    if not isinstance(reference, str) or reference not in names:
        reference = variants[0].reference
    seeds_raw = head.get("seeds")
    if seeds_raw is None:
        seeds: tuple[int | None, ...] = (None,)
    elif (
        isinstance(seeds_raw, list) and seeds_raw and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds_raw)
        and len(set(seeds_raw)) == len(seeds_raw)
    ):
        seeds = tuple(seeds_raw)
    else:
        raise PipelineError(f"{where}: [study].seeds must be a list of distinct integers, got {seeds_raw!r}")
    metrics = head.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise PipelineError(f"{where}: [study].metrics must be a list of metric names, got {metrics!r}")
    n_boot, seed = head.get("n_boot", 1000), head.get("seed", 0)
    if not isinstance(n_boot, int) or n_boot < 1 or not isinstance(seed, int):
        raise PipelineError(f"{where}: [study].n_boot must be a positive integer and [study].seed an integer")
    return StudySpec(
        name=name, base=base, variants=tuple(variants), reference=reference, metrics=tuple(metrics), seeds=seeds,
        overrides=_flatten(f"{where}: [study].set", head.get("set", {})), system=str(head.get("system", "model")),
        description=str(head.get("description", "")), n_boot=n_boot, seed=seed, source=where,
    )


# -- statistics over per-record outcomes --------------------------------------------------------------


def _check_metric(metric: str, task: str, where: str) -> None:
    ok = metric == "auc" if task == "ctr" else bool(_RANK_METRIC.match(metric))
    if not ok:
        allowed = "auc" if task == "ctr" else "acc@K, hr@K, ndcg@K, mrr"
        raise PipelineError(f"{where}: metric {metric!r} is not one a {task} study can test ({allowed})")


def record_columns(predictions: Any, metrics: Sequence[str]) -> dict[str, Any]:
    """Per-record values whose means are ``metrics``, from a predictions table with ``target_rank``
    (1-based, null for a miss): hit indicators, NDCG gains (``1/log2(r+1)`` within k), ``1/r``."""
    import numpy as np

    r = predictions["target_rank"].cast(float).fill_null(float("inf")).to_numpy()
    out: dict[str, Any] = {}
    for m in metrics:
        if m == "mrr":
            out[m] = np.where(np.isfinite(r), 1.0 / r, 0.0)
            continue
        kind, k = m.split("@")
        if kind == "ndcg":
            out[m] = np.where(r <= int(k), 1.0 / np.log2(np.minimum(r, int(k)) + 1.0), 0.0)
        else:
            out[m] = (r <= int(k)).astype(np.float64)
    return out


def _t_two_sided(t: float, df: int) -> float:
    """Two-sided p of Student's t with ``df`` (integer) degrees of freedom, in closed form (no scipy):
    ``P(|T| < t)`` is a finite series in ``cos(theta)``, ``theta = atan(t / sqrt(df))``."""
    if not math.isfinite(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        acc, term = 0.0, 1.0
        if df > 1:
            acc = term = math.cos(theta)
            for j in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * j) / (2 * j + 1)
                acc += term
        inside = 2.0 / math.pi * (theta + s * acc)
    else:
        acc = term = 1.0
        for j in range(1, (df - 2) // 2 + 1):
            term *= c2 * (2 * j - 1) / (2 * j)
            acc += term
        inside = s * acc
    return float(min(1.0, max(0.0, 1.0 - inside)))


def t_quantile(level: float, df: int) -> float:
    """The two-sided ``level`` critical value of Student's t (bisection on :func:`_t_two_sided`)."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_two_sided(mid, df) > 1.0 - level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``values`` (one per seed)."""
    x = [float(v) for v in values]
    k = len(x)
    mean = sum(x) / k
    if k < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (k - 1))
    half = t_quantile(level, k - 1) * sd / math.sqrt(k)
    return mean, mean - half, mean + half


def paired_t(diffs: Sequence[float]) -> float:
    """Two-sided p of the paired t-test that per-seed differences are centred on zero."""
    d = [float(v) for v in diffs]
    k = len(d)
    mean = sum(d) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (k - 1)) if k > 1 else 0.0
    if sd <= 1e-15:
        return 1.0 if abs(mean) <= 1e-15 else 0.0
    return _t_two_sided(mean / (sd / math.sqrt(k)), k - 1)


def study_table(
    predictions: Mapping[tuple[str, int], Any],
    *,
    task: str,
    metrics: Sequence[str],
    reference: str | Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    study: str = "study",
) -> Any:
    """The study's table from each (variant, seed)'s predictions (polars frames with ``record_id`` and
    ``target_rank``, or ``p_yes`` and ``label`` for CTR): one row per variant, seed and metric, plus a
    mean-over-seeds row per variant and metric when there are several seeds.

    A seed row holds the metric on that run's records with its 95% percentile-bootstrap interval, and
    the paired comparison with the reference variant at the same seed on the records both scored
    (``diff`` = variant - reference, its paired bootstrap interval, ``p``, ``test``, ``verdict``). A mean
    row holds the mean over seeds with a Student-t interval, and a paired t-test over seeds.
    """
    import polars as pl

    import genrec_evaluator as ev

    refs = {v: reference for v, _ in predictions} if isinstance(reference, str) else dict(reference)
    labels = dict(labels or {})
    u = ev.Uncertainty(n_boot=n_boot, seed=seed)
    variants = list(dict.fromkeys(v for v, _ in predictions))
    seeds = sorted({s for _, s in predictions})
    rows: list[dict[str, Any]] = []
    for variant in variants:
        ref = refs.get(variant, "")
        for s in seeds:
            frame = predictions.get((variant, s))
            if frame is None:
                continue
            base = {"study": study, "variant": variant, "label": labels.get(variant, variant), "seed": s,
                    "kind": "seed", "reference": ref, "seeds": 1}  # fmt: skip
            own = _values(frame, task, metrics, u)
            other = predictions.get((ref, s)) if ref and ref != variant else None
            tests = _compare(frame, other, task, metrics, u) if other is not None else {}
            for i, m in enumerate(metrics):
                value, low, high, n = own[m]
                row = {**base, "metric": m, "headline": i == 0, "value": value, "low": low, "high": high, "n": n,
                       "interval": f"{LEVEL:.0%} percentile bootstrap over records ({n_boot} resamples)"}
                row.update(_comparison_fields(tests.get(m), variant == ref))
                rows.append(row)
    if len(seeds) > 1:
        seed_rows = [r for r in rows if r["kind"] == "seed"]
        for variant in variants:
            ref = refs.get(variant, "")
            for i, m in enumerate(metrics):
                mine = {r["seed"]: r for r in seed_rows if r["variant"] == variant and r["metric"] == m}
                if len(mine) < 2:
                    continue
                mean, low, high = t_interval([mine[s]["value"] for s in sorted(mine)])
                row = {"study": study, "variant": variant, "label": labels.get(variant, variant), "seed": None,
                       "kind": "mean", "reference": ref, "seeds": len(mine), "metric": m, "headline": i == 0,
                       "value": mean, "low": low, "high": high, "n": int(sum(r["n"] for r in mine.values())),
                       "interval": f"{LEVEL:.0%} Student-t over {len(mine)} seeds"}  # fmt: skip
                theirs = {r["seed"]: r for r in seed_rows if r["variant"] == ref and r["metric"] == m}
                common = sorted(set(mine) & set(theirs))
                if variant == ref:
                    row.update(_comparison_fields(None, True))
                elif len(common) >= 2:
                    diffs = [mine[s]["value"] - theirs[s]["value"] for s in common]
                    d, dlo, dhi = t_interval(diffs)
                    p = paired_t(diffs)
                    row.update(_comparison_fields(
                        {"diff": d, "low": dlo, "high": dhi, "p": p, "test": f"paired t over {len(common)} seeds",
                         "n": len(common), "verdict": ev.verdict(d, p)}, False))  # fmt: skip
                else:
                    row.update(_comparison_fields(None, False))
                rows.append(row)
    # Each variant's seeds, then its mean, next to each other; the variants in the study's order.
    order = {v: i for i, v in enumerate(variants)}
    rows.sort(key=lambda r: (order[r["variant"]], r["kind"] == "mean", r["seed"] or 0, list(metrics).index(r["metric"])))
    schema = {
        "study": pl.String, "variant": pl.String, "label": pl.String, "seed": pl.Int64, "kind": pl.String,
        "metric": pl.String, "headline": pl.Boolean, "value": pl.Float64, "low": pl.Float64, "high": pl.Float64,
        "n": pl.Int64, "seeds": pl.Int64, "interval": pl.String, "reference": pl.String, "diff": pl.Float64,
        "diff_low": pl.Float64, "diff_high": pl.Float64, "p": pl.Float64, "test": pl.String, "n_paired": pl.Int64,
        "wins": pl.Int64, "losses": pl.Int64, "verdict": pl.String,
    }  # fmt: skip
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def _values(frame: Any, task: str, metrics: Sequence[str], u: Any) -> dict[str, tuple[float, float, float, int]]:
    import numpy as np

    import genrec_evaluator as ev

    n = frame.height
    if task == "ctr":
        y, s = frame["label"].to_numpy(), frame["p_yes"].to_numpy()
        auc_ci = ev.auc_interval(y, s, u)
        value = ev.auc(y, s) if 0 < int(np.sum(y)) < y.size else float("nan")
        return {"auc": (value, auc_ci["low"], auc_ci["high"], n)}
    cols = record_columns(frame, metrics)
    ci, _ = ev.mean_intervals(cols, u)
    return {m: (float(np.mean(cols[m])), ci[m]["low"], ci[m]["high"], n) for m in metrics}


def _compare(a: Any, b: Any, task: str, metrics: Sequence[str], u: Any) -> dict[str, dict[str, Any]]:
    """Paired tests of ``a`` against ``b`` on the records both hold (joined on ``record_id``)."""
    import genrec_evaluator as ev

    joined = a.join(b, on="record_id", how="inner", suffix="_ref")
    if joined.height == 0:
        return {}
    if task == "ctr":
        out = ev.compare_auc(joined["label"].to_numpy(), joined["p_yes"].to_numpy(), joined["p_yes_ref"].to_numpy(), u)
        return {"auc": out}
    mine = record_columns(joined, metrics)
    theirs = record_columns(joined.select("record_id", target_rank="target_rank_ref"), metrics)
    return ev.compare_columns(mine, theirs, u)


def _comparison_fields(c: Mapping[str, Any] | None, is_reference: bool) -> dict[str, Any]:
    if is_reference:
        return {"verdict": "reference"}
    if c is None:
        return {"verdict": "not compared"}
    return {"diff": c["diff"], "diff_low": c["low"], "diff_high": c["high"], "p": c["p"], "test": c["test"],
            "n_paired": c["n"], "wins": c.get("wins"), "losses": c.get("losses"), "verdict": c["verdict"]}  # fmt: skip


# -- writing ------------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _row_name(row: Mapping[str, Any]) -> str:
    if row["kind"] == "mean":
        return f"{row['label']} (mean of {row['seeds']} seeds)"
    return f"{row['label']} (seed {row['seed']})" if row["seed"] is not None else str(row["label"])


def sentences(table: Any) -> list[str]:
    """One sentence per compared row of the headline metric (per mean over seeds when there are several
    seeds): who beats whom, by how much, how sure."""
    import genrec_evaluator as ev

    out = []
    rows = table.filter(table["headline"])
    if (rows["kind"] == "mean").any():  # several seeds: the per-seed verdicts stay in the table
        rows = rows.filter(rows["kind"] == "mean")
    for row in rows.iter_rows(named=True):
        if row["verdict"] in ("reference", "not compared"):
            continue
        ref = table.filter((table["variant"] == row["reference"]) & table["headline"])
        ref_label = ref["label"][0] if ref.height else row["reference"]
        out.append(
            f"{_row_name(row)} {row['verdict']} {ref_label} on {row['metric']}: difference {row['diff']:+.4f} "
            f"({LEVEL:.0%} CI {_num(row['diff_low'])} to {_num(row['diff_high'])}), {row['test']} "
            f"{ev.format_p(row['p'])}, n = {row['n_paired']}."
        )
    return out


def _markdown(spec: StudySpec, table: Any, plot: Path, runs: Sequence[Mapping[str, Any]], smoke: bool) -> str:
    lines = [f"# Study {spec.name}{' (smoke)' if smoke else ''}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    metrics = list(dict.fromkeys(table["metric"].to_list()))
    seeds = ", ".join("base" if s is None else str(s) for s in spec.seeds)
    lines += [
        f"Base config `{spec.base}`; reference `{spec.reference}`; seeds {seeds}; system `{spec.system}`.",
        f"Paired tests on the records both variants scored: exact McNemar for hit rates, sign-flip permutation for "
        f"NDCG/MRR, DeLong for AUC; across seeds a paired t-test. Verdicts at p < 0.05. Plot: `{plot.name}`.",
        "",
    ]
    said = sentences(table)
    if said:
        lines += [f"- {s}" for s in said] + [""]
    header = ["variant", "seed", "n", "value", f"{LEVEL:.0%} CI", "reference", "diff", "diff CI", "p", "test", "verdict"]
    for m in metrics:
        lines += [f"## {m}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table.filter(table["metric"] == m).iter_rows(named=True):
            seed = f"mean of {row['seeds']}" if row["kind"] == "mean" else ("-" if row["seed"] is None else str(row["seed"]))
            cells = [row["label"], seed, str(row["n"]), _num(row["value"]), f"[{_num(row['low'])}, {_num(row['high'])}]",
                     row["reference"] or "-", "-" if row["diff"] is None else f"{row['diff']:+.4f}",
                     "-" if row["diff"] is None else f"[{_num(row['diff_low'])}, {_num(row['diff_high'])}]",
                     _num(row["p"]), row["test"] or "-", row["verdict"]]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Runs", "", "| variant | seed | status | ran | reused | seconds | evaluate folder |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {'-' if r['seed'] is None else r['seed']} | {r['status']} | {', '.join(r['ran']) or '-'} | "
            f"{', '.join(r['reused']) or '-'} | {r['seconds']} | {r.get('evaluate') or r.get('error', '-')} |"
        )
    return "\n".join(lines) + "\n"


_COLOURS = {"reference": "#444444", "beats": "#1a7f37", "is beaten by": "#cf222e"}


def plot_study(table: Any, path: str | Path, *, title: str) -> Path:
    """Each variant's headline metric with its interval (one line per seed and per mean over seeds),
    ``n`` in the labels, coloured by its verdict against the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(table.filter(table["headline"]).iter_rows(named=True))
    metric = rows[0]["metric"] if rows else ""
    fig, ax = plt.subplots(figsize=(8.0, 1.0 + 0.42 * max(1, len(rows))))
    for y, row in enumerate(reversed(rows)):
        colour = _COLOURS.get(row["verdict"], "#8c959f")
        value, low, high = row["value"], row["low"], row["high"]
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            ax.errorbar([value], [y], xerr=[[max(0.0, value - low)], [max(0.0, high - value)]], fmt="o",
                        color=colour, capsize=3, markersize=5 if row["kind"] == "seed" else 7)  # fmt: skip
        else:
            ax.plot([value], [y], "o", color=colour)
    names = []
    for row in reversed(rows):
        if row["kind"] == "mean":
            names.append(f"{row['label']} (mean of {row['seeds']} seeds, n={row['n']})")
        else:
            names.append(f"{_row_name(row)} (n={row['n']})")
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_xlabel(f"{metric} ({LEVEL:.0%} interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in _COLOURS.items()]
    handles.append(plt.Line2D([], [], marker="o", ls="", color="#8c959f", label="cannot be told apart"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return out


# -- running ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    """A finished study: the table (polars), where it and the plot are, and each variant's run."""

    name: str
    table: Any
    table_path: Path
    markdown: Path
    plot: Path
    folder: Path
    runs: Mapping[tuple[str, int | None], Mapping[str, Any]]
    #: Stage executions per stage over the whole study (runs and resumes; reuses are not counted).
    executed: Mapping[str, int]
    failed: tuple[str, ...] = ()
    summary: str = ""


def _variant_configs(
    spec: StudySpec, overrides: Mapping[str, str], smoke: bool
) -> dict[tuple[str, int | None], RunConfig]:
    configs: dict[tuple[str, int | None], RunConfig] = {}
    for v in spec.variants:
        for s in spec.seeds:
            # Variant settings win over the caller's: the grid stays the grid whatever --set adds.
            merged = {**_texts(spec.overrides), **overrides, **_texts(v.overrides)}
            if s is not None:
                merged["run.seed"] = str(s)
            try:
                configs[(v.name, s)] = load_config(spec.base, overrides=merged, smoke=smoke)
            except PipelineError as exc:
                raise PipelineError(f"{spec.source}: variant {v.name}: {exc}") from exc
    return configs


def study(
    study: str | Path | Mapping[str, Any],
    *,
    smoke: bool = False,
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    progress: bool | None = False,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = print,
) -> StudyResult | None:
    """Run every variant of ``study`` (a study file, a shipped study name or a dict; see
    :func:`read_study`) through :func:`genrec_pipeline.run`, and write ``study.parquet``, ``study.md``
    and ``study.png`` under ``<root>/<study name>[-smoke]/``.

    ``overrides`` (dotted keys, as ``--set``; typed values or TOML text) apply to every variant, under
    the variant's own settings. ``smoke`` is ``genrec run --smoke`` for every variant. Every config is
    loaded and checked before anything runs. A variant that fails is reported and left out of the
    comparisons; the study still writes what the others give. ``dry_run``: print each variant's plan
    and how many stage executions the study needs, run nothing, return ``None``.
    """
    from genrec_pipeline._runner import plan, run

    say = echo or (lambda _line: None)
    spec = read_study(study)
    extra = _texts(overrides or {}, raw_strings=True)
    if run_dir is not None:
        extra["run.root"] = _literal(str(run_dir))
    configs = _variant_configs(spec, extra, smoke)
    first = next(iter(configs.values()))
    task = str(first["records"]["task"])
    for key, config in configs.items():
        if config["records"]["task"] != task:
            raise PipelineError(f"{spec.source}: variant {key[0]} is a {config['records']['task']} run; the base is {task}")
        if config["evaluate"]["mode"] == "none" and spec.system == "model":
            raise PipelineError(f"{spec.source}: variant {key[0]}: [evaluate].mode = 'none' has no model to compare")
    metrics = spec.metrics or DEFAULT_METRICS[task]
    for m in metrics:
        _check_metric(m, task, spec.source)
    name = f"{spec.name}-smoke" if smoke else spec.name
    folder = first.run_dir / name
    total = len(configs)

    # The stage executions the study needs: a (stage folder) that two variants share runs once.
    plans = {key: plan(config) for key, config in configs.items()}
    needed = {i.folder for p in plans.values() for i in p if i.action in ("run", "resume")}
    uses = sum(1 for p in plans.values() for i in p if i.action != "skip")
    say(f"study {name}: {len(spec.variants)} variants x {len(spec.seeds)} seed(s) of {spec.base}; "
        f"{len(needed)} stage executions for {uses} stage uses (the rest cached or shared)")  # fmt: skip
    if dry_run:
        from genrec_pipeline._runner import format_plan

        for (v, s), items in plans.items():
            say(f"\n{v}{'' if s is None else f' (seed {s})'}:")
            say(format_plan(items))
        return None

    runs: dict[tuple[str, int | None], dict[str, Any]] = {}
    executed: dict[str, int] = {}
    preds: dict[tuple[str, int], Any] = {}
    failed: list[str] = []
    for i, ((v, s), config) in enumerate(configs.items(), start=1):
        tag = f"[{i}/{total}] {v}{'' if s is None else f' (seed {s})'}"
        seed = int(config["run"]["seed"])
        start = time.perf_counter()
        record: dict[str, Any] = {"variant": v, "seed": s, "ran": [], "reused": []}
        try:
            result = run(config, progress=progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed variant is reported; the others still count
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                          seconds=round(time.perf_counter() - start, 1))  # fmt: skip
            runs[(v, s)] = record
            failed.append(v if s is None else f"{v} (seed {s})")
            say(f"{tag}: failed after {record['seconds']} s: {record['error']}")
            continue
        ran = [p.stage for p in result.plan if p.action in ("run", "resume")]
        reused = [p.stage for p in result.plan if p.action == "reuse"]
        for stage in ran:
            executed[stage] = executed.get(stage, 0) + 1
        evaluation = result.artifacts["evaluate"].path
        pred_path = evaluation / "predictions" / f"{spec.system}.parquet"
        record.update(status="cached" if not ran else "done", ran=ran, reused=reused,
                      seconds=round(time.perf_counter() - start, 1), evaluate=str(evaluation),
                      predictions=str(pred_path), run_dir=str(result.run_dir))  # fmt: skip
        runs[(v, s)] = record
        if not pred_path.is_file():
            raise PipelineError(f"variant {v}: {pred_path} does not exist (system {spec.system!r} not evaluated)")
        import polars as pl

        preds[(v, seed)] = pl.read_parquet(pred_path)
        head = study_table({(v, seed): preds[(v, seed)]}, task=task, metrics=metrics[:1], reference=v, n_boot=spec.n_boot,
                           seed=spec.seed).row(0, named=True)  # fmt: skip
        say(f"{tag}: {record['status']} in {record['seconds']} s (ran {', '.join(ran) or 'nothing'}; reused "
            f"{', '.join(reused) or 'nothing'}); {metrics[0]} {_num(head['value'])} "
            f"[{_num(head['low'])}, {_num(head['high'])}] n={head['n']}")  # fmt: skip
    if not preds:
        first_error = next(r["error"] for r in runs.values() if r["status"] == "failed")
        raise PipelineError(f"study {name}: every variant failed ({', '.join(failed)}); the first: {first_error}")
    labels = {v.name: v.label for v in spec.variants}
    refs = {v.name: v.reference for v in spec.variants}
    table = study_table(preds, task=task, metrics=metrics, reference=refs, labels=labels, n_boot=spec.n_boot,
                        seed=spec.seed, study=name)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    table_path = atomic_write_parquet(folder / "study.parquet", table)
    plot = plot_study(table, folder / "study.png",
                      title=f"{name}: {metrics[0]} vs reference {labels.get(spec.reference, spec.reference)}")
    run_list = list(runs.values())
    markdown = atomic_write_text(folder / "study.md", _markdown(spec, table, plot, run_list, smoke))
    atomic_write_json(folder / "study.json", {
        "name": name, "source": spec.source, "base": spec.base, "smoke": smoke, "task": task, "metrics": list(metrics),
        "reference": spec.reference, "seeds": list(spec.seeds), "system": spec.system, "runs": run_list,
        "executed": executed, "failed": failed,
        "variants": [{"name": v.name, "label": v.label, "reference": v.reference, "set": dict(v.overrides)}
                     for v in spec.variants],
    })  # fmt: skip
    counts = ", ".join(f"{st} {executed[st]}" for st in STAGES if st in executed) or "none (all cached)"
    lines = [f"study {name}: {total - len(failed)} of {total} runs finished; stage executions: {counts}"]
    lines += [f"  {s}" for s in sentences(table)]
    if failed:
        lines.append(f"  failed: {', '.join(failed)}")
    lines += [f"table: {table_path} (and {markdown.name})", f"plot:  {plot}"]
    summary = "\n".join(lines)
    say(summary)
    return StudyResult(name=name, table=table, table_path=table_path, markdown=markdown, plot=plot, folder=folder,
                       runs=runs, executed=executed, failed=tuple(failed), summary=summary)  # fmt: skip
