"""Training throughput: genrec-trainer against the Hugging Face ``Trainer`` (same model, data, batch, LoRA).

GENREC_BENCH_SIZE=quick (default): a tiny random Llama. full: adds SmolLM2-135M-Instruct.
Run: uv run --no-sync pytest bench/trainer -o python_files='bench_*.py' -p no:cacheprovider
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from genrec_core.models import build_tiny_model, resolve_model  # noqa: E402
from genrec_trainer import load_config, train  # noqa: E402
from genrec_trainer._data import collate, read_records, tokenize_records  # noqa: E402
from genrec_trainer._model import load_tokenizer  # noqa: E402
from genrec_trainer._synthetic import synthetic_city_records, write_records  # noqa: E402

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
CASES = [("tiny-llama", 40, 8)] + ([("smollm2", 6, 4)] if SIZE == "full" else [])


def _hf_trainer_tokens_per_s(model_path: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    """The baseline: transformers.Trainer on the same tokenised records and LoRA settings."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    tok = load_tokenizer(model_path)
    examples = tokenize_records(
        read_records(data), tok, fmt="auto", max_length=1024, truncation=True, path=data
    ).examples
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    seen = {"tokens": 0}

    def collator(batch):
        out = collate(batch, tok.pad_token_id)
        seen["tokens"] += sum(len(ex.input_ids) for ex in batch)
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()
            seen["tokens"] = 0

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=list(examples), data_collator=collator, callbacks=[clock]
    )
    trainer.train()
    return seen["tokens"] / clock.seconds


@pytest.mark.parametrize(("name", "steps", "batch"), CASES)
def test_train_throughput(benchmark, tmp_path: Path, name: str, steps: int, batch: int) -> None:
    # One thread for both sides: on a shared 2-core machine two spin-waiting OpenMP threads make
    # tiny-model steps 100x slower and the ratio meaningless.
    torch.set_num_threads(1)
    model_path = (
        build_tiny_model(tmp_path / "tiny", initializer_range=0.2, max_positions=512)
        if name == "tiny-llama"
        else resolve_model("smollm2").path
    )
    data = write_records(synthetic_city_records(256), tmp_path / "train.parquet")
    baseline = _hf_trainer_tokens_per_s(model_path, data, tmp_path / "hf", steps, batch)
    cfg = load_config(
        None,
        model=str(model_path),
        train=str(data),
        output=str(tmp_path / "ours"),
        max_steps=steps,
        batch_size=batch,
        lr=2e-4,
        progress=False,
        device="cpu",
        max_length=1024,
        truncation=True,
        dtype="float32",  # like for like: the baseline trains in float32 ('auto' is bf16 on AMX CPUs)
    )
    result = benchmark.pedantic(train, args=(cfg,), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "ratio": result.tokens_per_s / baseline,
            "baseline": baseline,
            "target": 1.0,
            "size": f"{name}: {steps} steps x batch {batch}",
            "device": "cpu",
            "tokens_per_s": result.tokens_per_s,
            "threads": torch.get_num_threads(),
        }
    )
    assert result.steps == steps
