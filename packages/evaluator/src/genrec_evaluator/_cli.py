"""Command line for genrec-evaluator: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genrec_evaluator import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec-evaluator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
