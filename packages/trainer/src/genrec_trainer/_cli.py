"""Command line for genrec-trainer: a thin shell over the Python API.

Run under ``torchrun --nproc-per-node N -m genrec_trainer train ...`` for FSDP.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from genrec_core import add_config_args, command_parser, dispatch
from genrec_trainer import __version__
from genrec_trainer._config import TrainConfig, load_config, recipe_path, recipes


def _parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("genrec-trainer", __doc__, __version__, verbose=False)
    train = sub.add_parser("train", help="fine-tune a model on SFT records")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", help="TOML config file (flat keys or a [train] table)")
    source.add_argument("--recipe", help=f"a shipped recipe: {', '.join(recipes())}")
    train.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    group = train.add_argument_group("config fields (override the config file)")
    add_config_args(group, TrainConfig, suppress_defaults=True)
    sub.add_parser("recipes", help="list the shipped recipes and where they are")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # ValueError too: tokenizers and datasets report unreadable input that way.
    return dispatch(_parser(), argv, _run, errors=(ValueError,), log_level=logging.INFO)


def _run(args: argparse.Namespace) -> int:
    if args.command == "recipes":
        for name in recipes():
            print(f"{name}\t{recipe_path(name)}")
        return 0
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "recipe", "debug")}
    for name in ("target_modules", "report_to"):
        if name in overrides:
            # Both `--target-modules q_proj k_proj` and the older `--target-modules q_proj,k_proj`.
            overrides[name] = [m for v in overrides[name] for m in v.split(",") if m]
    path = recipe_path(args.recipe) if args.recipe else args.config
    config = load_config(path, **overrides)
    from genrec_trainer._train import train

    result = train(config)
    if result.world_size == 1 or _rank() == 0:
        print(
            f"trained {result.steps} steps in {result.seconds:.1f}s "
            f"({result.tokens_per_s:.0f} tokens/s), final loss {result.final_loss:.4f}"
            + (f", eval loss {result.eval_losses[-1][1]:.4f}" if result.eval_losses else "")
        )
        if result.adapter_dir is not None:
            print(f"adapter: {result.adapter_dir}")
        if result.model_dir is not None:
            print(f"model: {result.model_dir}")
        print(f"log: {result.log_path}")
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
