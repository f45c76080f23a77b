"""Atomic writes: every output appears whole or not at all.

A file is written to a temporary name beside its target and moved into place with ``os.replace``; a
folder (several files that belong together) is built as a sibling folder and swapped in with renames, so
a reader never sees a mix of an old and a new set. Temporary names start with a dot and end in ``.tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> Path:
    """JSON with two-space indents and a final newline; values JSON cannot hold are written as ``str``."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=str, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_parquet(path: str | os.PathLike[str], frame: pl.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.write_parquet(tmp))


def atomic_write_dir(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Build a folder with ``write(tmp)`` beside ``path``, then swap it in as one set.

    An existing folder at ``path`` is renamed aside first and removed after the swap; if the process
    dies between the two renames the old folder is still there under ``.<name>.old`` and the next call
    cleans it up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    shutil.rmtree(tmp)
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)
    return path
