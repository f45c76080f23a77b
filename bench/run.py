#!/usr/bin/env python
"""One command for genrec's benchmarks: ``uv run python bench/run.py --help``; see bench/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # imported by path (tests) rather than run as a script
    sys.path.append(_HERE)

from _benchtool.cli import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
