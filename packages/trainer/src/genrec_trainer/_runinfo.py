"""What a run ran on: interpreter, library versions and the source commit, for ``<output>/run.json``."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Libraries whose versions change what a run computes.
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "polars", "numpy")


def run_metadata() -> dict[str, Any]:
    """Python, library and genrec versions, and ``git`` ({commit, dirty}) when the source is a checkout."""
    packages = {name: _version(name) for name in _LIBRARIES}
    # Every genrec distribution, not just this one: a run also depends on core's loaders and contracts.
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("genrec"):
            packages[name] = dist.version
    info: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": dict(sorted(packages.items())),
    }
    cuda = _cuda_version()
    if cuda:
        info["cuda"] = cuda
    git = source_commit(Path(__file__).parent)
    if git is not None:
        info["git"] = git
    return info


def source_commit(folder: Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``folder``; None when there is none.

    The folder's own files must be tracked there: an installed copy inside some other repository
    (a virtual environment in a project's checkout) would otherwise report that project's commit.
    """
    tracked = _git(folder, "ls-files", "--error-unmatch", "--", "__init__.py")
    if tracked is None:
        return None
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return None
    # --no-optional-locks: status would otherwise refresh (rewrite) the index, racing with whoever
    # else works in the checkout while a long run starts.
    status = _git(folder, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)} if status is not None else {"commit": commit}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cuda_version() -> str | None:
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
