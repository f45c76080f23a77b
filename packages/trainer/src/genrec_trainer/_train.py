"""The training loop: single process, or FSDP2 under torchrun (NCCL on GPUs, gloo on CPUs).

Loss normalisation is what makes every layout train the same model: the loss of an optimizer step
is the sum of token losses over the whole global batch (all micro-batches on all processes) divided
by the number of target tokens in it. Each process knows the full data order, so it computes that
count locally, and ``batch_size * grad_accum * world_size`` records form one step wherever they run.
``loss_average = "micro_batch"`` instead averages the micro-batches' own token means, as transformers'
Trainer did for GenUP; that too is the same for every layout with the same micro-batches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec_core import FolderLock, atomic_write_dir, atomic_write_json, atomic_write_text
from genrec_core.models import ModelNotFoundError, ResolvedModel, takes_logits_to_keep
from genrec_trainer._checkpoint import expect, load_rng, load_tensors, save_rng, save_tensors
from genrec_trainer._config import TrainConfig
from genrec_trainer._data import IGNORE_INDEX, Example, collate, pack, read_records, tokenize_records
from genrec_trainer._errors import TrainerError
from genrec_trainer._model import load_model, load_tokenizer, resolve_model
from genrec_trainer._runinfo import run_metadata
from genrec_trainer._trackers import Reporter, Where, tracker_params

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Config fields that must not change when a run resumes from a checkpoint.
_RESUME_FIXED = (
    "model",
    "train",
    "format",
    "text_column",
    "response_template",
    "add_bos",
    "train_eos",
    "loss_on_prompt",
    "tokenize_joined",
    "max_length",
    "truncation",
    "packing",
    "mode",
    "quantization",
    "double_quant",
    "dtype",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "lr",
    "weight_decay",
    "batch_size",
    "grad_accum",
    "warmup_steps",
    "warmup_from_zero",
    "scheduler",
    "max_grad_norm",
    "loss_average",
    "seed",
)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a run produced and how it went."""

    output_dir: Path
    adapter_dir: Path | None
    model_dir: Path | None
    log_path: Path
    steps: int
    final_loss: float
    losses: tuple[float, ...]
    eval_losses: tuple[tuple[int, float], ...]
    tokens: int
    target_tokens: int
    seconds: float
    tokens_per_s: float
    n_records: int
    n_truncated: int
    resumed_from: int
    world_size: int


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(config: TrainConfig) -> tuple[_Dist, torch.device]:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrainerError(f"config field 'device' is {config.device!r} but no CUDA device is available")
    if world <= 1:
        device = (
            torch.device(config.device if config.device.startswith("cuda") else "cuda")
            if want_cuda
            else torch.device("cpu")
        )
        return _Dist(), device
    import torch.distributed as dist

    dist_info = _Dist(
        world=world,
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        active=True,
    )
    if want_cuda:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
    return dist_info, device


def _check_supported(config: TrainConfig, dist_info: _Dist, device: torch.device) -> None:
    if dist_info.active and config.quantization != "none" and device.type == "cpu":
        # FSDP2 over bitsandbytes' packed 4-bit/8-bit parameters computes wrong updates on CPU (the
        # 2-rank loss curve leaves the single-process one without any error), so we refuse rather
        # than train a wrong model. Single-process QLoRA on CPU is verified and allowed.
        raise TrainerError(
            f"config field 'quantization': {config.quantization!r} under FSDP is not supported on CPU "
            "(bitsandbytes quantised weights do not shard correctly there); use quantization = 'none' "
            "with torchrun on CPU, or run QLoRA in a single process or on GPUs"
        )
    if dist_info.active and config.fsdp_cpu_offload and device.type == "cpu":
        raise TrainerError(
            "config field 'fsdp_cpu_offload' needs CUDA devices (the parameters already live on the CPU)"
        )
    if config.mixed_precision != "none" and not dist_info.active:
        logger.info(
            "mixed_precision applies under FSDP only; single-process runs compute in %s", config.dtype
        )


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (the classes the model lists as never to be split), for FSDP auto-wrap."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainerError(f"FSDP: cannot find the decoder layers of {type(model).__name__} to wrap")
    return layers


def _wrap_fsdp(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    param_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]
    float_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if param_dtype is None and len(float_dtypes) > 1:
        # float32 LoRA weights over a bf16 base: FSDP2 all-gathers one dtype per group, so compute in
        # the base's dtype (the float32 copies stay the optimizer's master weights).
        param_dtype = min(float_dtypes, key=lambda d: torch.finfo(d).bits)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    offload = CPUOffloadPolicy() if config.fsdp_cpu_offload else OffloadPolicy()
    for layer in _decoder_layers(model):
        fully_shard(layer, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mp_policy=mp, offload_policy=offload)
    return model


def _lr_lambda(config: TrainConfig, total_steps: int) -> Any:
    warmup = config.warmup_steps

    def fn(step: int) -> float:
        if step < warmup:
            if config.warmup_from_zero:
                return step / warmup
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(progress, 1.0)
        if config.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _token_loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, keep_logits: bool | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over target tokens (float32), and how many there are.

    Only the positions that predict a target token go through the LM head (``logits_to_keep``): in
    recommendation records the completion is a few tokens after a long prompt, and the full
    ``(batch, length, vocab)`` logits with their softmax would otherwise cost as much as a quarter of
    the step. Models whose forward has no ``logits_to_keep`` get the full logits, sliced after.
    ``keep_logits`` is that probe's answer when the caller already has it (it is asked every step).
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    shift_labels = labels[:, 1:]
    keep = (shift_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    if keep_logits is None:
        keep_logits = takes_logits_to_keep(model)
    if keep_logits:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][:, keep]
    kept_labels = shift_labels[:, keep]
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        kept_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((kept_labels != IGNORE_INDEX).sum())


def _n_targets(examples: Sequence[Example]) -> int:
    return sum(sum(1 for label in ex.labels[1:] if label != IGNORE_INDEX) for ex in examples)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


class _Log:
    """The JSONL log; every record it writes also goes to the trackers of ``report_to``."""

    def __init__(self, path: Path, enabled: bool, reporter: Reporter) -> None:
        self.path = path
        self.enabled = enabled
        self.reporter = reporter

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            self.reporter.log(record)


def _trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _full_trainable_state(model: torch.nn.Module, dist_info: _Dist) -> dict[str, torch.Tensor]:
    """Trainable parameters as full CPU tensors (gathered from the shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            t = param.detach()
            if isinstance(t, DTensor):
                t = t.full_tensor()
            out[name] = t.cpu().clone()
    return out


def _load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name not in state:
                raise TrainerError(f"checkpoint has no tensor for trainable parameter {name!r}")
            value = state[name]
            data: Any = param.data
            if isinstance(data, DTensor):
                shard = distribute_tensor(value.to(data.device), data.device_mesh, data.placements)
                data.to_local().copy_(shard.to_local())
            else:
                param.data.copy_(value)


def _optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist_info: _Dist
) -> dict[str, Any]:
    if not dist_info.active:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def _load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], dist_info: _Dist
) -> None:
    if not dist_info.active:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _checkpoints(output: Path) -> list[tuple[int, Path]]:
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file():
            found.append((int(p.name.removeprefix("step-")), p))
    return sorted(found)


def _barrier(dist_info: _Dist) -> None:
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()


def _all_reduce_sum(values: list[float], dist_info: _Dist) -> list[float]:
    if not dist_info.active:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def _peak_memory_mb(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resolve(model: str) -> ResolvedModel:
    try:
        return resolve_model(model)
    except ModelNotFoundError as exc:
        raise TrainerError(f"config field 'model': {exc}") from exc


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.train``; returns where the adapter and the log went."""
    started = time.perf_counter()
    if not config.train:
        raise TrainerError("config field 'train' is empty: give the SFT records to train on")
    reporter = Reporter(config.report_to)
    dist_info, device = _setup_distributed(config)
    # One training per output folder: a second run into it stops at once instead of interleaving
    # checkpoints (the lock is an flock, so a killed run never blocks the next one).
    lock = FolderLock(config.output, what="training output folder") if dist_info.main else None
    try:
        if lock is not None:
            lock.acquire()
        return _train(config, dist_info, device, started, reporter)
    except BaseException:
        reporter.finish({}, failed=True)
        raise
    finally:
        if lock is not None:
            lock.release()
        if dist_info.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(
    config: TrainConfig, dist_info: _Dist, device: torch.device, started: float, reporter: Reporter
) -> TrainResult:
    import torch

    _check_supported(config, dist_info, device)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    # Records first: a bad records argument fails before a model is downloaded or converted.
    train_frame = read_records(config.train, role="train")
    val_frame = read_records(config.val, role="val") if config.val else None
    # rank 0 converts a GGUF (or downloads a hub model) first so that the other ranks find it cached.
    if dist_info.main:
        resolved = _resolve(config.model)
    _barrier(dist_info)
    if not dist_info.main:
        resolved = _resolve(config.model)
    model_path = resolved.path
    tokenizer = load_tokenizer(model_path)

    train_set = tokenize_records(
        train_frame,
        tokenizer,
        fmt=config.format,
        max_length=config.max_length,
        truncation=config.truncation,
        path=config.train,
        role="train",
        add_bos=config.add_bos,
        train_eos=config.train_eos,
        text_column=config.text_column,
        response_template=config.response_template,
        loss_on_prompt=config.loss_on_prompt,
        tokenize_joined=config.tokenize_joined,
    )
    examples = train_set.examples
    val_examples: list[Example] = []
    if val_frame is not None:
        val_set = tokenize_records(
            val_frame,
            tokenizer,
            fmt=train_set.format,
            max_length=config.max_length,
            truncation=config.truncation,
            path=config.val,
            role="val",
            add_bos=config.add_bos,
            train_eos=config.train_eos,
            text_column=config.text_column,
            response_template=config.response_template,
            loss_on_prompt=config.loss_on_prompt,
            tokenize_joined=config.tokenize_joined,
        )
        val_examples = val_set.examples
    if config.packing:
        # Packing order is fixed by the seed; shuffling then happens over packs.
        order = _epoch_order(len(examples), config.seed, -1)
        examples = pack([examples[i] for i in order], config.max_length)
        if val_examples:
            val_examples = pack(val_examples, config.max_length)
    pad_id = int(tokenizer.pad_token_id)

    world = dist_info.world
    per_step = config.batch_size * config.grad_accum * world
    steps_per_epoch = math.ceil(len(examples) / per_step)
    total_steps = config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch

    config_record = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    found = _checkpoints(output) if config.resume else []
    if dist_info.main:
        # After the data checks (a bad record should not leave an empty run in a tracker), before the
        # model loads (a bad tracking URI should fail in seconds, not after a download).
        metadata = {
            **run_metadata(),
            "world_size": world,
            "device": str(device),
            "resumed_from": found[-1][0] if found else 0,
        }
        atomic_write_json(output / "run.json", metadata)
        where = Where(
            output=output,
            run_name=config.run_name or output.resolve().name,
            project=config.project,
            logging_dir=config.logging_dir,
            tracking_uri=config.tracking_uri,
            start_step=found[-1][0] if found else 0,
        )
        reporter.start(where, tracker_params(config_record), metadata)

    torch.manual_seed(config.seed)
    model = load_model(model_path, config, device=device, distributed=dist_info.active)
    if dist_info.main:
        base_dtypes = sorted(
            {str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad}
        )
        logger.info("base weights in %s on %s (dtype=%s)", "/".join(base_dtypes) or "-", device, config.dtype)
    keep_logits = takes_logits_to_keep(model)
    if dist_info.active:
        model = _wrap_fsdp(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, foreach=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))

    log = _Log(output / "log.jsonl", dist_info.main, reporter)
    losses: list[float] = []
    eval_losses: list[tuple[int, float]] = []
    tokens = target_tokens = 0
    start_step = 0
    if found:
        start_step, ckpt = found[-1]
        try:
            state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
            state["config"].get("model")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrainerError(
                f"checkpoint file {ckpt / 'state.json'} cannot be read ({exc}); remove {ckpt} or set resume = false"
            ) from None
        changed = [k for k in _RESUME_FIXED if state["config"].get(k) != config_record.get(k)]
        if changed:
            raise TrainerError(
                f"output {output}: its checkpoint {ckpt.name} was made with different {changed}; "
                "use a new output folder or resume = false"
            )
        trainable = load_tensors(ckpt / "trainable.pt")
        expect(
            isinstance(trainable, dict) and all(isinstance(v, torch.Tensor) for v in trainable.values()),
            ckpt / "trainable.pt",
            "a dict of tensors",
        )
        optim_state = load_tensors(ckpt / "optimizer.pt")
        expect(
            isinstance(optim_state, dict) and {"state", "param_groups"} <= set(optim_state),
            ckpt / "optimizer.pt",
            "an optimizer state",
        )
        _load_trainable_state(model, trainable)
        try:
            _load_optimizer_state(model, optimizer, optim_state, dist_info)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainerError(
                f"checkpoint file {ckpt / 'optimizer.pt'} does not fit this model's optimizer ({exc}); "
                f"remove {ckpt} or set resume = false"
            ) from None
        scheduler.load_state_dict(state["scheduler"])
        losses, tokens, target_tokens = list(state["losses"]), state["tokens"], state["target_tokens"]
        eval_losses = [(int(s), float(v)) for s, v in state["eval_losses"]]
        if not load_rng(ckpt, dist_info.rank):
            logger.warning(
                "%s has no RNG state for rank %d: dropout after resume differs", ckpt, dist_info.rank
            )
        log.truncate_after(start_step)
        logger.info("resumed from %s (step %d of %d)", ckpt, start_step, total_steps)
    elif dist_info.main:
        (output / "log.jsonl").unlink(missing_ok=True)
        (output / "checkpoints").mkdir(exist_ok=True)
        atomic_write_json(output / "config.json", config_record)
    _barrier(dist_info)

    def save_checkpoint(step: int) -> None:
        trainable = _full_trainable_state(model, dist_info)
        optim_state = _optimizer_state(model, optimizer, dist_info)
        folder = output / "checkpoints"
        final = folder / f"step-{step:08d}"
        tmp = folder / f".step-{step:08d}.tmp"
        if dist_info.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_tensors(trainable, tmp / "trainable.pt")
            save_tensors(optim_state, tmp / "optimizer.pt")
        _barrier(dist_info)
        save_rng(tmp, dist_info.rank)
        _barrier(dist_info)
        if dist_info.main:
            state = {
                "step": step,
                "config": config_record,
                "scheduler": scheduler.state_dict(),
                "losses": losses,
                "eval_losses": eval_losses,
                "tokens": tokens,
                "target_tokens": target_tokens,
                "world_size": world,
            }
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
            # Every rank wrote into the fixed-name tmp; the finished folder is swapped in as one set.
            atomic_write_dir(final, lambda staged: os.replace(tmp, staged))
            for _, old in _checkpoints(output)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier(dist_info)

    def evaluate() -> float:
        model.eval()
        mine = val_examples[dist_info.rank :: world]
        n_batches = math.ceil(math.ceil(len(val_examples) / world) / config.batch_size)
        total = count = 0.0
        with torch.no_grad():
            for b in range(n_batches):
                chunk = mine[b * config.batch_size : (b + 1) * config.batch_size]
                dummy = not chunk
                batch = collate(chunk or val_examples[:1], pad_id)
                loss_sum, n = _token_loss_sum(
                    model, {k: v.to(device) for k, v in batch.items()}, keep_logits=keep_logits
                )
                if not dummy:  # every rank must run the same forwards under FSDP
                    total += float(loss_sum)
                    count += n
        total, count = _all_reduce_sum([total, count], dist_info)
        model.train()
        return total / max(count, 1.0)

    model.train()
    progress = None
    if config.progress and dist_info.main:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    run_tokens = 0
    run_started = time.perf_counter()
    window_started = time.perf_counter()
    window_tokens = 0
    for step in range(start_step, total_steps):
        epoch, within = divmod(step, steps_per_epoch)
        order = _epoch_order(len(examples), config.seed, epoch)
        global_ids = order[within * per_step : (within + 1) * per_step]
        global_batch = [examples[i] for i in global_ids]
        n_global = _n_targets(global_batch)
        # Micro-batches that hold records, over all processes (chunks are dealt in rank-major order).
        n_chunks = math.ceil(len(global_batch) / config.batch_size)
        step_loss = 0.0
        step_tokens = 0
        for micro in range(config.grad_accum):
            lo = (dist_info.rank * config.grad_accum + micro) * config.batch_size
            chunk = global_batch[lo : lo + config.batch_size]
            dummy = not chunk
            batch = collate(chunk or global_batch[:1], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum, n_chunk = _token_loss_sum(model, batch, keep_logits=keep_logits)
            # Scale by world size: FSDP averages gradients over processes, we want the global sum.
            if dummy:
                scale = 0.0
            elif config.loss_average == "micro_batch":
                scale = world / (n_chunks * max(n_chunk, 1))
            else:
                scale = world / max(n_global, 1)
            (loss_sum * scale).backward()
            if not dummy:
                value = float(loss_sum.detach())
                if config.loss_average == "micro_batch":
                    # Reported like the gradient: divided by n_global again below.
                    value *= n_global / (n_chunks * max(n_chunk, 1))
                step_loss += value
                step_tokens += int(sum(len(ex.input_ids) for ex in chunk))
        grad_norm = float("nan")
        if config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens_all = _all_reduce_sum([step_loss, float(step_tokens)], dist_info)
        loss = step_loss / max(n_global, 1)
        losses.append(loss)
        tokens += int(step_tokens_all)
        target_tokens += n_global
        run_tokens += int(step_tokens_all)
        window_tokens += int(step_tokens_all)
        done = step + 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
        if done % config.log_every == 0 or done == total_steps:
            now = time.perf_counter()
            log.write(
                {
                    "step": done,
                    "epoch": round(step / steps_per_epoch + 1 / steps_per_epoch, 4),
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": tokens,
                    "tokens_per_s": window_tokens / max(now - window_started, 1e-9),
                    "peak_memory_mb": round(_peak_memory_mb(device), 1),
                }
            )
            window_started, window_tokens = now, 0
        if val_examples and config.eval_every and done % config.eval_every == 0 and done != total_steps:
            value = evaluate()
            eval_losses.append((done, value))
            log.write({"step": done, "eval_loss": value})
        if config.save_every and done % config.save_every == 0 and done != total_steps:
            save_checkpoint(done)
    if progress is not None:
        progress.close()
    train_seconds = time.perf_counter() - run_started
    if val_examples and (not eval_losses or eval_losses[-1][0] != total_steps):
        value = evaluate()
        eval_losses.append((total_steps, value))
        log.write({"step": total_steps, "eval_loss": value})

    adapter_dir, model_dir = _save_outputs(model, tokenizer, resolved, config, output, dist_info)
    _barrier(dist_info)
    seconds = time.perf_counter() - started
    result = TrainResult(
        output_dir=output,
        adapter_dir=adapter_dir,
        model_dir=model_dir,
        log_path=output / "log.jsonl",
        steps=total_steps,
        final_loss=losses[-1] if losses else float("nan"),
        losses=tuple(losses),
        eval_losses=tuple(eval_losses),
        tokens=tokens,
        target_tokens=target_tokens,
        seconds=seconds,
        tokens_per_s=run_tokens / max(train_seconds, 1e-9),
        n_records=train_set.n_records,
        n_truncated=train_set.n_truncated,
        resumed_from=start_step,
        world_size=world,
    )
    if dist_info.main:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
        atomic_write_json(output / "result.json", summary)
        final = {
            k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if eval_losses:
            final["eval_loss"] = eval_losses[-1][1]
        reporter.finish(final)
    return result


def _save_outputs(
    model: torch.nn.Module,
    tokenizer: Any,
    resolved: ResolvedModel,
    config: TrainConfig,
    output: Path,
    dist_info: _Dist,
) -> tuple[Path | None, Path | None]:
    state = _full_trainable_state(model, dist_info)
    if not dist_info.main:
        return (
            output / "adapter" if config.mode == "lora" else None,
            output / ("merged" if config.mode == "lora" else "model")
            if config.merge or config.mode == "full"
            else None,
        )
    model_path = resolved.path
    if config.mode == "full":
        full = _unwrapped_full_model(model_path, config, state)

        def write_full(tmp: Path) -> None:
            full.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        return None, atomic_write_dir(output / "model", write_full)

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(str(tmp), state_dict=state)  # type: ignore[operator]
        tokenizer.save_pretrained(tmp)
        _record_base_model(tmp / "adapter_config.json", resolved.name)

    adapter = atomic_write_dir(output / "adapter", write_adapter)
    merged = None
    if config.merge:

        def write_merged(tmp: Path) -> None:
            _merge(model_path, adapter, tmp, config)
            tokenizer.save_pretrained(tmp)

        merged = atomic_write_dir(output / "merged", write_merged)
    return adapter, merged


def _record_base_model(adapter_config: Path, name: str) -> None:
    """Name the base model as the user gave it (hub id, alias or path): peft records the folder it was
    loaded from, which for hub and GGUF models is a cache path that means nothing on another machine."""
    data = json.loads(adapter_config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = name
    atomic_write_json(adapter_config, data)


def _unwrapped_full_model(model_path: Path, config: TrainConfig, state: dict[str, torch.Tensor]) -> Any:
    """A plain (unsharded) copy of the base model carrying the trained weights."""
    import torch
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    missing = full.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise TrainerError(f"internal: unexpected weights {missing.unexpected_keys[:3]}")
    return full


def _merge(model_path: Path, adapter: Path, target: Path, config: TrainConfig) -> None:
    """Merge the adapter into an unquantised copy of the base model (a 4-bit base cannot hold it)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if config.dtype == "auto" else getattr(torch, config.dtype)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(target)
