"""Tiny random Llama models and a learnable synthetic-city SFT set, for tests, benchmarks and demos."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
N_POIS = 24
WORDS = [
    "user",
    "visited",
    "then",
    "next",
    "poi",
    "at",
    "morning",
    "evening",
    "night",
    "cafe",
    "park",
    "museum",
    "bar",
    "gym",
    "office",
    "predict",
    "the",
    "place",
    "will",
    "go",
    "to",
    "?",
    ".",
]


def vocabulary() -> list[str]:
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    return specials + WORDS + [f"p{i}" for i in range(N_POIS)] + [f"u{i}" for i in range(16)]


def make_tokenizer(folder: str | Path) -> Any:
    """A word-level fast tokenizer with BOS/EOS and a simple chat template, saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def make_tiny_llama(
    folder: str | Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    initializer_range: float = 0.2,
) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        initializer_range=initializer_range,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return folder


def next_poi(history: list[int]) -> int:
    """The synthetic city's rule: places form a ring and users walk it (learnable by a tiny model)."""
    return (history[-1] + 1) % N_POIS


def synthetic_city_records(n: int, *, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """SFT records (DESIGN.md §2 columns) whose completion follows a learnable rule."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        user = rng.randrange(16)
        history = [rng.randrange(N_POIS) for _ in range(rng.randint(2, 5))]
        target = next_poi(history)
        visits = " then ".join(f"poi p{p}" for p in history)
        prompt = f"user u{user} visited {visits} . predict the next poi ?"
        completion = f"p{target}"
        records.append(
            {
                "record_id": f"{split}-{i}",
                "task": "next_poi",
                "user_id": f"u{user}",
                "split": split,
                "prompt": prompt,
                "completion": completion,
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion},
                ],
                "target_poi_idx": target,
            }
        )
    return records


def write_records(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as .parquet or .jsonl (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        import polars as pl

        pl.DataFrame(records).write_parquet(path)
    return path
