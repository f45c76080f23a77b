"""Stage folders keyed by a hash of their settings, the content of their inputs and the code.

A stage's folder is ``<run dir>/<stage>-<key>`` where the key hashes the stage's settings (with every
input file replaced by a fingerprint of its content), the keys of the stages it reads, and the code
version (the genrec package versions and, for a source checkout, a hash of the genrec source files).
The folder holds ``stage.json``; its ``status`` turns ``done`` only after every output is in place
(written atomically), so a folder without it is an interrupted stage that the next run resumes in place.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from genrec_core import fingerprint

GENREC_PACKAGES = (
    "genrec-core",
    "genrec-sftdata",
    "genrec-profiler",
    "genrec-otcoreset",
    "genrec-trainer",
    "genrec-evaluator",
    "genrec-pipeline",
)
# Source files whose content is the code (recipes and shipped configs change results too).
_SOURCE_SUFFIXES = (".py", ".toml", ".jinja", ".json")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _in_checkout(folder: Path) -> bool:
    return any((parent / ".git").exists() for parent in folder.parents)


def _source_hash(package_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        if path.suffix not in _SOURCE_SUFFIXES or "__pycache__" in path.parts or not path.is_file():
            continue
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> dict[str, str]:
    """Each genrec package's version, plus ``+src.<hash>`` of its source files when it is installed
    from a git checkout (editable), so uncommitted edits re-key the stages they could change.

    Computed once per process: a run keys all its stages against the same code, even when the tree
    is edited while it runs. ``$GENREC_CODE_VERSION`` (this mapping as JSON) pins it, so a process a
    run starts (a resumed run in a subprocess, say) keys its stages exactly as its parent did.
    """
    pinned = os.environ.get("GENREC_CODE_VERSION")
    if pinned:
        return {str(k): str(v) for k, v in json.loads(pinned).items()}
    out: dict[str, str] = {}
    for dist in GENREC_PACKAGES:
        try:
            value = version(dist)
        except PackageNotFoundError:  # pragma: no cover - a partial install
            value = "missing"
        spec = importlib.util.find_spec(dist.replace("-", "_"))
        locations = list(spec.submodule_search_locations or ()) if spec is not None else []
        for location in locations:
            folder = Path(location)
            if folder.is_dir() and _in_checkout(folder):
                value += f"+src.{_source_hash(folder)}"
        out[dist] = value
    return out


def input_key(value: str) -> Any:
    """What a path setting contributes to a cache key: the content fingerprint of the file (or of every
    file under the folder) it names (``genrec_core.fingerprint``: size and sha256 up to 256 MiB, so a
    copy or a ``touch`` keeps the cache and an edit does not); a value that is no local path (a hub id)
    stays as it is."""
    if not value:
        return value
    path = Path(value).expanduser()
    try:
        if path.exists():
            return {"path": value, **fingerprint(path)}
    except OSError:
        return value
    return value


def stage_key(
    stage: str, settings: Mapping[str, Any], upstream: Mapping[str, str], versions: Mapping[str, str]
) -> str:
    """A short, stable hash of what determines a stage's output."""
    blob = json.dumps(
        {"stage": stage, "settings": settings, "upstream": dict(upstream), "versions": dict(versions)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_dir(run_dir: Path, stage: str, key: str) -> Path:
    return run_dir / f"{stage}-{key}"


def status(folder: Path) -> str:
    """``done``, ``partial`` (started, not finished) or ``missing``."""
    meta = folder / "stage.json"
    if not meta.is_file():
        return "partial" if folder.is_dir() else "missing"
    try:
        return "done" if read_json(meta).get("status") == "done" else "partial"
    except (OSError, ValueError):
        return "partial"


def intact(folder: Path) -> str:
    """Why a stage marked done cannot be reused as it is ("" when it can): an output file its
    ``artifact.json`` names is gone, or a parquet table is cut short (a disk filled up, a copy
    interrupted). Only the parquet footers are read, so checking costs little."""
    meta = folder / "artifact.json"
    try:
        files = read_json(meta).get("files", {})
    except (OSError, ValueError, AttributeError):
        return f"{meta} is missing or unreadable"
    for value in files.values():
        path = Path(value)
        if not path.exists():
            return f"{path} is missing"
        if path.suffix == ".parquet" and path.is_file():
            import polars as pl

            try:
                pl.read_parquet_schema(path)
            except Exception as exc:  # any reader error means the same thing: the file is damaged
                return f"{path} is not a readable parquet file ({type(exc).__name__})"
    return ""


