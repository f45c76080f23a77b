"""protocol="goracs" features: a trained LoRA's v_proj.lora_B gradient over the whole Alpaca text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from genrec_core.models import build_tiny_model  # noqa: E402
from genrec_otcoreset import OtCoresetError, compute_features, features_key, load_features, save_features  # noqa: E402
from genrec_otcoreset._goracs_features import goracs_grad_norms, goracs_texts  # noqa: E402

RECORDS = {
    "record_id": ["a", "b", "c", "d"],
    "task": ["seqrec", "seqrec", "ctr", "ctr"],
    "prompt": ["p0", "p1", "p2", "p3"],
    "completion": ['"zelda"', '"halo"', "Yes.", "No."],
    "instruction": ["recommend a game", "recommend a game", "will the user like it", "will the user like it"],
    "input": ["played: mario, tetris", "played: fifa", "liked: halo. target: zelda", ""],
    "output": ['"zelda"', '"halo"', "Yes.", "No."],
    "label": [1, 1, 1, 0],
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", family="generic", layers=3)


@pytest.fixture(scope="module")
def adapter_folder(tiny_folder, tmp_path_factory) -> Path:
    """A 'trained' LoRA on q_proj and v_proj of every layer (B drawn at random, not zero), saved by peft."""
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    lora = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("adapters") / "alpaca-tiny"
    lora.save_pretrained(out)
    return out


def _peft_model(tiny_folder, adapter_folder):
    base = transformers.LlamaForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, str(adapter_folder), is_trainable=True)


def _hand_norms(tiny_folder, adapter_folder, texts, *, layer_index, train=True, seed=0, max_length=512):
    """Independent: forward the full text, mean token cross-entropy, backward, read one named grad."""
    model = _peft_model(tiny_folder, adapter_folder)
    model.train(train)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_folder)
    name = f"base_model.model.model.layers.{layer_index}.self_attn.v_proj.lora_B.default.weight"
    params = dict(model.named_parameters())
    out = []
    for i, text in enumerate(texts):
        ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
        if ids[-1] != tok.eos_token_id and len(ids) < max_length:
            ids = [*ids, tok.eos_token_id]
        t = torch.tensor([ids])
        torch.manual_seed(seed + i)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=t).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits[:-1], t[0, 1:])  # mean over every predicted token
        loss.backward()
        out.append(float(params[name].grad.norm()))
    return np.array(out)


def test_texts_follow_the_release_templates():
    train, embed, plen = goracs_texts(pl.DataFrame(RECORDS))
    # SeqRec (BIGRec trainer): one space after "request." when there is an input.
    assert train[0] == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n### Instruction:\nrecommend a game\n\n"
        '### Input:\nplayed: mario, tetris\n\n### Response:\n"zelda"'
    )
    # SeqRec embedding: prompt and response, two spaces after "request.", a closing newline.
    assert embed[0].startswith("Below is an instruction that describes a task, paired with an input that provides "
                               "further context. Write a response that appropriately completes the request.  \n\n")
    assert embed[0].endswith('### Response:\n"zelda"\n')
    # CTR (TALLRec trainer): its flake8 directive text sits inside the template string; the embedding is the prompt only.
    tallrec_tail = "  # no" + "qa: E501"  # split so linters do not read it as a directive
    assert f"completes the request.{tallrec_tail}\n\n### Instruction:\nwill the user like it" in train[2]
    assert train[2].endswith("### Response:\nYes.")
    assert embed[2].endswith("### Input:\nliked: halo. target: zelda\n\n### Response:\n")
    assert "Yes." not in embed[2]
    # No input: the other Alpaca header.
    assert train[3].startswith("Below is an instruction that describes a task. Write a response")
    assert "### Input" not in train[3]
    assert all(t[:n] + RECORDS["output"][i] == t for i, (t, n) in enumerate(zip(train, plen)))
    # Chat messages stand in for the instruction/input/output columns (sftdata's SeqRec records).
    msgs = pl.DataFrame({
        "record_id": ["a"], "task": ["seqrec"], "prompt": ["p"], "completion": ['"zelda"'],
        "messages": [[{"role": "system", "content": "recommend a game"}, {"role": "user", "content": "played: mario, tetris"},
                      {"role": "assistant", "content": '"zelda"'}]],
    })
    assert goracs_texts(msgs)[0][0] == train[0]


@pytest.mark.parametrize(("layer", "index"), [(-1, 2), (0, 0), (1, 1)])
def test_grad_norms_equal_a_hand_written_loop(tiny_folder, adapter_folder, layer, index):
    texts = goracs_texts(pl.DataFrame(RECORDS))[0]
    model = _peft_model(tiny_folder, adapter_folder)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_folder)
    got, el2n = goracs_grad_norms(model, tok, texts, layer=layer, seed=3)
    want = _hand_norms(tiny_folder, adapter_folder, texts, layer_index=index, seed=3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isfinite(el2n).all() and (el2n > 0).all() and (el2n <= np.sqrt(2)).all()
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())  # left as found
    # The layer option reads a different parameter: other layers give other numbers.
    other = _hand_norms(tiny_folder, adapter_folder, texts, layer_index=(index + 1) % 3, seed=3)
    assert not np.allclose(got, other)


def test_dropout_on_and_off(tiny_folder, adapter_folder):
    texts = goracs_texts(pl.DataFrame(RECORDS))[0]
    tok = transformers.AutoTokenizer.from_pretrained(tiny_folder)
    on, _ = goracs_grad_norms(_peft_model(tiny_folder, adapter_folder), tok, texts, seed=0)
    on_again, _ = goracs_grad_norms(_peft_model(tiny_folder, adapter_folder), tok, texts, seed=0)
    off, _ = goracs_grad_norms(_peft_model(tiny_folder, adapter_folder), tok, texts, dropout=False)
    np.testing.assert_array_equal(on, on_again)  # seeded per record
    assert not np.allclose(on, off)
    np.testing.assert_allclose(off, _hand_norms(tiny_folder, adapter_folder, texts, layer_index=2, train=False),
                               rtol=1e-5)
    # A record's draws do not depend on the records before it.
    np.testing.assert_allclose(goracs_grad_norms(_peft_model(tiny_folder, adapter_folder), tok, texts[:2])[0], on[:2])


def test_compute_features_goracs_end_to_end(tmp_path, tiny_folder, adapter_folder):
    pytest.importorskip("sentence_transformers")
    df = pl.DataFrame(RECORDS)
    feats = compute_features(df, model=str(tiny_folder), encoder="default", protocol="goracs",
                             adapter=str(adapter_folder), device="cpu", seed=1)
    texts = goracs_texts(df)[0]
    np.testing.assert_allclose(feats.grad_norms, _hand_norms(tiny_folder, adapter_folder, texts, layer_index=2, seed=1),
                               rtol=1e-5)
    ours = compute_features(df, model=str(tiny_folder), encoder="default", device="cpu", dtype="float32")
    assert not np.allclose(feats.grad_norms, ours.grad_norms)
    assert not np.allclose(feats.embeddings, ours.embeddings)
    assert feats.key["protocol"] == "goracs" and feats.key["adapter"] == str(adapter_folder)
    assert "protocol" not in ours.key  # ours keeps the keys it always had
    assert feats.key == features_key(df, model=str(tiny_folder), encoder="default", protocol="goracs",
                                     adapter=str(adapter_folder), seed=1)
    back = load_features(save_features(feats, tmp_path / "f"))
    np.testing.assert_array_equal(back.el2n, feats.el2n)
    assert ours.el2n is not None and np.isfinite(ours.el2n).all()


def test_goracs_option_errors(tmp_path, tiny_folder, adapter_folder):
    df = pl.DataFrame(RECORDS)
    with pytest.raises(OtCoresetError, match="needs adapter="):
        compute_features(df, model=str(tiny_folder), protocol="goracs")
    with pytest.raises(OtCoresetError, match="protocol must be one of"):
        compute_features(df, model=str(tiny_folder), protocol="paper")
    with pytest.raises(OtCoresetError, match="only for protocol='goracs'"):
        compute_features(df, model=str(tiny_folder), adapter=str(adapter_folder))
    if not torch.cuda.is_available():
        with pytest.raises(OtCoresetError, match="load_in_8bit needs CUDA"):
            compute_features(df, model=str(tiny_folder), protocol="goracs", adapter=str(adapter_folder),
                             load_in_8bit=True, device="cpu")
    with pytest.raises(OtCoresetError, match="out of range"):
        goracs_grad_norms(_peft_model(tiny_folder, adapter_folder),
                          transformers.AutoTokenizer.from_pretrained(tiny_folder), ["x y"], layer=5)
