"""`genrec study`: a grid of variants of one config, run through `genrec run` with shared stages, one
table and one plot with paired tests against a reference variant.

The statistics are tested on fake predictions (a planted better variant must "beat", an identical one
"cannot be told apart"); the two shipped studies run end to end under --smoke on the real data slices
(skipped without ../shared/data), counting stage executions from each run's events.jsonl."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_pipeline import PipelineError, read_study
from genrec_pipeline._study import (
    _t_two_sided,
    paired_t,
    shipped_studies,
    study_table,
    t_interval,
    t_quantile,
)


def _preds(ranks: list[float | None], ids: list[str] | None = None) -> pl.DataFrame:
    ids = ids or [f"r{i}" for i in range(len(ranks))]
    return pl.DataFrame({"record_id": ids, "target_rank": ranks}, schema={"record_id": pl.String, "target_rank": pl.Float64})


def _planted(n: int = 200, seed: int = 0) -> dict[str, pl.DataFrame]:
    """A reference that hits rank 1 on a quarter of the records, a variant that adds hits on half of
    its misses (never losing one), an identical copy, and a variant that loses most of its hits."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(2, 60, size=n).astype(float)
    ref[rng.random(n) < 0.25] = 1.0
    better = ref.copy()
    better[(ref > 1) & (rng.random(n) < 0.5)] = 1.0
    worse = ref.copy()
    worse[(ref == 1) & (rng.random(n) < 0.8)] = 40.0
    ranks = {"ref": ref, "better": better, "same": ref.copy(), "worse": worse}
    return {k: _preds([None if v > 50 else float(v) for v in r]) for k, r in ranks.items()}


def test_planted_better_variant_beats_and_an_identical_one_cannot_be_told_apart() -> None:
    fake = _planted()
    table = study_table({(k, 0): v for k, v in fake.items()}, task="next_poi", metrics=["acc@1", "mrr"],
                        reference="ref", n_boot=300)  # fmt: skip
    row = {(r["variant"], r["metric"]): r for r in table.iter_rows(named=True)}
    assert row[("ref", "acc@1")]["verdict"] == "reference"
    assert row[("better", "acc@1")]["verdict"] == "beats"
    assert row[("better", "acc@1")]["test"] == "mcnemar-exact"
    assert row[("better", "acc@1")]["losses"] == 0 and row[("better", "acc@1")]["wins"] > 0
    assert row[("better", "acc@1")]["p"] < 1e-6
    assert row[("better", "mrr")]["verdict"] == "beats"
    assert row[("better", "mrr")]["test"].startswith("sign-flip permutation")
    for m in ("acc@1", "mrr"):
        same = row[("same", m)]
        assert same["verdict"] == "cannot be told apart from" and same["p"] == 1.0 and same["diff"] == 0.0
    assert row[("worse", "acc@1")]["verdict"] == "is beaten by"
    # The value is the metric of the predictions, inside its interval, with n in the row.
    ref = fake["ref"]["target_rank"].fill_null(math.inf).to_numpy()
    assert row[("ref", "acc@1")]["value"] == pytest.approx(float(np.mean(ref <= 1)))
    assert row[("ref", "mrr")]["value"] == pytest.approx(float(np.mean(np.where(np.isfinite(ref), 1 / ref, 0))))
    for r in table.iter_rows(named=True):
        assert r["low"] <= r["value"] <= r["high"] and r["n"] == 200
    assert table["headline"].to_list() == [m == "acc@1" for m in table["metric"]]


def test_pairs_on_the_records_both_variants_scored() -> None:
    ref = _preds([1, 2, 3, 1], ["a", "b", "c", "d"])
    var = _preds([1, 1, 1], ["b", "c", "e"])
    table = study_table({("ref", 0): ref, ("var", 0): var}, task="next_poi", metrics=["acc@1"], reference="ref")
    row = table.filter(pl.col("variant") == "var").row(0, named=True)
    assert row["n"] == 3 and row["n_paired"] == 2  # b and c only
    assert row["wins"] == 2 and row["losses"] == 0 and row["diff"] == pytest.approx(1.0)


def test_seeds_give_each_seed_and_a_t_interval_of_the_mean() -> None:
    preds = {}
    for s in range(3):
        fake = _planted(seed=s)
        preds[("ref", s)], preds[("better", s)], preds[("same", s)] = fake["ref"], fake["better"], fake["same"]
    table = study_table(preds, task="next_poi", metrics=["acc@1"], reference="ref", n_boot=200,
                        labels={"better": "planted"})  # fmt: skip
    assert table.filter(pl.col("kind") == "seed").height == 9
    assert table["variant"].to_list()[:4] == ["ref"] * 4  # seeds, then the mean, per variant
    mean = table.filter((pl.col("kind") == "mean") & (pl.col("variant") == "better")).row(0, named=True)
    per_seed = table.filter((pl.col("kind") == "seed") & (pl.col("variant") == "better"))["value"].to_numpy()
    half = 4.302652729911275 * per_seed.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert mean["value"] == pytest.approx(per_seed.mean())
    assert (mean["low"], mean["high"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert mean["seeds"] == 3 and mean["label"] == "planted" and mean["test"] == "paired t over 3 seeds"
    assert mean["verdict"] == "beats"
    same = table.filter((pl.col("kind") == "mean") & (pl.col("variant") == "same")).row(0, named=True)
    assert same["verdict"] == "cannot be told apart from" and same["p"] == 1.0


def test_student_t_matches_tabulated_values() -> None:
    for df, crit in ((1, 12.706204736), (2, 4.302652730), (5, 2.570581836), (10, 2.228138852), (30, 2.042272456)):
        assert t_quantile(0.95, df) == pytest.approx(crit, rel=1e-6)
        assert _t_two_sided(crit, df) == pytest.approx(0.05, rel=1e-6)
    assert _t_two_sided(0.0, 4) == pytest.approx(1.0)
    assert paired_t([0.1, 0.1, 0.1]) == 0.0 and paired_t([0.0, 0.0]) == 1.0
    mean, low, high = t_interval([1.0])
    assert mean == 1.0 and math.isnan(low) and math.isnan(high)


def test_ctr_studies_compare_auc_with_delong() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    good = np.clip(y * 0.6 + rng.random(300) * 0.5, 0, 1)
    ids = [f"r{i}" for i in range(300)]
    preds = {("coin", 0): pl.DataFrame({"record_id": ids, "p_yes": rng.random(300), "label": y}),
             ("good", 0): pl.DataFrame({"record_id": ids, "p_yes": good, "label": y})}  # fmt: skip
    table = study_table(preds, task="ctr", metrics=["auc"], reference="coin", n_boot=200)
    row = table.filter(pl.col("variant") == "good").row(0, named=True)
    assert row["test"] == "delong" and row["verdict"] == "beats" and row["value"] > 0.8


def test_plot_and_markdown_from_a_table(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from genrec_pipeline._study import plot_study, sentences

    table = study_table({(k, 0): v for k, v in _planted().items()}, task="next_poi", metrics=["acc@1"],
                        reference="ref", n_boot=100)  # fmt: skip
    plot = plot_study(table, tmp_path / "study.png", title="planted")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    said = sentences(table)
    assert len(said) == 3 and said[0].startswith("better (seed 0) beats ref on acc@1")
    assert any("cannot be told apart from ref" in s and "p = 1.0000" in s for s in said)


# -- the study file ---------------------------------------------------------------------------------


def test_shipped_studies_parse(tmp_path: Path) -> None:
    assert {"profiles-nyc", "coreset-games"} <= set(shipped_studies())
    assert "genup-cross-city" not in shipped_studies()  # a different kind of file
    nyc = read_study("profiles-nyc")
    assert nyc.base == "nyc-local" and nyc.reference == "none" and len(nyc.seeds) >= 1
    fields = [v.overrides.get("records.options.profile_fields") for v in nyc.variants]
    assert fields == [None, None, "summary", "summary+routines+preferences", "all"]
    assert nyc.variants[0].overrides == {"profiles.enabled": False}
    games = read_study("coreset-games")
    refs = {v.name: v.reference for v in games.variants}
    for v in games.variants:
        budget = v.overrides.get("coreset.budget")
        if budget is not None:
            assert refs[v.name] == f"random-{budget}"  # random at the same budget
    assert {v.overrides.get("coreset.method") for v in games.variants} == {None, "random", "itra", "goracs"}


def test_the_cross_city_study_file_still_loads_for_cross_city() -> None:
    from genrec_pipeline._crosscity import load_study

    assert len(load_study("genup-cross-city")["configs"]) == 3
    with pytest.raises(PipelineError, match="genrec cross-city"):
        read_study("genup-cross-city")


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"study": {"base": "default", "reference": "a"}, "variants": [{"name": "a"}]}, "at least two"),
        ({"study": {"base": "default", "reference": "z"}, "variants": [{"name": "a"}, {"name": "b"}]}, "reference 'z'"),
        ({"study": {"base": "default", "refrence": "a"}, "variants": [{"name": "a"}, {"name": "b"}]}, r"\[study\].refrence"),
        ({"study": {"reference": "a"}, "variants": [{"name": "a"}, {"name": "b"}]}, r"\[study\].base"),
        ({"study": {"base": "default", "reference": "a"}, "variants": [{"name": "a"}, {"name": "a"}]}, "named twice"),
        ({"study": {"base": "default", "reference": "a", "seeds": [1, 1]}, "variants": [{"name": "a"}, {"name": "b"}]},
         "distinct integers"),
        ({"study": {"base": "default", "reference": "a"}, "variants": [{"name": "a", "set": {"run.name": "x"}}, {"name": "b"}]},
         "sharing stages"),
    ],
)
def test_bad_study_files_are_one_line(study: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        read_study(study)


def test_bad_variant_settings_fail_before_anything_runs(tmp_path: Path) -> None:
    from genrec_pipeline import study

    spec = {"study": {"base": "default", "reference": "a"},
            "variants": [{"name": "a"}, {"name": "b", "set": {"coreset.methd": "random"}}]}  # fmt: skip
    with pytest.raises(PipelineError, match=r"variant b: .*unknown key \[coreset\].methd"):
        study(spec, run_dir=tmp_path, echo=None)
    assert not any(tmp_path.iterdir())
    spec["variants"][1]["set"] = {}
    spec["study"]["metrics"] = ["auc"]
    with pytest.raises(PipelineError, match="metric 'auc'"):
        study(spec, run_dir=tmp_path, echo=None)


def test_study_file_with_nested_and_dotted_overrides(tmp_path: Path) -> None:
    file = tmp_path / "mine.toml"
    file.write_text(
        '[study]\nbase = "base.toml"\nreference = "off"\nseeds = [0, 1]\n[study.set]\n"evaluate.max_records" = 3\n'
        '[[variants]]\nname = "off"\nset = { profiles = { enabled = false } }\n'
        '[[variants]]\nname = "on"\nlabel = "with profiles"\n',
        encoding="utf-8",
    )
    (tmp_path / "base.toml").write_text('[run]\nname = "mine"\n', encoding="utf-8")
    spec = read_study(file)
    assert spec.name == "mine" and spec.base == str(tmp_path / "base.toml") and spec.seeds == (0, 1)
    assert spec.variants[0].overrides == {"profiles.enabled": False}
    assert spec.overrides == {"evaluate.max_records": 3}
    assert spec.variants[1].label == "with profiles" and spec.variants[1].reference == "off"


# -- the shipped studies under --smoke, on the real data slices --------------------------------------


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tiny models go to a cache of this module's own, never the user's."""
    folder = tmp_path_factory.mktemp("genrec-cache")
    old = os.environ.get("GENREC_CACHE")
    os.environ["GENREC_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("GENREC_CACHE", None)
    else:
        os.environ["GENREC_CACHE"] = old


def _events(run_dir: Path) -> Counter[str]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return Counter(json.loads(line)["stage"] for line in lines)


def _nyc_sets(shared_data: Path) -> list[str]:
    nyc = shared_data / "foursquare_nyc"
    return [f'data.train="{nyc / "NYC_val.csv"}"', f'data.test="{nyc / "NYC_test.csv"}"']


@pytest.mark.integration
def test_profiles_nyc_smoke_shares_stages_and_reruns_from_cache(
    shared_data: Path, smoke_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from genrec_pipeline._cli import main

    root = tmp_path / "runs"
    argv = ["study", "profiles-nyc", "--smoke", "--run-dir", str(root)]
    for item in _nyc_sets(shared_data):
        argv += ["--set", item]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage executions for" in out and not (root / "profiles-nyc-smoke").exists()

    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    spec = read_study("profiles-nyc")
    seeds, n_variants = len(spec.seeds), len(spec.variants)
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert len(progress) == seeds * n_variants and all(": done in " in line for line in progress)
    folder = root / "profiles-nyc-smoke"
    assert f"table: {folder / 'study.parquet'}" in out and f"plot:  {folder / 'study.png'}" in out

    # Shared stages ran once: data once per seed, profiles once per backend and seed (the three LLM
    # ablations render one profiles table), everything downstream once per variant and seed.
    events = _events(root / "nyc-local-smoke")
    assert events == {"data": seeds, "profiles": 2 * seeds, "records": n_variants * seeds,
                      "train": n_variants * seeds, "evaluate": n_variants * seeds}  # fmt: skip
    table = pl.read_parquet(folder / "study.parquet")
    head = table.filter(pl.col("headline"))
    assert set(head["metric"]) == {"acc@1"}
    assert head.filter(pl.col("kind") == "seed").height == seeds * n_variants
    assert set(head["verdict"]) <= {"reference", "beats", "is beaten by", "cannot be told apart from"}
    assert set(head.filter(pl.col("variant") == "none")["verdict"]) == {"reference"}
    others = head.filter((pl.col("variant") != "none") & (pl.col("kind") == "seed"))
    assert (others["p"].is_not_null() & others["n_paired"].gt(0)).all()
    assert set(table.filter(pl.col("metric") == "mrr")["test"].drop_nulls().str.slice(0, 9)) <= {"sign-flip", "paired t "}
    if seeds > 1:
        assert head.filter(pl.col("kind") == "mean").height == n_variants
    markdown = (folder / "study.md").read_text(encoding="utf-8")
    assert "## acc@1" in markdown and "no profiles" in markdown
    assert (folder / "study.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun reuses every stage: no new executions, the same table.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stage executions: none (all cached)" in out
    assert all(": cached in " in line for line in out.splitlines() if line.startswith("["))
    assert _events(root / "nyc-local-smoke") == events
    assert pl.read_parquet(folder / "study.parquet").equals(table)


@pytest.mark.integration
@pytest.mark.slow
def test_coreset_games_smoke(shared_data: Path, smoke_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from genrec_pipeline import load_config, study

    # A local copy in the real layout, cut to the first users and the items they touch: BIGRec's
    # grounding scores the whole catalogue with the base LLM, which is minutes at 17k items on a CPU.
    src = shared_data / "amazon_games"
    games = tmp_path / "data" / "amazon_games"
    games.mkdir(parents=True)
    inter = pl.read_parquet(src / "interactions.parquet")
    inter = inter.filter(pl.col("user_id").is_in(inter["user_id"].unique().sort().head(300).implode()))
    touched = inter["item_ids"].explode().unique().implode()
    pl.read_parquet(src / "items.parquet").filter(pl.col("item_id").is_in(touched)).write_parquet(games / "items.parquet")
    inter.write_parquet(games / "interactions.parquet")
    overrides = {"records.items": f'"{games / "items.parquet"}"',
                 "records.interactions": f'"{games / "interactions.parquet"}"'}  # fmt: skip
    if "dataset" in load_config("goracs-games-seqrec")["data"]:
        overrides["data.dataset"] = '""'  # local files instead of the download, as the config says
    lines: list[str] = []
    result = study("coreset-games", smoke=True, run_dir=tmp_path / "runs", overrides=overrides, echo=lines.append)
    assert result is not None and not result.failed
    spec = read_study("coreset-games")
    assert sum(1 for line in lines if line.startswith("[")) == len(spec.variants)
    # Smoke caps count budgets at a few records, so both budgets of a method are one coreset there:
    # the records stage once, one coreset per method, and train/evaluate once per distinct setting.
    events = _events(tmp_path / "runs" / "goracs-games-seqrec-smoke")
    assert events["records"] == 1 and events["coreset"] == 3
    assert events["train"] == events["evaluate"] == 4
    assert result.executed == dict(events)
    head = result.table.filter(pl.col("headline"))
    assert set(head["metric"]) == {"ndcg@10"}
    verdicts = dict(zip(head["variant"], head["verdict"]))
    assert verdicts["random-512"] == verdicts["random-1024"] == "reference"
    refs = dict(zip(head["variant"], head["reference"]))
    assert refs["itra-512"] == refs["goracs-512"] == "random-512" and refs["full"] == "random-1024"
    assert result.plot.is_file() and result.markdown.is_file()
