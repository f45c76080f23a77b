"""Checkpoints: resuming never unpickles arbitrary objects, and stays exact."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec_trainer import TrainerError, TrainResult, load_config, train
from genrec_trainer._checkpoint import check_plain, load_rng, save_rng


class _Planted:
    """A pickle that creates ``marker`` when it is unpickled by the full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _config(tiny_model: Path, city: dict[str, Path], output: Path, **kw):
    base = {
        "model": str(tiny_model),
        "train": str(city["train"]),
        "output": str(output),
        "batch_size": 4,
        "lr": 1e-2,
        "max_steps": 6,
        "save_every": 2,
        "lora_dropout": 0.1,  # draws from the torch RNG: resume is exact only if its state is restored
        "progress": False,
        "dtype": "float32",
    }
    base.update(kw)
    return load_config(None, **base)


@pytest.fixture(scope="module")
def finished(
    tiny_model: Path, city: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """A 6-step run with checkpoints at steps 2 and 4."""
    return train(_config(tiny_model, city, tmp_path_factory.mktemp("ckpt") / "run"))


def _newest(output: Path) -> Path:
    return sorted((output / "checkpoints").glob("step-*"))[-1]


def test_checkpoint_holds_only_safe_formats(finished: TrainResult) -> None:
    ckpt = _newest(finished.output_dir)
    assert ckpt.name == "step-00000004"
    names = {p.name for p in ckpt.iterdir()}
    assert names == {"trainable.pt", "optimizer.pt", "rng-rank0.pt", "rng-rank0.json", "state.json"}
    for name in ("trainable.pt", "optimizer.pt", "rng-rank0.pt"):
        check_plain(torch.load(ckpt / name, weights_only=True), name)
    plain = json.loads((ckpt / "rng-rank0.json").read_text())
    assert set(plain) == {"python", "numpy"} and len(plain["python"]["state"]) == 625


def test_resume_in_process_is_exact(finished: TrainResult, tiny_model: Path, city, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(finished.output_dir, out)
    # The run is complete; the same config resumes from its newest checkpoint and redoes steps 5-6.
    again = train(_config(tiny_model, city, out))
    assert again.resumed_from == 4
    assert again.losses == finished.losses
    from safetensors.torch import load_file

    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(finished.output_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["optimizer.pt", "rng-rank0.pt", "trainable.pt"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_planted_pickle_never_runs(
    finished: TrainResult, tiny_model: Path, city, tmp_path: Path, name: str, writer: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished.output_dir, out)
    marker = tmp_path / "marker"
    target = _newest(out) / name
    if writer == "torch.save":
        torch.save({"state": _Planted(marker), "param_groups": []}, target)
    else:
        target.write_bytes(pickle.dumps(_Planted(marker)))
    # Decided: a refused file stops the run (one line naming it) rather than starting over, which
    # would overwrite the evidence and silently discard the training done so far.
    with pytest.raises(TrainerError) as exc:
        train(_config(tiny_model, city, out))
    assert not marker.exists()
    message = str(exc.value)
    assert "\n" not in message, message
    assert str(target) in message and "not loaded" in message, message
    assert "resume = false" in message
    # resume = false starts afresh without reading the folder.
    fresh = train(_config(tiny_model, city, out, resume=False))
    assert fresh.resumed_from == 0 and not marker.exists()


def test_broken_checkpoint_files_are_one_line(
    finished: TrainResult, tiny_model: Path, city, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished.output_dir, out)
    ckpt = _newest(out)
    whole = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(whole[: len(whole) // 2])  # a half-written file
    with pytest.raises(TrainerError, match=r"optimizer\.pt cannot be read") as exc:
        train(_config(tiny_model, city, out))
    assert "\n" not in str(exc.value)
    (ckpt / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainerError, match=r"optimizer\.pt is not loaded"):
        train(_config(tiny_model, city, out))
    torch.save([1, 2, 3], ckpt / "optimizer.pt")  # loads safely, but is no optimizer state
    with pytest.raises(TrainerError, match=r"optimizer\.pt is not an optimizer state"):
        train(_config(tiny_model, city, out))


def test_rng_states_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the legacy global state is what is saved
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in the Python state
    save_rng(tmp_path, 0)
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))  # noqa: NPY002
    random.seed(9)
    np.random.seed(9)  # noqa: NPY002
    torch.manual_seed(9)
    assert load_rng(tmp_path, 0)
    second = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))  # noqa: NPY002
    assert first[:3] == second[:3] and torch.equal(first[3], second[3])
    assert not load_rng(tmp_path, 1)  # no state saved for that rank


def test_rng_file_of_earlier_checkpoints_still_loads(tmp_path: Path) -> None:
    # Before the JSON file, the Python state sat in the .pt as a tuple of ints (safe to load too).
    random.seed(4)
    torch.manual_seed(5)
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp_path / "rng-rank0.pt")
    want = (random.random(), torch.rand(2))
    random.seed(0)
    torch.manual_seed(0)
    assert load_rng(tmp_path, 0)
    got = (random.random(), torch.rand(2))
    assert got[0] == want[0] and torch.equal(got[1], want[1])


def test_bad_rng_json_is_one_line(tmp_path: Path) -> None:
    save_rng(tmp_path, 0)
    (tmp_path / "rng-rank0.json").write_text(json.dumps({"python": {"version": 3, "state": [1, 2]}}))
    with pytest.raises(TrainerError, match=r"rng-rank0\.json: bad Python RNG state") as exc:
        load_rng(tmp_path, 0)
    assert "\n" not in str(exc.value)


def test_saving_refuses_objects_the_safe_loader_would_refuse() -> None:
    with pytest.raises(TrainerError, match=r"optimizer\.pt\['x'\] holds a _Planted"):
        check_plain({"x": _Planted(Path("m"))}, "optimizer.pt")
    check_plain({"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]}, "ok")
