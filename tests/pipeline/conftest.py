"""A tiny random Llama with a byte-level BPE tokenizer that reads any prompt text, for fast runs."""

from __future__ import annotations

from pathlib import Path

import pytest

_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_llama(folder: Path, corpus: list[str], *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = _CHAT
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from genrec_sftdata import NextPoiConfig, build_next_poi, prepare, synthesize_city

    prepared = prepare(synthesize_city(n_users=8, seed=1, n_pois=40, checkins_per_user=40))
    built = build_next_poi(prepared, config=NextPoiConfig(max_history=4))
    corpus = [p + "\n" + c for p, c in zip(built["train"]["prompt"], built["train"]["completion"])]
    corpus += [
        '{"traits": ["extroverted"], "age": "adult", "summary": "A user who visits coffee shops."}',
        "user profile preferences routines socio-economic education gender",
    ]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), corpus)
