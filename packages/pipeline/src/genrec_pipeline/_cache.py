"""Stage folders keyed by a hash of their inputs and settings.

A stage's folder is ``<run dir>/<stage>-<key>`` where the key hashes the stage's settings, the keys of
the stages it reads and the genrec versions. The folder holds ``stage.json``; its ``status`` turns
``done`` only after every output is in place (written atomically), so a folder without it is an
interrupted stage that the next run resumes in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


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
