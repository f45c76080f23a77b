"""SeqRec and CTR evaluation as BIGRec / TALLRec / GORACS publish it, against brute-force references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_evaluator import EvaluatorError, Query, evaluate_ctr, evaluate_seqrec
from genrec_evaluator._ctr import CtrConfig
from genrec_evaluator._published import (
    alpaca_prompt,
    argsort_positions,
    bigrec_full_rank,
    bigrec_title,
    goracs_sampled_rank,
)
from genrec_evaluator._seqrec import SeqRecConfig

# -- prompts -----------------------------------------------------------------------------------------


def test_alpaca_prompts_as_published() -> None:
    bigrec = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.  \n\n### Instruction:\nI\n\n### Input:\nX\n\n"
        "### Response:\n"
    )
    assert alpaca_prompt("I", "X", style="bigrec") == bigrec
    tallrec = bigrec.replace("request.  \n", "request.  # noqa: E501\n")
    assert alpaca_prompt("I", "X", style="tallrec") == tallrec
    assert alpaca_prompt("I", "", style="bigrec") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.  \n\n### Instruction:\nI\n\n### Response:\n"
    )
    with pytest.raises(EvaluatorError, match="prompt style"):
        alpaca_prompt("I", "X", style="alpaca")
    assert bigrec_title('x ### Response:\n"Halo 3"\n') == 'Halo 3"\n'  # only quotes at the ends are stripped


# -- ranks and ties ----------------------------------------------------------------------------------


def _brute_position(dist: Sequence[float], j: int) -> int:
    """Position of item j in a stable ascending sort, by counting."""
    return sum(1 for k, d in enumerate(dist) if d < dist[j] or (d == dist[j] and k < j))


def test_positions_count_ties_by_index() -> None:
    dist = np.array([2.0, 1.0, 2.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(argsort_positions(dist), [_brute_position(dist, j) for j in range(6)])
    # A target tied with an earlier item is placed after it; tied with a later one, before it.
    assert _brute_position(dist, 4) == 2 and _brute_position(dist, 1) == 1
    # BIGRec: the best position among the items that carry the target's title.
    assert bigrec_full_rank(dist, np.array([False, False, True, False, False, True])) == 4
    # GORACS: candidates before the target in the full order, duplicates counted, ties only by index.
    assert goracs_sampled_rank(dist, 2, [2, 0, 5, 3, 3]) == 3  # 0 (tie, smaller index) + 3 twice; 5 is after
    assert goracs_sampled_rank(dist, 0, [0, 2, 5]) == 0


class TableEmbedder:
    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = table

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=float)


# Two different titles at the same point (a planted tie), and one title held by two items.
TABLE = {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [1.0, 0.0], "d": [3.0, 0.0], "e": [0.0, 2.0], "q": [1.0, 0.1],
         '"b"': [1.0, 0.0]}


def _tie_items() -> pl.DataFrame:
    return pl.DataFrame({"item_id": [10, 11, 12, 13, 14, 15], "title": ["a", "b", "c", "d", "e", '"b"']})


def test_seqrec_bigrec_ranks_strict_ties_and_titles() -> None:
    records = pl.DataFrame({
        "record_id": ["r0", "r1", "r2", "r3"],
        "target_item_id": [12, 11, 15, 10],
        "negative_item_ids": [[11, 13], [12, 13], [14, 12], [12, 11, 12]],
    })
    result = evaluate_seqrec(records, _tie_items(), generations=["q", "q", '"q"', "e"],
                             embedder=TableEmbedder(TABLE), config=SeqRecConfig(protocol="bigrec", n_boot=50))
    # q = (1, 0.1): b, c and "b" are tied at 0.1 (b first by index), then a, d, e.
    # r0 target c (index 2): after b -> 0-based 1. r1 target b -> 0. r2 target "b" (index 5) shares b's
    # title after BIGRec's strip, so its rank is b's: 0. r3: e generated, target a: e, a -> 1.
    rank = result.predictions["model"]["target_rank"].to_numpy()
    np.testing.assert_array_equal(rank, [2, 1, 1, 2])
    m = result.metrics["model"]
    assert set(k for k in m if k.startswith("hr@")) == {f"hr@{k}" for k in (1, 3, 5, 10, 20, 50)}
    assert m["hr@1"] == 0.5
    assert m["ndcg@3"] == pytest.approx((2 / math.log2(3) + 2) / 4)
    # Sampled, GORACS's way: titles resolve to their last item ("b" -> 15), duplicates count.
    # r0 target c among {c, b->15, d}: 15 is tied with c but has a larger index -> 0.
    # r1 target b -> item 15 among {15, c, d}: c (index 2) tied, smaller index -> 1.
    # r2 target 15 among {15, e, c}: c before -> 1. r3 target a among {a, c, b->15, c}: from e, a (2.0) is
    # closer than b and c (sqrt 5) -> 0.
    rs = [1 + r for r in (0, 1, 1, 0)]
    assert m["sampled_hr@1"] == pytest.approx(np.mean(np.array(rs) <= 1))
    goracs = evaluate_seqrec(records, _tie_items(), generations=["q", "q", '"q"', "e"],
                             embedder=TableEmbedder(TABLE), config=SeqRecConfig(protocol="goracs", n_boot=50))
    g = goracs.metrics["model"]
    assert {k for k in g if k.startswith("sampled_")} == {"sampled_ndcg@5", "sampled_hr@5", "sampled_ndcg@10", "sampled_hr@10"}
    assert g["sampled_ndcg@5"] == pytest.approx(np.mean([1 / math.log2(r + 1) for r in rs]))
    # The genrec default stays pessimistic: every tie counts against the target.
    ours = evaluate_seqrec(records, _tie_items(), generations=["q", "q", "q", "e"], embedder=TableEmbedder(TABLE))
    np.testing.assert_array_equal(ours.predictions["model"]["target_rank"].to_numpy(), [3, 3, 3, 2])


# -- tiny LLaMA-2-family model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    from genrec_core.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama2", family="llama2", max_positions=1024)


TITLES = ["Halo 3", "Mario Kart", "Zelda", "Halo 3", "Doom", "Tetris", "Portal 2", "Myst", "Braid", "Limbo",
          "Fez", "Celeste", "Hades", "Inside", "Journey", "Okami", "Rez", "Ico"]


def _hf_embeddings(path: Path, texts: list[str]) -> np.ndarray:
    """Independent reference: the tokenizer's own left padding with id 0, batches of 16, last layer, last token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token_id = 0
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), 16):
            enc = tok(texts[s : s + 16], return_tensors="pt", padding=True)
            hs = model(enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True).hidden_states
            out.append(hs[-1][:, -1, :].double().numpy())
    return np.concatenate(out)


def test_bigrec_grounding_equals_brute_force(tiny_llama2: Path) -> None:
    items = pl.DataFrame({"item_id": list(range(100, 100 + len(TITLES))), "title": TITLES})
    records = pl.DataFrame({
        "record_id": ["x", "y", "z"],
        "target_item_id": [103, 105, 117],
        "negative_item_ids": [[101, 102, 104], [100, 103, 116], [110, 111, 112]],
    })
    gens = ['"Halo 3"', "Tetrs", "Ico"]
    result = evaluate_seqrec(records, items, model=tiny_llama2, generations=gens,
                             config=SeqRecConfig(protocol="bigrec", n_boot=50))
    item_vecs = _hf_embeddings(tiny_llama2, TITLES)
    gen_vecs = _hf_embeddings(tiny_llama2, [g.strip('"') for g in gens])
    # Both "Halo 3" items sit in the first batch of 16 with the same padding: identical vectors, a planted tie.
    np.testing.assert_array_equal(item_vecs[0], item_vecs[3])
    expect = []
    for i, t in enumerate([3, 5, 17]):
        dist = [float(np.linalg.norm(item_vecs[j] - gen_vecs[i])) for j in range(len(TITLES))]
        expect.append(1 + min(_brute_position(dist, j) for j in range(len(TITLES)) if TITLES[j] == TITLES[t]))
    np.testing.assert_array_equal(result.predictions["model"]["target_rank"].to_numpy(), expect)
    assert result.meta["grounding"] == "bigrec"


def test_bigrec_decoding_is_beam_search(tiny_llama2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = pl.DataFrame({"item_id": [1, 2], "title": ["Halo 3", "Zelda"]})
    records = pl.DataFrame({"record_id": ["a"], "target_item_id": [1], "instruction": ["Recommend a game."],
                            "input": ['The user has played "Zelda".']})
    config = SeqRecConfig(protocol="bigrec", max_new_tokens=5, n_boot=20)
    result = evaluate_seqrec(records, items, model=tiny_llama2, config=config)
    tok = AutoTokenizer.from_pretrained(tiny_llama2)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.float32).eval()
    prompt = alpaca_prompt("Recommend a game.", 'The user has played "Zelda".', style="bigrec")
    ids = tok(prompt, return_tensors="pt").input_ids
    assert int(ids[0, 0]) == tok.bos_token_id
    seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=4, max_new_tokens=5,
                         pad_token_id=0, eos_token_id=tok.eos_token_id)
    full = tok.decode(seq[0], skip_special_tokens=True)
    assert result.predictions["model"]["generated"][0] == full.split("Response:\n")[-1]
    assert result.meta["protocol"]["generation"]["num_beams"] == 4


def test_ctr_tallrec_equals_hand_computation(tiny_llama2: Path) -> None:
    import torch
    from sklearn.metrics import roc_auc_score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = ['User Preference: "A"\nUser Unpreference: "B"\nWhether the user will like the target movie "C"?',
              'User Preference: "B"\nUser Unpreference: \nWhether the user will like the target movie "A"?',
              'User Preference: \nUser Unpreference: "C"\nWhether the user will like the target movie "D"?',
              'User Preference: "D", "A"\nUser Unpreference: \nWhether the user will like the target movie "B"?']
    ins = 'Given the user\'s preference and unpreference, identify whether the user will like the target movie by answering "Yes." or "No.".'
    records = pl.DataFrame({"record_id": ["0", "1", "2", "3"], "prompt": ["ignored"] * 4, "instruction": [ins] * 4,
                            "input": inputs, "label": [1, 0, 0, 1]})
    result = evaluate_ctr(records, model=tiny_llama2, config=CtrConfig(protocol="tallrec", n_boot=50))
    p = result.predictions["model"]["p_yes"].to_numpy()

    tok = AutoTokenizer.from_pretrained(tiny_llama2)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids(["Y", "N"])  # the character tokenizer's first piece of Yes / No
    assert result.meta["token_ids"] == [yes, no]
    hand = []
    for x in inputs:
        text = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                f"Write a response that appropriately completes the request.  # noqa: E501\n\n### Instruction:\n{ins}"
                f"\n\n### Input:\n{x}\n\n### Response:\n")
        with torch.inference_mode():
            logits = model(tok(text, return_tensors="pt").input_ids).logits[0, -1].double().numpy()
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        hand.append(math.exp(probs[yes]) / (math.exp(probs[yes]) + math.exp(probs[no])))
    np.testing.assert_allclose(p, hand, rtol=1e-6)
    assert result.metrics["model"]["auc"] == pytest.approx(roc_auc_score([1, 0, 0, 1], p))
    # Explicit ids (TALLRec's LLaMA 8241 / 3782 on a real tokenizer) override the lookup.
    swapped = evaluate_ctr(records, model=tiny_llama2, config=CtrConfig(protocol="tallrec", yes_id=no, no_id=yes, n_boot=50))
    np.testing.assert_allclose(swapped.predictions["model"]["p_yes"].to_numpy(), 1 - p, rtol=1e-6)


class LogProbScorer:
    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        return np.log(np.array([0.6, 0.1])) if "like" in query.prompt else np.log(np.array([0.2, 0.3]))

    def generate(self, query: Query, *, seed: int) -> str:
        return "Yes."


def test_ctr_tallrec_plugged_scorer_uses_probabilities() -> None:
    records = pl.DataFrame({"prompt": ["like", "meh"], "label": [1, 0]})
    result = evaluate_ctr(records, model=LogProbScorer(), config=CtrConfig(protocol="goracs", n_boot=20))
    np.testing.assert_allclose(result.predictions["model"]["p_yes"].to_numpy(),
                               [1 / (1 + math.exp(0.1 - 0.6)), 1 / (1 + math.exp(0.3 - 0.2))])
    assert result.meta["protocol"]["name"] == "goracs"
