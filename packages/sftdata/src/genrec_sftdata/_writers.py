"""Record writers: parquet, JSONL, and Hugging Face datasets (save_to_disk / push_to_hub)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import polars as pl

from genrec_core import atomic_write, atomic_write_dir, atomic_write_parquet
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
    of splits goes to ``path/<split>.parquet`` (or ``.jsonl``). ``format="hf"`` writes a Hugging Face
    ``Dataset``/``DatasetDict`` with ``save_to_disk`` (its progress bars only with ``progress``).
    """
    path = Path(path)
    if format == "hf":
        ds = to_hf_dataset(frame_or_dict)
        with _datasets_progress(progress):
            atomic_write_dir(path, lambda tmp: ds.save_to_disk(str(tmp)))
        logger.info("write_records: saved a Hugging Face dataset to %s", path)
        return path
    if isinstance(frame_or_dict, pl.DataFrame):
        fmt = _guess(path) if format == "auto" else format
        return _write_one(frame_or_dict, path, fmt)
    if not isinstance(frame_or_dict, Mapping):
        raise SftDataError(
            f"write_records: expected a polars DataFrame or a dict of them, got {type(frame_or_dict).__name__}"
        )
    fmt = "parquet" if format == "auto" else format
    if fmt not in _SUFFIX:
        raise SftDataError(f"write_records: unknown format {fmt!r}; use parquet, jsonl or hf")
    path.mkdir(parents=True, exist_ok=True)
    for split, frame in frame_or_dict.items():
        _write_one(frame, path / f"{split}{_SUFFIX[fmt]}", fmt)
    logger.info("write_records: wrote %s to %s", sorted(frame_or_dict), path)
    return path


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
