"""GenUP's published next-POI SFT datasets (``w11wo/FourSquare-NYC-POI`` and siblings) as records.

Their layout: a ``DatasetDict`` (train/test) with ``system_prompt`` (the profile), ``inputs`` (the
trajectory, a newline, the question), ``targets`` (the answer) and ``llama_prompt``. The reader parses
the task fields back out of the text with Polars regular expressions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from genrec_core import SFT_RECORDS
from genrec_sftdata._contract import require_columns, validated
from genrec_sftdata._errors import SftDataError
from genrec_sftdata._nextpoi import TIME_FORMAT

logger = logging.getLogger(__name__)

GENUP_COLUMNS = ("system_prompt", "inputs", "targets")
_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def _load(source: str | Path | pl.DataFrame) -> list[tuple[str, pl.DataFrame, str]]:
    """(split, frame, name) parts."""
    if isinstance(source, pl.DataFrame):
        return [("train", source, "frame")]
    path = Path(source)
    if path.is_file():
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
        return [(_SPLITS.get(path.stem.split("-")[0], "train"), frame, str(path))]
    import datasets

    try:
        ds = datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(str(source))
    except Exception as exc:  # offline, unknown repo, not a dataset folder: one clear error
        raise SftDataError(f"{source}: cannot load the Hugging Face dataset: {type(exc).__name__}: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        return [
            (_SPLITS.get(name, name), pl.from_arrow(d.data.table), f"{source}[{name}]")  # type: ignore[misc]
            for name, d in ds.items()
        ]
    return [("train", pl.from_arrow(ds.data.table), str(source))]  # type: ignore[list-item]


def read_genup_records(source: str | Path | pl.DataFrame) -> dict[str, pl.DataFrame]:
    """GenUP-layout next-POI data (hub id, ``save_to_disk`` folder, parquet file or frame) as next_poi
    SFT records per split, with ``target_poi_idx``, ``history_poi_idx``, ``num_pois``, ``target_time``
    and ``n_checkins`` parsed from the text (``trajectory_id`` and ``target_category_idx`` are null:
    the layout does not carry them)."""
    out: dict[str, list[pl.DataFrame]] = {}
    for split, frame, name in _load(source):
        require_columns(frame, list(GENUP_COLUMNS), source=name)
        trajectory = pl.col("inputs").str.split("\nGiven the data, ").list.first()
        recs = frame.with_row_index("__i").with_columns(
            __traj=trajectory.str.split(" There is also historical data: ").list.first(),
            user_id=pl.col("inputs").str.extract(r"trajectory of user (\S+?):", 1),
            target_poi_idx=pl.col("targets").str.extract(r"will visit POI id (\d+)", 1).cast(pl.Int64, strict=False),
            target_time=pl.col("targets").str.extract(r"^At (.+?), user ", 1).str.strptime(
                pl.Datetime("us"), TIME_FORMAT, strict=False
            ),
            num_pois=pl.col("inputs").str.extract(r"range from 0 to (\d+)", 1).cast(pl.Int64, strict=False),
        )
        bad = recs.filter(
            pl.col("user_id").is_null() | pl.col("target_poi_idx").is_null() | pl.col("num_pois").is_null()
        )
        if bad.height:
            row = bad.row(0, named=True)
            raise SftDataError(
                f"{name}: row {row['__i']} is not a GenUP next-POI record (fields 'inputs'/'targets'): "
                f"inputs={row['inputs'][:120]!r}, targets={row['targets']!r}"
            )
        recs = recs.with_columns(
            history_poi_idx=pl.col("__traj").str.extract_all(r"visited POI id \d+").list.eval(
                pl.element().str.extract(r"(\d+)$", 1).cast(pl.Int64)
            ),
        ).with_columns(
            record_id=pl.concat_str(pl.lit(f"next_poi:{split}:genup:"), pl.col("__i").cast(pl.String)),
            task=pl.lit("next_poi"),
            split=pl.lit(split),
            prompt=pl.concat_str(pl.col("system_prompt"), pl.lit("\n\n"), pl.col("inputs")),
            completion=pl.col("targets"),
            messages=pl.concat_list(
                pl.struct(role=pl.lit("system"), content=pl.col("system_prompt")),
                pl.struct(role=pl.lit("user"), content=pl.col("inputs")),
                pl.struct(role=pl.lit("assistant"), content=pl.col("targets")),
            ),
            trajectory_id=pl.lit(None, dtype=pl.String),
            n_checkins=pl.col("history_poi_idx").list.len().cast(pl.Int64),
            target_category_idx=pl.lit(None, dtype=pl.Int64),
            n_cut=pl.lit(0, dtype=pl.Int64),
        )
        out.setdefault(split, []).append(
            recs.select(
                "record_id", "task", "user_id", "split", "prompt", "completion", "messages",
                "target_poi_idx", "trajectory_id", "n_checkins", "target_time", "history_poi_idx",
                "num_pois", "target_category_idx", "n_cut",
            )
        )
    result = {split: validated(SFT_RECORDS, pl.concat(parts), source=f"read_genup_records: {split}")
              for split, parts in out.items()}
    for split, frame in result.items():
        logger.info("read_genup_records: %s has %d records", split, frame.height)
    return result
