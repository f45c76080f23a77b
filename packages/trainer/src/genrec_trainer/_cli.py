"""Command line for genrec-trainer: a thin shell over the Python API.

Run under ``torchrun --nproc-per-node N -m genrec_trainer train ...`` for FSDP.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any, Literal

from genrec_trainer import __version__
from genrec_trainer._config import config_fields, load_config, recipe_path, recipes
from genrec_trainer._errors import TrainerError


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (override the config file)")
    for f, hint in config_fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) is Literal:
            group.add_argument(flag, choices=typing.get_args(hint), **kwargs)
        elif typing.get_origin(hint) is tuple:
            group.add_argument(flag, metavar="A,B,...", **kwargs)
        else:
            group.add_argument(flag, type=hint, metavar=f.name.upper(), **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec-trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="fine-tune a model on SFT records")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", help="TOML config file (flat keys or a [train] table)")
    source.add_argument("--recipe", help=f"a shipped recipe: {', '.join(recipes())}")
    train.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    _add_config_flags(train)
    sub.add_parser("recipes", help="list the shipped recipes and where they are")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "recipes":
            for name in recipes():
                print(f"{name}\t{recipe_path(name)}")
            return 0
        overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "recipe", "debug")}
        path = recipe_path(args.recipe) if args.recipe else args.config
        config = load_config(path, **overrides)
        from genrec_trainer._train import train

        result = train(config)
    except (TrainerError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
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
