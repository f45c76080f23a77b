"""Single-process training: it learns, the adapter reloads with peft, resume is exact, bad input fails."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genrec_trainer import TrainConfig, TrainerError, TrainResult, load_config, train
from genrec_trainer._data import IGNORE_INDEX, read_records, tokenize_records
from genrec_trainer._model import load_tokenizer

from .conftest import subprocess_env


def _config(tiny_model: Path, city: dict[str, Path], output: Path, **kw) -> TrainConfig:
    base = {
        "model": str(tiny_model),
        "train": str(city["train"]),
        "output": str(output),
        "batch_size": 8,
        "lr": 1e-2,
        "max_steps": 8,
        "progress": False,
        "log_every": 1,
        "dtype": "float32",  # parity tests: 'auto' is bfloat16 on CPUs with native bf16
    }
    base.update(kw)
    return load_config(None, **base)


@pytest.fixture(scope="module")
def trained(tiny_model: Path, city: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("trained")
    # val = train: the final eval loss is then the adapter's loss on its own training data.
    # LoRA on every linear layer: with a character-level tokenizer the POI ids are digit sequences,
    # which the attention projections alone do not learn to map in 160 steps.
    cfg = _config(
        tiny_model, city, out, max_steps=160, val=str(city["train"]), eval_every=80, merge=True,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
    return train(cfg)


def _reference_loss(model, examples) -> float:
    """Mean completion-token negative log-likelihood, one record at a time, in float64."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            logp = torch.log_softmax(model(torch.tensor([ex.input_ids])).logits[0].double(), -1)
            for pos, label in enumerate(ex.labels):
                if label != IGNORE_INDEX and pos > 0:
                    total -= float(logp[pos - 1, label])
                    n += 1
    return total / n


def test_loss_falls_and_log_is_complete(trained: TrainResult) -> None:
    assert trained.steps == 160 and len(trained.losses) == 160
    start, end = sum(trained.losses[:5]) / 5, sum(trained.losses[-10:]) / 10
    assert end < 0.25 * start, (start, end)
    lines = [json.loads(line) for line in trained.log_path.read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 161))
    assert [r["loss"] for r in steps] == pytest.approx(list(trained.losses))
    assert {"lr", "grad_norm", "tokens_per_s", "peak_memory_mb", "epoch"} <= set(steps[0])
    # warm-up 0 then cosine: the learning rate decays monotonically to near zero.
    lrs = [r["lr"] for r in steps]
    assert (
        lrs[0] == pytest.approx(1e-2) and all(a >= b for a, b in itertools.pairwise(lrs)) and lrs[-1] < 1e-4
    )
    assert [r["step"] for r in lines if "eval_loss" in r] == [80, 160]
    assert trained.target_tokens > 0 and trained.tokens > trained.target_tokens


def test_adapter_reloads_with_peft_and_changes_generations(
    trained: TrainResult, tiny_model: Path, city
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert trained.adapter_dir is not None and (trained.adapter_dir / "adapter_config.json").is_file()
    tok = load_tokenizer(tiny_model)
    examples = tokenize_records(
        read_records(city["train"]), tok, fmt="auto", max_length=256, truncation=False, path="t"
    ).examples
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    base_loss = _reference_loss(base, examples)
    model = PeftModel.from_pretrained(base, str(trained.adapter_dir)).eval()
    # The loss the trainer reported at the end is the reloaded adapter's loss (independent loop).
    assert trained.eval_losses[-1][1] == pytest.approx(_reference_loss(model, examples), rel=1e-4)
    assert trained.eval_losses[-1][1] < 0.25 * base_loss

    frame = read_records(city["train"]).head(16)
    changed = correct = 0
    for row in frame.iter_rows(named=True):
        prompt = tok.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
        # "p", up to two digits and </s>: the tokenizer is character-level.
        kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            tuned = model.generate(**ids, **kw)[0, ids["input_ids"].shape[1] :]
            with model.disable_adapter():
                plain = model.generate(**ids, **kw)[0, ids["input_ids"].shape[1] :]
        changed += tuned.tolist() != plain.tolist()
        correct += tok.decode(tuned, skip_special_tokens=True).strip() == row["completion"]
    assert changed >= 12
    # A random character-level model writes the right "pN" far less than 1 time in 24 (3 tokens to get
    # right); the adapter gets about half after 160 steps.
    assert correct >= 6

    # merge = true wrote a plain model equal to base + adapter.
    assert trained.model_dir is not None
    merged = AutoModelForCausalLM.from_pretrained(str(trained.model_dir), dtype=torch.float32)
    probe = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(probe).logits, model(probe).logits, rtol=1e-4, atol=1e-5)


def test_grad_accumulation_equals_bigger_batch(tiny_model: Path, city, tmp_path: Path) -> None:
    big = train(_config(tiny_model, city, tmp_path / "big", batch_size=8, grad_accum=1, max_steps=4))
    acc = train(_config(tiny_model, city, tmp_path / "acc", batch_size=2, grad_accum=4, max_steps=4))
    assert acc.losses == pytest.approx(big.losses, rel=1e-5)
    assert acc.target_tokens == big.target_tokens


def _losses(log: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r}


def test_sigkill_after_checkpoint_then_resume_is_exact(tiny_model: Path, city, tmp_path: Path) -> None:
    kw = {"max_steps": 10, "save_every": 2, "lora_dropout": 0.1, "batch_size": 4}
    reference = train(_config(tiny_model, city, tmp_path / "ref", **kw))

    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "genrec_trainer",
        "train",
        "--model",
        str(tiny_model),
        "--train",
        str(city["train"]),
        "--output",
        str(out),
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--max-steps",
        "10",
        "--save-every",
        "2",
        "--lora-dropout",
        "0.1",
        "--dtype",
        "float32",
        "--no-progress",
    ]
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + 300
    while not (first / "state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "adapter").exists()

    done = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "adapter:" in done.stdout
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["resumed_from"] >= 2
    got, want = _losses(out / "log.jsonl"), _losses(reference.log_path)
    assert sorted(got) == list(range(1, 11))  # the killed run's lines after its checkpoint are gone
    assert [got[s] for s in range(1, 11)] == pytest.approx(
        [want[s] for s in range(1, 11)], rel=1e-6, abs=1e-7
    )
    a = _adapter_tensors(out / "adapter")
    b = _adapter_tensors(reference.output_dir / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_bad_input_is_named(tiny_model: Path, city, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match=r"config field 'model': .*no-model'?: no such file or folder"):
        train(_config(tmp_path / "no-model", city, tmp_path / "o1"))
    with pytest.raises(TrainerError, match=r"target_modules.*\['qkv'\] not found"):
        train(_config(tiny_model, city, tmp_path / "o2", target_modules=("q_proj", "qkv")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(TrainerError, match="holds no records"):
        train(_config(tiny_model, {"train": empty}, tmp_path / "o3"))
    with pytest.raises(TrainerError, match="more than max_length=8"):
        train(_config(tiny_model, city, tmp_path / "o4", max_length=8))
    with pytest.raises(TrainerError, match="liger"):
        train(_config(tiny_model, city, tmp_path / "o5", liger=True, device="cpu"))


def test_auto_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec_core import models
    from genrec_trainer import _model

    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        assert _model.compute_dtype(load_config(None, dtype="auto"), cpu) == expected
        # FSDP on CPU and quantised bases stay float32; an explicit dtype is always kept.
        assert _model.compute_dtype(load_config(None, dtype="auto"), cpu, distributed=True) == torch.float32
        assert _model.compute_dtype(load_config(None, dtype="auto", quantization="nf4"), cpu) == torch.float32
        assert _model.compute_dtype(load_config(None, dtype="float32"), cpu) == torch.float32


def test_bfloat16_training_tracks_float32(tiny_model: Path, city: dict[str, Path], tmp_path: Path) -> None:
    full = train(_config(tiny_model, city, tmp_path / "f32", max_steps=6))
    half = train(_config(tiny_model, city, tmp_path / "bf16", max_steps=6, dtype="bfloat16"))
    assert half.losses[-1] < half.losses[0]
    # Same data, same seed: bfloat16 rounding moves each loss by well under a percent or two.
    assert half.losses == pytest.approx(list(full.losses), rel=3e-2)
    assert half.losses != pytest.approx(list(full.losses), rel=1e-7)  # it did compute in bfloat16
