"""What bench/conftest.py adds to every benchmark: the device, the bench size, library versions.

Cheap by design: versions come from package metadata (no imports), the device from the
environment bench/run.py hands down (torch is imported only when neither that nor a visible GPU
driver settles the question, see :mod:`.device`).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from .device import detect_device
from .results import SIZE_KEY

SIZE_ENV = "GENREC_BENCH_SIZE"
SIZES = ("quick", "full")
# Distribution names whose versions explain a timing; missing ones are left out.
LIBRARIES = (
    "torch",
    "triton",
    "numpy",
    "polars",
    "pyarrow",
    "pandas",
    "POT",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "pytest-benchmark",
)


OWN_KEYS = frozenset({"device_name", "device_slug", "device_kind", SIZE_KEY})


def bench_size() -> str:
    return os.environ.get(SIZE_ENV) or "quick"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            versions[dist.lower()] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.version, "cuda", None):
        versions["cuda"] = str(torch.version.cuda)
    return versions


def provenance() -> dict[str, Any]:
    device = detect_device()
    return {
        "device": device.name,
        "device_name": device.name,
        "device_slug": device.slug,
        "device_kind": device.kind,
        SIZE_KEY: bench_size(),
        "versions": library_versions(),
    }


def annotate(benchmarks: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """Add ``info`` to each benchmark's ``extra_info`` without overwriting what the benchmark set
    itself (a benchmark that records ``device="cuda:0"`` keeps it), except for the keys that are ours
    alone: ``device_name``, ``device_slug``, ``device_kind`` and ``bench_size``."""
    for entry in benchmarks:
        extra = entry.setdefault("extra_info", {})
        for key, value in info.items():
            if key == "versions" and isinstance(extra.get(key), dict):
                extra[key] = {**value, **extra[key]}
            elif key in OWN_KEYS:
                extra[key] = value
            else:
                extra.setdefault(key, value)
