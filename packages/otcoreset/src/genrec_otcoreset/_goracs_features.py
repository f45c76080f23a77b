"""``protocol="goracs"`` features: what the GORACS release feeds its selection, rebuilt from its code.

What the release does (``codes/grads/compute_grads*.py`` with the Alpaca-LoRA trainers it builds on,
``codes/data/generate_data_embeddings.ipynb``):

- gradient norm: LLaMA-7B (8 bit, float16) with the trained Alpaca LoRA (``alpaca-bigrec`` for SeqRec,
  ``alpaca-tallrec`` for CTR) loaded on top, in training mode (LoRA dropout 0.05 active); each record's
  Alpaca text (instruction, input and response) is tokenised whole (BOS, cut at 512, EOS appended when
  it fits), the labels are the input ids (``train_on_inputs``), so the loss is the token mean over the
  whole prompt and response; the norm of the gradient of ``layers.31.self_attn.v_proj.lora_B``;
- embedding: ``SentenceTransformer(roberta-base)`` (a plain RoBERTa folder, so mean pooling over the
  last hidden states, 512 tokens), on the Alpaca prompt plus response for SeqRec and the prompt alone
  for CTR.

The gradient script itself (``generate_grads.py``) is not in what we could read; the text template and
the tokenisation are the trainers' (GORACS ``codes/finetune/finetune_seqrec/train.py`` for SeqRec,
TALLRec ``finetune_rec.py`` for CTR), which is what the adapters were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genrec_otcoreset._errors import OtCoresetError

__all__ = ["GORACS_ENCODER", "goracs_grad_norms", "goracs_texts", "lora_b_param"]

#: The encoder of the GORACS release (its README: ``FacebookAI/roberta-base``).
GORACS_ENCODER = "FacebookAI/roberta-base"

_HEAD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def _train_text(task: str, instruction: str, inp: str, output: str) -> str:
    """The text the adapters were trained on and the gradients are taken of."""
    # The trailing characters after "request." differ between the trainers and are kept: they are
    # tokens the model reads. BIGRec (SeqRec): one space with an input, two without; TALLRec (CTR): its
    # source's "  # noqa: E501" sits inside the f-string, so it is part of every prompt.
    tail = "  # noqa: E501" if task == "ctr" else (" " if inp else "  ")
    head = (_HEAD_INPUT if inp else _HEAD_NO_INPUT) + tail
    if inp:
        return f"{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n{output}"
    return f"{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"


def _embed_text(task: str, instruction: str, inp: str, output: str) -> str:
    """The text the release embeds (``generate_prompt`` of its embeddings notebook)."""
    if task == "ctr":  # the prompt only: the response is the label
        return f"{_HEAD_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"{_HEAD_INPUT}  \n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n{output}\n"


def _parts(df: Any) -> list[tuple[str, str, str] | None]:
    """(instruction, input, output) per record: the TALLRec columns when present, else the chat
    ``messages`` (system, user, assistant) that sftdata writes beside every Alpaca prompt."""
    n = df.height
    if all(c in df.columns for c in ("instruction", "input", "output")):
        return list(zip(df["instruction"].to_list(), df["input"].to_list(), df["output"].to_list(), strict=True))
    if "messages" in df.columns:
        out: list[tuple[str, str, str] | None] = []
        for msgs in df["messages"].to_list():
            roles = {m["role"]: m["content"] for m in (msgs or [])}
            if {"system", "user", "assistant"} <= roles.keys():
                out.append((roles["system"], roles["user"], roles["assistant"]))
            else:
                out.append(None)
        return out
    return [None] * n


def goracs_texts(df: Any) -> tuple[list[str], list[str], list[int | None]]:
    """Per record: the text whose loss is taken, the text embedded, and the length in characters of
    the training text's prompt (everything before the response; ``None`` when unknown).

    Records without instruction/input/output (neither those columns nor chat ``messages``) use their
    ``prompt`` as the Alpaca prompt as it stands: ``prompt + completion`` and, for SeqRec,
    ``prompt + completion + "\\n"`` embedded (CTR: the prompt)."""
    tasks = df["task"].to_list() if "task" in df.columns else ["seqrec"] * df.height
    train: list[str] = []
    embed: list[str] = []
    plen: list[int | None] = []
    for parts, task, prompt, completion in zip(
        _parts(df), tasks, df["prompt"].to_list(), df["completion"].to_list(), strict=True
    ):
        if parts is None:
            train.append(prompt + completion)
            embed.append(prompt if task == "ctr" else prompt + completion + "\n")
            plen.append(len(prompt))
            continue
        ins, inp, out = (str(v or "") for v in parts)
        train.append(_train_text(task, ins, inp, out))
        embed.append(_embed_text(task, ins, inp, out))
        plen.append(len(_train_text(task, ins, inp, "")))
    return train, embed, plen


def _layers(model: Any) -> Any:
    for attr in ("model.layers", "model.decoder.layers", "transformer.h"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise OtCoresetError(f"model {type(model).__name__}: cannot find its decoder layers")


def lora_b_param(peft_model: Any, layer: int) -> Any:
    """The ``lora_B`` weight of ``layers[layer].self_attn.v_proj`` of a peft model's active adapter."""
    base = peft_model.get_base_model()
    layers = _layers(base)
    if not -len(layers) <= layer < len(layers):
        raise OtCoresetError(f"layer {layer} is out of range: the model has {len(layers)} layers")
    proj = getattr(getattr(layers[layer], "self_attn", None), "v_proj", None)
    lora_b = getattr(proj, "lora_B", None)
    name = peft_model.active_adapter
    if lora_b is None or name not in lora_b:
        raise OtCoresetError(f"adapter has no LoRA on layers[{layer}].self_attn.v_proj (target_modules must include v_proj)")
    return lora_b[name].weight


def goracs_grad_norms(
    peft_model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layer: int = -1,
    dropout: bool = True,
    seed: int = 0,
    max_length: int = 512,
    prompt_chars: Sequence[int | None] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per record ``||dL/dB||_F`` of the adapter's ``v_proj.lora_B`` at ``layer``, ``L`` the token-mean
    loss over the whole text, and its EL2N (mean over the response tokens of ``||softmax - onehot||``).

    One record per forward and backward (a per-record gradient needs its own backward). With
    ``dropout`` the model is in training mode, as in the release; the dropout draws of record ``i``
    come from ``torch.manual_seed(seed + i)``, so a record's norm does not depend on the others.
    """
    import torch
    from tqdm.auto import tqdm

    param = lora_b_param(peft_model, layer)
    device = param.device
    eos = tokenizer.eos_token_id
    was_training = peft_model.training
    req = {id(p): p.requires_grad for p in peft_model.parameters()}
    for p in peft_model.parameters():
        p.requires_grad_(False)
    param.requires_grad_(True)  # only this gradient is read: the backward stops at its layer
    peft_model.train(dropout)
    norms = np.empty(len(texts), dtype=np.float64)
    el2n = np.full(len(texts), np.nan, dtype=np.float64)
    try:
        for i, text in enumerate(tqdm(texts, desc="grad norms", unit="rec", disable=not progress)):
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            if eos is not None and ids[-1] != eos and len(ids) < max_length:
                ids = [*ids, eos]
            if len(ids) < 2:
                raise OtCoresetError(f"record {i}: its text has fewer than 2 tokens; the loss needs one prediction")
            t = torch.tensor([ids], device=device)
            torch.manual_seed(seed + i)
            param.grad = None
            with torch.enable_grad():
                out = peft_model(input_ids=t, labels=t)
                out.loss.backward()
            norms[i] = float(param.grad.detach().float().norm())
            start = 1
            if prompt_chars is not None and prompt_chars[i] is not None:
                start = len(tokenizer(text[: prompt_chars[i]], truncation=True, max_length=max_length)["input_ids"])
            with torch.no_grad():
                logits = out.logits[0, :-1].float()
                target = t[0, 1:]
                keep = slice(max(start - 1, 0), None)
                el2n[i] = _el2n(logits[keep], target[keep])
    finally:
        param.grad = None
        for p in peft_model.parameters():
            p.requires_grad_(req[id(p)])
        peft_model.train(was_training)
    return norms, el2n


def _el2n(logits: Any, target: Any) -> float:
    """Mean over positions of ``||softmax(logits) - onehot(target)||_2`` (NaN for no positions)."""
    import torch

    if logits.shape[0] == 0:
        return float("nan")
    p = torch.softmax(logits.float(), dim=-1)
    p_y = p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    sq = (p * p).sum(-1) - 2 * p_y + 1
    return float(sq.clamp(min=0).sqrt().mean())
