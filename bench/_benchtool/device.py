"""Which machine a benchmark ran on, as a human name and a filesystem slug.

A GPU run is named after the GPU (``torch.cuda``); a CPU run after the CPU model from
``/proc/cpuinfo`` plus the usable core count, because the same CPU model with 2 or 64 cores is a
different machine for a benchmark.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# Environment variables through which bench/run.py hands the device it detected (or was told) to the
# pytest subprocesses, so that bench/conftest.py never has to import torch to name the device.
ENV_NAME = "GENREC_BENCH_DEVICE_NAME"
ENV_SLUG = "GENREC_BENCH_DEVICE_SLUG"
ENV_KIND = "GENREC_BENCH_DEVICE_KIND"


@dataclass(frozen=True, kw_only=True)
class Device:
    name: str  # human readable: "NVIDIA H100 80GB HBM3" or "AMD EPYC (2 cores)"
    slug: str  # folder name under bench/results/: "nvidia-h100-80gb-hbm3", "amd-epyc-2c"
    kind: str  # "cuda" or "cpu"


def slugify(text: str) -> str:
    """Lowercase ASCII letters, digits and single dashes: ``"Intel(R) Xeon(R) CPU @ 2.2GHz"`` ->
    ``"intel-xeon-cpu-2-2ghz"``."""
    text = re.sub(r"\((r|tm|c)\)", " ", text.lower())
    text = re.sub(r"[^a-z0-9]+", "-", text)
    return text.strip("-") or "unknown"


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU model name: the first ``model name`` (x86) or ``Model``/``Hardware`` (ARM) line of
    ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE)
        if match and match.group(1).strip():
            name = match.group(1).strip()
            # Intel appends the nominal clock ("CPU @ 2.20GHz"); the model already names the part.
            return re.sub(r"\s*(CPU\s*)?@\s*[\d.]+\s*[GM]Hz\s*$", "", name, flags=re.IGNORECASE).strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_count() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _gpu_may_exist() -> bool:
    # Importing torch costs seconds on a busy 2-core machine; skip it where no GPU driver is visible.
    if "torch" in sys.modules:
        return True
    return (
        Path("/proc/driver/nvidia/gpus").is_dir()
        or Path("/dev/kfd").exists()
        or shutil.which("nvidia-smi") is not None
    )


def _cuda_device() -> Device | None:
    if not _gpu_may_exist():
        return None
    try:
        import torch  # lazy: only where a GPU may exist
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
    except RuntimeError:
        return None
    if count > 1:
        return Device(name=f"{count}x {name}", slug=f"{slugify(name)}-x{count}", kind="cuda")
    return Device(name=name, slug=slugify(name), kind="cuda")


def cpu_device(*, model: str | None = None, cores: int | None = None) -> Device:
    """The CPU as a device: ``AMD EPYC`` with 2 usable cores -> slug ``amd-epyc-2c``."""
    model = model or cpu_model()
    cores = cores or cpu_count()
    return Device(name=f"{model} ({cores} cores)", slug=f"{slugify(model)}-{cores}c", kind="cpu")


def device_env(device: Device) -> dict[str, str]:
    """The environment that hands ``device`` down to the pytest subprocesses."""
    return {ENV_NAME: device.name, ENV_SLUG: device.slug, ENV_KIND: device.kind}


def detect_device(override: str | None = None) -> Device:
    """The device benchmarks run on. ``override`` (``--device``) names it explicitly; otherwise the
    environment handed down by bench/run.py, otherwise the first CUDA GPU, otherwise the CPU."""
    if override:
        return Device(name=override, slug=slugify(override), kind="cuda" if _cuda_device() else "cpu")
    env_slug = os.environ.get(ENV_SLUG)
    if env_slug:
        name = os.environ.get(ENV_NAME) or env_slug
        return Device(name=name, slug=env_slug, kind=os.environ.get(ENV_KIND) or "cpu")
    return _cuda_device() or cpu_device()
