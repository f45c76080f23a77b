"""QLoRA: LoRA gradients over 4-bit / 8-bit base weights equal those over the dequantised fp32 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genrec_trainer import load_config, train
from genrec_trainer._data import collate, read_records, tokenize_records
from genrec_trainer._model import load_model, load_tokenizer

bnb = pytest.importorskip("bitsandbytes")


def _dequantised(module: torch.nn.Module) -> torch.Tensor:
    w = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    # LLM.int8 row-wise absmax: W = CB * SCB / 127
    return w.data.float() * w.SCB.float()[:, None] / 127.0


def _grads_vs_reference(tiny_model: Path, city, quantization: str) -> tuple[dict, dict, int]:
    from peft import get_peft_model_state_dict  # noqa: F401  (peft must be importable)

    cfg = load_config(None, model=str(tiny_model), train="x", quantization=quantization, dtype="float32")
    ref_cfg = load_config(None, model=str(tiny_model), train="x", dtype="float32")
    device = torch.device("cpu")
    qmodel = load_model(tiny_model, cfg, device=device, distributed=False)
    ref = load_model(tiny_model, ref_cfg, device=device, distributed=False)
    tok = load_tokenizer(tiny_model)
    examples = tokenize_records(
        read_records(city["train"]).head(6), tok, fmt="auto", max_length=128, truncation=False, path="t"
    ).examples
    batch = collate(examples, tok.pad_token_id)

    quantised = {
        n: m for n, m in qmodel.named_modules() if isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)
    }
    assert quantised, "no bitsandbytes layers: the model was not quantised"
    ref_modules = dict(ref.named_modules())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in quantised.items():
            ref_modules[name].weight.copy_(_dequantised(module))
        # Random LoRA B (peft starts it at zero, which would make every A gradient zero).
        for (name, p), (rname, rp) in zip(qmodel.named_parameters(), ref.named_parameters()):
            if p.requires_grad:
                assert name == rname
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                rp.copy_(p)

    # The known trap: an eval-mode forward first (as an evaluation step does) must not break training.
    qmodel.eval()
    with torch.no_grad():
        qmodel(input_ids=batch["input_ids"][:1])
    qmodel.train()
    ref.train()
    grads = []
    for model in (qmodel, ref):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
        )
        loss.backward()
        grads.append(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        )
    n_trainable = sum(1 for p in qmodel.parameters() if p.requires_grad)
    return grads[0], grads[1], n_trainable


def test_nf4_lora_gradients_match_dequantised_fp32(tiny_model: Path, city) -> None:
    got, want, n = _grads_vs_reference(tiny_model, city, "nf4")
    assert len(got) == len(want) == n  # every LoRA parameter got a gradient
    for name in want:
        assert want[name].abs().max() > 0
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore:MatMul8bitLt.*:UserWarning")
def test_int8_lora_gradients_match_dequantised_fp32(tiny_model: Path, city) -> None:
    got, want, n = _grads_vs_reference(tiny_model, city, "int8")
    assert len(got) == len(want) == n
    for name in want:
        # LLM.int8 also quantises the activations (to fp16, then int8 rows): close, not equal.
        rel = (got[name] - want[name]).norm() / want[name].norm()
        assert rel < 0.05, (name, float(rel))


def test_nf4_training_learns(tiny_model: Path, city, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        model=str(tiny_model),
        train=str(city["train"]),
        output=str(tmp_path),
        quantization="nf4",
        batch_size=8,
        lr=1e-2,
        max_steps=40,
        progress=False,
        val=str(city["val"]),
    )
    result = train(cfg)
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_model.safetensors").is_file()
