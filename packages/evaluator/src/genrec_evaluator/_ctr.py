"""CTR evaluation (TALLRec): P(Yes) from the softmax over the first tokens of "Yes" and "No" -> AUC."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._formats import record_inputs
from genrec_evaluator._io import read_records
from genrec_evaluator._metrics import auc
from genrec_evaluator._protocols import Scorer
from genrec_evaluator._published import alpaca_prompt, answer_token_id, tallrec_p_yes
from genrec_evaluator._result import EvaluationResult
from genrec_evaluator._stats import (
    DEFAULT_N_BOOT,
    Uncertainty,
    auc_interval,
    compare_auc,
    compare_columns,
    mean_intervals,
    scope,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CtrConfig:
    """How P(Yes) is read from the model."""

    protocol: Literal["genrec", "tallrec", "goracs"] = field(
        default="genrec",
        metadata={"help": "genrec (ours: softmax of the two logits); tallrec / goracs: TALLRec's evaluate.py "
                          "(its Alpaca prompt, softmax over the vocabulary, then over the two probabilities)"},
    )
    yes: str = field(default="Yes", metadata={"help": "the positive answer word"})
    no: str = field(default="No", metadata={"help": "the negative answer word"})
    yes_id: int | None = field(default=None, metadata={"help": "token id of the positive answer (tallrec: default the "
                                                              "first token of --yes after the prompt; TALLRec's LLaMA id is 8241)"})
    no_id: int | None = field(default=None, metadata={"help": "token id of the negative answer (TALLRec's LLaMA id is 3782)"})
    format: Literal["auto", "prompt", "messages"] = field(default="auto", metadata={"help": "prompt rendering"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N records"})
    seed: int = field(default=0, metadata={"help": "seed of the random baseline and of the bootstrap"})
    n_boot: int = field(default=DEFAULT_N_BOOT, metadata={"help": "bootstrap resamples per 95 percent interval"})
    split_records: int | None = field(
        default=None, metadata={"help": "records in the whole split, when those given are a sample of it (reported)"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16, float16, or auto (bfloat16 where native)"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        Uncertainty(n_boot=self.n_boot)
        if self.protocol not in ("genrec", "tallrec", "goracs"):
            raise EvaluatorError(f"protocol must be genrec, tallrec or goracs, got {self.protocol!r}")


def ctr_metrics(labels: np.ndarray, scores: dict[str, np.ndarray], u: Uncertainty, *, model: str = "model") -> dict[str, dict[str, Any]]:
    """``auc`` and ``accuracy`` (P > 0.5) of each system's scores with intervals; the model's dict gains
    ``vs``: DeLong for AUC, exact McNemar for accuracy, against every other system."""
    y = np.asarray(labels).astype(int)
    correct = {name: ((s > 0.5) == (y == 1)).astype(np.float64) for name, s in scores.items()}
    metrics: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        acc_ci, _ = mean_intervals({"accuracy": correct[name]}, u)
        metrics[name] = {
            "auc": auc(y, s), "accuracy": float(correct[name].mean()), "n": int(y.size),
            "ci": {"auc": auc_interval(y, s, u), **acc_ci},
        }
    if model in scores:
        metrics[model]["vs"] = {
            name: {"auc": compare_auc(y, scores[model], s, u),
                   **compare_columns({"accuracy": correct[model]}, {"accuracy": correct[name]}, u)}
            for name, s in scores.items() if name != model
        }
    return metrics


def read_ctr_records(path: str | Path, *, split: str | None = "test") -> pl.DataFrame:
    """CTR records (``prompt``, ``label``), or a TALLRec JSON list read with genrec-sftdata."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            head = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EvaluatorError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(head, list) and head and isinstance(head[0], dict) and "instruction" in head[0]:
            from genrec_sftdata import read_tallrec_json

            return read_tallrec_json(path)
    return read_records(path, split=split)


def _check(records: pl.DataFrame) -> pl.DataFrame:
    if records.height == 0:
        raise EvaluatorError("ctr records: empty test set (0 records to evaluate)")
    missing = [c for c in ("label",) if c not in records.columns]
    if "prompt" not in records.columns and "messages" not in records.columns:
        missing.insert(0, "prompt")
    if missing:
        raise EvaluatorError(f"ctr records: missing column(s) {missing}; have {records.columns}")
    if "record_id" not in records.columns:
        records = records.with_row_index("record_id").with_columns(pl.col("record_id").cast(pl.String))
    bad = records.with_row_index("_row").filter(~pl.col("label").is_in([0, 1]) | pl.col("label").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise EvaluatorError(f"ctr records: record {r['record_id']!r} (row {r['_row']}): field label must be 0 or 1, got {r['label']!r}")
    return records


def p_yes_from_logprobs(logp_yes: np.ndarray, logp_no: np.ndarray) -> np.ndarray:
    """Softmax over the two answers: ``P(Yes) = e^yes / (e^yes + e^no)``, computed stably."""
    return 1.0 / (1.0 + np.exp(np.asarray(logp_no) - np.asarray(logp_yes)))


def evaluate_ctr(
    records: pl.DataFrame,
    *,
    model: str | Path | Scorer,
    adapter: str | Path | None = None,
    config: CtrConfig | None = None,
) -> EvaluationResult:
    """AUC of P(Yes) against ``label``, beside a seeded random baseline and the constant prior.

    With an HF model (or an :class:`HFScorer`), P(Yes) is the softmax over the next-token logits of the
    first tokens of ``config.yes`` and ``config.no`` after the prompt (token ids looked up from the
    tokenizer). Any other :class:`Scorer` is asked for the log-likelihoods of the two words. Under
    ``protocol="tallrec"`` (or ``"goracs"``, which evaluates with TALLRec's script) P(Yes) is TALLRec's:
    see :func:`genrec_evaluator._published.tallrec_p_yes`.
    """
    config = config or CtrConfig()
    start = time.perf_counter()
    records = _check(records)
    split_records = config.split_records if config.split_records is not None else records.height
    how = None
    if config.limit is not None and config.limit < records.height:
        how = f"the first {config.limit} (limit)"
        records = records.head(config.limit)
    if config.protocol != "genrec":
        p_yes, token_ids = _tallrec_scores(records, model, adapter, config)
        return _finish(records, p_yes, model, adapter, config, split_records, how, start, token_ids)
    scorer: Any
    if isinstance(model, Scorer):
        scorer = model
    else:
        from genrec_evaluator._models import load_model
        from genrec_evaluator._scoring import HFScorer

        hf_model, tokenizer = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
        scorer = HFScorer(hf_model, tokenizer, fmt=config.format)
    from tqdm.auto import tqdm

    inputs = record_inputs(records, source="ctr records", need_answer=False)
    token_ids = scorer.first_token_ids([config.yes, config.no]) if hasattr(scorer, "first_token_ids") else None
    p_yes = np.empty(records.height)
    for i, rec in enumerate(tqdm(inputs, disable=not config.progress, desc="ctr")):
        query = rec.query()
        if token_ids is not None:
            lp = scorer.next_token_logprobs(query, token_ids)
        else:
            lp = scorer.score(query, [config.yes, config.no])
        p_yes[i] = p_yes_from_logprobs(lp[0], lp[1])
    return _finish(records, p_yes, model, adapter, config, split_records, how, start, token_ids)


def tallrec_prompts(records: pl.DataFrame) -> list[str]:
    """TALLRec's prompt from ``instruction`` and ``input`` when the records carry them, else their ``prompt``."""
    if "instruction" in records.columns and "input" in records.columns:
        return [alpaca_prompt(ins or "", inp, style="tallrec") for ins, inp in records.select("instruction", "input").iter_rows()]
    if "prompt" in records.columns:
        log.info("ctr records carry no instruction/input columns: their prompt is used as it is")
        return [str(p) for p in records["prompt"].to_list()]
    raise EvaluatorError(f"ctr records: need instruction and input (or prompt) columns; have {records.columns}")


def p_yes_from_probs(p_yes: np.ndarray, p_no: np.ndarray) -> np.ndarray:
    """TALLRec's second softmax, over the two vocabulary probabilities: ``1 / (1 + e^(p_no - p_yes))``."""
    return 1.0 / (1.0 + np.exp(np.asarray(p_no, dtype=np.float64) - np.asarray(p_yes, dtype=np.float64)))


def _tallrec_scores(records: pl.DataFrame, model: Any, adapter: Any, config: CtrConfig) -> tuple[np.ndarray, list[int] | None]:
    from tqdm.auto import tqdm

    prompts = tallrec_prompts(records)
    scorer = model if isinstance(model, Scorer) else None
    # A scorer with a tokenizer (HFScorer) carries its transformers model: it is scored as a loaded one.
    hf = (model.model, model.tokenizer) if scorer is not None and hasattr(model, "tokenizer") else None
    if scorer is not None and hf is None:
        # A plugged scorer gives log-likelihoods: TALLRec's rule is applied to their probabilities.
        from genrec_evaluator._protocols import Query

        lps = np.array([scorer.score(Query(prompt=p, completion_prefix=""), [config.yes, config.no]) for p in prompts])
        return p_yes_from_probs(np.exp(lps[:, 0]), np.exp(lps[:, 1])), None
    if hf is None:
        from genrec_evaluator._models import load_model

        hf = load_model(model, adapter=adapter, device=config.device, dtype=config.dtype)
    import torch

    hf_model, tokenizer = hf
    yes_id = config.yes_id if config.yes_id is not None else answer_token_id(tokenizer, prompts[0], config.yes)
    no_id = config.no_id if config.no_id is not None else answer_token_id(tokenizer, prompts[0], config.no)
    if yes_id == no_id:
        raise EvaluatorError(f"{config.yes!r} and {config.no!r} start with the same token {yes_id}; cannot tell them apart")
    device = next(hf_model.parameters()).device
    out = np.empty(len(prompts))
    with torch.inference_mode():
        # One prompt at a time with BOS and no padding, as TALLRec's evaluate(); the first generated
        # step's scores are the last position's logits (greedy decoding applies no processor to them).
        for i, prompt in enumerate(tqdm(prompts, disable=not config.progress, desc="tallrec")):
            ids = torch.tensor([list(tokenizer(prompt, add_special_tokens=True)["input_ids"])], device=device)
            out[i] = tallrec_p_yes(hf_model(input_ids=ids).logits[0, -1], yes_id, no_id)
    return out, [yes_id, no_id]


def _finish(records: pl.DataFrame, p_yes: np.ndarray, model: Any, adapter: Any, config: CtrConfig,
            split_records: int, how: str | None, start: float, token_ids: Sequence[int] | None) -> EvaluationResult:
    labels = records["label"].to_numpy().astype(int)
    rng = np.random.default_rng(config.seed)
    # The majority baseline scores every record with the positive rate: AUC 0.5, accuracy of the
    # majority class (ties at exactly 0.5 read as "No", which is then also a majority class).
    prior = float(labels.mean())
    scores = {"model": p_yes, "random": rng.random(records.height), "majority": np.full(records.height, prior)}
    u = Uncertainty(n_boot=config.n_boot, seed=config.seed)
    metrics = ctr_metrics(labels, scores, u)
    metrics["model"]["mean_p_yes"] = float(p_yes.mean())
    protocol = {**scope(records.height, split_records, how), "uncertainty": u.describe(), "name": config.protocol}
    if config.protocol != "genrec":
        protocol["description"] = (
            "TALLRec's evaluate.py: its Alpaca prompt (with the stray noqa text it was trained on), BOS, one prompt "
            "at a time; softmax over the vocabulary at the first answer position, then a softmax over the "
            "probabilities of the two answer tokens; AUC as sklearn's roc_auc_score."
        )
    predictions = {
        "model": pl.DataFrame({"record_id": records["record_id"].cast(pl.String), "p_yes": p_yes, "label": labels})
    }
    return EvaluationResult(
        task="ctr", metrics=metrics, predictions=predictions, records=records,
        meta={"model": str(model) if not isinstance(model, Scorer) else type(model).__name__,
              "adapter": str(adapter) if adapter else None, "yes": config.yes, "no": config.no,
              "token_ids": list(token_ids) if token_ids is not None else None,
              "protocol": protocol},
        seconds=time.perf_counter() - start,
    )
