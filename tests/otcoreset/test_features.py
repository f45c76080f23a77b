"""Features: LoRA-B gradient norms against a per-sample peft autograd loop, embeddings, round trips."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from genrec_otcoreset import FeatureSet, OtCoresetError, compute_features, load_features, save_features  # noqa: E402
from genrec_otcoreset._features import gguf_cache_path, lora_a, lora_b_grad_norms, resolve_model  # noqa: E402

WORDS = ["the", "a", "user", "played", "game", "bought", "liked", "next", "item", "is", "zelda", "mario", "halo", "fifa", "tetris", "yes", "no", "what"]
PROMPTS = [
    "the user played zelda mario what is next",
    "the user liked halo",
    "a user bought fifa tetris zelda halo mario what is the next item",
    "what is next",
    "the user played tetris",
]
COMPLETIONS = ["halo", "yes", "the game zelda", "no", "mario fifa"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "</s>": 2, "<s>": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>", bos_token="<s>"
    )


def _tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _reference_norms(model, tok, rank=8, alpha=16.0, seed=0):
    """One record at a time: a real peft LoRA on the last v_proj, HF's own loss, autograd."""
    peft = pytest.importorskip("peft")
    last = model.config.num_hidden_layers - 1
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["v_proj"], layers_to_transform=[last], lora_dropout=0.0)
    lora = peft.get_peft_model(model, cfg)
    v_proj = lora.base_model.model.model.layers[last].self_attn.v_proj
    with torch.no_grad():
        v_proj.lora_A["default"].weight.copy_(lora_a(v_proj.in_features, rank, seed))
    assert float(v_proj.lora_B["default"].weight.detach().abs().max()) == 0.0  # B starts at zero
    out = []
    for p, c in zip(PROMPTS, COMPLETIONS):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + c_ids])
        labels = torch.tensor([[-100] * len(p_ids) + c_ids])
        lora.zero_grad()
        loss = lora(input_ids=ids, labels=labels).loss
        loss.backward()
        grad_b = v_proj.lora_B["default"].weight.grad
        grad_a = v_proj.lora_A["default"].weight.grad
        # With B = 0 the gradient reaches B but not A: the quantity is B's gradient, not A's.
        assert grad_a is None or float(grad_a.detach().abs().max()) == 0.0
        out.append(float(grad_b.norm()))
    return np.array(out)


@pytest.fixture(scope="module")
def reference_norms():
    return _reference_norms(_tiny_llama(), _tokenizer())


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_grad_norms_match_per_sample_peft_loop(batch_size, reference_norms):
    ours = lora_b_grad_norms(_tiny_llama(), _tokenizer(), PROMPTS, COMPLETIONS, batch_size=batch_size)
    ref = reference_norms
    assert (ref > 0).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_grad_norms_depend_on_the_lora_seed_and_scale():
    tok = _tokenizer()
    model = _tiny_llama()
    a = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=0)
    b = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=1)
    c = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=0, alpha=32.0)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(c, 2 * a, rtol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    _tiny_llama().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def _records(path: Path, with_label: bool = True) -> Path:
    import polars as pl

    cols = {"record_id": [f"r{i}" for i in range(5)], "prompt": PROMPTS, "completion": COMPLETIONS}
    if with_label:
        cols["label"] = [1, 0, 1, 0, 1]
    pl.DataFrame(cols).write_parquet(path)
    return path


def test_features_command_end_to_end_and_round_trip(tmp_path, capsys):
    """``genrec-otcoreset features`` (compute_features + save_features) on a saved tiny model."""
    pytest.importorskip("sentence_transformers")
    from genrec_otcoreset._cli import main

    folder = _model_folder(tmp_path)
    rc = main(["--no-progress", "features", "--records", str(_records(tmp_path / "r.parquet")), "--model",
               str(folder), "--out", str(tmp_path / "feats"), "--device", "cpu", "--batch-size", "2",
               "--dtype", "float32"])
    assert rc == 0
    assert "features of 5 records (dim 384)" in capsys.readouterr().out
    out = tmp_path / "feats"
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "features.parquet", "meta.json"]
    feats = load_features(out)
    assert isinstance(feats, FeatureSet)
    assert feats.record_ids == tuple(f"r{i}" for i in range(5))
    assert feats.embeddings.shape == (5, 384) and feats.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.embeddings, axis=1), 1.0, rtol=1e-4)  # MiniLM normalises
    ref = lora_b_grad_norms(_tiny_llama(), _tokenizer(), PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(feats.grad_norms, ref, rtol=1e-5)
    assert feats.labels.tolist() == [1, 0, 1, 0, 1]
    again = save_features(feats, tmp_path / "again")
    back = load_features(again)
    assert back.record_ids == feats.record_ids
    np.testing.assert_array_equal(back.embeddings, feats.embeddings)
    np.testing.assert_array_equal(back.grad_norms, feats.grad_norms)


def test_bad_records_and_models_are_clear_errors(tmp_path):
    import polars as pl

    pl.DataFrame({"record_id": ["a"], "prompt": ["x"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(OtCoresetError, match=r"missing column\(s\) \['completion'\]"):
        compute_features(tmp_path / "bad.parquet", model=tmp_path)
    with pytest.raises(FileNotFoundError, match="records file does not exist"):
        compute_features(tmp_path / "nope.parquet")
    with pytest.raises(OtCoresetError, match=r"no config\.json"):
        resolve_model(tmp_path)
    with pytest.raises(OtCoresetError, match="path does not exist"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(OtCoresetError, match="batch_size"):
        compute_features(_records(tmp_path / "r.parquet"), batch_size=0)


def test_gguf_cache_path_follows_the_shared_convention(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    assert gguf_cache_path(gguf) == tmp_path / "cache" / "models" / f"Model.Q4-{digest}"
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_cache_path(gguf) != tmp_path / "cache" / "models" / f"Model.Q4-{digest}"


@pytest.mark.slow
def test_smollm2_alias_converts_once_and_gives_finite_norms(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    folder = resolve_model("smollm2")
    assert (folder / "config.json").is_file() and folder.parent == tmp_path / "cache" / "models"
    assert resolve_model("smollm2") == folder  # cached
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    norms = lora_b_grad_norms(model, tok, PROMPTS[:2], COMPLETIONS[:2], batch_size=2)
    assert np.isfinite(norms).all() and (norms > 0).all()


def test_bfloat16_features_track_float32(tmp_path):
    """``dtype`` (``auto`` is bfloat16 on CPUs with native bf16): norms within bf16 rounding of float32."""
    pytest.importorskip("sentence_transformers")
    folder = _model_folder(tmp_path)
    records = _records(tmp_path / "r.parquet")
    full = compute_features(records, model=folder, device="cpu", batch_size=2, dtype="float32")
    half = compute_features(records, model=folder, device="cpu", batch_size=2, dtype="bfloat16")
    np.testing.assert_allclose(half.grad_norms, full.grad_norms, rtol=3e-2)
    assert not np.allclose(half.grad_norms, full.grad_norms, rtol=1e-7, atol=0)
    with pytest.raises(OtCoresetError, match="dtype"):
        compute_features(records, model=folder, dtype="float64")
