"""Next-POI evaluation of a model: ranked (log-likelihood of every candidate id) or generate (sample,
then parse the id), always beside the baselines; ``protocol="genup"`` evaluates as GenUP's
``eval_next_poi.py`` does (its prompt text, decoding settings, answer parsing and analyses)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from genrec_evaluator._analysis import add_groups, category_names
from genrec_evaluator._baselines import (
    BASELINES,
    BaselineConfig,
    _ranked_lists,
    _train_only,
    baseline_predictions,
    next_poi_metrics,
    next_poi_protocol,
)
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._formats import record_inputs
from genrec_evaluator._genup import genup_answer, genup_family, genup_generation_settings, genup_split_prompt
from genrec_evaluator._protocols import Query, Scorer
from genrec_evaluator._records import check_next_poi_records
from genrec_evaluator._result import PREDICTION_SCHEMA, EvaluationResult
from genrec_evaluator._stats import DEFAULT_N_BOOT, Uncertainty

log = logging.getLogger(__name__)

# "At 2012-12-21 08:29:31, user 349 will visit POI id 1234." -> prefix, separator, id, terminator
# (the terminator is whatever follows the id: "." or, in the llama2 format, ". </s>").
_COMPLETION = re.compile(r"^(?P<prefix>.*POI id)(?P<sep>\s*)(?P<id>\d+)(?P<end>(?:\D.*)?)$", re.DOTALL)
_GENERATED_ID = re.compile(r"^\s*(\d+)")
#: genrec's own decoding defaults for generate mode (GenUP's are ``genup_generation_settings``).
GENREC_GENERATION: dict[str, Any] = {
    "temperature": 0.6, "top_k": 50, "top_p": 0.9, "typical_p": 1.0, "repetition_penalty": 1.0, "max_new_tokens": 8,
}  # fmt: skip
_DECODING = tuple(GENREC_GENERATION)


@dataclass(frozen=True, kw_only=True)
class NextPoiConfig:
    """How a model is evaluated on next-POI records."""

    protocol: Literal["genrec", "genup"] = field(
        default="genrec",
        metadata={"help": "genrec: ours; genup: GenUP's eval_next_poi.py (its llama_prompt text, decoding "
                          "settings per model family and city, digits-only answers, its analyses)"},
    )
    mode: Literal["ranked", "generate"] | None = field(
        default=None,
        metadata={"help": "ranked: rank candidate ids by log-likelihood; generate: sample "
                          "(default: ranked under genrec, generate under genup)"},
    )
    city: str | None = field(
        default=None,
        metadata={"help": "genup: the city evaluated on (nyc, tky, ca, moscow, sao_paulo), which picks "
                          "GenUP's decoding settings for Llama-3.x"},
    )
    family: str | None = field(
        default=None,
        metadata={"help": "genup: model family for GenUP's decoding settings (llama2, llama3; default: "
                          "read from the model or adapter name, or the model folder)"},
    )
    candidates: Literal["all", "popularity", "user_frequent", "markov"] = field(
        default="all", metadata={"help": "ranked mode: every POI id, or the top-N of a cheap retriever"}
    )
    top_n: int = field(default=100, metadata={"help": "retriever candidates per record"})
    save_top: int = field(default=100, metadata={"help": "ids kept in each saved ranked list"})
    format: Literal["auto", "prompt", "messages"] = field(
        default="auto", metadata={"help": "how prompts are rendered (as genrec-trainer trained them)"}
    )
    batch_size: int = field(
        default=1024, metadata={"help": "ranked: candidate-trie tokens per forward pass (bounds memory)"}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "generate: sampling temperature, 0 = greedy (default: the protocol's; genrec 0.6)"}
    )
    top_k: int | None = field(default=None, metadata={"help": "generate: top-k (default: the protocol's; genrec 50)"})
    top_p: float | None = field(default=None, metadata={"help": "generate: top-p (default: the protocol's; genrec 0.9)"})
    typical_p: float | None = field(
        default=None, metadata={"help": "generate: typical-p (default: the protocol's; genrec 1.0)"}
    )
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "generate: repetition penalty (default: the protocol's; genrec 1.0)"}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "generate: new tokens (default: the protocol's; genrec 8, genup 5)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of sampling, of the random baseline and of the bootstrap"})
    n_boot: int = field(default=DEFAULT_N_BOOT, metadata={"help": "bootstrap resamples per 95 percent interval (and permutation draws)"})
    split_records: int | None = field(
        default=None, metadata={"help": "records in the whole split, when those given are a sample of it (reported)"}
    )
    baselines: tuple[str, ...] = field(default=BASELINES, metadata={"help": "baselines reported beside the model"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N records"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16, float16, or auto (bfloat16 where native)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.protocol not in ("genrec", "genup"):
            raise EvaluatorError(f"protocol must be genrec or genup, got {self.protocol!r}")
        if self.mode is not None and self.mode not in ("ranked", "generate"):
            raise EvaluatorError(f"mode must be ranked or generate, got {self.mode!r}")
        if self.protocol == "genup" and self.mode == "ranked":
            raise EvaluatorError("protocol genup generates (GenUP has no ranked mode); use mode generate or protocol genrec")
        if self.candidates not in ("all", "popularity", "user_frequent", "markov"):
            raise EvaluatorError(f"candidates must be all, popularity, user_frequent or markov, got {self.candidates!r}")
        Uncertainty(n_boot=self.n_boot)
        for name in ("top_n", "save_top", "batch_size", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EvaluatorError(f"config field {name} must be >= 1, got {getattr(self, name)}")


def split_completion(completion: str, *, record_id: str = "?") -> tuple[str, str, str]:
    """(prefix up to ``POI id``, separator before the id, terminator after it) of a completion."""
    match = _COMPLETION.match(completion or "")
    if match is None:
        raise EvaluatorError(
            f"record {record_id!r}: field completion does not end with 'POI id <number>.': {completion!r}"
        )
    return match["prefix"], match["sep"], match["end"]


def parse_poi_id(generated: str, num_pois: int) -> int | None:
    """The POI id at the start of a generation, or ``None`` when there is no valid one."""
    match = _GENERATED_ID.match(generated)
    if match is None:
        return None
    value = int(match[1])
    return value if 0 <= value < num_pois else None


def _queries(records: pl.DataFrame) -> list[tuple[Query, str, str]]:
    """(query, separator before the id, terminator after it) of each record, in any TRL format: the
    expected answer is the completion (a string, or the assistant message's content)."""
    out = []
    for rec in record_inputs(records, source="records"):
        prefix, sep, end = split_completion(rec.answer or "", record_id=rec.record_id)
        out.append((rec.query(prefix), sep, end))
    return out


def genup_texts(records: pl.DataFrame) -> list[tuple[str, str]]:
    """(prompt text, target digits) of each record as GenUP's ``eval_next_poi.py`` cuts its
    ``llama_prompt`` (``<s>[INST] <<SYS>> ... [/INST] At ..., user 1 will visit POI id `` | ``123``); a
    record without that column is cut the same way from its string prompt + completion."""
    has_llama = "llama_prompt" in records.columns
    cols = [c for c in ("llama_prompt", "prompt", "completion") if c in records.columns]
    out = []
    for rid, target, row in zip(
        records["record_id"].to_list(), records["target_poi_idx"].to_list(), records.select(cols).iter_rows(named=True)
    ):
        if has_llama and isinstance(row.get("llama_prompt"), str):
            text = row["llama_prompt"]
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            text = row["prompt"] + row["completion"]
        else:
            raise EvaluatorError(
                f"record {rid!r}: protocol genup reads GenUP's llama_prompt, or a string prompt and completion "
                f"(columns: {records.columns})"
            )
        cut = genup_split_prompt(text)
        if cut is None:
            raise EvaluatorError(f"record {rid!r}: no '<id>. </s>' answer to cut GenUP's prompt at: ...{text[-80:]!r}")
        if cut[1] != str(target):
            raise EvaluatorError(
                f"record {rid!r}: the answer in the text ({cut[1]}) is not field target_poi_idx ({target})"
            )
        out.append(cut)
    return out


def generation_settings(config: NextPoiConfig, model: Any = None, adapter: Any = None) -> dict[str, Any]:
    """The decoding settings a run uses: the protocol's (genrec's own, or GenUP's for the model family
    and city, see :func:`genup_generation_settings`), with every field the config sets on top."""
    if config.protocol == "genup":
        family = config.family or next(
            (f for f in (genup_family(m) for m in (model, adapter) if m is not None and not isinstance(m, Scorer)) if f),
            None,
        )
        base = genup_generation_settings(family, config.city)
    else:
        base = dict(GENREC_GENERATION)
    return {k: (getattr(config, k) if getattr(config, k) is not None else base[k]) for k in _DECODING}


def resolve_config(config: NextPoiConfig, model: Any = None, adapter: Any = None) -> NextPoiConfig:
    """``config`` with the protocol's defaults filled in (mode, decoding settings)."""
    from dataclasses import replace

    mode = config.mode or ("generate" if config.protocol == "genup" else "ranked")
    settings = generation_settings(config, model, adapter) if mode == "generate" else {
        k: (getattr(config, k) if getattr(config, k) is not None else GENREC_GENERATION[k]) for k in _DECODING
    }
    return replace(config, mode=mode, **settings)


def _history_train(records: pl.DataFrame, *, with_target: bool = False) -> pl.DataFrame:
    """Pseudo train check-ins from records' histories (when no train check-ins are given); the train
    split's records add their targets as each trajectory's last check-in."""
    pois = pl.col("history_poi_idx")
    if with_target:
        pois = pois.list.concat(pl.concat_list(pl.col("target_poi_idx").cast(pl.Int64)))
    return records.select(
        pl.col("user_id").cast(pl.String), pl.col("record_id").cast(pl.String).alias("trajectory_id"),
        pois.alias("poi_idx"),
    ).explode("poi_idx").drop_nulls("poi_idx")


def _model_predictions(
    records: pl.DataFrame, scorer: Scorer, config: NextPoiConfig, candidate_lists: list[list[int]] | None
) -> pl.DataFrame:
    from tqdm.auto import tqdm

    genup = config.protocol == "genup"
    texts = genup_texts(records) if genup else None
    queries = _queries(records) if not genup else None
    targets = records["target_poi_idx"].to_list()
    num_pois = records["num_pois"].to_list()
    ranked_out: list[list[int]] = []
    generated: list[str] = []
    valid: list[bool] = []
    ranks = np.full(records.height, np.inf)
    rows = tqdm(range(records.height), disable=not config.progress, desc=f"next-POI ({config.mode})")
    for i in rows:
        if texts is not None:
            text, answer = texts[i]
            generate = getattr(scorer, "generate_genup", None)
            said = generate(text, seed=config.seed + i) if generate is not None else scorer.generate(
                Query(prompt=text, completion_prefix=""), seed=config.seed + i
            )
            digits = genup_answer(said)
            # GenUP compares digit strings; a valid id is also one we can list (canonical, in range).
            ok = digits == str(int(digits)) and int(digits) < num_pois[i] if digits and len(digits) < 19 else False
            generated.append(said)
            valid.append(ok)
            ranked_out.append([int(digits)] if ok else [])
            if digits == answer:
                ranks[i] = 1
            continue
        query, sep, end = queries[i]  # type: ignore[index]
        if config.mode == "ranked":
            cands = np.asarray(candidate_lists[i] if candidate_lists is not None else range(num_pois[i]), dtype=np.int64)
            scores = scorer.score(query, [f"{sep}{c}{end}" for c in cands])
            order = cands[np.argsort(-scores, kind="stable")]
            hit = np.flatnonzero(order == targets[i])
            if hit.size:
                ranks[i] = hit[0] + 1
            ranked_out.append(order[: config.save_top].tolist())
            generated.append("")
            valid.append(True)
        else:
            text = scorer.generate(query, seed=config.seed + i)
            poi = parse_poi_id(text, num_pois[i])
            generated.append(text)
            valid.append(poi is not None)
            ranked_out.append([] if poi is None else [poi])
            if poi is not None and poi == targets[i]:
                ranks[i] = 1
    return pl.DataFrame(
        {
            "record_id": records["record_id"],
            "ranked": pl.Series(ranked_out, dtype=pl.List(pl.Int64)),
            "generated": generated,
            "valid": valid,
            "target_rank": ranks,
        },
        schema=PREDICTION_SCHEMA,  # type: ignore[arg-type]
    )


def evaluate_next_poi(
    records: pl.DataFrame,
    *,
    model: str | Path | Scorer,
    adapter: str | Path | None = None,
    mode: Literal["ranked", "generate"] | None = None,
    train: pl.DataFrame | None = None,
    config: NextPoiConfig | None = None,
    train_records: pl.DataFrame | None = None,
) -> EvaluationResult:
    """Evaluate a model on next-POI ``records`` and report it beside the baselines.

    ``model`` is an HF folder, a ``.gguf`` file, the alias ``smollm2``, or any :class:`Scorer`.
    ``train`` is the prepared check-ins table: it fits the baselines and the user-activity groups;
    without it the baselines are fitted on the train split's records (``train_records``: histories and
    targets) or else on the evaluated records' own histories (and said so in ``meta``).
    ``mode`` overrides ``config.mode``. Under ``config.protocol == "genup"`` the user-activity groups
    count each user's rows of ``train_records`` (GenUP's train split) when given, else their train
    trajectories in ``train``; the length groups are formed over the whole split before ``limit``.
    """
    config = config or NextPoiConfig()
    if mode is not None and mode != config.mode:
        from dataclasses import replace

        config = replace(config, mode=mode)
    config = resolve_config(config, model, adapter)
    start = time.perf_counter()
    train_rows = _train_only(train) if train is not None else None
    num_pois = int(train_rows["poi_idx"].max()) + 1 if train_rows is not None else None  # type: ignore[arg-type]
    checked = check_next_poi_records(records, num_pois=num_pois)
    split_records = config.split_records if config.split_records is not None else checked.height
    how = None
    genup = config.protocol == "genup"
    if genup:
        # GenUP's length thresholds are over its whole test split, whatever part of it is scored.
        checked = add_groups(checked, train_rows, protocol="genup", train_records=train_records)
    if config.limit is not None and config.limit < checked.height:
        how = f"the first {config.limit} (limit)"
        checked = checked.head(config.limit)
    if train_rows is not None:
        fit, fitted_on = train_rows, "train check-ins"
    elif train_records is not None:
        fit, fitted_on = _history_train(train_records, with_target=True), "train records (histories and targets)"
    else:
        fit, fitted_on = _history_train(checked), "record histories (no train data)"
    grouped = checked if genup else add_groups(checked, train_rows)
    if genup:  # fail on records GenUP's cut cannot read before loading a model
        genup_texts(grouped)
    else:
        _queries(grouped)  # fail on malformed completions before loading a model

    scorer: Any
    if isinstance(model, Scorer):
        scorer = model
        model_name = type(model).__name__
    else:
        from genrec_evaluator._models import load_model
        from genrec_evaluator._scoring import GenerationParams, HFScorer

        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        hf_model, tokenizer = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
        params = GenerationParams(**{k: getattr(config, k) for k in _DECODING})
        scorer = HFScorer(hf_model, tokenizer, fmt=config.format, max_nodes=config.batch_size, generation=params)
        model_name = str(model)

    candidate_lists = None
    if config.mode == "ranked" and config.candidates != "all":
        lists = _ranked_lists(grouped, fit, config.candidates, BaselineConfig(top_k=config.top_n))
        candidate_lists = [c or [] for c in lists["ranked"].to_list()]
    model_preds = _model_predictions(grouped, scorer, config, candidate_lists)
    base_config = BaselineConfig(systems=config.baselines, seed=config.seed, top_k=max(config.save_top, 10))
    predictions = {"model": model_preds, **baseline_predictions(grouped, fit, base_config)}
    names = category_names(train_rows)
    u = Uncertainty(n_boot=config.n_boot, seed=config.seed)
    metrics = next_poi_metrics(grouped, predictions, names, u)
    protocol = next_poi_protocol(grouped, metrics, u, split_records=split_records, how=how, model="model")
    protocol["name"] = config.protocol
    if config.mode == "generate":
        protocol["generation"] = {k: getattr(config, k) for k in _DECODING}
    seconds = time.perf_counter() - start
    log.info("next-POI %s evaluation of %d records in %.1fs", config.mode, grouped.height, seconds)
    meta: dict[str, Any] = {
        "model": model_name,
        "adapter": str(adapter) if adapter is not None else None,
        "mode": config.mode,
        "candidates": config.candidates if config.mode == "ranked" else None,
        "baselines_fitted_on": fitted_on,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "protocol": protocol,
    }
    return EvaluationResult(
        task="next_poi", metrics=metrics, predictions=predictions, records=grouped, meta=meta, seconds=seconds
    )
