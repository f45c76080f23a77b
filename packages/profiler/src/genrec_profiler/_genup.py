"""GenUP's profile files, read into and written from the profiles table.

GenUP writes one ``user_profile_<id>.json`` per user (generate_user_profile.py: ``json.dump(result, f,
indent=4)`` of the model's JSON answer) and pushes a table of them (columns ``user_id, user_profile,
traits, attributes, preferences, routines``). Reading keeps each file's text in ``raw`` so that nothing
is lost: the contract columns are the normalised fields ``parse_profile`` gives, and the GenUP object
(``genrec_sftdata.genup_profile``) comes back from ``raw`` as it was, unknown keys included.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import polars as pl

from genrec_core import PROFILES, atomic_write_text, read_table
from genrec_profiler._errors import ProfilerError
from genrec_profiler._generate import PROFILE_SCHEMA, read_profiles
from genrec_profiler._schema import GENUP_KEYS, parse_profile

logger = logging.getLogger(__name__)

GENUP_FILE_RE = re.compile(r"^user_profile_(.+)\.json$")
GENUP_BACKEND = "genup"


def genup_file_name(user_id: str) -> str:
    """GenUP's file name for a user's profile."""
    return f"user_profile_{user_id}.json"


def _order_key(user_id: str) -> tuple[int, int | str]:
    # GenUP sorts its files by the integer id; non-numeric ids (ours may be) follow, by name.
    return (0, int(user_id)) if user_id.isdigit() else (1, user_id)


def _row(user_id: str, text: str, source: str) -> dict[str, Any]:
    parsed = parse_profile(text)
    if parsed.schema != "genup":
        logger.warning("%s: not GenUP's schema (no 'attributes' list); read as a genrec profile", source)
    row = parsed.to_row()
    row.update(user_id=user_id, backend=GENUP_BACKEND, model=None, raw=text)
    return row


def _files(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("user_profile_*.json") if GENUP_FILE_RE.match(p.name)]
    if not found and (folder / "user_profiles").is_dir():  # create_sft_dataset.py reads <dataset>/user_profiles/
        found = [p for p in (folder / "user_profiles").glob("user_profile_*.json") if GENUP_FILE_RE.match(p.name)]
    return found


def _table_rows(frame: pl.DataFrame, source: str) -> list[dict[str, Any]]:
    """GenUP's pushed profiles table: one GenUP object per row, in GenUP's key order."""
    missing = [k for k in ("user_id", *GENUP_KEYS) if k not in frame.columns]
    if missing:
        raise ProfilerError(f"{source}: not a GenUP profiles table: missing column {missing[0]!r}")
    rows = []
    for rec in frame.iter_rows(named=True):
        obj = {k: rec[k] for k in GENUP_KEYS}
        rows.append(_row(str(rec["user_id"]), json.dumps(obj, indent=4), f"{source} user {rec['user_id']}"))
    return rows


def read_genup_profiles(path: str | os.PathLike[str]) -> pl.DataFrame:
    """GenUP's profiles as a profiles table (genrec_core's ``PROFILES`` plus the profiler's columns).

    ``path``: a folder of ``user_profile_<id>.json`` files (or one holding ``user_profiles/``), one
    such file, GenUP's profiles table as parquet/jsonl, or a hub dataset id of that table. Each row
    keeps the file's text in ``raw`` (``backend`` is ``"genup"``); ``status`` says whether the fields
    parsed as they were (``ok``), needed normalising (``repaired``, listed in ``repairs``) or could not
    be read (``failed``).
    """
    source = Path(path)
    if not source.exists():
        from genrec_core.models import resolve_dataset

        try:
            source = resolve_dataset(os.fspath(path))
        except Exception as exc:  # offline, unknown repo, no such path: one clear line
            raise ProfilerError(f"{path}: no GenUP profiles here: {exc}") from exc
    rows: list[dict[str, Any]] = []
    if source.is_file():
        match = GENUP_FILE_RE.match(source.name)
        if match:
            rows.append(_row(match.group(1), source.read_text(encoding="utf-8"), str(source)))
        elif source.suffix in (".parquet", ".jsonl", ".ndjson"):
            rows = _table_rows(read_table(source, what="GenUP profiles"), str(source))
        else:
            raise ProfilerError(f"{source}: expected user_profile_<id>.json, a folder of them, or a parquet/jsonl table")
    else:
        files = _files(source)
        if files:
            for f in files:
                user = GENUP_FILE_RE.match(f.name).group(1)  # type: ignore[union-attr]
                rows.append(_row(user, f.read_text(encoding="utf-8"), str(f)))
        else:
            tables = sorted(source.rglob("*.parquet"))
            if not tables:
                raise ProfilerError(f"{source}: no user_profile_<id>.json files and no parquet profiles table")
            for t in tables:
                rows.extend(_table_rows(read_table(t, what="GenUP profiles"), str(t)))
    rows.sort(key=lambda r: _order_key(r["user_id"]))
    frame = pl.DataFrame(rows, schema=PROFILE_SCHEMA)
    dup = frame.filter(pl.col("user_id").is_duplicated())
    if dup.height:
        raise ProfilerError(f"{source}: user {dup['user_id'][0]} has more than one GenUP profile")
    return PROFILES.validate(frame, source=source)


def write_genup_profiles(profiles: pl.DataFrame | str | os.PathLike[str], folder: str | os.PathLike[str]) -> list[Path]:
    """Write a profiles table (or its parquet path) as GenUP's ``user_profile_<id>.json`` files,
    ``json.dump(..., indent=4)`` as GenUP writes them: the GenUP object of each row (its ``raw`` text
    when that is a GenUP object, so a file read by :func:`read_genup_profiles` is written back byte for
    byte; else built from the columns). Rows with no profile (failed, no GenUP text) are skipped with a
    warning. Returns the files written."""
    from genrec_sftdata import genup_profile

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ProfilerError(f"{out}: exists and is not a folder; GenUP profiles are written as a folder of files")
    table = read_profiles(profiles) if not isinstance(profiles, pl.DataFrame) else PROFILES.validate(profiles)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    for row in table.iter_rows(named=True):
        if row.get("status") == "failed" and not row.get("raw"):
            skipped.append(str(row["user_id"]))
            continue
        obj = genup_profile(row)
        if obj is None:
            skipped.append(str(row["user_id"]))
            continue
        path = out / genup_file_name(str(row["user_id"]))
        atomic_write_text(path, json.dumps(obj, indent=4))
        written.append(path)
    if skipped:
        logger.warning("%d users have no profile to write (first: %s)", len(skipped), skipped[0])
    return written
