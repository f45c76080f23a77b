"""SeqRec evaluation (BIGRec / GORACS): generate a title, ground it to catalogue items by embedding
distance, rank the target among all items and among the target plus its sampled negatives."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from genrec_evaluator._embed import Embedder, HashingEmbedder, HiddenStateEmbedder, SentenceEmbedder
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._formats import record_inputs
from genrec_evaluator._io import _read_table_file
from genrec_evaluator._metrics import SEQREC_KS, rank_columns, seqrec_metrics
from genrec_evaluator._protocols import Scorer
from genrec_evaluator._published import (
    BIGREC_GENERATION,
    BIGREC_KS,
    GORACS_KS,
    BigrecEmbedder,
    alpaca_prompt,
    bigrec_full_rank,
    bigrec_generate,
    bigrec_item_text,
    bigrec_name_key,
    bigrec_title,
    goracs_sampled_rank,
)
from genrec_evaluator._result import EvaluationResult
from genrec_evaluator._stats import DEFAULT_N_BOOT, Uncertainty, compare_columns, mean_intervals, scope

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SeqRecConfig:
    """How generated titles are produced and grounded."""

    protocol: Literal["genrec", "bigrec", "goracs"] = field(
        default="genrec",
        metadata={"help": "genrec (ours); bigrec: BIGRec's inference + evaluate.py (full ranking, K 1/3/5/10/20/50); "
                          "goracs: the same decoding and grounding, ranked as GORACS's evaluate.py (K 5/10, "
                          "target + negatives)"},
    )
    grounding: Literal["sentence", "hidden", "hashing", "bigrec"] | None = field(
        default=None,
        metadata={"help": "sentence: a sentence encoder; hidden: the evaluated model's last-token state; hashing: "
                          "n-grams; bigrec: BIGRec's last-token state of --grounding-model (default: sentence, or "
                          "bigrec under the bigrec/goracs protocols)"},
    )
    grounding_model: str | None = field(
        default=None, metadata={"help": "model whose hidden states ground titles under grounding=bigrec (default: --model without the adapter)"}
    )
    encoder: str | None = field(default=None, metadata={"help": "sentence-transformers folder (default: MiniLM)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "tokens generated per title (default: 32; 128 under bigrec/goracs)"})
    batch_size: int | None = field(default=None, metadata={"help": "prompts per generation batch under bigrec/goracs (default: 8, as BIGRec)"})
    format: Literal["auto", "prompt", "messages"] = field(default="auto", metadata={"help": "prompt rendering"})
    save_top: int = field(default=20, metadata={"help": "items kept in each saved ranked list"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N records"})
    seed: int = field(default=0, metadata={"help": "generation seed and bootstrap seed"})
    n_boot: int = field(default=DEFAULT_N_BOOT, metadata={"help": "bootstrap resamples per 95 percent interval (and permutation draws)"})
    split_records: int | None = field(
        default=None, metadata={"help": "records in the whole split, when those given are a sample of it (reported)"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16, float16, or auto (bfloat16 where native)"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        Uncertainty(n_boot=self.n_boot)
        if self.protocol not in ("genrec", "bigrec", "goracs"):
            raise EvaluatorError(f"protocol must be genrec, bigrec or goracs, got {self.protocol!r}")

    @property
    def published(self) -> bool:
        return self.protocol in ("bigrec", "goracs")

    @property
    def ks(self) -> tuple[int, ...]:
        return {"genrec": SEQREC_KS, "bigrec": BIGREC_KS, "goracs": GORACS_KS}[self.protocol]

    def resolved_grounding(self) -> str:
        return self.grounding or ("bigrec" if self.published else "sentence")


def _columns(rank_all: np.ndarray, rank_sampled: np.ndarray | None, ks: Sequence[int] = SEQREC_KS) -> dict[str, np.ndarray]:
    cols = rank_columns(rank_all, ks=ks, ndcg_ks=ks, hit_name="hr")
    if rank_sampled is not None:
        cols.update({f"sampled_{k}": v for k, v in rank_columns(rank_sampled, ks=ks, ndcg_ks=ks, hit_name="hr").items()})
    return cols


def published_ranks(gen: np.ndarray, item_vecs: np.ndarray, titles: Sequence[str], targets: np.ndarray,
                    negatives: Sequence[Sequence[int]] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """1-based (full, sampled) ranks as BIGRec's and GORACS's evaluate.py count them.

    Full (BIGRec): the best argsort position of any item carrying the target's title. Sampled
    (GORACS): every title resolved to the last item holding it (their ``item_dict`` keeps one id per
    name), then the target's position among the target and its negatives, duplicates counted. Both
    order equal distances by item index (a stable argsort; theirs on the GPU is not promised stable).
    """
    keys = [bigrec_name_key(t) for t in titles]
    groups: dict[str, list[int]] = {}
    for j, k in enumerate(keys):
        groups.setdefault(k, []).append(j)
    last = {k: v[-1] for k, v in groups.items()}
    sq = (item_vecs**2).sum(1)
    full = np.empty(len(targets))
    sampled = np.empty(len(targets)) if negatives is not None else None
    for i, t in enumerate(targets):
        dist = sq - 2.0 * item_vecs @ gen[i]
        same = np.zeros(len(keys), dtype=bool)
        same[groups[keys[t]]] = True
        full[i] = bigrec_full_rank(dist, same) + 1
        if sampled is not None and negatives is not None:
            target = last[keys[t]]
            cands = [target, *[last[keys[n]] for n in negatives[i]]]
            sampled[i] = goracs_sampled_rank(dist, target, cands) + 1
    return full, sampled


def read_items(path: str | Path) -> pl.DataFrame:
    """Catalogue table with ``item_id`` and ``title``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items table not found: {path}")
    items = _read_table_file(path)
    missing = [c for c in ("item_id", "title") if c not in items.columns]
    if missing:
        raise EvaluatorError(f"{path}: missing column(s) {missing}; have {items.columns}")
    return items


def _strip_title(text: str) -> str:
    text = text.strip().split("\n")[0].strip()
    if text.startswith('"') and '"' in text[1:]:
        text = text[1 : text.index('"', 1)]
    return text.strip().strip('"').strip()


def _ranks_by_distance(gen: np.ndarray, item_vecs: np.ndarray, targets: np.ndarray,
                       subsets: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """1-based rank of each target by L2 distance (ties count against the target: pessimistic)."""
    ranks = np.empty(len(targets))
    sq_items = (item_vecs**2).sum(1)
    for i, target in enumerate(targets):
        dist = sq_items - 2.0 * item_vecs @ gen[i]
        pool = dist if subsets is None else dist[subsets[i]]
        ranks[i] = int(np.sum(pool <= dist[target]))  # the pool holds the target itself
    return ranks


PROTOCOL_TEXT = {
    "bigrec": ("BIGRec's inference.py (Alpaca prompt, beam search with 4 beams, 128 new tokens) and evaluate.py "
               "(the base LLM's last-token state, L2 distance, the best position among items of the target's title; "
               "K 1/3/5/10/20/50 over all items; `sampled_` keys ranked as GORACS does)."),
    "goracs": ("GORACS's BIGRec evaluation: BIGRec's decoding and grounding, the target ranked among itself and its "
               "negatives by argsort position (K 5/10, the `sampled_` keys are GORACS's numbers; the unprefixed "
               "keys rank all items as BIGRec does)."),
}


def published_prompts(records: pl.DataFrame) -> list[str]:
    """BIGRec's prompt from ``instruction`` and ``input`` when the records carry them, else their ``prompt``."""
    if "instruction" in records.columns and "input" in records.columns:
        return [alpaca_prompt(ins or "", inp, style="bigrec") for ins, inp in records.select("instruction", "input").iter_rows()]
    if "prompt" in records.columns:
        log.info("seqrec records carry no instruction/input columns: their prompt is used as it is")
        return [str(p) for p in records["prompt"].to_list()]
    raise EvaluatorError(f"seqrec records: need instruction and input (or prompt) columns; have {records.columns}")


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - grounding with a model needs torch anyway
        pass


def evaluate_seqrec(
    records: pl.DataFrame,
    items: pl.DataFrame,
    *,
    model: str | Path | Scorer | None = None,
    adapter: str | Path | None = None,
    generations: Sequence[str] | None = None,
    embedder: Embedder | None = None,
    config: SeqRecConfig | None = None,
) -> EvaluationResult:
    """Rank each record's target item by the distance of the generated title to every catalogue title.

    Titles come from ``generations`` when given, else from ``model`` (greedy generation after the
    prompt; under ``protocol="bigrec"``/``"goracs"`` BIGRec's beam search after its Alpaca prompt).
    Metrics: ``ndcg@k`` / ``hr@k`` for k in the protocol's list (genrec 1, 5, 10, 20; bigrec 1, 3, 5,
    10, 20, 50; goracs 5, 10) among all items, and the same with a ``sampled_`` prefix among the
    target and its ``negative_item_ids``. A popularity baseline (item frequency in the records'
    histories) is reported beside the model.
    """
    config = config or SeqRecConfig()
    start = time.perf_counter()
    if records.height == 0:
        raise EvaluatorError("seqrec records: empty test set (0 records to evaluate)")
    missing = [c for c in ("record_id", "target_item_id") if c not in records.columns]
    if missing:
        raise EvaluatorError(f"seqrec records: missing column(s) {missing}; have {records.columns}")
    split_records = config.split_records if config.split_records is not None else records.height
    how = None
    if config.limit is not None and config.limit < records.height:
        how = f"the first {config.limit} (limit)"
        records = records.head(config.limit)
    nulls = records.with_row_index("_row").filter(pl.col("target_item_id").is_null())
    if nulls.height:
        r = nulls.row(0, named=True)
        raise EvaluatorError(f"seqrec records: record {r['record_id']!r} (row {r['_row']}) has no target: field target_item_id is null")
    item_ids = items["item_id"].to_numpy()
    index = {int(v): i for i, v in enumerate(item_ids)}
    targets = []
    for row, (rid, t) in enumerate(records.select("record_id", "target_item_id").iter_rows()):
        if int(t) not in index:
            raise EvaluatorError(f"seqrec records: record {rid!r} (row {row}): unknown item id target_item_id={t}")
        targets.append(index[int(t)])
    target_pos = np.asarray(targets)
    ks = config.ks
    neg_lists: list[list[int]] | None = None
    subsets = None
    if "negative_item_ids" in records.columns:
        neg_lists = [[index[int(n)] for n in (negs or []) if int(n) in index] for negs in records["negative_item_ids"].to_list()]
        subsets = [np.asarray([target_pos[i], *negs]) for i, negs in enumerate(neg_lists)]
    grounding = config.resolved_grounding()

    hf: tuple[Any, Any] | None = None
    decoded_here = generations is None
    if generations is None:
        if model is None:
            raise EvaluatorError("evaluate_seqrec needs generations or a model")
        scorer: Any
        if config.published and not isinstance(model, Scorer):
            from genrec_evaluator._models import load_model

            hf = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
            generations = bigrec_generate(
                hf[0], hf[1], published_prompts(records),
                num_beams=BIGREC_GENERATION["num_beams"],
                max_new_tokens=config.max_new_tokens or BIGREC_GENERATION["max_new_tokens"],
                batch_size=config.batch_size or BIGREC_GENERATION["batch_size"], progress=config.progress,
            )
        else:
            if isinstance(model, Scorer):
                scorer = model
            else:
                from genrec_evaluator._models import load_model
                from genrec_evaluator._scoring import GenerationParams, HFScorer

                hf = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
                scorer = HFScorer(hf[0], hf[1], fmt=config.format,
                                  generation=GenerationParams(temperature=0.0, max_new_tokens=config.max_new_tokens or 32))
            from tqdm.auto import tqdm

            inputs = record_inputs(records, source="seqrec records", need_answer=False)
            generations = [
                scorer.generate(rec.query(), seed=config.seed + i)
                for i, rec in enumerate(tqdm(inputs, disable=not config.progress, desc="seqrec"))
            ]
    if len(generations) != records.height:
        raise EvaluatorError(f"{len(generations)} generations for {records.height} records")
    titles = [bigrec_title(g) for g in generations] if config.published else [_strip_title(g) for g in generations]

    if embedder is None:
        if grounding == "hashing":
            embedder = HashingEmbedder()
        elif grounding == "hidden":
            if hf is None:
                raise EvaluatorError("grounding 'hidden' needs a model path (its hidden states)")
            embedder = HiddenStateEmbedder(*hf)
        elif grounding == "bigrec":
            base = config.grounding_model or (None if isinstance(model, Scorer) else model)
            if base is None:
                raise EvaluatorError("grounding 'bigrec' needs grounding_model (or a model path): the base LLM embeds the titles")
            from genrec_evaluator._models import load_model

            # BIGRec grounds with the base weights, not the fine-tuned ones; the generator is released first
            # so that two 7B copies never sit on the device together.
            hf = None
            _release_memory()
            embedder = BigrecEmbedder(*load_model(base, device=config.device, dtype=config.dtype))
        elif grounding == "sentence":
            embedder = SentenceEmbedder(config.encoder, device=config.device)
        else:
            raise EvaluatorError(f"grounding must be sentence, hidden, hashing or bigrec, got {grounding!r}")
    item_titles = items["title"].cast(pl.String).fill_null("").to_list()
    item_vecs = embedder.embed([bigrec_item_text(t) for t in item_titles] if config.published else item_titles)
    gen_vecs = embedder.embed(titles)

    sq = (item_vecs**2).sum(1)
    ranked_lists = [item_ids[np.argsort(sq - 2.0 * item_vecs @ g, kind="stable")[: config.save_top]].tolist() for g in gen_vecs]
    if config.published:
        rank_all, rank_s = published_ranks(gen_vecs, item_vecs, item_titles, target_pos, neg_lists)
    else:
        rank_all = _ranks_by_distance(gen_vecs, item_vecs, target_pos)
        rank_s = _ranks_by_distance(gen_vecs, item_vecs, target_pos, subsets) if subsets is not None else None
    columns = {"model": _columns(rank_all, rank_s, ks)}
    metrics: dict[str, dict[str, Any]] = {"model": seqrec_metrics(rank_all, ks=ks)}
    if rank_s is not None:
        metrics["model"].update({f"sampled_{k}": v for k, v in seqrec_metrics(rank_s, ks=ks).items() if k != "n"})
    exact = np.asarray([t == s for t, s in zip(titles, items["title"].to_numpy()[target_pos])], dtype=np.float64)
    metrics["model"]["exact_title"] = float(exact.mean())
    columns["model"]["exact_title"] = exact
    invalid = sum(1 for t in titles if not t)
    metrics["model"]["invalid"] = invalid
    metrics["model"]["invalid_rate"] = invalid / len(titles)

    # Popularity baseline: items ranked by how often they appear in the records' histories.
    if "history_item_ids" in records.columns:
        counts = np.zeros(len(item_ids))
        for hist in records["history_item_ids"].to_list():
            for h in hist or []:
                if int(h) in index:
                    counts[index[int(h)]] += 1
        order = np.lexsort((np.arange(len(item_ids)), -counts))
        pos = np.empty(len(item_ids), dtype=np.int64)
        pos[order] = np.arange(len(item_ids))
        pop_all = pos[target_pos] + 1.0
        metrics["popularity"] = seqrec_metrics(pop_all, ks=ks)
        pop_s = None
        if subsets is not None:
            pop_s = np.array([1 + np.sum(pos[s] < pos[s[0]]) for s in subsets], dtype=float)
            metrics["popularity"].update({f"sampled_{k}": v for k, v in seqrec_metrics(pop_s, ks=ks).items() if k != "n"})
        columns["popularity"] = _columns(pop_all, pop_s, ks)

    u = Uncertainty(n_boot=config.n_boot, seed=config.seed)
    for name, cols in columns.items():
        metrics[name]["ci"] = mean_intervals(cols, u)[0]
    metrics["model"]["vs"] = {name: compare_columns(columns["model"], cols, u) for name, cols in columns.items() if name != "model"}
    protocol = {**scope(records.height, split_records, how), "uncertainty": u.describe(),
                "invalid_rate": metrics["model"]["invalid_rate"], "name": config.protocol, "grounding": grounding}
    if config.published:
        protocol["description"] = PROTOCOL_TEXT[config.protocol]
    if config.published and decoded_here and not isinstance(model, Scorer):
        protocol["generation"] = {**BIGREC_GENERATION, "max_new_tokens": config.max_new_tokens or BIGREC_GENERATION["max_new_tokens"],
                                  "batch_size": config.batch_size or BIGREC_GENERATION["batch_size"]}

    predictions = {
        "model": pl.DataFrame(
            {"record_id": records["record_id"].cast(pl.String), "ranked": pl.Series(ranked_lists, dtype=pl.List(pl.Int64)),
             "generated": list(generations), "valid": [bool(t) for t in titles], "target_rank": rank_all}
        )
    }
    seconds = time.perf_counter() - start
    return EvaluationResult(
        task="seqrec", metrics=metrics, predictions=predictions, records=records,
        meta={"model": str(model) if model is not None and not isinstance(model, Scorer) else type(model).__name__,
              "adapter": str(adapter) if adapter else None, "grounding": grounding, "ks": list(ks),
              "protocol": protocol},
        seconds=seconds,
    )
