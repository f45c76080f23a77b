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
from genrec_evaluator._result import EvaluationResult
from genrec_evaluator._stats import DEFAULT_N_BOOT, Uncertainty, compare_columns, mean_intervals, scope

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SeqRecConfig:
    """How generated titles are produced and grounded."""

    grounding: Literal["sentence", "hidden", "hashing"] = field(
        default="sentence",
        metadata={"help": "sentence: a sentence encoder; hidden: the model's last-token state; hashing: n-grams"},
    )
    encoder: str | None = field(default=None, metadata={"help": "sentence-transformers folder (default: MiniLM)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per title"})
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


def _columns(rank_all: np.ndarray, rank_sampled: np.ndarray | None) -> dict[str, np.ndarray]:
    cols = rank_columns(rank_all, ks=SEQREC_KS, ndcg_ks=SEQREC_KS, hit_name="hr")
    if rank_sampled is not None:
        cols.update({f"sampled_{k}": v for k, v in rank_columns(rank_sampled, ks=SEQREC_KS, ndcg_ks=SEQREC_KS, hit_name="hr").items()})
    return cols


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
    prompt). Metrics: ``ndcg@k`` / ``hr@k`` for k in 1, 5, 10, 20 among all items, and the same with a
    ``sampled_`` prefix among the target and its ``negative_item_ids``. A popularity baseline (item
    frequency in the records' histories) is reported beside the model.
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
    subsets = None
    if "negative_item_ids" in records.columns:
        subsets = [np.asarray([target_pos[i], *[index[int(n)] for n in (negs or []) if int(n) in index]])
                   for i, negs in enumerate(records["negative_item_ids"].to_list())]

    hf: tuple[Any, Any] | None = None
    if generations is None:
        if model is None:
            raise EvaluatorError("evaluate_seqrec needs generations or a model")
        scorer: Any
        if isinstance(model, Scorer):
            scorer = model
        else:
            from genrec_evaluator._models import load_model
            from genrec_evaluator._scoring import GenerationParams, HFScorer

            hf = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
            scorer = HFScorer(hf[0], hf[1], fmt=config.format,
                              generation=GenerationParams(temperature=0.0, max_new_tokens=config.max_new_tokens))
        from tqdm.auto import tqdm

        inputs = record_inputs(records, source="seqrec records", need_answer=False)
        generations = [
            scorer.generate(rec.query(), seed=config.seed + i)
            for i, rec in enumerate(tqdm(inputs, disable=not config.progress, desc="seqrec"))
        ]
    if len(generations) != records.height:
        raise EvaluatorError(f"{len(generations)} generations for {records.height} records")
    titles = [_strip_title(g) for g in generations]

    if embedder is None:
        if config.grounding == "hashing":
            embedder = HashingEmbedder()
        elif config.grounding == "hidden":
            if hf is None:
                raise EvaluatorError("grounding 'hidden' needs a model path (its hidden states)")
            embedder = HiddenStateEmbedder(*hf)
        else:
            embedder = SentenceEmbedder(config.encoder, device=config.device)
    item_vecs = embedder.embed(items["title"].cast(pl.String).fill_null("").to_list())
    gen_vecs = embedder.embed(titles)

    sq = (item_vecs**2).sum(1)
    ranked_lists = [item_ids[np.argsort(sq - 2.0 * item_vecs @ g, kind="stable")[: config.save_top]].tolist() for g in gen_vecs]
    rank_all = _ranks_by_distance(gen_vecs, item_vecs, target_pos)
    rank_s = _ranks_by_distance(gen_vecs, item_vecs, target_pos, subsets) if subsets is not None else None
    columns = {"model": _columns(rank_all, rank_s)}
    metrics: dict[str, dict[str, Any]] = {"model": seqrec_metrics(rank_all)}
    if rank_s is not None:
        metrics["model"].update({f"sampled_{k}": v for k, v in seqrec_metrics(rank_s).items() if k != "n"})
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
        metrics["popularity"] = seqrec_metrics(pop_all)
        pop_s = None
        if subsets is not None:
            pop_s = np.array([1 + np.sum(pos[s] < pos[s[0]]) for s in subsets], dtype=float)
            metrics["popularity"].update({f"sampled_{k}": v for k, v in seqrec_metrics(pop_s).items() if k != "n"})
        columns["popularity"] = _columns(pop_all, pop_s)

    u = Uncertainty(n_boot=config.n_boot, seed=config.seed)
    for name, cols in columns.items():
        metrics[name]["ci"] = mean_intervals(cols, u)[0]
    metrics["model"]["vs"] = {name: compare_columns(columns["model"], cols, u) for name, cols in columns.items() if name != "model"}
    protocol = {**scope(records.height, split_records, how), "uncertainty": u.describe(),
                "invalid_rate": metrics["model"]["invalid_rate"]}

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
              "adapter": str(adapter) if adapter else None, "grounding": config.grounding, "ks": list(SEQREC_KS),
              "protocol": protocol},
        seconds=seconds,
    )
