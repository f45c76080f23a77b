"""The compiled decode-attention kernel is never loaded from a file this program did not build: a
library planted at its predictable path (or beside a forged record) is rebuilt, its constructor never
runs, and a cache folder other users can write to is refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler: nothing is built or loaded")

# Runs the kernel's first use in a fresh process (the kernel is cached per process), as the first
# decode step of `genrec-profiler generate --backend local` does.
_PROBE = "from genrec_profiler._attention import decode_attention; print('kernel', decode_attention() is not None)"


def _planted_library(folder: Path, marker: Path) -> Path:
    src = folder / "evil.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'  FILE* f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
        "}\n"
        "int genrec_decode_attention(void) { return 0; }\n"
    )
    lib = folder / "evil.so"
    subprocess.run([COMPILER, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, capture_output=True)
    return lib


def _kernel_path(cache: Path) -> Path:
    """Where the kernel goes: its name is derived from public facts (source, flags, compiler, CPU)."""
    from genrec_profiler import _attention as a

    version = subprocess.run([COMPILER, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([a._SOURCE, *a._FLAGS, version, a._cpu_key()]).encode()).hexdigest()[:16]
    return cache / "kernels" / f"decode_attention-{key}.so"


def _probe(cache: Path) -> str:
    env = {**os.environ, "GENREC_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_planted_library_is_rebuilt_never_loaded(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    target = _kernel_path(cache)
    target.parent.mkdir(parents=True, mode=0o700)
    evil = _planted_library(tmp_path, marker)
    shutil.copy(evil, target)

    assert _probe(cache) == "kernel True"
    assert not marker.exists(), "a planted library's constructor ran"
    # What is there now is ours, with its hash recorded by the build.
    sidecar = target.with_name(target.name + ".sha256")
    assert sidecar.read_text().strip() == hashlib.sha256(target.read_bytes()).hexdigest()
    assert target.read_bytes() != evil.read_bytes()
    assert (target.parent.stat().st_mode & 0o777) == 0o700

    # A forged record that matches the planted file, but the file is writable by others: not loaded.
    shutil.copy(evil, target)
    os.chmod(target, 0o777)
    sidecar.write_text(hashlib.sha256(evil.read_bytes()).hexdigest() + "\n")
    assert _probe(cache) == "kernel True"
    assert not marker.exists(), "a group-writable library was loaded"

    # The recorded hash and a file that no longer matches it (replaced in place): rebuilt too.
    shutil.copy(evil, target)
    os.chmod(target, 0o700)
    assert _probe(cache) == "kernel True"
    assert not marker.exists()


def test_cache_writable_by_others_is_refused(tmp_path: Path) -> None:
    cache, marker = tmp_path / "shared", tmp_path / "marker"
    target = _kernel_path(cache)
    target.parent.mkdir(parents=True)
    shutil.copy(_planted_library(tmp_path, marker), target)
    os.chmod(cache, 0o777)
    try:
        assert _probe(cache) == "kernel False"  # decoding stays on SDPA
        assert not marker.exists()
    finally:
        os.chmod(cache, 0o700)
