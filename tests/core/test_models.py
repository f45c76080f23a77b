"""The one model resolver, the probes, and tiny models of each family."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from genrec_core import GenrecError  # noqa: E402
from genrec_core.models import (  # noqa: E402
    ModelNotFoundError,
    build_tiny_model,
    cpu_has_native_bf16,
    is_hub_id,
    model_family,
    resolve_dataset,
    resolve_model,
    takes_logits_to_keep,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {fam: build_tiny_model(root / fam, family=fam) for fam in ("llama2", "llama3", "chatml", "generic")}


def test_tiny_models_behave_like_their_family(tiny: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for family, path in tiny.items():
        assert model_family(path) == family
        tok = AutoTokenizer.from_pretrained(path)
        ids = tok("User 7 visited POI id 12.").input_ids
        adds_bos = family != "chatml"
        assert (ids[0] == tok.bos_token_id) is adds_bos, family
        assert ids.count(tok.bos_token_id) == (1 if adds_bos else 0)
        assert tok.decode(ids, skip_special_tokens=True) == "User 7 visited POI id 12."
        text = "a\n\nb\tc"
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
        model = AutoModelForCausalLM.from_pretrained(path)
        out = model(torch.tensor([ids]))
        assert out.logits.shape == (1, len(ids), len(tok))
    llama3 = AutoTokenizer.from_pretrained(tiny["llama3"])
    text = llama3.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    chatml = AutoTokenizer.from_pretrained(tiny["chatml"])
    assert chatml.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    assert AutoTokenizer.from_pretrained(tiny["llama2"]).chat_template is None


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(GenrecError, match="family 'gpt9'"):
        build_tiny_model(tmp_path / "d", family="gpt9")


def test_resolve_folder_and_local_misses(tiny: dict[str, Path], tmp_path: Path) -> None:
    m = resolve_model(tiny["generic"])
    assert m.path == tiny["generic"] and m.source == "folder" and m.name == str(tiny["generic"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(tmp_path / "empty")
    # Local-looking paths are never hub ids: no network, an immediate "no such file".
    for spec in ("bad/nope.csv", "./org/name", "/abs/org", "a/b/c", "~/x/y"):
        assert not is_hub_id(spec)
        with pytest.raises(ModelNotFoundError, match="no such file or folder"):
            resolve_model(spec)
    assert is_hub_id("meta-llama/Llama-3.2-1B") and is_hub_id("w11wo/Llama-2-7b-longlora-32k-merged@main")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        resolve_model(tmp_path / "weights.bin")


def _fake_hub_cache(root: Path, repo: str, files: dict[str, str], kind: str = "models") -> None:
    folder = root / f"{kind}--{repo.replace('/', '--')}"
    sha = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    snap = folder / "snapshots" / sha
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)


def test_hub_ids_resolve_from_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    _fake_hub_cache(tmp_path / "hub", "org/tiny", {"config.json": "{}"})
    m = resolve_model("org/tiny")
    assert m.source == "hub" and m.name == "org/tiny" and (m.path / "config.json").is_file()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("org/absent")
    message = str(info.value)
    assert "'org/absent'" in message and "hf download org/absent" in message and "\n" not in message
    _fake_hub_cache(tmp_path / "hub", "org/data", {"train.jsonl": "{}"}, kind="datasets")
    assert (resolve_dataset("org/data") / "train.jsonl").is_file()
    with pytest.raises(ModelNotFoundError, match="--repo-type dataset"):
        resolve_dataset("org/nodata")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_dataset("data/train.parquet")


def test_probes(tiny: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["generic"])
    assert takes_logits_to_keep(model)

    class Plain(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    assert not takes_logits_to_keep(Plain())
    # An independent reading of the same CPU facts: torch's own capability probe, where it has one.
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None and amx is not None:
        assert cpu_has_native_bf16() == bool(probe() or amx())


def test_extra_tokens_are_whole_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_model(tmp_path / "m", extra_tokens=("visited", "p12"))
    tok = AutoTokenizer.from_pretrained(path)
    pieces = tok.convert_ids_to_tokens(tok("u1 visited p12", add_special_tokens=False).input_ids)
    assert pieces == ["u", "1", " ", "visited", " ", "p12"]


def test_corpus_trained_vocabulary(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = ["User 7 visited POI id 12 at 08:00, a Coffee Shop."] * 50 + ["At 09:00 user 3 will visit POI id 40."] * 50
    path = build_tiny_model(tmp_path / "bpe", family="llama2", corpus=corpus, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(path)
    text = "User 7 visited POI id 12 at 08:00, a Coffee Shop."
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert len(ids) < len(text) / 2  # merged pieces, not characters
    assert tok.decode(ids, skip_special_tokens=True) == text
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok)
