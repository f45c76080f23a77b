"""Command line for genrec-otcoreset: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec_core import FolderLock, add_config_args, command_parser, config_from_args, dispatch
from genrec_otcoreset import __version__
from genrec_otcoreset._errors import OtCoresetError

PROG = "genrec-otcoreset"


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig:
    """Options of ``genrec-otcoreset features``."""

    records: Path = field(metadata={"help": "SFT records (parquet with record_id, prompt, completion)"})
    out: Path = field(metadata={"help": "output folder for embeddings.npy, features.parquet, meta.json"})
    model: str = field(
        default="smollm2", metadata={"help": "causal LM: hub id org/name[@rev], HF folder, .gguf file or 'smollm2'"}
    )
    encoder: str | None = field(
        default=None,
        metadata={"help": "sentence-transformers model: hub id org/name[@rev] or folder (default: offline MiniLM)"},
    )
    batch_size: int = field(default=8, metadata={"help": "records per forward/backward pass"})
    max_length: int = field(default=512, metadata={"help": "token limit per record (prompt cut on the left)"})
    seed: int = field(default=0, metadata={"help": "seed of the LoRA A matrix"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    dtype: str = field(
        default="auto",
        metadata={"help": "causal LM compute dtype: auto (bfloat16 where the device computes it natively), "
                  "float32, bfloat16 or float16"},
    )
    protocol: str = field(
        default="ours",
        metadata={"help": "ours (fresh LoRA, completion loss, MiniLM) or goracs (the release's features: trained "
                  "--adapter, whole-text loss, LoRA dropout on, roberta-base embeddings)"},
    )
    adapter: str | None = field(
        default=None, metadata={"help": "goracs: the trained LoRA (peft folder or hub id), e.g. alpaca-bigrec"}
    )
    layer: int = field(default=-1, metadata={"help": "goracs: decoder layer whose v_proj.lora_B gradient is read"})
    dropout: bool = field(default=True, metadata={"help": "goracs: LoRA dropout active (--no-dropout: eval mode)"})
    load_in_8bit: bool = field(default=False, metadata={"help": "goracs: load the model in 8 bit (CUDA only)"})


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Options of ``genrec-otcoreset select``."""

    features: Path = field(metadata={"help": "features folder of the training pool"})
    val_features: Path = field(metadata={"help": "features folder of the validation set"})
    budget: int = field(metadata={"help": "number of records to select"})
    out: Path = field(metadata={"help": "selection table (parquet); the JSON log goes beside it"})
    lam: float = field(default=0.1, metadata={"help": "weight of the gradient-norm term in the cost"})
    method: str = field(
        default="itra",
        metadata={"help": "itra (ours), goracs (the GORACS release's procedure, exactly), random, grand, kcenter, "
                  "stratified, el2n, ccs or d2"},
    )
    score: str = field(
        default="el2n",
        metadata={"help": "difficulty score of el2n, ccs and d2: el2n (the features' column) or grad_norm"},
    )
    strata: int = field(default=50, metadata={"help": "ccs: equal-width score strata"})
    ccs_cutoff: float = field(default=0.1, metadata={"help": "ccs: fraction of the hardest records pruned first"})
    d2_neighbors: int = field(default=10, metadata={"help": "d2: neighbours per record in the kNN graph"})
    d2_gamma: float = field(default=1.0, metadata={"help": "d2: reverse message weight exp(-gamma * distance)"})
    labels_from_records: bool = field(
        default=False, metadata={"help": "label-enhanced selection from the records' label column"}
    )
    candidates: int = field(default=30, metadata={"help": "members and outsiders kept per swap round"})
    max_swaps: int = field(default=100, metadata={"help": "stop after this many accepted swaps"})
    seed: int = field(default=0, metadata={"help": "seed for random, kcenter and stratified"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    exact_shortcuts: bool = field(
        default=True,
        metadata={"help": "goracs: skip the trials a dual bound proves worse (same selection); "
                  "--no-exact-shortcuts runs every trial's EMD as the release does"},
    )


def _parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(PROG, __doc__, __version__)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p = sub.add_parser("features", help="embeddings and LoRA gradient norms of SFT records")
    add_config_args(p, FeaturesConfig)
    p.set_defaults(config=FeaturesConfig, subparser=p)
    p = sub.add_parser("select", help="choose a coreset (ITRA, GORACS or a baseline) and write the selection")
    # `lambda` is a Python keyword: the field is `lam`, the flag keeps the paper's name.
    add_config_args(p, SelectConfig, flags={"lam": "--lambda"})
    p.set_defaults(config=SelectConfig, subparser=p)
    return parser


def _run_features(cfg: FeaturesConfig, progress: bool) -> int:
    from genrec_otcoreset._features import compute_features, save_features

    feats = compute_features(
        cfg.records, model=cfg.model, encoder=cfg.encoder, batch_size=cfg.batch_size,
        max_length=cfg.max_length, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
        progress=progress, protocol=cfg.protocol, adapter=cfg.adapter, layer=cfg.layer, dropout=cfg.dropout,
        load_in_8bit=cfg.load_in_8bit,
    )
    out = save_features(feats, cfg.out)
    print(f"features of {len(feats.record_ids)} records (dim {feats.embeddings.shape[1]}) written to {out}")
    return 0


def _run_select(cfg: SelectConfig, progress: bool) -> int:
    from genrec_otcoreset._features import load_features
    from genrec_otcoreset._select import select
    from genrec_otcoreset._selection_io import write_selection

    train = load_features(cfg.features)
    val = load_features(cfg.val_features)
    labels = val_labels = None
    if cfg.labels_from_records:
        for name, fs, folder in (("features", train, cfg.features), ("val-features", val, cfg.val_features)):
            if fs.labels is None:
                raise OtCoresetError(f"--labels-from-records: {name} folder {folder} has no label column")
        labels, val_labels = train.labels, val.labels
    if cfg.score not in ("el2n", "grad_norm"):
        raise OtCoresetError(f"--score must be el2n or grad_norm, got {cfg.score!r}")
    scores = None
    if cfg.method in ("el2n", "ccs", "d2") and cfg.score == "el2n":
        if train.el2n is None or np.isnan(train.el2n).any():
            raise OtCoresetError(
                f"--method {cfg.method}: features folder {cfg.features} has no el2n column (recompute the features, "
                "or pass --score grad_norm)"
            )
        scores = train.el2n
    res = select(
        embeddings=train.embeddings, grad_norms=train.grad_norms, val_embeddings=val.embeddings,
        budget=cfg.budget, method=cfg.method, lam=cfg.lam, labels=labels, val_labels=val_labels,
        candidates=cfg.candidates, max_swaps=cfg.max_swaps, seed=cfg.seed, device=cfg.device,
        progress=progress, exact_shortcuts=cfg.exact_shortcuts, scores=scores, strata=cfg.strata,
        ccs_cutoff=cfg.ccs_cutoff, d2_neighbors=cfg.d2_neighbors, d2_gamma=cfg.d2_gamma,
    )
    out, log_path = write_selection(
        cfg.out, train.record_ids, res, n_val=len(val.record_ids), lam=cfg.lam, labels=cfg.labels_from_records,
        extra={"features": str(cfg.features), "val_features": str(cfg.val_features),
               **({"score": cfg.score} if cfg.method in ("el2n", "ccs", "d2") else {})},
    )
    print(
        f"{res.method}: selected {res.indices.size} of {len(train.record_ids)} records, exact POO {res.poo:.6g} "
        f"({res.swaps} swaps, {res.seconds:.1f}s); table {out}, log {log_path}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args.config, args)
    run = _run_features if args.command == "features" else _run_select
    # One writer per output: the lock sits beside it (a hidden folder), since the output itself is
    # replaced whole when it is written.
    out = Path(cfg.out)
    with FolderLock(out.with_name(f".{out.name}.lock"), what="output", guards=str(out)):
        return run(cfg, args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(_parser(), argv, _run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
