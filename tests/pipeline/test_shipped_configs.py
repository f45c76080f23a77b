"""Every shipped config runs with `genrec run CONFIG --smoke`: every option as shipped, tiny random
models of the same families, a few users, records and steps, on this CPU. The only overrides are the
data paths, pointed at local copies of each config's data in its real layout (made from
../shared/data, or generated here)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("torch")

from genrec_pipeline import load_config, shipped_configs
from genrec_pipeline._cli import main
from genrec_pipeline._smoke import guess_family

GENUP = sorted(name for name in shipped_configs() if name.startswith("genup-"))


@pytest.fixture(scope="module", autouse=True)
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


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _smoke(name: str, root: Path, capsys: pytest.CaptureFixture[str], *sets: str) -> tuple[str, Path]:
    argv = ["run", name, "--smoke", "--no-progress", "--quiet", "--run-dir", str(root)]
    for item in sets:
        argv += ["--set", item]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    return out, root / f"{name}-smoke"


def _metrics(run_dir: Path) -> dict:
    return json.loads((next(run_dir.glob("evaluate-*")) / "metrics.json").read_text())


def test_smoke_keeps_every_option_and_maps_gpu_settings() -> None:
    config = load_config("genup-nyc-llama-3.2-1b", smoke=True)
    assert config.name == "genup-nyc-llama-3.2-1b-smoke"
    lines = set(config.smoke_changes)
    assert "smoke: train.options.device cuda -> cpu" in lines
    assert "smoke: evaluate.options.device cuda -> cpu" in lines
    assert "smoke: train.nproc_per_node 2 -> 1" in lines
    assert len(lines) == len(config.smoke_changes)  # one line per change
    train = config["train"]
    assert train["recipe"] == "genup-llama-3.2-1b"  # the recipe (QLoRA, LoRA r, lr ...) stays
    assert Path(train["options"]["model"]).name == "tiny-llama3"
    assert train["options"]["max_steps"] <= 2
    assert config["records"]["genup"] == "w11wo/FourSquare-NYC-POI"
    assert config["evaluate"]["mode"] == "generate"
    assert config["evaluate"]["options"]["dtype"] in ("bfloat16", "float32")  # float32 without CPU bf16


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("Yukang/Llama-2-7b-longlora-32k-ft", "llama2"),
        ("huggyllama/llama-7b", "llama2"),
        ("meta-llama/Llama-2-7b-hf", "llama2"),
        ("meta-llama/Llama-3.1-8B", "llama3"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama3"),
        ("smollm2", "chatml"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
        ("Qwen/Qwen2.5-0.5B", "chatml"),
        ("mistralai/Mistral-7B-v0.1", "generic"),
    ],
)
def test_family_is_guessed_from_the_model_name(name: str, family: str) -> None:
    assert guess_family(name) == family


@pytest.mark.integration
def test_default_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, run_dir = _smoke("default", tmp_path / "runs", capsys)
    metrics = _metrics(run_dir)
    assert "model" in metrics and "popularity" in metrics
    log = json.loads((next(run_dir.glob("coreset-*")) / "selection.json").read_text())
    assert log["method"] == "itra" and log["budget"] >= 1


@pytest.mark.integration
def test_nyc_local_smoke(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nyc = tmp_path / "data" / "foursquare_nyc"
    val = _copy(shared_data / "foursquare_nyc" / "NYC_val.csv", nyc / "NYC_val.csv")
    test = _copy(shared_data / "foursquare_nyc" / "NYC_test.csv", nyc / "NYC_test.csv")
    _, run_dir = _smoke("nyc-local", tmp_path / "runs", capsys, f'data.train="{val}"', f'data.test="{test}"')
    data = next(run_dir.glob("data-*"))
    train = pl.read_parquet(data / "train.parquet")
    held = pl.read_parquet(data / "test.parquet")
    assert 0 < held["user_id"].n_unique() <= 8
    assert set(held["user_id"]) <= set(train["user_id"])  # LLM4POI: unseen users dropped
    assert train["utc_time"].max() <= held["utc_time"].min()  # history before future
    assert "model" in _metrics(run_dir)


GORACS_AMAZON = ["goracs-games-seqrec", "goracs-movies-seqrec", "goracs-food-seqrec", "goracs-games-ctr"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in ("goracs-games-seqrec", "goracs-games-ctr") else pytest.mark.slow)
             for n in GORACS_AMAZON]
)
def test_goracs_amazon_smoke(name: str, data_mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Amazon data set is fetched from a local mirror (files in Amazon's published format) and
    prepared by genrec-sftdata as GORACS does; no override at all."""
    out, run_dir = _smoke(name, tmp_path / "runs", capsys)
    assert "smoke: train.options.device cuda -> cpu" in out
    assert "smoke: coreset.load_in_8bit True -> False" in out
    data = next(run_dir.glob("data-*"))
    assert json.loads((data / "artifact.json").read_text())["summary"]["dataset"] == load_config(name)["data"]["dataset"]
    log = json.loads((next(run_dir.glob("coreset-*")) / "selection.json").read_text())
    assert log["method"] == "goracs"
    metrics = _metrics(run_dir)
    run = json.loads((next(run_dir.glob("evaluate-*")) / "run.json").read_text())
    assert run["protocol"]["name"] == "goracs"
    if name.endswith("seqrec"):
        records = pl.read_parquet(next(run_dir.glob("records-*")) / "test.parquet")
        assert records["negative_item_ids"].list.len().min() > 0
        assert "sampled_ndcg@10" in metrics["model"]
    else:
        assert log["labels"] is True and 0.0 <= metrics["model"]["auc"] <= 1.0


@pytest.mark.integration
@pytest.mark.slow  # about 3 minutes: GORACS grounds to the 17,332-item catalogue with the base LLM
def test_goracs_games_seqrec_on_local_files(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    games = tmp_path / "data" / "amazon_games"
    items = _copy(shared_data / "amazon_games" / "items.parquet", games / "items.parquet")
    inter = _copy(shared_data / "amazon_games" / "interactions.parquet", games / "interactions.parquet")
    # Files named in [records] win over [data].dataset: nothing is fetched, no data stage runs.
    _, run_dir = _smoke(
        "goracs-games-seqrec", tmp_path / "runs", capsys, f'records.items="{items}"', f'records.interactions="{inter}"'
    )
    assert not list(run_dir.glob("data-*"))
    metrics = _metrics(run_dir)
    assert "model" in metrics and all("sampled_ndcg@10" in v for v in metrics.values())


@pytest.mark.integration
def test_goracs_movielens_ctr_smoke(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "movielens_ctr"
    folder = tmp_path / "data" / "movielens"
    folder.mkdir(parents=True)
    # The shared slice has no training file: carve one from valid.json so every split exists.
    valid = json.loads((src / "valid.json").read_text())
    (folder / "train.json").write_text(json.dumps(valid[:300]))
    (folder / "valid.json").write_text(json.dumps(valid[300:420]))
    test = _copy(src / "test.json", folder / "test.json")
    files = json.dumps([str(folder / "train.json"), str(folder / "valid.json"), str(test)])
    _, run_dir = _smoke("goracs-movielens-ctr", tmp_path / "runs", capsys, f"records.tallrec={files}")
    log = json.loads((next(run_dir.glob("coreset-*")) / "selection.json").read_text())
    assert log["labels"] is True and log["method"] == "goracs"  # label-enhanced, the release's procedure
    assert log["lambda"] == 0.5  # GORACS's CTR settings
    assert 0.0 <= _metrics(run_dir)["model"]["auc"] <= 1.0


def _genup_layout(folder: Path, *, seed: int = 2) -> Path:
    """A small dataset in the layout GenUP publishes on the hub (a save_to_disk DatasetDict, train and
    test, with system_prompt = the profile, inputs = trajectory and question, targets = the answer),
    rendered from a synthetic city with GenUP's templates."""
    datasets = pytest.importorskip("datasets")
    from genrec_sftdata import NextPoiConfig, build_next_poi, prepare, synthesize_city

    built = build_next_poi(prepare(synthesize_city(n_users=6, seed=seed)), config=NextPoiConfig(max_history=8))
    parts = {}
    for split in ("train", "test"):
        frame = built[split].head(24).select(
            system_prompt=pl.col("messages").list.get(0).struct.field("content"),
            inputs=pl.col("messages").list.get(1).struct.field("content"),
            targets=pl.col("completion"),
        )
        # GenUP's text (create_sft_dataset.py), which [records].protocol = "genup" trains and evaluates on.
        llama = pl.format("<s>[INST] <<SYS>>\n{}\n<</SYS>>\n\n{} [/INST] {} </s>", "system_prompt", "inputs", "targets")
        parts[split] = datasets.Dataset(frame.with_columns(llama_prompt=llama).to_arrow())
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


# One config per city and per recipe in the default run; the other six (about 15 s each) are slow.
GENUP_FAST = {"genup-nyc-llama-3.2-1b", "genup-tky-llama-3.1-8b", "genup-ca-llama-2-7b-longlora"}


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in GENUP_FAST else pytest.mark.slow) for n in GENUP]
)
def test_genup_smoke(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = _genup_layout(tmp_path / "data" / name.split("-")[1])
    out, run_dir = _smoke(name, tmp_path / "runs", capsys, f'records.genup="{local}"')
    assert "smoke: train.nproc_per_node 2 -> 1" in out
    assert not list(run_dir.glob("data-*")) and not list(run_dir.glob("profiles-*"))
    records = pl.read_parquet(next(run_dir.glob("records-*")) / "train.parquet")
    assert records["record_id"].str.starts_with("next_poi:train:genup:").all()
    assert (records["prompt"] + records["completion"] == records["llama_prompt"]).all()  # GenUP's text
    assert "model" in _metrics(run_dir)
    run = json.loads((next(run_dir.glob("evaluate-*")) / "run.json").read_text())
    assert run["protocol"]["name"] == "genup" and run["config"]["city"] == name.split("-")[1]
    if name.split("-")[1] in ("tky", "ca"):
        assert load_config(name)["train"]["options"]["batch_size"] == 2  # GenUP's README for these cities


@pytest.mark.integration
@pytest.mark.slow
def test_genup_cross_city_study_smoke(tmp_path: Path) -> None:
    from genrec_pipeline import cross_city
    from genrec_pipeline._crosscity import load_study

    study = load_study("genup-cross-city")
    configs = []
    for seed, name in enumerate(study["configs"]):
        local = _genup_layout(tmp_path / "data" / name.split("-")[1], seed=seed)
        overrides = {"records.genup": f'"{local}"', "run.root": f'"{tmp_path / "runs"}"'}
        configs.append(load_config(name, overrides=overrides, smoke=True))
    result = cross_city(configs, name=study["name"], metric=study["metric"], progress=False)
    assert len(result.runs) == 9


def test_every_shipped_config_has_a_smoke_test() -> None:
    covered = {"default", "nyc-local", "goracs-movielens-ctr", *GORACS_AMAZON, *GENUP}
    assert set(shipped_configs()) == covered
