"""Records → tokens: masking token by token, truncation, packing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from genrec_trainer import TrainerError
from genrec_trainer._data import IGNORE_INDEX, collate, pack, read_records, tokenize_records
from genrec_trainer._model import load_tokenizer
from genrec_trainer._train import _token_loss_sum


@pytest.fixture(scope="module")
def tok(tiny_model: Path):
    return load_tokenizer(tiny_model)


def _frame(**cols) -> pl.DataFrame:
    return pl.DataFrame({"record_id": [f"r{i}" for i in range(len(next(iter(cols.values()))))], **cols})


def _chars(text: str) -> list[str]:
    """The tiny model's tokens for plain text: one per character."""
    return list(text)


def test_prompt_completion_masking_token_by_token(tok) -> None:
    prompt = "user u1 visited poi p3 ."
    frame = _frame(prompt=[prompt], completion=["p4"])
    ex = tokenize_records(frame, tok, fmt="prompt", max_length=64, truncation=False, path="t").examples[0]
    tokens = tok.convert_ids_to_tokens(list(ex.input_ids))
    assert tokens == ["<s>", *_chars(prompt), "p", "4", "</s>"]
    expected = [IGNORE_INDEX] * (1 + len(prompt)) + [*tok.convert_tokens_to_ids(["p", "4"]), tok.eos_token_id]
    assert list(ex.labels) == expected


def test_messages_masking_token_by_token(tok) -> None:
    messages = [
        {"role": "system", "content": "predict"},
        {"role": "user", "content": "poi p1"},
        {"role": "assistant", "content": "p2"},
        {"role": "user", "content": "poi p5"},
        {"role": "assistant", "content": "p6 ."},
    ]
    frame = pl.DataFrame({"record_id": ["m0"], "messages": [messages]})
    ts = tokenize_records(frame, tok, fmt="auto", max_length=64, truncation=False, path="t")
    assert ts.format == "messages"
    ex = ts.examples[0]
    tokens = tok.convert_ids_to_tokens(list(ex.input_ids))
    assert tokens == [
        "<|system|>", *_chars("predict"), "</s>",
        "<|user|>", *_chars("poi p1"), "</s>",
        "<|assistant|>", *_chars("p2"), "</s>",
        "<|user|>", *_chars("poi p5"), "</s>",
        "<|assistant|>", *_chars("p6 ."), "</s>",
    ]  # fmt: skip
    trained = [t for t, label in zip(tokens, ex.labels) if label != IGNORE_INDEX]
    # Both assistant replies with their end-of-turn token, nothing else.
    assert trained == [*_chars("p2"), "</s>", *_chars("p6 ."), "</s>"]
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ex.input_ids, ex.labels))


def test_loss_counts_only_completion_tokens(tiny_model: Path, tok) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    frame = _frame(
        prompt=["user u1 visited poi p3 .", "user u2 visited poi p7 then poi p9 ."],
        completion=["p4", "p10 ."],
    )
    examples = tokenize_records(frame, tok, fmt="prompt", max_length=64, truncation=False, path="t").examples
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        loss_sum, count = _token_loss_sum(model, batch)
        # Reference: each record alone, no padding, float64 log-softmax, completion positions only.
        ref, n = 0.0, 0
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
            for pos in range(first, len(ex.input_ids)):
                ref -= float(logp[pos - 1, ex.input_ids[pos]])
                n += 1
    assert count == n == len("p4") + 1 + len("p10 .") + 1  # the completions' characters and </s>
    assert float(loss_sum) == pytest.approx(ref, rel=1e-5)
    # Changing a prompt token changes the inputs but never adds a loss term.
    assert collate(examples, tok.pad_token_id)["labels"].ne(IGNORE_INDEX).sum() == n


def test_packing_keeps_records_apart(tiny_model: Path, tok) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    frame = _frame(
        prompt=["user u1 visited poi p3 .", "user u2 visited poi p7 then poi p9 .", "poi p1 ."],
        completion=["p4", "p10 .", "p2"],
    )
    examples = tokenize_records(frame, tok, fmt="prompt", max_length=128, truncation=False, path="t").examples
    packed = pack(examples, 128)
    assert len(packed) == 1 and packed[0].n_records == 3
    with torch.no_grad():
        loose, n_loose = _token_loss_sum(model, collate(examples, tok.pad_token_id))
        tight, n_tight = _token_loss_sum(model, collate(packed, tok.pad_token_id))
    assert n_tight == n_loose
    # Equal losses prove that no token attended across a record boundary.
    assert float(tight) == pytest.approx(float(loose), rel=1e-5)


def test_truncation(tok) -> None:
    prompt = "user u1 visited poi p3 then poi p4 ."
    frame = _frame(prompt=[prompt], completion=["p6"])
    n_tokens = 1 + len(prompt) + 2 + 1  # <s>, the prompt's characters, "p6", </s>
    with pytest.raises(TrainerError, match=rf"record 'r0' has {n_tokens} tokens, more than max_length=8"):
        tokenize_records(frame, tok, fmt="prompt", max_length=8, truncation=False, path="data.parquet")
    ts = tokenize_records(frame, tok, fmt="prompt", max_length=8, truncation=True, path="t")
    ex = ts.examples[0]
    assert ts.n_truncated == 1 and len(ex.input_ids) == 8
    # The prompt lost its beginning; the completion is whole.
    assert tok.convert_ids_to_tokens(list(ex.input_ids))[-6:] == ["4", " ", ".", "p", "6", "</s>"]
    assert [label for label in ex.labels if label != IGNORE_INDEX] == [
        *tok.convert_tokens_to_ids(["p", "6"]),
        tok.eos_token_id,
    ]


def test_readers_agree(tmp_path: Path, tok) -> None:
    import datasets

    records = [
        {
            "record_id": "a",
            "prompt": "poi p1",
            "completion": "p2",
            "messages": [{"role": "user", "content": "poi p1"}, {"role": "assistant", "content": "p2"}],
        }
    ]
    pl.DataFrame(records).write_parquet(tmp_path / "r.parquet")
    (tmp_path / "r.jsonl").write_text(json.dumps(records[0]) + "\n", encoding="utf-8")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    outs = []
    for name in ("r.parquet", "r.jsonl", "ds"):
        frame = read_records(tmp_path / name)
        outs.append(
            tokenize_records(frame, tok, fmt="messages", max_length=32, truncation=False, path=name).examples
        )
    assert outs[0] == outs[1] == outs[2]


def test_bad_input(tmp_path: Path, tok) -> None:
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(
        {"record_id": [], "prompt": [], "completion": []},
        schema={"record_id": pl.String, "prompt": pl.String, "completion": pl.String},
    ).write_parquet(empty)
    with pytest.raises(TrainerError, match=r"empty\.parquet holds no records"):
        read_records(empty)
    with pytest.raises(TrainerError, match="does not exist"):
        read_records(tmp_path / "nope.parquet")
    frame = pl.DataFrame({"record_id": ["a"], "prompt": ["poi p1"]})
    with pytest.raises(TrainerError, match=r"x\.parquet: missing column\(s\) \['completion'\]"):
        tokenize_records(frame, tok, fmt="prompt", max_length=32, truncation=False, path="x.parquet")
    frame = pl.DataFrame(
        {"record_id": ["a"], "prompt": ["poi p1"], "completion": [None]},
        schema_overrides={"completion": pl.String},
    )
    with pytest.raises(TrainerError, match="record 'a' has a null prompt or completion"):
        tokenize_records(frame, tok, fmt="prompt", max_length=32, truncation=False, path="x")
    frame = pl.DataFrame({"record_id": ["b"], "messages": [[{"role": "user", "content": "poi p1"}]]})
    with pytest.raises(TrainerError, match="record 'b' has nothing to train on"):
        tokenize_records(frame, tok, fmt="messages", max_length=32, truncation=False, path="x")
