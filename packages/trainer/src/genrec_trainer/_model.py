"""Loading the base model (quantised as configured) and its tokenizer, and applying LoRA.

Model arguments (alias, folder, ``.gguf`` file, hub id) are resolved by
:func:`genrec_core.models.resolve_model`, shared with every genrec package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec_core.models import resolve_model
from genrec_trainer._errors import TrainerError

if TYPE_CHECKING:
    import torch

    from genrec_trainer._config import TrainConfig

__all__ = ["apply_lora", "compute_dtype", "linear_module_names", "load_model", "load_tokenizer", "resolve_model"]

logger = logging.getLogger(__name__)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        # Padding never reaches the loss (labels are -100 there) nor attention (masked).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype(config: TrainConfig, device: torch.device, *, distributed: bool = False) -> torch.dtype:
    """The dtype of the base weights and the compute.

    ``auto`` is bfloat16 on a GPU that supports it, and on a CPU with native bfloat16 matrix units for
    a single-process run without quantisation (about twice as fast as float32 there; the LoRA weights
    and the optimizer stay float32); float32 otherwise.
    """
    import torch

    from genrec_core.models import auto_dtype

    if config.dtype == "auto":
        dtype = auto_dtype(device, allow_cpu_bf16=not distributed and config.quantization == "none")
        # float16 base weights without loss scaling underflow in the backward pass: a GPU without
        # bfloat16 trains in float32 instead.
        return torch.float32 if dtype == torch.float16 else dtype
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
