"""Plan and run the stages of a config, reusing what is cached and resuming what was interrupted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genrec_core import atomic_write_json, redact, redact_all
from genrec_pipeline import _dist
from genrec_pipeline import stages as st
from genrec_pipeline._cache import (
    code_version,
    input_key,
    intact,
    read_json,
    stage_dir,
    stage_key,
    status,
)
from genrec_pipeline._config import STAGES, RunConfig, check_run_dir, load_config
from genrec_pipeline._errors import PipelineError

log = logging.getLogger(__name__)

# Keys that change how a stage reports or where its processes meet, not what it computes: left out
# of the cache key.
# ``accept_failures`` decides whether a stage with failures counts as done, not what it computes: a rerun
# that accepts them resumes the same folder.
_VOLATILE = {"progress", "description", "name", "root", "accept_failures", *_dist.LAUNCH_KEYS}
# Settings naming files or folders a stage reads: keyed by their content, not their path.
_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("inputs", "train", "val", "test"),
    "profiles": ("model", "genup"),
    "records": ("items", "interactions", "ratings", "tallrec", "genup"),
    "coreset": ("model", "encoder", "adapter"),
}
_OPTION_INPUTS = ("model", "val", "adapter")


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """One stage of a run: where its output lives and what the run will do with it."""

    stage: str
    key: str
    folder: Path
    action: str  # run | resume | reuse | skip (disabled or not selected)
    reason: str
    upstream: tuple[str, ...] = ()
    #: What the stage will do, in words: the data set, protocols, method, recipe (``--dry-run`` shows it).
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """A finished (or partly run) pipeline: the plan, each stage's artifact, and timings."""

    run_dir: Path
    plan: tuple[StagePlan, ...]
    artifacts: Mapping[str, st.Artifact]
    seconds: Mapping[str, float]
    report: Path | None = None
    summary: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _enabled(config: RunConfig, stage: str) -> bool:
    if stage == "data" and config["records"]["task"] != "next_poi":
        # SeqRec and CTR records come from their own files when given (they win), else from a data set.
        return bool(config["data"]["dataset"]) and not local_record_files(config)
    if stage == "profiles" and config["records"]["task"] != "next_poi":
        return False
    if stage in ("data", "profiles") and config["records"]["genup"]:
        return False  # GenUP's published records carry their profiles and prompts already
    if stage == "profiles":
        return bool(config["profiles"]["enabled"])
    if stage == "coreset":
        return bool(config["coreset"]["enabled"])
    return True


def local_record_files(config: RunConfig) -> bool:
    """Whether ``[records]`` names the files its seqrec/ctr records are built from."""
    rec = config["records"]
    if rec["task"] == "seqrec":
        return bool(rec["items"] and rec["interactions"])
    if rec["task"] == "ctr":
        return bool(rec["tallrec"] or (rec["ratings"] and rec["items"]))
    return False


def _upstream(config: RunConfig, stage: str) -> tuple[str, ...]:
    deps: dict[str, tuple[str, ...]] = {
        "data": (),
        "profiles": ("data",),
        "records": ("data", "profiles"),
        "coreset": ("records",),
        "train": ("records", "coreset"),
        "evaluate": ("data", "records", "train"),
    }
    wanted = deps[stage]
    if stage == "evaluate" and config["evaluate"]["mode"] == "none":
        wanted = ("data", "records")
    return tuple(d for d in wanted if _enabled(config, d))


def _settings(config: RunConfig, stage: str) -> dict[str, Any]:
    table = {k: v for k, v in config[stage].items() if k not in _VOLATILE}
    for key in _INPUTS.get(stage, ()):
        value = table.get(key)
        if isinstance(value, list):
            table[key] = [input_key(config.resolve(str(v))) for v in value]
        elif value:
            table[key] = input_key(config.resolve(str(value)))
    if isinstance(table.get("options"), Mapping):
        options = {k: v for k, v in table["options"].items() if k not in _VOLATILE}
        for key in _OPTION_INPUTS:
            if isinstance(options.get(key), str) and options[key]:
                options[key] = input_key(config.resolve(options[key]))
        table["options"] = options
    if stage in ("data", "profiles", "records", "coreset", "train"):
        table["seed"] = config["run"]["seed"]
    if stage == "data" and table.get("dataset"):
        table["fetched"] = _fetched_key(str(table["dataset"]))
    return table


def _fetched_key(name: str) -> Any:
    """A data set's part of the data stage's key: the content of its fetched files
    (``genrec_core.fingerprint``), or the hub id of a hub data set, or ``"not fetched"`` before the
    first fetch (``run`` fetches first, so only ``--dry-run`` sees that)."""
    from genrec_core import fingerprint
    from genrec_sftdata import list_datasets

    source = next((s for s in list_datasets() if s.name == name), None)
    if source is None or source.hub_id:
        return source.hub_id if source is not None else name
    folder = st.fetched_dataset(name)
    if folder is None:
        return "not fetched"
    # The downloaded files only: preparing extracts members beside them, which must not change the key.
    return {f: fingerprint(folder / f) for f in source.files}


def _select(
    stages: Sequence[str] | None, from_stage: str | None, until: str | None
) -> tuple[set[str], set[str]]:
    """(stages to consider, stages forced to re-run)."""
    for name in [*(stages or ()), from_stage, until]:
        if name is not None and name not in STAGES:
            raise PipelineError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    chosen = set(stages) if stages else set(STAGES)
    forced: set[str] = set()
    if from_stage is not None:
        start = STAGES.index(from_stage)
        forced |= set(STAGES[start:])
    if until is not None:
        stop = STAGES.index(until)
        chosen &= set(STAGES[: stop + 1])
    return chosen, forced


def plan(
    config: RunConfig,
    *,
    stages: Sequence[str] | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    force: Iterable[str] = (),
) -> tuple[StagePlan, ...]:
    """What a run of ``config`` would do, stage by stage, without running anything.

    A stage that runs (forced, new, or resumed) makes every stage downstream of it run afresh too:
    their cached or partial output was made from the output it replaces. A done stage is reused only
    when its outputs are intact and its recorded inputs are the upstream outputs there now; a partial
    one resumes only when it was started from those same inputs, and otherwise starts afresh."""
    chosen, forced = _select(stages, from_stage, until)
    for name in force:
        if name not in STAGES:
            raise PipelineError(f"--force: unknown stage {name!r}; stages are {', '.join(STAGES)}")
        forced.add(name)
    versions = code_version()
    keys: dict[str, str] = {}
    actions: dict[str, str] = {}
    run_ids: dict[str, str | None] = {}
    out: list[StagePlan] = []
    for stage in STAGES:
        up = _upstream(config, stage)
        key = stage_key(stage, _settings(config, stage), {u: keys[u] for u in up}, versions)
        keys[stage] = key
        folder = stage_dir(config.run_dir / config.name, stage, key)
        state = status(folder)
        remade = [u for u in up if actions.get(u) in ("run", "resume")]
        if not _enabled(config, stage):
            action, reason = "skip", "disabled in the config"
        elif stage not in chosen:
            action, reason = "skip", "not selected"
        elif stage in forced:
            action, reason = "run", "forced"
        elif remade:
            action, reason = "run", f"{remade[0]} is made again, so everything after it is too"
        elif stage == "data" and _settings(config, "data").get("fetched") == "not fetched":
            action, reason = "run", f"fetches {config['data']['dataset']} first (its content then keys the stage)"
        elif state == "done":
            why = intact(folder) or _inputs_changed(folder, up, run_ids)
            if why:
                action, reason = "run", f"cached output not usable ({why}): running it again"
            else:
                action, reason = "reuse", "cached: same settings and inputs"
        elif state == "partial":
            why = _inputs_changed(folder, up, run_ids)
            if why:
                action, reason = "run", f"interrupted earlier, but {why}: starting afresh"
            else:
                action, reason = "resume", "interrupted earlier: resuming in place"
        else:
            action, reason = "run", "new settings or inputs"
        actions[stage] = action
        run_ids[stage] = _run_id(folder) if action in ("reuse", "skip") else None
        out.append(StagePlan(stage=stage, key=key, folder=folder, action=action, reason=reason, upstream=up,
                             detail=describe(config, stage) if _enabled(config, stage) else ""))  # fmt: skip
    return tuple(out)


def _marker(folder: Path) -> dict[str, Any]:
    try:
        meta = read_json(folder / "stage.json")
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _run_id(folder: Path) -> str | None:
    value = _marker(folder).get("run_id")
    return str(value) if value else None


def _inputs_changed(folder: Path, upstream: Sequence[str], run_ids: Mapping[str, str | None]) -> str:
    """Why the upstream outputs a stage folder was made from are not the ones there now ("" when they
    are, or when the folder predates the record)."""
    recorded = _marker(folder).get("inputs")
    if not isinstance(recorded, Mapping):
        return ""
    for u in upstream:
        then, now = recorded.get(u), run_ids.get(u)
        if then and now and then != now:
            return f"its {u} input was made again since"
    return ""


def describe(config: RunConfig, stage: str) -> str:
    """One line on what ``stage`` does under ``config``: which data set, protocol, method or recipe."""
    t = config[stage]
    task = config["records"]["task"]
    if stage == "data":
        if t["dataset"]:
            return f"data set {t['dataset']} (genrec_sftdata.fetch + prepare_fetched)"
        return f"{t['source']} check-ins"
    if stage == "profiles":
        if t["genup"]:
            return f"GenUP's own profiles from {t['genup']} (read_genup_profiles)"
        return f"protocol {t['protocol']}, {t['backend']} backend, model {t['model']}"
    if stage == "records":
        if task != "next_poi":
            named = config["data"]["dataset"] and not local_record_files(config)
            source = f"data set {config['data']['dataset']}" if named else "files"
            return f"{task} records from {source}"
        source = f"GenUP's records {t['genup']}" if t["genup"] else "the prepared check-ins"
        return f"next_poi protocol {t['protocol']}, profile fields {t['profile_fields']}, from {source}"
    if stage == "coreset":
        features = f"features protocol {t['protocol']}"
        if t["protocol"] == "goracs":
            features += f" (adapter {t['adapter']}, layer {t['layer']}, encoder {t['encoder']})"
        extra = f", exact shortcuts {'on' if t['exact_shortcuts'] else 'off'}" if t["method"] == "goracs" else ""
        return f"method {t['method']}, budget {t['budget']}, lambda {t['lam']}{extra}; {features}"
    if stage == "train":
        model = t["options"].get("model", "the recipe's model")
        return f"recipe {t['recipe'] or '(none)'}, model {model}"
    if stage == "evaluate":
        mode = f", {t['mode']} mode" if task == "next_poi" else ""
        line = f"{task} protocol {t['protocol']}{mode}, {t['split']} split"
        city = t["city"] or _genup_city(config)
        if city:
            line += f", city {city}"
        return line + (f", at most {t['max_records']} records" if t["max_records"] else ", every record")
    return ""


def format_plan(items: Sequence[StagePlan]) -> str:
    lines = [f"{'stage':<9} {'action':<7} {'key':<12}  folder / reason"]
    for item in items:
        lines.append(f"{item.stage:<9} {item.action:<7} {item.key:<12}  {item.folder}  ({item.reason})")
        if item.detail:
            lines.append(f"{'':<9} {'':<7} {'':<12}  {item.detail}")
    return "\n".join(lines)


def _call_stage(
    config: RunConfig,
    stage: str,
    folder: Path,
    arts: Mapping[str, st.Artifact],
    progress: bool,
    role: _dist.Role | None = None,
) -> st.Artifact:
    t = config[stage]
    seed = int(config["run"]["seed"])
    if stage == "data":
        return st.data(
            folder,
            source=t["source"],
            users=t["users"],
            seed=seed,
            city=t["city"],
            inputs=[config.resolve(str(p)) for p in t["inputs"]],
            train=config.resolve(t["train"]) or None,
            val=config.resolve(t["val"]) or None,
            test=config.resolve(t["test"]) or None,
            format=t["format"],
            max_users=t["max_users"],
            prepare=t["prepare"],
            dataset=t["dataset"],
        )
    if stage == "profiles":
        return st.profile(
            arts["data"],
            folder,
            backend=t["backend"],
            model=config.resolve(t["model"]),
            base_url=t["base_url"],
            api_key_env=t["api_key_env"],
            max_new_tokens=t["max_new_tokens"],
            batch_size=t["batch_size"],
            users=t["users"],
            dtype=t["dtype"],
            seed=seed,
            protocol=t["protocol"],
            genup=config.resolve(t["genup"]) or None,
            options=t["options"],
            progress=progress,
            # A smoke run's tiny random model cannot write profiles: it checks the plumbing, not them.
            accept_failures=bool(t["accept_failures"]) or config.smoke,
        )
    if stage == "records":
        return st.records(
            arts.get("data"),  # type: ignore[arg-type]
            folder,
            profiles=arts.get("profiles"),  # type: ignore[arg-type]
            task=t["task"],
            items=config.resolve(t["items"]) or None,
            interactions=config.resolve(t["interactions"]) or None,
            ratings=config.resolve(t["ratings"]) or None,
            tallrec=[config.resolve(str(p)) for p in t["tallrec"]],
            genup=config.resolve(t["genup"]) or None,
            max_records=t["max_records"],
            seed=seed,
            protocol=t["protocol"],
            profile_fields=t["profile_fields"],
            options=t["options"],
        )
    if stage == "coreset":
        return st.coreset(
            arts["records"],
            folder,
            method=t["method"],
            budget=t["budget"],
            lam=t["lam"],
            candidates=t["candidates"],
            max_swaps=t["max_swaps"],
            model=config.resolve(t["model"]),
            encoder=config.resolve(t["encoder"]),
            batch_size=t["batch_size"],
            dtype=t["dtype"],
            seed=seed,
            exact_shortcuts=t["exact_shortcuts"],
            score=t["score"],
            protocol=t["protocol"],
            adapter=config.resolve(t["adapter"]),
            layer=t["layer"],
            dropout=t["dropout"],
            load_in_8bit=t["load_in_8bit"],
            options=t["options"],
            progress=progress,
        )
    if stage == "train":
        return st.train(
            arts["records"],
            folder,
            coreset=arts.get("coreset"),  # type: ignore[arg-type]
            recipe=t["recipe"],
            options=t["options"],
            seed=seed,
            progress=progress,
            distributed={k: t[k] for k in _dist.TRAIN_KEYS} if role is not None and role.launch else None,
        )
    if stage == "evaluate":
        return st.evaluate(
            arts["records"],  # type: ignore[arg-type]
            arts.get("data"),  # type: ignore[arg-type]
            folder,
            model=arts.get("train"),  # type: ignore[arg-type]
            split=t["split"],
            mode=t["mode"],
            max_records=t["max_records"],
            protocol=t["protocol"],
            city=t["city"] or _genup_city(config),
            options=t["options"],
            progress=progress,
        )
    raise PipelineError(f"unknown stage {stage!r}")  # pragma: no cover


def _genup_city(config: RunConfig) -> str:
    """GenUP's city of a run on GenUP's records, from the records' name (``w11wo/FourSquare-TKY-POI``)."""
    if config["evaluate"]["protocol"] != "genup" or not config["records"]["genup"]:
        return ""
    from genrec_evaluator import genup_city

    return genup_city(str(config["records"]["genup"])) or ""


def _fetch_datasets(config: RunConfig, items: Sequence[StagePlan]) -> bool:
    """Fetch the run's named data set before the plan is final, so that the data stage is keyed by
    what was fetched; True when something was fetched."""
    name = config["data"]["dataset"]
    wanted = any(i.stage == "data" and i.action in ("run", "resume") for i in items)
    if not name or not wanted or _fetched_key(name) != "not fetched":
        return False
    from genrec_sftdata import fetch

    log.info("data: fetching %s", name)
    fetch(name)
    return True


def _event(run_dir: Path, item: StagePlan, role: _dist.Role, what: str) -> None:
    """One line per stage execution in ``events.jsonl``: which process ran what, when (appends are
    atomic for lines this short, so ranks and reruns can share the file)."""
    import json
    import os

    line = json.dumps({"stage": item.stage, "key": item.key, "event": what, "rank": role.rank,
                       "pid": os.getpid(), "time": datetime.now(UTC).isoformat()})  # fmt: skip
    with (run_dir / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def run(
    config: RunConfig | str | Path | None = None,
    *,
    stages: Sequence[str] | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    force: Iterable[str] = (),
    progress: bool | None = None,
    on_stage: Callable[[StagePlan], None] | None = None,
    smoke: bool = False,
    accept_failures: bool | None = None,
) -> RunResult:
    """Run ``config`` (a :class:`RunConfig`, a TOML path, a shipped config name, or ``None`` for the
    built-in default), reusing every stage whose settings and inputs are unchanged.

    ``smoke``: the same config with tiny models, a few users and steps, on the CPU (see
    :func:`genrec_pipeline.load_config`). Under torchrun (``WORLD_SIZE`` > 1) rank 0 runs every stage
    and the other ranks join the train stage only. ``accept_failures`` overrides
    ``[profiles].accept_failures``: without it a profile stage with failed users raises
    :class:`genrec_pipeline.stages.StageFailedError` (exit status 1) and stays unfinished, so the next
    run retries those users.

    One run at a time per run folder: the primary process holds ``genrec_core.FolderLock`` on it for
    the whole run, and a second run of the same folder stops at once naming the holder.
    """
    if not isinstance(config, RunConfig):
        config = load_config(config, smoke=smoke)
    elif smoke and not config.smoke:
        from genrec_pipeline._smoke import smoke_config

        config = smoke_config(config)
    if accept_failures is not None:
        tables = {k: dict(v) for k, v in config.tables.items()}
        tables["profiles"]["accept_failures"] = bool(accept_failures)
        config = replace(config, tables=tables)
    role = _dist.role(config["train"])
    run_dir = config.run_dir / config.name
    lock = _lock_run(run_dir) if role.primary else None
    try:
        return _run_locked(config, role, run_dir, stages=stages, from_stage=from_stage, until=until,
                           force=tuple(force), progress=progress, on_stage=on_stage)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _lock_run(run_dir: Path) -> Any:
    from genrec_core import FolderLock, LockHeldError

    check_run_dir(run_dir)
    try:
        return FolderLock(run_dir, what="run folder").acquire()
    except LockHeldError as exc:
        raise PipelineError(str(exc)) from None
    except OSError as exc:
        raise PipelineError(f"run folder {run_dir}: cannot be created or locked ({exc.strerror or exc})") from None


def _fresh(folder: Path) -> None:
    """Empty a stage folder that must be made again, so nothing of an older output is resumed or mixed
    in (moved aside first: a kill midway leaves no half-deleted folder behind under the stage's name)."""
    import shutil
    import uuid

    if not folder.exists():
        return
    aside = folder.with_name(f".{folder.name}.stale-{uuid.uuid4().hex[:8]}")
    folder.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _secrets(config: RunConfig) -> tuple[str, ...]:
    import os

    env = str(config["profiles"]["api_key_env"] or "")
    return tuple(v for v in (os.environ.get(env) if env else None,) if v)


def _run_locked(
    config: RunConfig,
    role: _dist.Role,
    run_dir: Path,
    *,
    stages: Sequence[str] | None,
    from_stage: str | None,
    until: str | None,
    force: tuple[str, ...],
    progress: bool | None,
    on_stage: Callable[[StagePlan], None] | None,
) -> RunResult:
    import uuid

    show = bool(config["run"]["progress"]) if progress is None else progress
    # Planned under the lock: a run that finished meanwhile has its markers in place.
    items = plan(config, stages=stages, from_stage=from_stage, until=until, force=force)
    if role.primary and _fetch_datasets(config, items):
        items = plan(config, stages=stages, from_stage=from_stage, until=until, force=force)
    run_dir.mkdir(parents=True, exist_ok=True)
    secrets = _secrets(config)
    if role.primary:
        for item in items:
            if item.action == "run":
                _fresh(item.folder)
            if item.reason.startswith("cached output not usable"):
                log.warning("%s: %s", item.stage, item.reason)
    artifacts: dict[str, st.Artifact] = {}
    run_ids: dict[str, str | None] = {}
    seconds: dict[str, float] = {}
    reused: set[str] = set()
    index_path = run_dir / "run.json"
    for item in items:
        if not role.primary and item.stage == "evaluate":
            break  # rank 0 evaluates; the other ranks are done once training is
        if item.action == "skip":
            if status(item.folder) == "done":
                artifacts[item.stage] = st.load_artifact(item.folder)
                run_ids[item.stage] = _run_id(item.folder)
            continue
        if not role.primary and item.stage != "train":
            if item.action != "reuse":
                _dist.wait_done(item.stage, item.folder)
            artifacts[item.stage] = st.load_artifact(item.folder)
            continue
        missing = [u for u in item.upstream if u not in artifacts]
        if missing:
            raise PipelineError(
                f"stage {item.stage} needs {', '.join(missing)} first; it has no finished output for these "
                f"settings (run without --stages/--until, or include them)"
            )
        if on_stage is not None:
            on_stage(item)
        if item.action == "reuse":
            artifacts[item.stage] = st.load_artifact(item.folder)
            run_ids[item.stage] = _run_id(item.folder)
            seconds[item.stage] = 0.0
            reused.add(item.stage)
            log.info("%s: reusing %s", item.stage, item.folder)
            continue
        start = time.perf_counter()
        run_ids[item.stage] = uuid.uuid4().hex
        meta = {
            "stage": item.stage,
            "key": item.key,
            "status": "running",
            "run_id": run_ids[item.stage],
            # What this output is made from: a resume checks it, so a partial folder never continues
            # on inputs that were made again meanwhile.
            "inputs": {u: run_ids.get(u) for u in item.upstream},
            "settings": redact_all(_settings(config, item.stage), secrets),
            "upstream": {u: str(artifacts[u].path) for u in item.upstream},
            "started": datetime.now(UTC).isoformat(),
            "config": config.source,
        }
        item.folder.mkdir(parents=True, exist_ok=True)
        if role.primary:
            atomic_write_json(item.folder / "stage.json", meta, sort_keys=True)
        _event(run_dir, item, role, item.action)
        log.info("%s: %s in %s", item.stage, item.action, item.folder)
        try:
            artifact = _call_stage(config, item.stage, item.folder, artifacts, show, role)
        except BaseException as exc:
            if role.primary:
                # Ranks waiting on this stage stop instead of waiting forever; the next run resumes.
                error = redact(f"{type(exc).__name__}: {exc}", secrets)
                failed = {**meta, "status": "failed", "error": error}
                atomic_write_json(item.folder / "stage.json", failed, sort_keys=True)
            raise
        seconds[item.stage] = round(time.perf_counter() - start, 1)
        artifacts[item.stage] = artifact
        if not role.primary:
            continue
        done = {**meta, "status": "done", "seconds": seconds[item.stage]}
        atomic_write_json(item.folder / "stage.json", done, sort_keys=True)
        index = read_json(index_path) if index_path.is_file() else {}
        index[item.stage] = {"folder": str(item.folder), "key": item.key, "seconds": seconds[item.stage]}
        atomic_write_json(index_path, index, sort_keys=True)
    if not role.primary:
        return RunResult(run_dir=run_dir, plan=items, artifacts=artifacts, seconds=seconds)
    from genrec_pipeline._report import write_run_report

    report, summary = write_run_report(config, run_dir, artifacts, seconds, reused)
    return RunResult(
        run_dir=run_dir, plan=items, artifacts=artifacts, seconds=seconds, report=report, summary=summary
    )
