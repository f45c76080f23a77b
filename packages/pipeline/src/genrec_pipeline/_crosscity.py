"""GenUP's cross-city study: a model trained on city A evaluated on city B's test records, for every
pair, as a matrix and a heat map."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from genrec_core import atomic_write_json, atomic_write_parquet
from genrec_pipeline import stages as st
from genrec_pipeline._cache import stage_key, status
from genrec_pipeline._config import RunConfig, load_config
from genrec_pipeline._errors import PipelineError


@dataclass(frozen=True, kw_only=True)
class CrossCityResult:
    """The matrix (rows: training city, columns: evaluation city), its heat map and the runs."""

    matrix: Any  # polars.DataFrame
    plot: Path
    table: Path
    runs: Mapping[tuple[str, str], Path]
    metric: str


def load_study(path: str | Path) -> dict[str, Any]:
    """A study file (``[cross_city]`` with ``configs`` and ``metric``), by path or shipped name."""
    file = Path(path)
    if not file.is_file():
        shipped = Path(str(resources.files("genrec_pipeline") / "configs" / "studies" / f"{path}.toml"))
        if not shipped.is_file():
            raise PipelineError(f"study file does not exist: {path}")
        file = shipped
    data = tomllib.loads(file.read_text(encoding="utf-8"))
    table = data.get("cross_city")
    if not isinstance(table, dict) or not isinstance(table.get("configs"), list) or len(table["configs"]) < 2:
        raise PipelineError(f"{file}: [cross_city].configs must list at least two run configs")
    unknown = sorted(set(table) - {"name", "configs", "metric"})
    if unknown:
        raise PipelineError(f"{file}: unknown key [cross_city].{unknown[0]}; known: configs, metric, name")
    base = file.parent
    configs = [str(base / c) if (base / c).is_file() else c for c in table["configs"]]
    return {"name": table.get("name", file.stem), "configs": configs, "metric": table.get("metric", "acc@1")}


def cross_city(
    configs: Sequence[RunConfig | str | Path],
    *,
    name: str = "cross-city",
    metric: str = "acc@1",
    overrides: Mapping[str, str] | None = None,
    progress: bool | None = None,
) -> CrossCityResult:
    """Run every config through training (reusing cached stages), evaluate each model on each city's
    evaluation records, and write the matrix (``cross_city.parquet``) and heat map (``cross_city.png``)
    under ``<root>/<name>/``."""
    from genrec_evaluator import cross_city_matrix, plot_cross_city
    from genrec_pipeline._runner import plan, run

    loaded = [c if isinstance(c, RunConfig) else load_config(c, overrides=overrides) for c in configs]
    names = [c.name for c in loaded]
    if len(set(names)) != len(names):
        raise PipelineError(f"cross-city: the configs need distinct [run].name values, got {names}")
    for config in loaded:
        if config["records"]["task"] != "next_poi" or config["evaluate"]["mode"] == "none":
            raise PipelineError(f"cross-city: {config.source} must be a next_poi run with a model")
    results = {c.name: run(c, progress=progress) for c in loaded}
    keys = {c.name: {i.stage: i.key for i in plan(c)} for c in loaded}
    out = loaded[0].run_dir / name
    runs: dict[tuple[str, str], Path] = {}
    rows = []
    for model_cfg in loaded:
        for data_cfg in loaded:
            a, b = model_cfg.name, data_cfg.name
            settings = dict(data_cfg["evaluate"])
            key = stage_key("cross_city", settings, {"train": keys[a]["train"], "records": keys[b]["records"]}, {})
            folder = out / f"{a}--on--{b}-{key}"
            if status(folder) != "done":
                atomic_write_json(folder / "stage.json", {"status": "running"})
                t = data_cfg["evaluate"]
                st.evaluate(
                    results[b].artifacts["records"],  # type: ignore[arg-type]
                    results[b].artifacts.get("data"),  # type: ignore[arg-type]
                    folder,
                    model=results[a].artifacts["train"],  # type: ignore[arg-type]
                    split=t["split"],
                    mode=t["mode"],
                    max_records=t["max_records"],
                    options=t["options"],
                    progress=bool(progress),
                )
                atomic_write_json(folder / "stage.json", {"status": "done", "train_city": a, "eval_city": b})
            runs[(a, b)] = folder
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            rows.append({"train_city": a, "eval_city": b, "metrics": metrics})
    matrix = cross_city_matrix(rows, metric=metric)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "cross_city.parquet"
    atomic_write_parquet(table, matrix)
    plot = plot_cross_city(matrix, out / "cross_city.png", metric=metric)
    return CrossCityResult(matrix=matrix, plot=Path(plot), table=table, runs=runs, metric=metric)
