"""The cache folder, content fingerprints of inputs, and one lock per output folder."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genrec_core._errors import GenrecError

__all__ = [
    "HASH_LIMIT_BYTES",
    "FolderLock",
    "LockHeldError",
    "UnsafeCacheError",
    "cache_dir",
    "fingerprint",
    "locked",
    "private_cache_dir",
    "sha256_file",
]

#: Files up to this size are hashed in full (sha256) by :func:`fingerprint`; larger ones are
#: fingerprinted by size, mtime and a hash of their first and last MiB.
HASH_LIMIT_BYTES = 256 * 1024 * 1024
_EDGE = 1024 * 1024


def cache_dir() -> Path:
    """``$GENREC_CACHE``, default ``~/.cache/genrec``: converted models, compiled kernels, downloads."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


class UnsafeCacheError(GenrecError):
    """A cache folder that other users could write to: nothing in it may be executed or unpickled."""


def private_cache_dir(*parts: str) -> Path:
    """``cache_dir()/parts...``, created owner-only (0700), for files this program will execute.

    A compiled library is only loaded from a folder no other user can write to: the folder (and the
    cache folder above it) must be owned by this user and not writable by group or others. An
    existing folder that fails the check raises :class:`UnsafeCacheError` rather than being trusted.
    """
    root = cache_dir()
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    uid = os.getuid() if hasattr(os, "getuid") else None
    current = folder
    while True:
        st = current.stat()
        if uid is not None and st.st_uid != uid:
            raise UnsafeCacheError(f"{current}: owned by uid {st.st_uid}, not by this user; refusing to load code from it")
        if st.st_mode & 0o022:
            if current == folder:
                os.chmod(folder, 0o700)  # ours, just made or made before: tighten it
            else:
                raise UnsafeCacheError(
                    f"{current}: writable by group or others (mode {oct(st.st_mode & 0o777)}); refusing to "
                    "load code from under it (chmod go-w it, or point GENREC_CACHE elsewhere)"
                )
        if current == root or current.parent == current:
            break
        current = current.parent
    return folder


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a whole file, hex."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= HASH_LIMIT_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


@functools.lru_cache(maxsize=65536)
def _file_fingerprint(
    path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int
) -> tuple[tuple[str, Any], ...]:
    # Keyed by what stat says, so a file is hashed once per process however often it is asked for.
    # The ctime is in the key because every write moves it and, unlike the mtime, nothing can set it
    # back: an edit that restores the mtime is still hashed anew.
    if size <= HASH_LIMIT_BYTES:
        return (("size", size), ("sha256", _hash_file(Path(path), size)))
    return (("size", size), ("mtime_ns", mtime_ns), ("sha256_edges", _hash_file(Path(path), size)))


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies the content of a file or folder, for cache keys.

    A file up to :data:`HASH_LIMIT_BYTES`: its size and the sha256 of its content, and nothing else,
    so a copy or a ``touch`` of an unchanged file keeps its fingerprint while any edit changes it. A
    larger file: its size, its mtime (nanoseconds) and the sha256 of its first and last MiB, so an
    in-place edit is seen through its mtime or size. A folder: the same for every file under it, by
    relative path (hidden files and folders, the ones starting with a dot, are skipped). A missing
    path raises.
    """
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return dict(_file_fingerprint(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    if path.is_dir():
        files = {}
        for child in sorted(path.rglob("*")):
            rel = child.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not child.is_file():
                continue
            files[rel.as_posix()] = fingerprint(child)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"files": len(files), "sha256": digest}
    raise GenrecError(f"{path}: no such file or folder")


class LockHeldError(GenrecError):
    """Another live process holds the lock of an output folder."""


class FolderLock:
    """An exclusive lock on an output folder (``<folder>/.lock``), held for the life of a run.

    It is an ``flock``: the kernel drops it when the holding process dies, however it dies, so a stale
    lock from a killed run never blocks the next one. The file records the holder's pid, host and start
    time for the message another process gets.
    """

    def __init__(self, folder: str | os.PathLike[str], *, what: str = "folder", guards: str | None = None) -> None:
        # ``guards``: what the lock stands for when the folder is a lock beside it (an output file).
        self.folder = Path(folder)
        self.what = what
        self.guards = guards
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise LockHeldError(
                f"{self.what} {self.guards or self.folder} is in use by another run ({holder}); wait for it to finish "
                "or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(folder: str | os.PathLike[str], *, what: str = "folder") -> Iterator[FolderLock]:
    with FolderLock(folder, what=what) as lock:
        yield lock
