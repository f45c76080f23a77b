"""FSDP2 under torchrun on gloo (2 CPU processes) trains the same model as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genrec_trainer import TrainerError, load_config, train
from genrec_trainer._train import _check_supported, _Dist

from .conftest import run_cli


def _losses(log: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


def test_two_ranks_match_single_process_lora(tiny_model: Path, city, tmp_path: Path) -> None:
    common = [
        "--model",
        str(tiny_model),
        "--train",
        str(city["train"]),
        "--val",
        str(city["val"]),
        "--lr",
        "1e-2",
        "--max-steps",
        "6",
        "--warmup-steps",
        "2",
        "--save-every",
        "3",
        "--no-progress",
        "--dtype",
        "float32",  # pinned: 'auto' is bfloat16 for a single process on a CPU with native bf16
    ]
    # One global step = batch_size * grad_accum * world_size records in both layouts.
    done = run_cli(["train", *common, "--output", str(tmp_path / "fsdp"), "--batch-size", "2"], torchrun=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "adapter:" in done.stdout
    single = train(
        load_config(
            None,
            model=str(tiny_model),
            train=str(city["train"]),
            val=str(city["val"]),
            output=str(tmp_path / "single"),
            lr=1e-2,
            max_steps=6,
            warmup_steps=2,
            batch_size=2,
            grad_accum=2,
            dtype="float32",
            progress=False,
        )
    )
    result = json.loads((tmp_path / "fsdp" / "result.json").read_text())
    assert result["world_size"] == 2
    fsdp_losses = _losses(tmp_path / "fsdp" / "log.jsonl")
    # The losses are not flat (training moved), and both layouts move identically.
    assert single.losses[-1] < single.losses[0]
    assert fsdp_losses == pytest.approx(list(single.losses), rel=1e-5, abs=1e-6)
    assert result["eval_losses"][-1][1] == pytest.approx(single.eval_losses[-1][1], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # Run the same command again: it resumes from the step-3 checkpoint (sharded optimizer state and
    # LoRA weights loaded back onto both ranks) and must redo steps 4-6 exactly.
    again = run_cli(["train", *common, "--output", str(tmp_path / "fsdp"), "--batch-size", "2"], torchrun=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp" / "result.json").read_text())["resumed_from"] == 3
    assert _losses(tmp_path / "fsdp" / "log.jsonl") == pytest.approx(fsdp_losses, rel=1e-6, abs=1e-7)
    # The mid-run checkpoint holds full (gathered) LoRA tensors of the right shapes.
    ckpt = torch.load(tmp_path / "fsdp" / "checkpoints" / "step-00000003" / "trainable.pt", weights_only=True)
    assert {v.shape[0] if "lora_A" in k else v.shape[1] for k, v in ckpt.items()} == {8}  # not 4: gathered


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantised_fsdp_on_cpu_is_refused(quantization: str) -> None:
    cfg = load_config(None, train="x", quantization=quantization)
    with pytest.raises(TrainerError, match=f"'{quantization}' under FSDP is not supported on CPU"):
        _check_supported(cfg, _Dist(world=2, rank=0, active=True), torch.device("cpu"))
    # A single process on CPU is allowed (verified in test_qlora.py).
    _check_supported(cfg, _Dist(), torch.device("cpu"))
