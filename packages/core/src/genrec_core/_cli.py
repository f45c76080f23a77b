"""Command lines built from config dataclasses, and the one ``main`` wrapper every CLI uses.

A frozen config dataclass is the single source of a command's options: one ``--option`` per field,
the field's ``metadata["help"]`` as its help text, its type deciding the parsing (bool flags take
``--x/--no-x``, ``Literal`` fields become choices, ``tuple`` fields take several values).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from genrec_core._errors import GenrecError

__all__ = ["add_config_args", "command_parser", "config_from_args", "dispatch", "run_main"]


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _scalar(tp: Any) -> Callable[[str], Any]:
    if tp in (int, float, str):
        return tp
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return Path
    return str


def add_config_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Sequence[str] = (),
    unset_defaults: bool = False,
    suppress_defaults: bool = False,
    prefix_help: str = "",
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--option`` per init field of the dataclass ``cls`` to ``parser``.

    ``unset_defaults``: options default to None, so the dataclass default applies unless given (two
    configs can then share one command). ``suppress_defaults``: an option not given is absent from the
    namespace (for overrides on top of a config file). A field without a default is a required option
    (unless one of those two is set). ``flags`` renames options (``{"lam": "--lambda"}``).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        origin = typing.get_origin(tp)
        required = False
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
            required = not (unset_defaults or suppress_defaults)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{prefix_help}{f.metadata.get('help', '')}" + ("" if required else f" (default: {shown})")
        help_text = help_text.strip()
        if suppress_defaults:
            default = argparse.SUPPRESS
        elif unset_defaults:
            default = None
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if required:
            kwargs["required"] = True
        flag = (flags or {}).get(f.name) or "--" + f.name.replace("_", "-")
        if tp is bool and f.name.startswith("no_"):
            # Already a negation (``--no-draft``): a plain switch, not ``--no-no-draft``.
            parser.add_argument(flag, action="store_true", **kwargs)
        elif tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=list(typing.get_args(tp)), **kwargs)
        elif origin is tuple:
            inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
            parser.add_argument(flag, nargs="+", type=_scalar(inner[0] if inner else str), **kwargs)
        else:
            parser.add_argument(flag, type=_scalar(tp), metavar=f.name.upper(), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, *, drop_none: bool = False, **extra: Any) -> Any:
    """Build ``cls`` from the options :func:`add_config_args` added (lists become tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    if drop_none:
        values = {k: v for k, v in values.items() if v is not None}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values.update(extra)
    return cls(**values)


def run_main(
    prog: str,
    body: Callable[[], int | None],
    *,
    debug: bool = False,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command's body and turn bad input into one line on stderr and exit status 2.

    ``GenrecError`` (every package's error type), ``FileNotFoundError`` and the extra ``errors`` print
    ``prog: error: <first line>``; Ctrl-C prints ``prog: interrupted`` and returns 130. With ``debug``
    the traceback is shown instead.
    """
    caught: tuple[type[BaseException], ...] = (
        GenrecError, FileNotFoundError, NotADirectoryError, IsADirectoryError, *errors,
    )  # fmt: skip
    try:
        rc = body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except caught as exc:
        if debug:
            raise
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.filename}: {exc.strerror.lower()}"
        one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
        print(f"{prog}: error: {one_line}", file=sys.stderr)
        logging.getLogger(prog).debug("error", exc_info=True)
        return 2
    return int(rc or 0)


def command_parser(
    prog: str, description: str | None, version: str, *, verbose: bool = True
) -> tuple[argparse.ArgumentParser, Any]:
    """A command's parser with ``--version``, ``--debug`` (tracebacks) and ``-v/--verbose`` (progress
    logs), and its sub-command table (``dest="command"``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    if verbose:
        parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def dispatch(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], int | None],
    *,
    errors: tuple[type[BaseException], ...] = (),
    log_level: int | None = None,
) -> int:
    """Parse ``argv``, print the help when no sub-command is given, set up logging (INFO with
    ``--verbose``, or ``log_level``), and run ``run(args)`` through :func:`run_main`."""
    args = parser.parse_args(argv)
    if getattr(args, "command", "") is None:
        parser.print_help()
        return 0
    level = logging.INFO if getattr(args, "verbose", False) else log_level
    if level is not None:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return run_main(parser.prog, lambda: run(args), debug=bool(getattr(args, "debug", False)), errors=errors)
