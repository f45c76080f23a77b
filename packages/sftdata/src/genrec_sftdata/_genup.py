"""GenUP's published next-POI SFT datasets (``w11wo/FourSquare-NYC-POI`` and siblings) as records.

Their layout (``create_sft_dataset.py``): a ``DatasetDict`` (train/test) with ``system_prompt`` (the
profile), ``inputs`` (the trajectory, a newline, the question), ``targets`` (the answer) and
``llama_prompt`` (``<s>[INST] <<SYS>>\n{system_prompt}\n<</SYS>>\n\n{inputs} [/INST] {targets} </s>``). The reader parses
the task fields back out of the text with Polars regular expressions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import polars as pl

from genrec_core import SFT_RECORDS
from genrec_sftdata._contract import read_frame, require_columns, validated
from genrec_sftdata._errors import SftDataError
from genrec_sftdata._genup_build import genup_completion_expr, genup_prompt_expr
from genrec_sftdata._nextpoi import TIME_FORMAT

logger = logging.getLogger(__name__)

GENUP_COLUMNS = ("system_prompt", "inputs", "targets")
_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def _split_of(name: str) -> str:
    """The split a file name stands for (``train-00000-of-00001.parquet``, ``test.jsonl``)."""
    return _SPLITS.get(name.split("-")[0].split(".")[0], "train")


def _read_file(path: Path) -> pl.DataFrame:
    if path.suffix in (".parquet", ".jsonl", ".ndjson"):
        return read_frame(path, what="GenUP records")
    if path.suffix == ".json":
        try:
            return pl.read_json(path)
        except (pl.exceptions.PolarsError, ValueError) as exc:
            raise SftDataError(f"{path}: not a readable JSON file of GenUP records ({exc})") from exc
    raise SftDataError(f"{path}: expected a .parquet, .jsonl or .json file of GenUP records")


def _load(source: str | Path | pl.DataFrame) -> list[tuple[str, pl.DataFrame, str]]:
    """(split, frame, name) parts of a frame, a file, a folder of parquet files (a hub snapshot: its
    ``data/<split>-*.parquet``), a ``save_to_disk`` folder, or a hub dataset id."""
    if isinstance(source, pl.DataFrame):
        return [("train", source, "frame")]
    path = Path(source)
    if not path.exists():
        from genrec_core.models import resolve_dataset

        try:
            path = resolve_dataset(str(source))
        except Exception as exc:  # offline, unknown repo, no such path: one clear line
            raise SftDataError(f"{source}: cannot load the GenUP dataset: {exc}") from exc
    if path.is_file():
        return [(_split_of(path.name), _read_file(path), str(path))]
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # a broken folder: one clear error
            raise SftDataError(f"{path}: cannot load the saved dataset: {type(exc).__name__}: {exc}") from exc
        if isinstance(ds, datasets.DatasetDict):
            return [
                (_SPLITS.get(name, name), pl.from_arrow(d.data.table), f"{path}[{name}]")  # type: ignore[misc]
                for name, d in ds.items()
            ]
        return [("train", pl.from_arrow(ds.data.table), str(path))]  # type: ignore[list-item]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl") and not p.name.startswith("."))
    if not files:
        raise SftDataError(f"{path}: no parquet or jsonl files and not a save_to_disk folder")
    return [(_split_of(f.name), _read_file(f), str(f)) for f in files]


def read_genup_records(
    source: str | Path | pl.DataFrame, *, protocol: Literal["genrec", "genup"] = "genrec"
) -> dict[str, pl.DataFrame]:
    """GenUP-layout next-POI data (a hub id such as ``w11wo/FourSquare-NYC-POI``, a ``save_to_disk``
    folder, a folder of parquet files, a parquet/jsonl file or a frame) as next_poi SFT records per
    split, with ``target_poi_idx``, ``history_poi_idx``, ``num_pois``, ``target_time`` and
    ``n_checkins`` parsed from the text (``trajectory_id`` and ``target_category_idx`` are null: the
    layout does not carry them). GenUP's own columns (``system_prompt``, ``inputs``, ``targets``,
    ``llama_prompt`` when present) come along.

    ``protocol="genup"``: prompt and completion are GenUP's ``LLAMA_PROMPT`` split at ``[/INST]``
    (``<s>`` in the text; ``text_has_bos`` true), the string GenUP trains on; ``"genrec"``: system
    prompt, a blank line and the inputs, and the bare target.
    """
    if protocol not in ("genrec", "genup"):
        raise SftDataError(f"read_genup_records: protocol must be 'genrec' or 'genup', got {protocol!r}")
    out: dict[str, list[pl.DataFrame]] = {}
    seen: dict[str, int] = {}
    for split, frame, name in _load(source):
        require_columns(frame, list(GENUP_COLUMNS), source=name)
        # Record ids number the rows of a split across all its files (a hub split may be sharded).
        offset = seen.get(split, 0)
        seen[split] = offset + frame.height
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
            record_id=pl.concat_str(pl.lit(f"next_poi:{split}:genup:"), (pl.col("__i") + offset).cast(pl.String)),
            task=pl.lit("next_poi"),
            split=pl.lit(split),
            prompt=genup_prompt_expr(pl.col("system_prompt"), pl.col("inputs")) if protocol == "genup"
            else pl.concat_str(pl.col("system_prompt"), pl.lit("\n\n"), pl.col("inputs")),
            completion=genup_completion_expr(pl.col("targets")) if protocol == "genup" else pl.col("targets"),
            messages=pl.concat_list(
                pl.struct(role=pl.lit("system"), content=pl.col("system_prompt")),
                pl.struct(role=pl.lit("user"), content=pl.col("inputs")),
                pl.struct(role=pl.lit("assistant"), content=pl.col("targets")),
            ),
            trajectory_id=pl.lit(None, dtype=pl.String),
            n_checkins=pl.col("history_poi_idx").list.len().cast(pl.Int64),
            target_category_idx=pl.lit(None, dtype=pl.Int64),
            n_cut=pl.lit(0, dtype=pl.Int64),
            protocol=pl.lit(protocol),
            text_has_bos=pl.lit(protocol == "genup"),
        )
        if "llama_prompt" not in recs.columns:
            recs = recs.with_columns(
                llama_prompt=pl.concat_str(genup_prompt_expr(pl.col("system_prompt"), pl.col("inputs")),
                                           genup_completion_expr(pl.col("targets")))
            )
        out.setdefault(split, []).append(
            recs.select(
                "record_id", "task", "user_id", "split", "prompt", "completion", "messages",
                "target_poi_idx", "trajectory_id", "n_checkins", "target_time", "history_poi_idx",
                "num_pois", "target_category_idx", "n_cut", "protocol", "text_has_bos",
                *GENUP_COLUMNS, "llama_prompt",
            )
        )
    result = {split: validated(SFT_RECORDS, pl.concat(parts), source=f"read_genup_records: {split}")
              for split, parts in out.items()}
    for split, frame in result.items():
        logger.info("read_genup_records: %s has %d records", split, frame.height)
    return result
