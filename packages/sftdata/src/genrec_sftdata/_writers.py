"""Record writers: parquet, JSONL, and Hugging Face datasets (save_to_disk / push_to_hub)."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import polars as pl

from genrec_core import FolderLock, LockHeldError, atomic_write, atomic_write_dir, atomic_write_parquet
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

Format = Literal["auto", "parquet", "jsonl", "hf"]
_SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}


def _guess(path: Path) -> str:
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "parquet"


def _write_one(frame: pl.DataFrame, path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        return atomic_write_parquet(path, frame)
    if fmt == "jsonl":
        return atomic_write(path, frame.write_ndjson)
    raise SftDataError(f"write_records: unknown format {fmt!r}; use parquet, jsonl or hf")


@contextlib.contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """``datasets`` shows progress bars by default; ours are off unless asked for."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if enabled:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()


def to_hf_dataset(frame_or_dict: pl.DataFrame | Mapping[str, pl.DataFrame]) -> Any:
    """A ``datasets.Dataset`` (or ``DatasetDict`` for a dict of splits) over the same columns."""
    import datasets

    if isinstance(frame_or_dict, pl.DataFrame):
        return datasets.Dataset(frame_or_dict.to_arrow())
    return datasets.DatasetDict({k: datasets.Dataset(v.to_arrow()) for k, v in frame_or_dict.items()})


def write_records(
    frame_or_dict: pl.DataFrame | Mapping[str, pl.DataFrame],
    path: str | Path,
    *,
    format: Format = "auto",
    progress: bool = False,
) -> Path:
    """Write records atomically and return where they went.

    A frame goes to ``path`` (format from the suffix when ``auto``; ``.jsonl`` for JSON lines). A dict
    of splits goes to ``path/<split>.parquet`` (or ``.jsonl``), written as one set (:func:`write_set`). ``format="hf"`` writes a Hugging Face
    ``Dataset``/``DatasetDict`` with ``save_to_disk`` (its progress bars only with ``progress``).
    """
    path = Path(path)
    if format == "hf":
        ds = to_hf_dataset(frame_or_dict)
        with _datasets_progress(progress):
            write_set(path, lambda tmp: ds.save_to_disk(str(tmp)), what="records folder")
        logger.info("write_records: saved a Hugging Face dataset to %s", path)
        return path
    if isinstance(frame_or_dict, pl.DataFrame):
        fmt = _guess(path) if format == "auto" else format
        if path.is_dir():
            raise SftDataError(f"{path}: is a folder; one table is written to a file (a dict of splits to a folder)")
        return _write_one(frame_or_dict, path, fmt)
    if not isinstance(frame_or_dict, Mapping):
        raise SftDataError(
            f"write_records: expected a polars DataFrame or a dict of them, got {type(frame_or_dict).__name__}"
        )
    fmt = "parquet" if format == "auto" else format
    if fmt not in _SUFFIX:
        raise SftDataError(f"write_records: unknown format {fmt!r}; use parquet, jsonl or hf")

    def write(tmp: Path) -> None:
        for split, frame in frame_or_dict.items():
            if fmt == "parquet":
                frame.write_parquet(tmp / f"{split}.parquet")
            else:
                frame.write_ndjson(tmp / f"{split}.jsonl")

    write_set(path, write, what="records folder")
    logger.info("write_records: wrote %s to %s", sorted(frame_or_dict), path)
    return path


# ------------------------------------------------------------------ outputs of several files, as one set

#: Names a genrec-sftdata output folder may hold from an earlier run: replaced by the new set, never
#: kept beside it (a kept ``train.jsonl`` beside a new ``train.parquet`` would be a mixed set).
_OWN_NAMES = (
    "checkins.parquet", "train.*", "val.*", "test.*", "validation", "stats.json", "source.json",
    "interactions.parquet", "items.parquet", "users.parquet", "seqrec", "ctr", "dataset_dict.json",
    "dataset_info.json", "state.json", "data-*.arrow", "*.inter", "*.item", "*.user",
)  # fmt: skip


def _own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _OWN_NAMES)


def check_out_folder(out: str | os.PathLike[str]) -> Path:
    """``out`` as an output folder, or one line saying why it cannot be one (a file, the working folder
    or one above it, a folder holding other folders of its own)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SftDataError(f"{path}: exists and is a file, not a folder; --out names the folder to write")
    absolute = Path(os.path.abspath(path))
    cwd = Path.cwd()
    if absolute == cwd or absolute in cwd.parents:
        raise SftDataError(
            f"{path}: is the working folder or one above it; the output is swapped in as a whole folder, so "
            "give a new or dedicated folder"
        )
    if path.is_dir():
        foreign = sorted(c.name for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and not _own(c.name))
        if foreign:
            raise SftDataError(
                f"{path}: holds the folder {foreign[0]!r}, which is not part of a genrec-sftdata output; the "
                "output replaces the whole folder, so give a new or dedicated folder"
            )
    return path


def _held_by_us(folder: Path) -> bool:
    try:
        holder = (folder / ".lock").read_text(errors="replace")
    except OSError:
        return False
    return holder.startswith(f"pid {os.getpid()} on {socket.gethostname()} ")


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str], *, what: str = "output folder") -> Iterator[Path]:
    """Hold :class:`genrec_core.FolderLock` on ``out`` (checked by :func:`check_out_folder` first).

    Re-entrant within one process: the command line locks its output before reading any input and
    then calls the API, which locks again; a caller such as ``genrec run`` may hold it too.
    """
    path = check_out_folder(out)
    lock = FolderLock(path, what=what)
    try:
        lock.acquire()
    except LockHeldError:
        if not _held_by_us(path):
            raise
        yield path
        return
    try:
        yield path
    finally:
        lock.release()


def write_set(out: str | os.PathLike[str], write: Callable[[Path], None], *, what: str = "output folder") -> Path:
    """Write a multi-file output as one set: ``write(tmp)`` fills an empty sibling folder, which is then
    swapped in for ``out`` (``genrec_core.atomic_write_dir``) under the folder's lock.

    A run killed at any point leaves ``out`` holding the previous set or the new one, never a mix. Files
    in ``out`` that no genrec-sftdata output writes (notes, a pipeline's ``artifact.json``) are kept.
    """
    with output_lock(out, what=what) as path:
        keep = [c for c in path.iterdir() if c.is_file() and not c.name.startswith(".") and not _own(c.name)]

        def build(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            write(tmp)
            for old in keep:
                if not (tmp / old.name).exists():
                    _link_or_copy(old, tmp / old.name)
            # The lock file travels with the set (same inode): whoever waits on ``out/.lock`` still
            # waits on the lock this run holds after the swap.
            if (path / ".lock").exists():
                _link_or_copy(path / ".lock", tmp / ".lock")

        atomic_write_dir(path, build)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def push_to_hub(
    frame_or_dict: pl.DataFrame | Mapping[str, pl.DataFrame],
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
) -> None:
    """Upload records to the Hugging Face hub as a dataset repository (needs network and a token)."""
    ds = to_hf_dataset(frame_or_dict)
    ds.push_to_hub(repo_id, private=private, token=token)
    logger.info("push_to_hub: pushed to %s", repo_id)
