"""The stages of a genrec run as plain functions over typed artifacts.

Each function takes the artifacts of the stages it reads (or plain paths to the same tables) and an
output folder, and returns an artifact: the folder, its files and the contract columns each file
holds (DESIGN.md §2). A downstream project can call any one of them and put its own stage in between::

    from genrec_pipeline import stages

    data = stages.data("work/data", users=30)
    profiles = stages.profile(data, "work/profiles", backend="template")
    records = stages.records(data, "work/records", profiles=profiles)

The runner (:func:`genrec_pipeline.run`) calls the same functions, caching each output by a hash of its
settings and inputs. Heavy packages are imported inside the functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec_core import (
    CHECKINS,
    PREDICTIONS,
    PROFILES,
    SELECTION,
    SFT_RECORDS,
    atomic_write_json,
    atomic_write_parquet,
)
from genrec_core import TASK_COLUMNS as _TASK_COLUMNS
from genrec_pipeline._cache import read_json
from genrec_pipeline._dist import env_rank
from genrec_pipeline._errors import PipelineError

if TYPE_CHECKING:
    from genrec_pipeline._config import RunConfig


class StageFailedError(PipelineError):
    """A stage ran to its end but did not meet its own success criteria (profiles that failed): its
    output stays unfinished, so the next run picks it up again. ``genrec run`` exits 1 on it."""

    exit_status = 1

log = logging.getLogger(__name__)

__all__ = [
    "Artifact",
    "CoresetArtifact",
    "DataArtifact",
    "EvaluationArtifact",
    "ModelArtifact",
    "ProfilesArtifact",
    "RecordsArtifact",
    "StageFailedError",
    "coreset",
    "data",
    "evaluate",
    "profile",
    "records",
    "train",
]

# The columns each artifact's tables hold: the required columns of the genrec_core contracts.
CHECKIN_COLUMNS = CHECKINS.required
PROFILE_COLUMNS = PROFILES.required
RECORD_COLUMNS = SFT_RECORDS.required
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    task: tuple(c.name for c in cols if c.required) for task, cols in _TASK_COLUMNS.items()
}
SELECTION_COLUMNS = SELECTION.required
PREDICTION_COLUMNS = PREDICTIONS.required


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """What a stage wrote: its folder, its files by role, and the columns each table holds."""

    stage: str
    path: Path
    files: Mapping[str, Path]
    schema: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, role: str) -> Path:
        try:
            return self.files[role]
        except KeyError:
            raise PipelineError(f"{self.stage} artifact at {self.path} has no {role!r} file") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "kind": type(self).__name__,
            "files": {k: str(v) for k, v in self.files.items()},
            "schema": {k: list(v) for k, v in self.schema.items()},
            "summary": dict(self.summary),
        }


class DataArtifact(Artifact):
    """Prepared check-ins: ``checkins``, ``train``, ``val``, ``test`` parquet and ``stats`` JSON."""


class ProfilesArtifact(Artifact):
    """The profiles table (``profiles`` parquet)."""


class RecordsArtifact(Artifact):
    """SFT records per split (``train``, ``val``, ``test`` parquet)."""


class CoresetArtifact(Artifact):
    """The selection table, its JSON log, and the selected training records (``train``)."""


class ModelArtifact(Artifact):
    """A fine-tuned model: the LoRA ``adapter`` folder, the ``log`` JSONL, and the base ``model``."""


class EvaluationArtifact(Artifact):
    """``metrics`` JSON, ``report`` markdown, ``predictions`` parquet and plots."""


_KINDS: dict[str, type[Artifact]] = {
    cls.__name__: cls
    for cls in (
        Artifact,
        DataArtifact,
        ProfilesArtifact,
        RecordsArtifact,
        CoresetArtifact,
        ModelArtifact,
        EvaluationArtifact,
    )
}


def load_artifact(folder: str | Path) -> Artifact:
    """Read the artifact a finished stage left in ``folder`` (its ``artifact.json``)."""
    meta = Path(folder) / "artifact.json"
    if not meta.is_file():
        raise PipelineError(f"{folder}: no artifact.json; is this a finished stage folder?")
    raw = read_json(meta)
    cls = _KINDS.get(raw.get("kind", "Artifact"), Artifact)
    return cls(
        stage=raw["stage"],
        path=Path(folder),
        files={k: Path(v) for k, v in raw["files"].items()},
        schema={k: tuple(v) for k, v in raw.get("schema", {}).items()},
        summary=raw.get("summary", {}),
    )


def _finish(artifact: Artifact) -> Artifact:
    if env_rank() != 0:
        return artifact  # under torchrun the stage's outputs are rank 0's to record
    atomic_write_json(artifact.path / "artifact.json", artifact.to_json(), sort_keys=True)
    return artifact


def _check(contract: Any, path: Path, *, columns: Sequence[str] | None = None) -> None:
    """Hold a table a stage wrote to its contract, naming the file on failure (read back lazily: only
    the contract's columns, so a check costs little beside writing the table)."""
    import polars as pl

    names = pl.scan_parquet(path).collect_schema().names()
    known = [c.name for c in contract.columns] + [c.name for cols in contract.conditional.values() for c in cols]
    wanted = [n for n in dict.fromkeys(known) if n in names] if columns is None else list(columns)
    contract.validate(pl.scan_parquet(path).select(wanted).collect(), source=path)


def _folder(out: str | Path) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{path}: the output folder exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise PipelineError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from None
    return path


def _read_table(path: str | Path, what: str) -> Any:
    """A parquet table given as input, or one readable line naming the file: a CSV (or any other text)
    where a parquet table belongs, an empty or cut-short file."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what}: {path}: no such file")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars, arrow and OS errors all mean "not a readable parquet table" here
        raise PipelineError(f"{what}: {path} is not a readable parquet table ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _rows(path: Path) -> int:
    import polars as pl

    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def _data_dir(data: DataArtifact | str | Path) -> Path:
    return data.path if isinstance(data, Artifact) else Path(data)


# ----------------------------------------------------------------------------------------------- data


def data(
    out: str | Path,
    *,
    source: str = "synthetic",
    users: int = 40,
    seed: int = 0,
    city: Mapping[str, Any] | None = None,
    inputs: Sequence[str | Path] = (),
    train: str | Path | None = None,
    val: str | Path | None = None,
    test: str | Path | None = None,
    format: str = "auto",
    max_users: int = 0,
    prepare: Mapping[str, Any] | None = None,
    dataset: str = "",
) -> DataArtifact:
    """Check-ins prepared with LLM4POI's rules: a synthetic city (``source="synthetic"``) or files in
    any format ``genrec_sftdata.read_checkins`` reads (``inputs``, or ``train``/``val``/``test`` files
    whose split is kept). ``max_users``: after preparing all of them (so the POI and user filters see
    the whole data), keep the first N users (by ``user_idx``) with a test check-in.

    ``dataset``: a ``genrec_sftdata.list_datasets()`` name, fetched (into the genrec cache, verified)
    and prepared by ``genrec_sftdata.prepare_fetched`` (``prepare``: its options). Check-in sets give
    the prepared folder above; rating sets (Amazon, MovieLens, Book-Crossing) give ``interactions`` and
    ``items`` tables, and Amazon domains GORACS's ``seqrec/`` and ``ctr/`` records beside them."""
    import polars as pl

    from genrec_sftdata import PrepareConfig, load_prepared, read_checkins, synthesize_city
    from genrec_sftdata import prepare as prepare_checkins

    folder = _folder(out)
    if dataset and dataset_kind(dataset) not in CHECKIN_KINDS:
        return _rating_dataset(dataset, folder, prepare or {})
    if dataset:
        from genrec_sftdata import prepare_fetched

        prepare_fetched(dataset, folder, **dict(prepare or {}))
        prepared = load_prepared(folder)
    elif source == "synthetic":
        raw = synthesize_city(n_users=users, seed=seed, **dict(city or {}))
    elif source == "files":
        frames = []
        for split, path in (("train", train), ("val", val), ("test", test)):
            if path:
                frames.append(read_checkins([path], format=format).with_columns(pl.lit(split).alias("split")))
        if inputs:
            frames.append(read_checkins(list(inputs), format=format))
        if not frames:
            raise PipelineError("data: source='files' needs inputs or train/val/test files")
        raw = pl.concat(frames, how="diagonal_relaxed")
    else:
        raise PipelineError(f"data: unknown source {source!r}; use 'synthetic' or 'files'")
    if not dataset:
        prepared = prepare_checkins(raw, out=folder, config=PrepareConfig(**dict(prepare or {})))
    files = {name: folder / f"{name}.parquet" for name in ("checkins", "train", "val", "test")}
    if max_users:
        tested = prepared.test["user_idx"].unique().sort().head(max_users).implode()
        for path in files.values():
            atomic_write_parquet(path, pl.read_parquet(path).filter(pl.col("user_idx").is_in(tested)))
        prepared = load_prepared(folder)
    for name in ("checkins", "train", "val", "test"):
        _check(CHECKINS, files[name])
    files["stats"] = folder / "stats.json"
    split_stats = prepared.stats.get("splits", {})
    summary = {
        "users": int(prepared.checkins["user_id"].n_unique()),
        "pois": prepared.num_pois,
        "checkins": prepared.checkins.height,
        "splits": {k: v.get("checkins") for k, v in split_stats.items()}
        if isinstance(split_stats, dict)
        else {},
    }
    if dataset:
        summary["dataset"] = dataset
    schema = {name: CHECKIN_COLUMNS for name in ("checkins", "train", "val", "test")}
    return _finish(DataArtifact(stage="data", path=folder, files=files, schema=schema, summary=summary))  # type: ignore[return-value]


#: ``genrec_sftdata`` data set kinds that prepare into check-ins (next_poi), and those that give
#: ``interactions`` and ``items`` (seqrec, ctr).
CHECKIN_KINDS = ("tsmc", "gowalla", "llm4poi")
RATING_KINDS = ("amazon", "movielens-100k", "movielens-1m", "bookcrossing")


def dataset_kind(name: str) -> str:
    """The reader kind of a ``genrec_sftdata`` data set name (``PipelineError`` naming the known ones)."""
    from genrec_sftdata import list_datasets

    kinds = {s.name: s.kind for s in list_datasets()}
    if name not in kinds:
        raise PipelineError(f"unknown data set {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


def fetched_dataset(name: str) -> Path | None:
    """The folder ``genrec_sftdata.fetch(name)`` fills, when every file of it is there already
    (``None`` otherwise, and for hub data sets, which the Hugging Face cache keeps)."""
    from genrec_sftdata import datasets_dir, list_datasets

    source = next(s for s in list_datasets() if s.name == name)
    if not source.urls:
        return None
    folder = datasets_dir() / name
    return folder if all((folder / f).is_file() for f in source.files) else None


def _rating_dataset(name: str, folder: Path, options: Mapping[str, Any]) -> DataArtifact:
    import shutil

    from genrec_sftdata import prepare_fetched

    where = folder / "dataset"
    if where.exists():
        # This stage's own earlier (unfinished) output: sftdata refuses to write over a folder of folders.
        shutil.rmtree(where)
    prepare_fetched(name, where, **dict(options))
    files = {"interactions": where / "interactions.parquet", "items": where / "items.parquet"}
    summary: dict[str, Any] = {"dataset": name, "interactions": _rows(files["interactions"]),
                               "items": _rows(files["items"])}  # fmt: skip
    for task in ("seqrec", "ctr"):
        for split in ("train", "val", "test"):
            path = where / task / f"{split}.parquet"
            if path.is_file():
                files[f"{task}_{split}"] = path
                summary[f"{task}_{split}"] = _rows(path)
    if dataset_kind(name) == "amazon":
        files["catalogue"] = folder / "catalogue.parquet"
        atomic_write_parquet(files["catalogue"], _amazon_catalogue(where, name, options))
        summary["catalogue"] = _rows(files["catalogue"])
    return _finish(DataArtifact(stage="data", path=folder, files=files, summary=summary))  # type: ignore[return-value]


def _amazon_catalogue(where: Path, name: str, options: Mapping[str, Any]) -> Any:
    """``item_id`` (the integer id GORACS's records use: the ASIN's rank among the reviewed items) and
    ``title`` (GORACS's title rule) of every reviewed item with a title: the catalogue SeqRec grounds to."""
    import polars as pl

    from genrec_sftdata import GoracsConfig, goracs_titles, list_datasets

    domain = next(s for s in list_datasets() if s.name == name).options["domain"]
    config = GoracsConfig(**{"domain": domain, **dict(options)})
    reviewed = pl.read_parquet(where / "interactions.parquet").select(pl.col("item_id").unique().sort())
    ids = reviewed.with_row_index("iid").with_columns(pl.col("iid").cast(pl.Int64))
    titles = goracs_titles(pl.read_parquet(where / "items.parquet"), config)
    return (
        ids.join(titles, on="item_id", how="inner")
        .select(pl.col("iid").alias("item_id"), "title", pl.col("item_id").alias("asin"))
        .sort("item_id")
    )


# ------------------------------------------------------------------------------------------- profiles


def profile(
    data: DataArtifact | str | Path,
    out: str | Path,
    *,
    backend: str = "template",
    model: str = "smollm2",
    base_url: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    max_new_tokens: int = 384,
    batch_size: int = 8,
    users: int = 0,
    dtype: str = "auto",
    seed: int = 0,
    protocol: str = "genrec",
    genup: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
    accept_failures: bool = False,
) -> ProfilesArtifact:
    """A profile per user from the training check-ins (GenUP), with the ``local`` (transformers),
    ``openai`` (any OpenAI-compatible server) or ``template`` (no LLM) backend. Resumes a partial
    ``profiles.parquet`` in ``out``. ``protocol="genup"``: GenUP's prompt over every training check-in
    (``genrec_profiler.ProfilerConfig``). ``genup``: GenUP's own profile files (a folder of
    ``user_profile_<id>.json``, its profiles table, or a hub id), read by
    ``genrec_profiler.read_genup_profiles`` instead of generated.

    The summary carries ``quality``: ``genrec_profiler.profile_stats`` (valid rate, status counts,
    copied share, top-3 agreement) and its warning lines.

    Users whose profile failed make the stage fail (:class:`StageFailedError`, naming the count) with
    its table kept, so that calling again retries just those users; ``accept_failures`` (or the
    ``accept_failures`` option) takes the table as it is."""
    from genrec_profiler import OpenAIBackend, ProfilerConfig, TemplateBackend, generate_profiles

    folder = _folder(out)
    if genup:
        return _genup_profiles(data, folder, genup)
    client: Any
    if backend == "local":
        from genrec_profiler import LocalBackend

        client = LocalBackend(model=model, max_new_tokens=max_new_tokens, seed=seed, dtype=dtype)
    elif backend == "openai":
        client = OpenAIBackend(
            base_url=base_url or None,
            model=model,
            api_key_env=api_key_env,
            max_tokens=max_new_tokens,
            seed=seed,
        )
    elif backend == "template":
        client = TemplateBackend()
    else:
        raise PipelineError(f"profiles: unknown backend {backend!r}; use local, openai or template")
    opts = dict(options or {})
    accept = bool(opts.pop("accept_failures", False)) or accept_failures
    config = ProfilerConfig(
        **{"batch_size": batch_size, "users": users or None, "progress": progress, "protocol": protocol, **opts}
    )
    result = generate_profiles(_data_dir(data), config=config, client=client, out=folder / "profiles.parquet")
    _check(PROFILES, Path(result.path))
    if result.n_failed and not accept:
        failed = tuple(getattr(result, "failed_users", ()))
        shown = f" (users {', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})" if failed else ""
        raise StageFailedError(
            f"profiles: {result.n_failed} of {result.n_generated} profiles failed{shown}; rerun to retry them, "
            "or set [profiles].accept_failures = true to keep the table as it is"
        )
    summary: dict[str, Any] = {
        "users": result.n_users,
        "ok": result.n_ok,
        "repaired": result.n_repaired,
        "failed": result.n_failed,
        "resumed": result.n_resumed,
        "tokens_out": result.tokens_out,
        "seconds": round(result.seconds, 1),
        "quality": profile_quality(result.path, data),
    }
    return _finish(  # type: ignore[return-value]
        ProfilesArtifact(
            stage="profiles",
            path=folder,
            files={"profiles": result.path},
            schema={"profiles": PROFILE_COLUMNS},
            summary=summary,
        )
    )


def _genup_profiles(data: DataArtifact | str | Path | None, folder: Path, source: str | Path) -> ProfilesArtifact:
    import polars as pl

    from genrec_profiler import read_genup_profiles

    table = read_genup_profiles(source)
    path = folder / "profiles.parquet"
    atomic_write_parquet(path, PROFILES.validate(table, source=str(source)))
    status = table["status"].value_counts() if "status" in table.columns else pl.DataFrame()
    counts = {str(k): int(v) for k, v in status.iter_rows()} if status.height else {}
    summary = {"users": table.height, "genup": str(source), "ok": counts.get("ok", 0),
               "repaired": counts.get("repaired", 0), "failed": counts.get("failed", 0),
               "quality": profile_quality(path, data)}  # fmt: skip
    artifact = ProfilesArtifact(
        stage="profiles", path=folder, files={"profiles": path}, schema={"profiles": PROFILE_COLUMNS}, summary=summary
    )
    return _finish(artifact)  # type: ignore[return-value]


def profile_quality(path: str | Path, data: DataArtifact | str | Path | None = None) -> dict[str, Any]:
    """What ``genrec_profiler.profile_stats`` says about a profiles table, as JSON: ``valid_rate``,
    ``status`` counts, ``copied``, ``top3_agreement``, ``distinct`` and ``warnings`` (lines to show:
    valid < 90%, copied > 50%). Statistics that cannot be computed are left out, never fatal: a
    finished profile stage is worth more than its report."""
    try:
        from genrec_profiler import profile_stats

        try:
            stats = profile_stats(path, data=_data_dir(data) if data is not None else None)
        except Exception:  # the digest needs prepared check-ins; the rest does not
            stats = profile_stats(path)
        raw = stats.to_dict()
        out = {k: raw[k] for k in ("valid_rate", "status", "copied", "top3_agreement", "truncated", "distinct")
               if k in raw}  # fmt: skip
        out["warnings"] = list(stats.warnings())
        return out
    except Exception as exc:
        log.warning("profiles: no quality statistics (%s: %s)", type(exc).__name__, exc)
        return {}


# -------------------------------------------------------------------------------------------- records


def records(
    data: DataArtifact | str | Path | None,
    out: str | Path,
    *,
    profiles: ProfilesArtifact | str | Path | None = None,
    task: str = "next_poi",
    items: str | Path | None = None,
    interactions: str | Path | None = None,
    ratings: str | Path | None = None,
    tallrec: Sequence[str | Path] = (),
    genup: str | Path | None = None,
    max_records: int = 0,
    seed: int = 0,
    protocol: str = "genrec",
    profile_fields: str = "all",
    options: Mapping[str, Any] | None = None,
) -> RecordsArtifact:
    """SFT records per split (DESIGN.md §2).

    ``next_poi``: GenUP style from prepared check-ins (``data``), with each user's profile when given.
    ``seqrec``: BIGRec style from ``items`` (item_id, title) and ``interactions``. ``ctr``: TALLRec
    style, from TALLRec JSON files (``tallrec``; the split comes from each file's name) or from
    ``ratings`` and ``items``. ``genup`` (next_poi): GenUP's published SFT records (a hub id such as
    ``w11wo/FourSquare-NYC-POI``, or a ``save_to_disk`` folder) taken as they are, without ``data``
    or ``profiles``. ``max_records``: at most N records per split (a seeded sample, in
    record order). Every split is held to ``genrec_core.SFT_RECORDS`` before it is written.

    ``protocol`` and ``profile_fields`` (next_poi) are ``genrec_sftdata.NextPoiConfig``'s:
    ``protocol="genup"`` builds GenUP's records text for text (and reads ``genup`` records as GenUP's
    ``llama_prompt``). seqrec/ctr from a ``data`` artifact of a rating data set (``[data].dataset``):
    an Amazon domain's GORACS records as prepared, else built from its ``interactions`` and ``items``.
    The summary counts ``generic_prompt``: records whose user had no profile and so got the generic
    system prompt.
    """
    import polars as pl

    from genrec_sftdata import (
        CtrConfig,
        NextPoiConfig,
        SeqRecConfig,
        build_ctr,
        build_next_poi,
        build_seqrec,
        load_prepared,
        read_tallrec_json,
        write_records,
    )

    folder = _folder(out)
    opts = dict(options or {})
    generic: int | None = None
    data_files = data.files if isinstance(data, Artifact) else {}
    if task == "next_poi" and genup:
        from genrec_sftdata import read_genup_records

        built = read_genup_records(genup, protocol=protocol)  # type: ignore[arg-type]
    elif task == "next_poi":
        if data is None:
            raise PipelineError("records: task next_poi needs the prepared check-ins (data)")
        profile_frame = None
        prepared = load_prepared(_data_dir(data))
        if profiles is not None:
            path = profiles["profiles"] if isinstance(profiles, Artifact) else Path(profiles)
            profile_frame = PROFILES.validate(_read_table(path, "records: profiles"), source=path)
            _check_profile_users(profile_frame, prepared.checkins, path)
        config = NextPoiConfig(**{"protocol": protocol, "profile_fields": profile_fields, **opts})
        built = build_next_poi(prepared, profile_frame, config=config)
        generic = _generic_prompts(built, profile_frame)
    elif task in ("seqrec", "ctr") and f"{task}_train" in data_files:
        built = {split: pl.read_parquet(data_files[f"{task}_{split}"]) for split in ("train", "val", "test")
                 if f"{task}_{split}" in data_files}  # fmt: skip
        items = items or data_files.get("catalogue")
    elif task == "seqrec" and "interactions" in data_files and not interactions:
        items = items or data_files["items"]
        built = build_seqrec(items, data_files["interactions"], config=SeqRecConfig(**opts))
    elif task == "ctr" and "interactions" in data_files and not (ratings or tallrec):
        built = build_ctr(data_files["interactions"], data_files["items"], config=CtrConfig(**opts))
    elif task == "seqrec":
        if not items or not interactions:
            raise PipelineError("records: task seqrec needs [records].items and [records].interactions")
        built = build_seqrec(items, interactions, config=SeqRecConfig(**opts))
    elif task == "ctr":
        if tallrec:
            frames = [read_tallrec_json(p) for p in tallrec]
            both = pl.concat(frames, how="diagonal_relaxed")
            built = {str(s): both.filter(pl.col("split") == s) for s in both["split"].unique(maintain_order=True)}
        elif ratings and items:
            built = build_ctr(ratings, items, config=CtrConfig(**opts))
        else:
            raise PipelineError("records: task ctr needs [records].tallrec files, or [records].ratings and items")
    else:
        raise PipelineError(f"records: unknown task {task!r}; use next_poi, seqrec or ctr")
    files: dict[str, Path] = {}
    for split, frame in built.items():
        if max_records and frame.height > max_records:
            frame = frame.with_row_index("__row").sample(n=max_records, seed=seed).sort("__row").drop("__row")
            built[split] = frame
        path = folder / f"{split}.parquet"
        write_records(SFT_RECORDS.validate(frame, source=f"records {split} split"), path)
        files[split] = path
    if items:
        files["items"] = Path(items)
    summary: dict[str, Any] = {split: frame.height for split, frame in built.items()}
    summary["task"] = task
    if task == "next_poi":
        summary["protocol"] = protocol
        if generic is None:
            generic = _generic_prompts(built, None)
        if generic is not None:
            summary["generic_prompt"] = generic
    schema = {split: RECORD_COLUMNS + TASK_COLUMNS[task] for split in built}
    return _finish(RecordsArtifact(stage="records", path=folder, files=files, schema=schema, summary=summary))  # type: ignore[return-value]


def _check_profile_users(profiles: Any, checkins: Any, path: Path) -> None:
    """Profiles written for other users than the check-ins' would silently give every record the
    generic prompt: an error when none match, a warning with the count when some users have none."""
    import polars as pl

    users = set(checkins["user_id"].cast(pl.String).unique().to_list())
    have = set(profiles["user_id"].cast(pl.String).to_list())
    if users and not users & have:
        example = next(iter(sorted(have)), "none")
        raise PipelineError(
            f"records: {path} profiles none of the {len(users)} users of the check-ins (its users are e.g. "
            f"{example!r}): profiles made for other data?"
        )
    missing = len(users - have)
    if missing:
        log.warning("records: %d of %d users have no profile in %s; their records get the generic prompt",
                    missing, len(users), path)  # fmt: skip


def _generic_prompts(built: Mapping[str, Any], profiles: Any) -> int | None:
    """Records whose user had no profile, so the generic system prompt stood in (GenUP's own records
    flag it in ``has_profile``; ours are checked against the profiles table)."""
    import polars as pl

    frames = [f for f in built.values() if f.height]
    if frames and all("has_profile" in f.columns for f in frames):
        return int(sum(f.filter(~pl.col("has_profile").fill_null(False)).height for f in frames))
    if profiles is None:
        return None
    have = profiles["user_id"].cast(pl.String).implode()
    return int(sum(f.filter(~pl.col("user_id").cast(pl.String).is_in(have)).height for f in frames))


# -------------------------------------------------------------------------------------- option checks


def check_options(stage: str, config: RunConfig) -> None:
    """Build the package config of ``stage`` from the run config, so that a bad option fails before
    anything runs (raises ``TypeError``/``ValueError`` naming the field)."""
    table = config[stage]
    if stage == "data":
        from genrec_sftdata import CityConfig, GoracsConfig, PrepareConfig, list_datasets

        if table["dataset"] and dataset_kind(table["dataset"]) == "amazon":
            domain = next(s for s in list_datasets() if s.name == table["dataset"]).options["domain"]
            GoracsConfig(**{"domain": domain, **dict(table["prepare"])})
        elif table["dataset"] and dataset_kind(table["dataset"]) in RATING_KINDS:
            if table["prepare"]:
                raise PipelineError(f"{config.source}: [data].prepare: {table['dataset']} takes no options")
        else:
            PrepareConfig(**dict(table["prepare"]))
        CityConfig(n_users=int(table["users"]), seed=int(config["run"]["seed"]), **dict(table["city"]))
    elif stage == "profiles":
        from genrec_profiler import ProfilerConfig

        ProfilerConfig(**{"batch_size": table["batch_size"], "protocol": table["protocol"],
                          "users": table["users"] or None, **dict(table["options"])})  # fmt: skip
    elif stage == "records":
        import genrec_sftdata as sd

        if table["task"] == "next_poi":
            own = {"protocol": table["protocol"], "profile_fields": table["profile_fields"]}
            sd.NextPoiConfig(**{**own, **dict(table["options"])})
        else:
            {"seqrec": sd.SeqRecConfig, "ctr": sd.CtrConfig}[table["task"]](**dict(table["options"]))
    elif stage == "train":
        _train_config(config["train"], train="records.parquet", output="out", validate_only=True)
    elif stage == "coreset":
        import inspect

        from genrec_otcoreset import select

        known = _CORESET_OWN | (set(inspect.signature(select).parameters) - _CORESET_SET)
        unknown = sorted(set(table["options"]) - known)
        if unknown:
            raise PipelineError(
                f"{config.source}: unknown key [coreset].options.{unknown[0]}; known: {', '.join(sorted(known))}"
            )
    elif stage == "evaluate":
        import genrec_evaluator as ev

        task = config["records"]["task"]
        if task == "next_poi" and table["mode"] == "none":
            return
        cls = {"next_poi": ev.NextPoiConfig, "seqrec": ev.SeqRecConfig, "ctr": ev.CtrConfig}[task]
        cls(**evaluator_options(task, table))


def evaluator_options(task: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator config fields of an ``[evaluate]`` table: its options, with ``protocol`` (and, for
    next_poi, ``mode`` and ``city``) from the table's own keys. Under GenUP's protocol the model runs
    in bfloat16 unless the options say otherwise, as GenUP's eval_next_poi.py loads it."""
    own: dict[str, Any] = {"protocol": table.get("protocol", "genrec")}
    if task == "next_poi":
        own["mode"] = table.get("mode", "ranked")
        if table.get("city"):
            own["city"] = table["city"]
        if own["protocol"] == "genup":
            own["dtype"] = "bfloat16"
    return {**own, **dict(table.get("options", {}))}


# ---------------------------------------------------------------------------------------------- train


def _train_config(
    table: Mapping[str, Any], *, train: str, output: str, validate_only: bool = False, **extra: Any
) -> Any:
    from genrec_trainer import load_config, recipe_path

    recipe = table.get("recipe") or None
    options = dict(table.get("options", {}))
    for key in ("train", "output"):
        if key in options:
            raise PipelineError(
                f"[train].options.{key} is set by the pipeline (the records and the stage folder)"
            )
    path = recipe_path(recipe) if recipe else None
    return load_config(path, **{**options, **extra, "train": train, "output": output})


def train(
    records: RecordsArtifact | str | Path,
    out: str | Path,
    *,
    coreset: CoresetArtifact | None = None,
    recipe: str = "",
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    distributed: Mapping[str, Any] | None = None,
) -> ModelArtifact:
    """Fine-tune on the training records (or the coreset's selection of them) with
    ``genrec_trainer``; ``options`` are ``TrainConfig`` fields on top of ``recipe``. Resumes from the
    last checkpoint in ``out``.

    ``distributed``: the ``[train]`` launch keys (``nproc_per_node``, ``nnodes``, ``node_rank``,
    ``master_addr``, ``master_port``, ``rdzv_endpoint``, ``rdzv_id``); training then runs under
    torchrun started from here (``-m genrec_trainer train --config <out>/train.toml``) and this
    process reads the trainer's ``result.json``."""
    from types import SimpleNamespace

    from genrec_trainer import train as run_training

    folder = _folder(out)
    if coreset is not None:
        train_path = coreset["train"]
    elif isinstance(records, Artifact):
        train_path = records["train"]
    else:
        train_path = Path(records) / "train.parquet"
    val_path = records.files.get("val", Path()) if isinstance(records, Artifact) else Path(records) / "val.parquet"
    opts = {"seed": seed, "progress": progress, **dict(options or {})}
    if "val" not in opts and val_path.is_file() and _rows(val_path) > 0:
        opts["val"] = str(val_path)
    config = _train_config({"recipe": recipe, "options": opts}, train=str(train_path), output=str(folder))
    if distributed is not None:
        from genrec_pipeline import _dist

        (folder / "result.json").unlink(missing_ok=True)
        _dist.launch(distributed, config, folder)
        if not (folder / "result.json").is_file():
            # Another node's rank 0 writes it (multi-node): this node has nothing to record.
            return ModelArtifact(stage="train", path=folder, files={})
        raw = read_json(folder / "result.json")
        path_or_none = {k: Path(raw[k]) if raw.get(k) else None for k in ("adapter_dir", "model_dir", "log_path")}
        result: Any = SimpleNamespace(**{**raw, **path_or_none})
    else:
        result = run_training(config)
    files = {"log": result.log_path}
    if result.adapter_dir is not None:
        files["adapter"] = result.adapter_dir
    if result.model_dir is not None:
        files["merged"] = result.model_dir
    losses = list(result.losses)
    summary = {
        "base_model": config.model,
        "steps": result.steps,
        "first_loss": losses[0] if losses else None,
        "final_loss": result.final_loss,
        "eval_losses": [list(x) for x in result.eval_losses],
        "records": result.n_records,
        "truncated": result.n_truncated,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "seconds": round(result.seconds, 1),
        "resumed_from": result.resumed_from,
    }
    return _finish(ModelArtifact(stage="train", path=folder, files=files, summary=summary))  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------- coreset


def coreset(
    records: RecordsArtifact | str | Path,
    out: str | Path,
    *,
    method: str = "itra",
    budget: float = 0.5,
    lam: float = 0.1,
    candidates: int = 30,
    max_swaps: int = 100,
    model: str = "smollm2",
    encoder: str = "default",
    batch_size: int = 8,
    dtype: str = "auto",
    seed: int = 0,
    exact_shortcuts: bool = True,
    score: str = "auto",
    protocol: str = "ours",
    adapter: str = "",
    layer: int = -1,
    dropout: bool = True,
    load_in_8bit: bool = False,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> CoresetArtifact:
    """GORACS: embed the training and validation records, score training records by the LoRA-B
    gradient norm of ``model``, and select ``budget`` of them (a count, or a fraction below 1) with
    ``method`` (ITRA by default). Writes the selection table, its JSON log, and the selected records.

    ``method`` is any of ``genrec_otcoreset.select``'s: ``itra`` (ours), ``goracs`` (the release's
    procedure; ``exact_shortcuts`` skips only trials proven worse), and the baselines ``random``,
    ``grand``, ``kcenter``, ``stratified``, ``el2n``, ``ccs``, ``d2`` (the last three rank by ``score``:
    ``auto`` is the features' EL2N). ``protocol="goracs"`` computes the features as the release does
    (``adapter``: the trained Alpaca LoRA; ``layer``, ``dropout``, ``load_in_8bit``; see
    ``genrec_otcoreset.compute_features``)."""
    import polars as pl

    from genrec_otcoreset import (
        compute_features,
        features_match,
        load_features,
        save_features,
        select,
        write_selection,
    )

    folder = _folder(out)
    opts = dict(options or {})
    train_path = records["train"] if isinstance(records, Artifact) else Path(records) / "train.parquet"
    val_path = records["val"] if isinstance(records, Artifact) else Path(records) / "val.parquet"
    train_records = _read_table(train_path, "coreset: training records")
    val_records = _read_table(val_path, "coreset: validation records")
    if train_records.height == 0 or val_records.height == 0:
        raise PipelineError(
            f"coreset: needs training and validation records; got {train_records.height} and {val_records.height}"
        )
    max_val = int(opts.pop("max_val", 0) or 0)
    if max_val and val_records.height > max_val:
        val_records = val_records.sample(n=max_val, seed=seed)
    n_select = int(budget) if budget >= 1 else max(1, round(budget * train_records.height))
    if n_select > train_records.height:
        raise PipelineError(
            f"[coreset].budget {budget} asks for {n_select} records, but there are {train_records.height}"
        )
    feature_args = {"model": model, "encoder": None if encoder == "default" else encoder, "batch_size": batch_size,
                    "seed": seed, "progress": progress, "dtype": dtype}  # fmt: skip
    if "max_length" in opts:
        feature_args["max_length"] = int(opts.pop("max_length"))
    if protocol != "ours":
        feature_args.update(protocol=protocol, adapter=adapter or None, layer=layer, dropout=dropout,
                            load_in_8bit=load_in_8bit)  # fmt: skip
    feats = {}
    for split, frame in (("train", train_records), ("val", val_records)):
        # Features are the slow part (a forward and a partial backward per record): keep them, so an
        # interrupted stage resumes after the split it finished.
        # Reused only when computed from these very records and settings: a folder left by a run on
        # other records would select rows that do not exist.
        where = folder / f"features_{split}"
        if features_match(where, frame, **feature_args):
            feats[split] = load_features(where)
        else:
            feats[split] = compute_features(frame, **feature_args)
            save_features(feats[split], where)
    by_label = bool(opts.pop("by_label", True))
    if by_label and feats["train"].labels is not None and feats["val"].labels is not None:
        # Label-enhanced ITRA (CTR): each label gets its validation share of the budget.
        opts["labels"] = feats["train"].labels
        opts["val_labels"] = feats["val"].labels
    if method in ("el2n", "ccs", "d2"):
        chosen = "el2n" if score == "auto" else score
        if chosen == "el2n":
            if feats["train"].el2n is None:
                raise PipelineError(f"coreset: method {method} ranks by EL2N, which {folder / 'features_train'} lacks; "
                                    "delete that folder to recompute it, or set [coreset].score = 'grad_norm'")  # fmt: skip
            opts["scores"] = feats["train"].el2n
    result = select(
        embeddings=feats["train"].embeddings,
        grad_norms=feats["train"].grad_norms,
        val_embeddings=feats["val"].embeddings,
        budget=n_select,
        method=method,
        lam=lam,
        candidates=candidates,
        max_swaps=max_swaps,
        seed=seed,
        progress=progress,
        exact_shortcuts=exact_shortcuts,
        **opts,
    )
    order = [int(i) for i in result.indices]
    write_selection(
        folder / "selection.parquet",
        train_records["record_id"].cast(pl.String).to_list(),
        result,
        n_val=val_records.height,
        lam=lam,
        labels="labels" in opts,
    )
    selected = train_records[order]
    atomic_write_parquet(folder / "train.parquet", selected)
    summary = {"method": result.method, "selected": len(order), "budget": n_select, "pool": train_records.height,
               "poo": round(result.poo, 5), "swaps": result.swaps, "features": protocol}  # fmt: skip
    if len(result.trace) > 1:
        summary["poo_greedy"] = round(result.trace[0], 5)
    files = {
        "selection": folder / "selection.parquet",
        "log": folder / "selection.json",
        "train": folder / "train.parquet",
    }
    schema = {"selection": SELECTION_COLUMNS, "train": RECORD_COLUMNS}
    return _finish(CoresetArtifact(stage="coreset", path=folder, files=files, schema=schema, summary=summary))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- evaluate


def evaluate(
    records: RecordsArtifact | str | Path,
    data: DataArtifact | str | Path | None,
    out: str | Path,
    *,
    model: ModelArtifact | str | Path | None = None,
    adapter: str | Path | None = None,
    split: str = "test",
    mode: str = "ranked",
    max_records: int = 0,
    items: str | Path | None = None,
    protocol: str = "genrec",
    city: str = "",
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EvaluationArtifact:
    """Evaluate the fine-tuned model (``model``: the train stage's artifact, or a base model path with
    an optional ``adapter``) beside the baselines, by the records' task.

    next_poi: ranked (or generated) POI ids beside popularity, user-frequency and Markov baselines, with
    GenUP's user-activity and trajectory-length analyses (``mode="none"``: baselines alone). seqrec:
    generated titles grounded to the catalogue (``items``), NDCG/HR. ctr: P(Yes) -> AUC.

    ``protocol``: the evaluator's (next_poi ``genrec``/``genup``, seqrec ``genrec``/``bigrec``/
    ``goracs``, ctr ``genrec``/``tallrec``/``goracs``); under ``genup`` the records' train split
    is GenUP's train split for the user-activity groups, and ``city`` picks GenUP's decoding settings
    (default: read from the records). A ``max_records`` sample reports the whole split's size, so the
    report says it scored a subset.
    """
    import polars as pl

    import genrec_evaluator as ev

    folder = _folder(out)
    path = records[split] if isinstance(records, Artifact) else Path(records) / f"{split}.parquet"
    frame = _read_table(path, "evaluate: records")
    if frame.height == 0:
        raise PipelineError(f"evaluate: {path} holds no records")
    split_records = frame.height
    if max_records and frame.height > max_records:
        # A fixed, seeded subset keeps runs comparable while bounding the cost of model scoring.
        frame = frame.sample(n=max_records, seed=0).sort("record_id")
    task = str(frame["task"][0]) if "task" in frame.columns else "next_poi"
    table = {"protocol": protocol, "mode": mode, "city": city, "options": dict(options or {})}
    opts = evaluator_options(task, table)
    opts.pop("mode", None)
    opts.setdefault("split_records", split_records)
    base: str | None = None
    if isinstance(model, ModelArtifact):
        base = str(model.summary["base_model"])
        adapter = model.files.get("adapter")
    elif model is not None:
        base = str(model)
    if base is None and not (task == "next_poi" and mode == "none"):
        raise PipelineError("evaluate: needs a model (the train stage's output or a model path)")
    if task == "next_poi":
        if data is None and mode == "none":
            raise PipelineError("evaluate: next_poi baselines alone (mode none) need the prepared check-ins (data)")
        # Without check-ins (GenUP's published records) the baselines are fitted on the records' histories.
        checkins = (
            None
            if data is None
            else _read_table(data["checkins"] if isinstance(data, Artifact) else Path(data) / "checkins.parquet",
                             "evaluate: check-ins")
        )
        if checkins is not None and "user_id" in frame.columns:
            _check_record_users(frame, checkins, path)
        if mode == "none":
            result = ev.run_baselines(frame, checkins, config=ev.BaselineConfig(split_records=split_records))  # type: ignore[arg-type]
        else:
            if opts.get("protocol") == "genup" and not opts.get("city"):
                opts["city"] = _records_city(records)
            config = ev.NextPoiConfig(mode=mode, progress=progress, **opts)  # type: ignore[arg-type]
            train_records = None
            if config.protocol == "genup":
                train_path = records.files.get("train") if isinstance(records, Artifact) else Path(records) / "train.parquet"
                if train_path is not None and Path(train_path).is_file():
                    train_records = pl.read_parquet(train_path)
            result = ev.evaluate_next_poi(frame, model=base, adapter=adapter, train=checkins, config=config,  # type: ignore[arg-type]
                                          train_records=train_records)  # fmt: skip
    elif task == "seqrec":
        catalogue = items or (records.files.get("items") if isinstance(records, Artifact) else None)
        if catalogue is None:
            raise PipelineError("evaluate: seqrec needs the item catalogue ([records].items)")
        config_s = ev.SeqRecConfig(progress=progress, **opts)
        result = ev.evaluate_seqrec(frame, ev.read_items(catalogue), model=base, adapter=adapter, config=config_s)
    elif task == "ctr":
        config_c = ev.CtrConfig(progress=progress, **opts)
        result = ev.evaluate_ctr(frame, model=base, adapter=adapter, config=config_c)  # type: ignore[arg-type]
    else:
        raise PipelineError(f"evaluate: unknown task {task!r} in {path}")
    ev.write_report(result, folder)
    files = {"metrics": folder / "metrics.json", "report": folder / "report.md", "run": folder / "run.json"}
    if (folder / "predictions.parquet").is_file():
        files["predictions"] = folder / "predictions.parquet"
        if task == "next_poi":  # the contract's ranked lists are POI ids; other tasks write their own
            _check(PREDICTIONS, files["predictions"])
    for png in sorted((folder / "plots").glob("*.png")):
        files[f"plot_{png.stem}"] = png
    key = {"next_poi": "acc@1", "seqrec": "ndcg@10", "ctr": "auc"}[task]
    headline = {sys: round(float(m.get(key, 0.0)), 4) for sys, m in result.metrics.items()}
    summary = {"records": frame.height, "split_records": split_records, "split": split, "task": task,
               "mode": mode, "protocol": opts.get("protocol", "genrec"), key: headline}  # fmt: skip
    schema = {"predictions": PREDICTION_COLUMNS}
    return _finish(EvaluationArtifact(stage="evaluate", path=folder, files=files, schema=schema, summary=summary))  # type: ignore[return-value]


def _check_record_users(frame: Any, checkins: Any, path: Path) -> None:
    """Baselines fitted on check-ins of other users than the records' would score nothing real."""
    import polars as pl

    users = set(checkins["user_id"].cast(pl.String).unique().to_list())
    wanted = set(frame["user_id"].cast(pl.String).drop_nulls().unique().to_list())
    if wanted and not wanted & users:
        raise PipelineError(
            f"evaluate: the records of {path} share no user with the check-ins ({len(wanted)} record users, "
            f"{len(users)} check-in users): records and data from different runs?"
        )


def _records_city(records: RecordsArtifact | str | Path) -> str | None:
    """GenUP's city of a run's records, read from where they came from (``[records].genup``)."""
    from genrec_evaluator import genup_city

    folder = records.path if isinstance(records, Artifact) else Path(records)
    meta = folder / "stage.json"
    source = ""
    if meta.is_file():
        source = str(read_json(meta).get("settings", {}).get("genup", ""))
    return genup_city(source) if source else None


# Options of the coreset stage that the pipeline handles itself, and select() arguments it sets.
_CORESET_OWN = {"max_val", "max_length", "by_label"}
_CORESET_SET = {"embeddings", "grad_norms", "val_embeddings", "budget", "method", "lam", "candidates",
                "max_swaps", "seed", "progress", "labels", "val_labels", "exact_shortcuts", "scores"}  # fmt: skip


def _elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 1)
