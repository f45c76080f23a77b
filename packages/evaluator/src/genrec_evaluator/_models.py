"""Loading a model for scoring, optionally with a peft adapter checked against the base model.

Model arguments (HF folder, ``.gguf`` file, hub id ``org/name[@revision]``, alias ``smollm2``) are
resolved by :func:`genrec_core.models.resolve_model`. torch, transformers, peft and genrec_core.models
are imported inside the functions, so that importing genrec_evaluator never imports torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genrec_evaluator._errors import EvaluatorError

log = logging.getLogger(__name__)


def check_adapter(model: Any, adapter: Path) -> None:
    """Raise :class:`EvaluatorError` when the LoRA weights in ``adapter`` do not fit ``model``."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise EvaluatorError(f"adapter {adapter}: no adapter_config.json (not a peft adapter folder)")
    config = json.loads(config_path.read_text())
    weights = adapter / "adapter_model.safetensors"
    base_name = config.get("base_model_name_or_path")
    if not weights.is_file():
        return  # peft itself will say what is missing
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.split(".lora_")[0].removeprefix("base_model.model.")
            module = modules.get(name)
            shape = tuple(f.get_slice(key).get_shape())
            if module is None or not hasattr(module, "in_features"):
                raise EvaluatorError(
                    f"adapter {adapter} is for another base model ({base_name}): weight {key} targets "
                    f"module {name!r}, which this model does not have"
                )
            want = module.in_features if ".lora_A." in key else module.out_features
            got = shape[1] if ".lora_A." in key else shape[0]
            if want != got:
                raise EvaluatorError(
                    f"adapter {adapter} is for another base model ({base_name}): weight {key} has shape "
                    f"{shape}, but module {name!r} of this model has "
                    f"{'in' if '.lora_A.' in key else 'out'}_features={want}"
                )


def resolve_adapter(adapter: str | Path) -> Path:
    """A local folder for an adapter argument: a folder as it is, a hub id ``org/name[@revision]`` as
    its snapshot (resolved like models, by :func:`genrec_core.models.resolve_model`)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    from genrec_core.models import is_hub_id, resolve_model

    if is_hub_id(str(adapter)):
        return resolve_model(str(adapter)).path
    raise FileNotFoundError(f"adapter not found: {adapter}")


def adapter_base_model(adapter: str | Path) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path`` of its config), which
    GenUP's evaluation loads when given only the adapter."""
    config_path = resolve_adapter(adapter) / "adapter_config.json"
    if not config_path.is_file():
        raise EvaluatorError(f"adapter {adapter}: no adapter_config.json (not a peft adapter folder)")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise EvaluatorError(f"adapter {adapter}: adapter_config.json names no base_model_name_or_path; pass --model")
    return str(base)


def load_model(
    spec: str | Path, *, adapter: str | Path | None = None, device: str = "cpu", dtype: str = "float32"
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a model argument and an optional peft adapter; ``dtype`` is
    a torch dtype name, or ``auto`` (bfloat16 where the device computes it natively, else float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec_core.models import auto_dtype, resolve_model

    path = resolve_model(spec).path
    torch_dtype = auto_dtype(device) if dtype == "auto" else getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise EvaluatorError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16, float64)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if adapter is not None:
        adapter = resolve_adapter(adapter)
        check_adapter(model, adapter)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer
