"""Run configuration: one TOML file, one table per stage, validated up front.

Every key is checked before any stage runs: an unknown key, a wrong type or a value the stage's own
config class rejects raises :class:`PipelineError` naming the file and ``[table].key``. Stage tables
hold the pipeline's own keys plus an ``options`` table passed through to the package's config class
(``genrec_sftdata.PrepareConfig``, ``genrec_profiler.ProfilerConfig``, ``genrec_trainer.TrainConfig``
...), so every knob of a stage is reachable from the run config.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from genrec_pipeline._dist import TRAIN_KEYS
from genrec_pipeline._errors import PipelineError

STAGES: tuple[str, ...] = ("data", "profiles", "records", "coreset", "train", "evaluate")

# Pipeline-level keys of each table with their defaults; the type of the default is the type checked
# (None means "any"). Tables named in _PASSTHROUGH are free-form and validated by the stage's package.
_SCHEMA: dict[str, dict[str, Any]] = {
    "run": {"name": "default", "root": "genrec-runs", "seed": 0, "progress": True, "description": ""},
    "data": {
        "source": "synthetic",  # synthetic | files (ignored when dataset is set)
        "dataset": "",  # a genrec_sftdata.list_datasets() name: fetched, prepared and cached through sftdata
        "users": 40,
        "city": {},  # extra genrec_sftdata.CityConfig fields
        "inputs": [],  # files (all splits), or see train/val/test
        "train": "",  # files per split (GETNext style): keep their split
        "val": "",
        "test": "",
        "format": "auto",
        "max_users": 0,  # keep the first N users (by id) of the files; 0 = all
        "prepare": {},  # genrec_sftdata.PrepareConfig fields (GoracsConfig fields for an Amazon dataset)
    },
    "profiles": {
        "enabled": True,
        "backend": "local",  # local | openai | template
        "model": "smollm2",
        "base_url": "",
        "api_key_env": "OPENAI_API_KEY",
        "max_new_tokens": 384,
        "batch_size": 8,
        "users": 0,  # 0 = all
        "dtype": "auto",  # local backend: auto (bf16 where the device computes it natively) | float32 | bfloat16 | float16
        "protocol": "genrec",  # genrec | genup (GenUP's prompt, every check-in, JSON mode)
        "genup": "",  # GenUP's own profile files (folder, table or hub id): read, not generated
        "accept_failures": False,  # a stage with failed profiles still counts as done (else exit 1, retried)
        "options": {},  # genrec_profiler.ProfilerConfig fields
    },
    "records": {
        "task": "next_poi",  # next_poi | seqrec | ctr
        "items": "",  # seqrec/ctr: item catalogue (item_id, title)
        "interactions": "",  # seqrec: per-user sequences or (user_id, item_id, timestamp) rows
        "ratings": "",  # ctr: (user_id, item_id, rating, timestamp) rows
        "tallrec": [],  # ctr: TALLRec JSON files; each file's name gives its split
        "genup": "",  # next_poi: GenUP's published SFT records (hub id or save_to_disk folder) as they are
        "max_records": 0,  # keep at most N records per split (seeded sample); 0 = all
        "protocol": "genrec",  # next_poi: genrec | genup (GenUP's records, text for text)
        "profile_fields": "all",  # next_poi: all | summary+routines+preferences | summary (the profile ablation)
        "options": {},  # genrec_sftdata.NextPoiConfig / SeqRecConfig / CtrConfig fields
    },
    "coreset": {
        "enabled": True,
        "method": "itra",
        "budget": 0.5,  # a count, or a fraction (< 1) of the training records
        "lam": 0.1,
        "candidates": 30,
        "max_swaps": 20,
        "model": "smollm2",  # the causal LM whose LoRA gradient norms score records
        "encoder": "default",  # sentence encoder for record embeddings
        "batch_size": 8,
        "dtype": "auto",  # of the gradient-norm forward: auto | float32 | bfloat16 | float16
        "exact_shortcuts": True,  # method goracs: skip trials proven worse (the same selection)
        "score": "auto",  # el2n / ccs / d2: auto (el2n) | el2n | grad_norm
        "protocol": "ours",  # features: ours | goracs (the release's: trained adapter, whole-text loss, dropout)
        "adapter": "",  # features protocol goracs: the trained Alpaca LoRA (peft folder or hub id)
        "layer": -1,  # features protocol goracs: decoder layer of the v_proj LoRA-B gradient
        "dropout": True,  # features protocol goracs: LoRA dropout on, seeded per record
        "load_in_8bit": False,  # features protocol goracs: LLaMA in 8 bit (CUDA only)
        "options": {},
    },
    # genrec_trainer.TrainConfig fields in options; the rest launches torchrun (see _dist)
    "train": {"recipe": "", **TRAIN_KEYS, "options": {}},
    "evaluate": {
        "split": "test",
        "mode": "ranked",  # ranked | generate | none (baselines only)
        "max_records": 0,  # 0 = all
        "protocol": "genrec",  # next_poi: genrec | genup; seqrec: genrec | bigrec | goracs; ctr: genrec | tallrec | goracs
        "city": "",  # protocol genup: nyc | tky | ca | moscow | sao_paulo (GenUP's decoding settings); "" = from the records
        "options": {},
    },
}
_TABLES = ("run", *STAGES)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A validated run configuration: ``tables`` maps each table name to its full settings."""

    tables: Mapping[str, Mapping[str, Any]]
    source: str = field(default="<built-in default>")
    base_dir: Path = field(default_factory=Path.cwd)
    #: A smoke version of the config (tiny models, CPU): see :func:`genrec_pipeline._smoke.smoke_config`.
    smoke: bool = False
    #: One line per setting the smoke mapping changed.
    smoke_changes: tuple[str, ...] = ()

    def __getitem__(self, table: str) -> Mapping[str, Any]:
        return self.tables[table]

    @property
    def name(self) -> str:
        return str(self.tables["run"]["name"])

    @property
    def run_dir(self) -> Path:
        root = Path(str(self.tables["run"]["root"]))
        return root if root.is_absolute() else Path.cwd() / root

    def resolve(self, value: str) -> str:
        """A path given in the config, relative to the config file's folder when it exists there."""
        if not value or Path(value).is_absolute():
            return value
        candidate = self.base_dir / value
        return str(candidate) if candidate.exists() else value


def default_config_path() -> Path:
    """The built-in default run (``genrec run`` with no argument)."""
    return Path(str(resources.files("genrec_pipeline") / "configs" / "default.toml"))


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with the package, by name."""
    folder = resources.files("genrec_pipeline") / "configs"
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }[type(value)]


def _check(table: str, key: str, value: Any, default: Any, where: str) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise PipelineError(
            f"{where}: [{table}].{key} must be {_type_name(default)}, got {type(value).__name__} {value!r}"
        )
    return value


def _merge(tables: dict[str, Any], data: Mapping[str, Any], where: str) -> None:
    for table, values in data.items():
        if table not in _SCHEMA:
            raise PipelineError(f"{where}: unknown table [{table}]; known tables: {', '.join(_TABLES)}")
        if not isinstance(values, Mapping):
            raise PipelineError(f"{where}: [{table}] must be a table, got {values!r}")
        for key, value in values.items():
            if key not in _SCHEMA[table]:
                known = ", ".join(sorted(_SCHEMA[table]))
                raise PipelineError(f"{where}: unknown key [{table}].{key}; known keys: {known}")
            value = _check(table, key, value, _SCHEMA[table][key], where)
            if isinstance(value, Mapping) and isinstance(tables[table][key], dict):
                tables[table][key] = {**tables[table][key], **value}
            else:
                tables[table][key] = value


def _set_dotted(data: dict[str, Any], dotted: str, raw: str) -> None:
    """Apply ``table.key=value`` (value parsed as TOML, falling back to a plain string)."""
    path = dotted.split(".")
    if len(path) < 2:
        raise PipelineError(f"--set {dotted}={raw}: expected table.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PipelineError(f"--set {dotted}: {part} is not a table")
    node[path[-1]] = value


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    smoke: bool = False,
    check_files: bool = True,
) -> RunConfig:
    """Read and validate a run config; ``None`` is the built-in default. ``overrides`` maps dotted
    keys (``train.options.max_steps``) to TOML values, as ``genrec run --set`` does. ``smoke``: the
    same config with every model swapped for a tiny random one of its family, a few users, records
    and steps, and GPU-only settings mapped to the CPU (``genrec run --smoke``). ``check_files``: that
    every local file, folder and model the config names exists (off only to read a config whose data
    is not on this machine, such as a shipped one)."""
    tables: dict[str, dict[str, Any]] = copy.deepcopy(_SCHEMA)
    default = default_config_path()
    file = Path(path) if path is not None else default
    if path is not None and not file.is_file():
        shipped = shipped_configs()
        if str(path) in shipped:
            file = shipped[str(path)]
        else:
            raise PipelineError(
                f"config file does not exist: {path} (shipped configs: {', '.join(sorted(shipped))})"
            )
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{file}: not valid TOML: {exc}") from exc
    _merge(tables, data, str(file))
    if overrides:
        extra: dict[str, Any] = {}
        for key, raw in overrides.items():
            _set_dotted(extra, key, raw)
        _merge(tables, extra, "--set")
    config = RunConfig(tables=tables, source=str(file), base_dir=file.parent)
    validate(config, check_files=check_files)
    if smoke:
        from genrec_pipeline._smoke import smoke_config

        config = smoke_config(config)
    return config


def _choice(config: RunConfig, table: str, key: str, allowed: tuple[str, ...]) -> None:
    value = config[table][key]
    if value not in allowed:
        raise PipelineError(
            f"{config.source}: [{table}].{key} must be one of {', '.join(allowed)}; got {value!r}"
        )


def _dataset(config: RunConfig, task: str) -> str:
    """Check ``[data].dataset`` against the task; return it ("" when unset)."""
    from genrec_pipeline.stages import CHECKIN_KINDS, RATING_KINDS, dataset_kind

    name = str(config["data"]["dataset"])
    if not name:
        return ""
    try:
        kind = dataset_kind(name)
    except PipelineError as exc:
        raise PipelineError(f"{config.source}: [data].dataset: {exc}") from None
    if kind == "genup":
        from genrec_sftdata import list_datasets

        hub = next(s.hub_id for s in list_datasets() if s.name == name)
        raise PipelineError(
            f"{config.source}: [data].dataset = {name!r} holds GenUP's SFT records, not check-ins; "
            f"use [records].genup = {hub!r}"
        )
    if kind not in CHECKIN_KINDS + RATING_KINDS:
        raise PipelineError(f"{config.source}: [data].dataset = {name!r} has no reader in genrec_sftdata (fetch only)")
    if kind in CHECKIN_KINDS and task != "next_poi":
        raise PipelineError(f"{config.source}: [data].dataset = {name!r} holds check-ins (next_poi); [records].task is {task!r}")
    if kind in RATING_KINDS and task == "next_poi":
        raise PipelineError(
            f"{config.source}: [data].dataset = {name!r} holds ratings (seqrec, ctr); [records].task is 'next_poi'"
        )
    if kind == "bookcrossing" and task == "seqrec":
        raise PipelineError(f"{config.source}: [data].dataset = 'bookcrossing' has no times to order a sequence; use ctr")
    return name


_EVAL_PROTOCOLS = {"next_poi": ("genrec", "genup"), "seqrec": ("genrec", "bigrec", "goracs"),
                   "ctr": ("genrec", "tallrec", "goracs")}  # fmt: skip


def _protocols(config: RunConfig, task: str) -> None:
    """The published protocols: each table's value, and the combinations a protocol cannot run in."""
    src = config.source
    _choice(config, "profiles", "protocol", ("genrec", "genup"))
    _choice(config, "records", "protocol", ("genrec", "genup"))
    _choice(config, "coreset", "protocol", ("ours", "goracs"))
    _choice(config, "coreset", "score", ("auto", "el2n", "grad_norm"))
    ev = config["evaluate"]
    if ev["protocol"] not in _EVAL_PROTOCOLS[task]:
        raise PipelineError(
            f"{src}: [evaluate].protocol must be one of {', '.join(_EVAL_PROTOCOLS[task])} for {task}; "
            f"got {ev['protocol']!r}"
        )
    if config["records"]["protocol"] != "genrec" and task != "next_poi":
        raise PipelineError(f"{src}: [records].protocol = 'genup' is for next_poi records; [records].task is {task!r}")
    if ev["protocol"] == "genup" and ev["mode"] == "ranked":
        raise PipelineError(f"{src}: [evaluate].protocol = 'genup' generates (GenUP has no ranked mode); "
                            "set [evaluate].mode = 'generate'")  # fmt: skip
    if ev["city"] and ev["protocol"] != "genup":
        raise PipelineError(f"{src}: [evaluate].city picks GenUP's decoding settings; set [evaluate].protocol = 'genup'")
    core = config["coreset"]
    if core["protocol"] == "goracs" and not core["adapter"]:
        raise PipelineError(
            f"{src}: [coreset].protocol = 'goracs' needs [coreset].adapter (the trained Alpaca LoRA the release "
            "computes its gradients through)"
        )
    if core["protocol"] == "ours" and core["adapter"]:
        raise PipelineError(f"{src}: [coreset].adapter is for protocol 'goracs' (ours starts a fresh LoRA)")
    prof = config["profiles"]
    if prof["genup"] and task != "next_poi":
        raise PipelineError(f"{src}: [profiles].genup holds user profiles for next_poi; [records].task is {task!r}")


def validate(config: RunConfig, *, check_files: bool = True) -> None:
    """Check the values (beyond types) and let each stage's package check its options, so that a
    misspelt option fails before anything runs."""
    from genrec_pipeline import stages

    _choice(config, "data", "source", ("synthetic", "files"))
    _choice(config, "profiles", "backend", ("local", "openai", "template"))
    for table in ("profiles", "coreset"):
        _choice(config, table, "dtype", ("auto", "float32", "bfloat16", "float16"))
    _choice(config, "records", "task", ("next_poi", "seqrec", "ctr"))
    task = config["records"]["task"]
    rec = config["records"]
    dataset = _dataset(config, task)
    if task == "seqrec" and not dataset and not (rec["items"] and rec["interactions"]):
        raise PipelineError(
            f"{config.source}: [records].task = 'seqrec' needs [records].items and [records].interactions, "
            "or [data].dataset"
        )
    if task == "ctr" and not dataset and not (rec["tallrec"] or (rec["ratings"] and rec["items"])):
        raise PipelineError(
            f"{config.source}: [records].task = 'ctr' needs [records].tallrec, or [records].ratings and items, "
            "or [data].dataset"
        )
    _protocols(config, task)
    if rec["genup"] and task != "next_poi":
        raise PipelineError(f"{config.source}: [records].genup holds next_poi records; [records].task is {task!r}")
    if rec["genup"] and config["evaluate"]["mode"] == "none":
        raise PipelineError(
            f"{config.source}: [evaluate].mode = 'none' fits the baselines on check-ins, which [records].genup "
            "runs have none of; use 'generate' or 'ranked'"
        )
    if task != "next_poi" and config["evaluate"]["mode"] == "generate":
        raise PipelineError(f"{config.source}: [evaluate].mode = 'generate' is for next_poi; {task} has its own scoring")
    _choice(config, "evaluate", "mode", ("ranked", "generate", "none"))
    _choice(config, "evaluate", "split", ("val", "test"))
    if task == "next_poi" and config["data"]["source"] == "synthetic" and config["data"]["users"] < 2:
        raise PipelineError(
            f"{config.source}: [data].users must be at least 2, got {config['data']['users']}"
        )
    if (
        task == "next_poi"
        and not rec["genup"]
        and not config["data"]["dataset"]
        and config["data"]["source"] == "files"
        and not (config["data"]["inputs"] or config["data"]["train"])
    ):
        raise PipelineError(f"{config.source}: [data].source = 'files' needs [data].inputs or [data].train")
    for key in ("nproc_per_node", "nnodes"):
        if config["train"][key] < 1:
            raise PipelineError(f"{config.source}: [train].{key} must be at least 1, got {config['train'][key]}")
    _check_numbers(config)
    check_run_dir(config.run_dir / config.name, config.source)
    if check_files:
        _check_paths(config)
    for stage in STAGES:
        try:
            stages.check_options(stage, config)
        except PipelineError:
            raise
        except TypeError as exc:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if bad:
                raise PipelineError(f"{config.source}: unknown key [{stage}].options.{bad.group(1)}") from exc
            raise PipelineError(f"{config.source}: {_key_of(config, stage, str(exc))}: {exc}") from exc
        except ValueError as exc:
            raise PipelineError(f"{config.source}: {_key_of(config, stage, str(exc))}: {exc}") from exc


# Fields of the package configs that a pipeline key feeds under another name.
_RENAMED = {("data", "n_users"): "users"}
# Sub-tables whose keys go to a package config as they are.
_SUBTABLES = {"data": ("city", "prepare"), "profiles": ("options",), "records": ("options",),
              "coreset": ("options",), "train": ("options",), "evaluate": ("options",)}  # fmt: skip


def _key_of(config: RunConfig, stage: str, message: str) -> str:
    """The config key a package config's error is about (``[data].prepare.min_poi_checkins``), found
    from the field it names; ``[stage]`` when it names none the table holds."""
    table = config[stage]
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message):
        renamed = _RENAMED.get((stage, word))
        if renamed:
            return f"[{stage}].{renamed}"
        for sub in _SUBTABLES.get(stage, ()):
            if isinstance(table.get(sub), Mapping) and word in table[sub]:
                return f"[{stage}].{sub}.{word}"
        if word in table and word not in _SUBTABLES.get(stage, ()) and word != "options":
            return f"[{stage}].{word}"
    return f"[{stage}]"


def check_run_dir(run_dir: Path, source: str = "") -> None:
    """A run folder (or the root above it) that exists as something else than a folder is bad input,
    said when the config loads rather than as a traceback when the first stage writes."""
    where = f"{source}: " if source else ""
    for path in (run_dir.parent, run_dir):
        if path.exists() and not path.is_dir():
            raise PipelineError(f"{where}[run].root: {path} exists and is not a folder")


def _check_numbers(config: RunConfig) -> None:
    """The pipeline's own numeric keys; the package configs check their fields in check_options, and
    ``lam`` and the counts of the selection go through genrec_otcoreset's own checks."""
    import math

    from genrec_otcoreset._validate import check_nonneg_float, check_positive_int

    src = config.source
    at_least = {("data", "max_users"): 0, ("profiles", "users"): 0, ("profiles", "max_new_tokens"): 1,
                ("profiles", "batch_size"): 1, ("records", "max_records"): 0, ("evaluate", "max_records"): 0,
                ("coreset", "batch_size"): 1, ("coreset", "max_swaps"): 0}  # fmt: skip
    for (table, key), low in at_least.items():
        value = config[table][key]
        if value < low:
            raise PipelineError(f"{src}: [{table}].{key} must be an integer >= {low}, got {value!r}")
    core = config["coreset"]
    try:
        check_nonneg_float(core["lam"], "[coreset].lam")
        check_positive_int(core["candidates"], "[coreset].candidates")
    except ValueError as exc:
        raise PipelineError(f"{src}: {exc}") from None
    budget = core["budget"]
    if not math.isfinite(budget) or budget <= 0 or (budget >= 1 and budget != int(budget)):
        raise PipelineError(
            f"{src}: [coreset].budget must be a count (a whole number >= 1) or a fraction in (0, 1), got {budget!r}"
        )


def _check_paths(config: RunConfig) -> None:
    """Files and folders the config names, checked before any work. A value that looks local (see
    ``genrec_core.models.looks_local``) and is not there is "no such file", never a hub lookup."""
    from genrec_core.models import MODEL_ALIASES, looks_local

    def local(value: str) -> bool:
        if value.lower() in MODEL_ALIASES or value == "default":
            return False
        # A bare name (no folder part) is an alias or a server's model name unless it ends like a file.
        bare = "/" not in value and not value.startswith(("~", "."))
        return looks_local(value) and not (bare and "." not in value)

    def check(table: str, key: str, value: Any, *, files_only: bool = False) -> None:
        for item in value if isinstance(value, list) else [value]:
            text = str(item)
            if not text:
                continue
            path = Path(config.resolve(text)).expanduser()
            if path.exists():
                continue
            if files_only or local(text):
                raise PipelineError(f"{config.source}: [{table}].{key}: {text}: no such file or folder")

    data, rec, prof, core = config["data"], config["records"], config["profiles"], config["coreset"]
    if data["source"] == "files" and not data["dataset"] and not rec["genup"]:
        for key in ("inputs", "train", "val", "test"):
            check("data", key, data[key], files_only=True)
    for key in ("items", "interactions", "ratings", "tallrec", "genup"):
        check("records", key, rec[key])
    check("profiles", "genup", prof["genup"])
    if prof["backend"] == "local" and not prof["genup"]:
        check("profiles", "model", prof["model"])
    if core["enabled"]:
        for key in ("model", "encoder", "adapter"):
            check("coreset", key, core[key])
    for key in ("model", "val", "adapter"):
        value = config["train"]["options"].get(key)
        if isinstance(value, str):
            check("train", f"options.{key}", value)
    for key in ("model", "encoder"):
        value = config["evaluate"]["options"].get(key)
        if isinstance(value, str):
            check("evaluate", f"options.{key}", value)
