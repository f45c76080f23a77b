"""Ranked scoring with KV-cache reuse against brute force, generation, adapters, model loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from genrec_evaluator import EvaluatorError  # noqa: E402
from genrec_evaluator._models import load_model  # noqa: E402
from genrec_evaluator._protocols import Query, Scorer  # noqa: E402
from genrec_evaluator._scoring import GenerationParams, HFScorer  # noqa: E402

QUERY = Query(
    prompt="User u1 visited POI ids 3, 17, 9. Where next?\n",
    completion_prefix="At 2024-01-01 10:00:00, user u1 will visit POI id",
)


@pytest.fixture(scope="module")
def scorer64(tiny_llama: Path) -> HFScorer:
    model, tokenizer = load_model(tiny_llama, dtype="float64")
    return HFScorer(model, tokenizer, fmt="prompt", max_nodes=64)


def test_hf_scorer_is_a_scorer(scorer64: HFScorer) -> None:
    assert isinstance(scorer64, Scorer)


@pytest.mark.parametrize(("fmt", "max_nodes"), [("prompt", 1024), ("messages", 1024), ("prompt", 4)])
def test_ranked_scores_equal_brute_force(scorer64: HFScorer, fmt: str, max_nodes: int) -> None:
    # max_nodes=4 splits the candidates' trie into many chunks, each reading the same context cache.
    scorer = HFScorer(scorer64.model, scorer64.tokenizer, fmt=fmt, max_nodes=max_nodes)
    # Ids of 1-3 digits: suffixes of different lengths share batches (padding) and prefixes.
    candidates = [f" {i}." for i in [*range(0, 12), 99, 100, 101, 250, 7, 70, 700]]
    query = Query(prompt=QUERY.prompt, completion_prefix=QUERY.completion_prefix,
                  messages=({"role": "user", "content": QUERY.prompt},))
    fast = scorer.score(query, candidates)
    slow = scorer.score_each(query, candidates)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    assert np.argsort(-fast, kind="stable").tolist() == np.argsort(-slow, kind="stable").tolist()
    # The scores are log-probabilities of whole token sequences: negative and not all equal.
    assert (fast < 0).all()
    assert np.unique(np.round(fast, 6)).size > len(candidates) // 2


def test_scores_are_conditional_log_likelihoods(scorer64: HFScorer) -> None:
    # Over every continuation of one token, probabilities sum to one.
    tok = scorer64.tokenizer
    singles = [tok.convert_ids_to_tokens(i) for i in range(3, len(tok))]
    logp = scorer64.score(QUERY, singles)
    ids = tok(QUERY.prompt)["input_ids"] + tok(QUERY.completion_prefix, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(scorer64.model(torch.tensor([ids])).logits[0, -1], -1)
    np.testing.assert_allclose(np.exp(logp), probs[3:].numpy(), rtol=1e-9)
    assert np.exp(logp).sum() + float(probs[:3].sum()) == pytest.approx(1.0, abs=1e-9)


def test_chat_format_changes_the_context(scorer64: HFScorer) -> None:
    chat = HFScorer(scorer64.model, scorer64.tokenizer, fmt="messages")
    shared_chat, _ = chat.token_sequences(QUERY, [" 1.", " 2."])
    shared_plain, _ = scorer64.token_sequences(QUERY, [" 1.", " 2."])
    decode = scorer64.tokenizer.decode
    assert decode(shared_chat).startswith("<|user|>User u1 visited")
    assert "<|assistant|>At 2024-01-01" in decode(shared_chat)
    # The prompt format adds the tokenizer's BOS; the chat template is rendered without it.
    assert decode(shared_plain).startswith("<s>User u1 visited")
    assert decode(shared_plain).endswith("will visit POI id ")


def test_generation_is_seeded(scorer64: HFScorer) -> None:
    scorer = HFScorer(scorer64.model, scorer64.tokenizer, fmt="prompt",
                      generation=GenerationParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6))
    a = scorer.generate(QUERY, seed=3)
    assert a == scorer.generate(QUERY, seed=3)
    others = {scorer.generate(QUERY, seed=s) for s in range(4, 8)}
    assert len(others | {a}) > 1
    greedy = HFScorer(scorer64.model, scorer64.tokenizer, fmt="prompt",
                      generation=GenerationParams(temperature=0.0, max_new_tokens=4))
    assert greedy.generate(QUERY, seed=1) == greedy.generate(QUERY, seed=2)


def test_yes_no_first_tokens(scorer64: HFScorer) -> None:
    ids = scorer64.first_token_ids(["Yes", "No"])
    assert scorer64.tokenizer.convert_ids_to_tokens(ids) == ["Y", "N"]
    with pytest.raises(EvaluatorError, match="share their first token"):
        scorer64.first_token_ids(["Yes", "Yeah"])


def _lora(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def test_adapter_loads_and_changes_scores(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    adapter = _lora(tiny_llama, tmp_path / "adapter")
    base, tok = load_model(tiny_llama, dtype="float64")
    tuned, _ = load_model(tiny_llama, adapter=adapter, dtype="float64")
    cands = [f" {i}." for i in range(10)]
    a = HFScorer(base, tok, fmt="prompt").score(QUERY, cands)
    b = HFScorer(tuned, tok, fmt="prompt").score(QUERY, cands)
    assert not np.allclose(a, b)


def test_adapter_of_another_base_model_is_refused(tiny_llama: Path, other_tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    adapter = _lora(other_tiny_llama, tmp_path / "other-adapter")
    with pytest.raises(EvaluatorError, match=r"another base model.*in_features=32"):
        load_model(tiny_llama, adapter=adapter)
    with pytest.raises(EvaluatorError, match=r"no adapter_config\.json"):
        load_model(tiny_llama, adapter=tiny_llama)


def test_model_arguments(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec_core import GenrecError

    with pytest.raises(GenrecError, match="no such file or folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "adapterlike").mkdir()
    with pytest.raises(GenrecError, match=r"no config\.json"):
        load_model(tmp_path / "adapterlike")
    # A hub id goes through the shared resolver: offline and not cached, one line on how to fetch it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GenrecError, match=r"'nobody-xyz/no-such-model'.*hf download nobody-xyz/no-such-model") as exc:
        load_model("nobody-xyz/no-such-model")
    assert "\n" not in str(exc.value)
    model, tok = load_model(tiny_llama, dtype="auto")
    assert tok.eos_token == "</s>" and next(model.parameters()).dtype in (torch.float32, torch.bfloat16)


@pytest.mark.slow
def test_smollm2_gguf_conversion_keeps_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from genrec_core.models import gguf_cache_path, smollm2_gguf

    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    gguf = smollm2_gguf()
    model, tok = load_model("smollm2")
    assert (gguf_cache_path(gguf) / "config.json").is_file()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok("At 10:00, user 3 will visit POI id 12.", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits)
