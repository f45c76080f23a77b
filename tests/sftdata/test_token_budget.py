"""Token budget: keep the most recent check-ins that fit, record how many were cut."""

from __future__ import annotations

import polars as pl
import pytest

import genrec_sftdata as g


@pytest.fixture(scope="module")
def tokenizer(small_prepared: g.PreparedData):
    """A real (small) BPE tokenizer trained on the city's own prompts, wrapped by transformers."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = pl.concat(list(g.build_next_poi(small_prepared).values()))["prompt"].to_list()
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"], show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def _n_tokens(tokenizer, prompt: str, completion: str) -> int:
    return len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"])


def test_budget_keeps_most_recent_and_is_maximal(small_prepared: g.PreparedData, tokenizer) -> None:
    base = g.NextPoiConfig(every_prefix=True, splits=("test",))
    full = g.build_next_poi(small_prepared, config=base)["test"]
    lens = [_n_tokens(tokenizer, p, c) for p, c in zip(full["prompt"], full["completion"])]
    max_length = sorted(lens)[len(lens) // 2]  # about half the records need cutting
    cut = g.build_next_poi(
        small_prepared, config=g.NextPoiConfig(every_prefix=True, splits=("test",), max_length=max_length),
        tokenizer=tokenizer,
    )["test"]
    assert cut["record_id"].to_list() == full["record_id"].to_list()
    assert (cut["n_cut"] > 0).any()
    for f, c in zip(full.iter_rows(named=True), cut.iter_rows(named=True)):
        kept = len(f["history_poi_idx"]) - c["n_cut"]
        assert c["n_checkins"] == kept
        assert c["history_poi_idx"] == f["history_poi_idx"][len(f["history_poi_idx"]) - kept:]
        n = _n_tokens(tokenizer, c["prompt"], c["completion"])
        if kept > 0:
            assert n <= max_length
        if c["n_cut"] == 0:
            assert c["prompt"] == f["prompt"]
        else:
            # Maximal: one more check-in would not fit. Rebuild that longer prompt by hand.
            sentences = f["messages"][1]["content"].split(": ", 1)[1].split("\nGiven the data, ")[0]
            parts = [s + "." for s in sentences.rstrip(".").split(". ")]
            longer = " ".join(parts[len(parts) - kept - 1:])
            user = f["messages"][1]["content"].replace(sentences, longer)
            prompt = f"{f['messages'][0]['content']}\n\n{user}"
            assert _n_tokens(tokenizer, prompt, c["completion"]) > max_length


def test_budget_needs_a_tokenizer(small_prepared: g.PreparedData) -> None:
    with pytest.raises(g.SftDataError, match="max_length needs a tokenizer"):
        g.build_next_poi(small_prepared, config=g.NextPoiConfig(max_length=100))


def test_cli_budget_with_a_saved_tokenizer(small_prepared: g.PreparedData, tokenizer, tmp_path) -> None:
    from genrec_sftdata._cli import main

    tokenizer.save_pretrained(tmp_path / "tok")
    assert small_prepared.path is not None
    out = tmp_path / "sft"
    assert main(["build", "--task", "next_poi", "--data", str(small_prepared.path), "--out", str(out),
                 "--max-length", "120", "--tokenizer", str(tmp_path / "tok"), "--splits", "val"]) == 0
    val = pl.read_parquet(out / "val.parquet")
    assert (val["n_cut"] > 0).any()
    kept = val.filter(pl.col("n_checkins") > 0)
    assert all(_n_tokens(tokenizer, p, c) <= 120 for p, c in zip(kept["prompt"], kept["completion"]))
