"""Model and records arguments: the shared resolver, the base model named in the adapter, hub datasets."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_core import GenrecError
from genrec_core.models import ResolvedModel
from genrec_trainer import TrainerError, load_config, train
from genrec_trainer._data import read_records
from genrec_trainer._synthetic import synthetic_city_records, write_records


def _quick(model: str, city: dict[str, Path], output: Path, **kw) -> dict:
    cfg = load_config(
        None,
        model=model,
        train=str(city["train"]),
        output=str(output),
        max_steps=1,
        batch_size=4,
        progress=False,
        dtype="float32",
        device="cpu",
        **kw,
    )
    result = train(cfg)
    assert result.adapter_dir is not None
    return json.loads((result.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))


def test_adapter_names_a_folder_model_as_given(tiny_model: Path, city, tmp_path: Path) -> None:
    assert _quick(str(tiny_model), city, tmp_path / "out")["base_model_name_or_path"] == str(tiny_model)


def test_adapter_names_a_hub_model_by_its_id_not_its_cache_path(
    tiny_model: Path, city, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genrec_trainer import _train

    asked: list[str] = []

    def fake_resolve(spec: str) -> ResolvedModel:
        asked.append(spec)
        return ResolvedModel(name=spec, path=tiny_model, source="hub")  # a snapshot in the hub cache

    monkeypatch.setattr(_train, "resolve_model", fake_resolve)
    config = _quick("some-org/tiny-llama@main", city, tmp_path / "out")
    assert asked == ["some-org/tiny-llama@main"]
    assert config["base_model_name_or_path"] == "some-org/tiny-llama@main"


def test_model_argument_errors_are_trainer_errors(city, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(TrainerError, match=r"no config\.json"):
        _quick(str(tmp_path / "folder"), city, tmp_path / "o1")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(TrainerError, match=r"not a \.gguf"):
        _quick(str(tmp_path / "weights.bin"), city, tmp_path / "o2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainerError, match=r"'nobody-xyz/no-such-model'.*hf download nobody-xyz/no-such-model") as exc:
        _quick("nobody-xyz/no-such-model", city, tmp_path / "o3")
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, GenrecError)


def _fake_hub_dataset(root: Path) -> Path:
    """The layout of a hub dataset of parquet files: ``data/<split>-00000-of-00001.parquet``."""
    (root / "data").mkdir(parents=True)
    pl.DataFrame(synthetic_city_records(12, seed=0)).write_parquet(root / "data" / "train-00000-of-00001.parquet")
    pl.DataFrame(synthetic_city_records(4, seed=1, split="val")).write_parquet(
        root / "data" / "validation-00000-of-00001.parquet"
    )
    (root / "README.md").write_text("---\nconfigs: []\n---\n", encoding="utf-8")
    return root


def test_records_from_a_hub_dataset_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    from genrec_core import models

    snapshot = _fake_hub_dataset(tmp_path / "snapshot")
    asked: list[str] = []

    def fake_resolve_dataset(spec: str) -> Path:
        asked.append(spec)
        return snapshot

    monkeypatch.setattr(models, "resolve_dataset", fake_resolve_dataset)
    train_frame = read_records("some-org/city-records", role="train")
    val_frame = read_records("some-org/city-records@v1", role="val")
    assert asked == ["some-org/city-records", "some-org/city-records@v1"]
    assert train_frame.height == 12 and set(train_frame["split"]) == {"train"}
    assert val_frame.height == 4 and set(val_frame["split"]) == {"val"}
    # The same ids through a whole (one-step) run.
    result = train(
        load_config(
            None,
            model=str(tiny_model),
            train="some-org/city-records",
            val="some-org/city-records",
            output=str(tmp_path / "out"),
            max_steps=1,
            batch_size=4,
            progress=False,
            dtype="float32",
            device="cpu",
        )
    )
    assert result.n_records == 12 and len(result.eval_losses) == 1


def test_records_folder_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    write_records(synthetic_city_records(5), plain / "records.jsonl")
    assert read_records(plain, role="val").height == 5  # no split names: every file is the set
    by_folder = tmp_path / "by-folder"
    write_records(synthetic_city_records(3), by_folder / "train" / "part-0.parquet")
    write_records(synthetic_city_records(2, split="test"), by_folder / "test" / "part-0.parquet")
    assert read_records(by_folder).height == 3
    with pytest.raises(TrainerError, match=r"holds splits \['test', 'train'\], none named 'val'"):
        read_records(by_folder, role="val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainerError, match="neither a datasets save_to_disk layout nor"):
        read_records(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainerError, match=r"train records: dataset 'nobody-xyz/no-such-set'.*--repo-type dataset"):
        read_records("nobody-xyz/no-such-set")


@pytest.mark.slow
def test_smollm2_lora_steps(tmp_path: Path) -> None:
    """The real default model: converted once from GGUF, trained a few LoRA steps with its chat template."""
    data = write_records(synthetic_city_records(8), tmp_path / "train.parquet")
    result = train(
        load_config(
            None,
            model="smollm2",
            train=str(data),
            output=str(tmp_path / "out"),
            max_steps=3,
            batch_size=2,
            progress=False,
            device="cpu",
        )
    )
    assert len(result.losses) == 3 and all(loss == loss for loss in result.losses)
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_config.json").is_file()
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == "smollm2"
