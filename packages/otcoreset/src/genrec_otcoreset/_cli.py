"""Command line for genrec-otcoreset: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec_otcoreset import __version__
from genrec_otcoreset._errors import OtCoresetError

PROG = "genrec-otcoreset"


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig:
    """Options of ``genrec-otcoreset features``."""

    records: Path = field(metadata={"help": "SFT records (parquet with record_id, prompt, completion)"})
    out: Path = field(metadata={"help": "output folder for embeddings.npy, features.parquet, meta.json"})
    model: str = field(default="smollm2", metadata={"help": "causal LM: HF folder, .gguf file or 'smollm2'"})
    encoder: str | None = field(
        default=None, metadata={"help": "sentence-transformers folder or name (default: offline MiniLM)"}
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


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Options of ``genrec-otcoreset select``."""

    features: Path = field(metadata={"help": "features folder of the training pool"})
    val_features: Path = field(metadata={"help": "features folder of the validation set"})
    budget: int = field(metadata={"help": "number of records to select"})
    out: Path = field(metadata={"help": "selection table (parquet); the JSON log goes beside it"})
    lam: float = field(default=0.1, metadata={"help": "weight of the gradient-norm term in the cost"})
    method: str = field(default="itra", metadata={"help": "itra, random, grand, kcenter or stratified"})
    labels_from_records: bool = field(
        default=False, metadata={"help": "label-enhanced selection from the records' label column"}
    )
    candidates: int = field(default=30, metadata={"help": "members and outsiders kept per swap round"})
    max_swaps: int = field(default=100, metadata={"help": "stop after this many accepted swaps"})
    seed: int = field(default=0, metadata={"help": "seed for random, kcenter and stratified"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})


def _add_config(parser: argparse.ArgumentParser, cls: type, *, flags: dict[str, str] | None = None) -> None:
    """One ``--option`` per dataclass field; the field's metadata is its help."""
    flags = flags or {}
    for f in dataclasses.fields(cls):
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        help_ = f.metadata.get("help", "") + ("" if required else f" (default: {default})")
        tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if tp == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        conv: Any = {"int": int, "float": float, "Path": Path}.get(tp, str)
        parser.add_argument(flag, dest=f.name, type=conv, required=required, default=default, help=help_)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("features", help="embeddings and LoRA gradient norms of SFT records")
    _add_config(p, FeaturesConfig)
    p = sub.add_parser("select", help="choose a coreset (ITRA or a baseline) and write the selection")
    _add_config(p, SelectConfig, flags={"lam": "--lambda"})
    return parser


def _config(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _write_atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run_features(cfg: FeaturesConfig, progress: bool) -> int:
    from genrec_otcoreset._features import compute_features, save_features

    feats = compute_features(
        cfg.records, model=cfg.model, encoder=cfg.encoder, batch_size=cfg.batch_size,
        max_length=cfg.max_length, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
        progress=progress,
    )
    out = save_features(feats, cfg.out)
    print(f"features of {len(feats.record_ids)} records (dim {feats.embeddings.shape[1]}) written to {out}")
    return 0


def _run_select(cfg: SelectConfig, progress: bool) -> int:
    import numpy as np
    import polars as pl

    from genrec_otcoreset._features import load_features
    from genrec_otcoreset._select import select

    train = load_features(cfg.features)
    val = load_features(cfg.val_features)
    labels = val_labels = None
    if cfg.labels_from_records:
        for name, fs, folder in (("features", train, cfg.features), ("val-features", val, cfg.val_features)):
            if fs.labels is None:
                raise OtCoresetError(f"--labels-from-records: {name} folder {folder} has no label column")
        labels, val_labels = train.labels, val.labels
    res = select(
        embeddings=train.embeddings, grad_norms=train.grad_norms, val_embeddings=val.embeddings,
        budget=cfg.budget, method=cfg.method, lam=cfg.lam, labels=labels, val_labels=val_labels,
        candidates=cfg.candidates, max_swaps=cfg.max_swaps, seed=cfg.seed, device=cfg.device,
        progress=progress,
    )
    rank = np.full(len(train.record_ids), -1, dtype=np.int64)
    rank[res.indices] = np.arange(1, res.indices.size + 1)
    table = pl.DataFrame({"record_id": list(train.record_ids), "selected": rank > 0, "rank": rank}).with_columns(
        pl.when(pl.col("selected")).then(pl.col("rank")).otherwise(None).alias("rank")
    )
    out = cfg.out
    _write_atomic(out, table.write_parquet)
    log_path = out.with_suffix(".json")
    record = {
        "method": res.method, "budget": cfg.budget, "lambda": cfg.lam, "labels": cfg.labels_from_records,
        "trace": list(res.trace), "poo": res.poo, "seconds": res.seconds, "swaps": res.swaps,
        "exact_solves": res.exact_solves, "n_train": len(train.record_ids), "n_val": len(val.record_ids),
        "features": str(cfg.features), "val_features": str(cfg.val_features),
    }
    _write_atomic(log_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    print(
        f"{res.method}: selected {res.indices.size} of {len(train.record_ids)} records, exact POO {res.poo:.6g} "
        f"({res.swaps} swaps, {res.seconds:.1f}s); table {out}, log {log_path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "features":
            return _run_features(_config(FeaturesConfig, args), args.progress)
        return _run_select(_config(SelectConfig, args), args.progress)
    except (OtCoresetError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
