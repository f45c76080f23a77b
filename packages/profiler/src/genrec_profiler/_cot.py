"""GenUP's chain-of-thought reasoning: why a user visited the POI of a training record, written by an LLM.

GenUP (``src/gpt.py`` ``GPT.generate_poi_intention``, run over the train split of its pushed SFT set by
``src/generate_poi_reasoning.py``) asks gpt-4o-mini, in JSON mode and one user message, for six
analyses of a record whose answer it shows (:data:`GENUP_COT_PROMPT`). The answer's JSON object is
saved per train row (``poi_reasoning_<index>.json``; an answer that is not JSON is skipped) and
enters the SFT text as ``create_sft_dataset.py --use_cot`` writes it
(:func:`genrec_sftdata.build_genup_cot_records`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import polars as pl

from genrec_core import atomic_write_parquet
from genrec_profiler._client import LLMClient, ProfileRequest
from genrec_profiler._digest import UserDigest
from genrec_profiler._errors import ProfilerError

logger = logging.getLogger(__name__)

#: The keys GenUP's reasoning prompt asks for, in its order.
GENUP_COT_KEYS = (
    "profile_analysis",
    "trajectory_analysis",
    "time_of_visit_analysis",
    "routines_and_preferences_analysis",
    "potential_categories_of_interest_analysis",
    "verdict",
)

#: gpt.py ``generate_poi_intention``'s prompt (a ``str.format`` template, ``{{``/``}}`` as there).
GENUP_COT_PROMPT = (
    "{system_prompt}\n\n{trajectory}\n\n{targets}\n\n"
    "With a step-by-step reasoning, think and suggest why they might have intended on visiting that POI. "
    "Analyze the user's profiles, previous visits in trajectory, time of visit of the POI, and their "
    "routines. DO NOT mention or analyze the selected POI id at all. You may suggest POI categories that "
    "they might have wanted to visit at that hour and based on their profile and trajectory. Return your "
    'response in JSON format: {{"profile_analysis": ..., "trajectory_analysis": ..., '
    '"time_of_visit_analysis": ..., "routines_and_preferences_analysis": ..., '
    '"potential_categories_of_interest_analysis": ..., "verdict": ...}}. All values should be in string format.'
)

COT_SCHEMA: dict[str, Any] = {
    "record_id": pl.String,
    "index": pl.Int64,
    "user_id": pl.String,
    "reasoning_json": pl.String,
    "reasoning": pl.String,
    "status": pl.String,
    "error": pl.String,
    "attempts": pl.Int64,
    "tokens_in": pl.Int64,
    "tokens_out": pl.Int64,
}


def genup_cot_prompt(system_prompt: str, inputs: str, targets: str) -> str:
    """GenUP's reasoning request for one record (its ``system_prompt``, ``inputs`` and ``targets``)."""
    return GENUP_COT_PROMPT.format(system_prompt=system_prompt, trajectory=inputs, targets=targets)


def genup_cot_messages(system_prompt: str, inputs: str, targets: str) -> tuple[dict[str, str], ...]:
    """The request as GenUP sends it: one user message."""
    return ({"role": "user", "content": genup_cot_prompt(system_prompt, inputs, targets)},)


def _digest(user_id: str) -> UserDigest:
    # The request records carry a digest for backends that work from statistics; a reasoning request has none.
    return UserDigest(user_id=user_id, n_checkins=0, n_pois=0, n_categories=0, first="", last="",
                      top_categories=(), top_hours=(), top_weekdays=(), home=None, revisit_rate=0.0,
                      night_share=0.0, weekend_share=0.0)


def _answer_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def write_cot_reasoning(
    records: pl.DataFrame | Mapping[str, pl.DataFrame],
    client: LLMClient,
    *,
    batch_size: int = 8,
    max_retries: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """GenUP's chain-of-thought reasoning for each record, asked of ``client`` (any profiler backend).

    ``records``: GenUP-layout SFT records (``system_prompt``, ``inputs``, ``targets``; from
    ``genrec_sftdata.build_genup_records`` / ``read_genup_records``) or their dict of splits, of which
    the ``train`` split is used (GenUP writes reasoning for its train split only). One request per
    record: :func:`genup_cot_prompt` as one user message, JSON mode asked (backends that constrain
    decoding hold it to the six string keys, ``profile_json_schema("genup_cot")``).

    Returns (and writes to ``out`` as parquet when given) one row per record, in order: ``record_id``
    (null when the records have none), ``index`` (the row's position, GenUP's ``poi_reasoning_<index>``),
    ``user_id``, ``reasoning_json`` (the answer's JSON object as the model wrote it), ``reasoning``
    (the text that enters the SFT record, ``genrec_sftdata.genup_cot_reasoning_text``), ``status``
    (``ok`` / ``failed``), ``error``, ``attempts``, ``tokens_in``, ``tokens_out``. An answer that is not a
    JSON object is ``failed`` (GenUP skips it) after ``max_retries`` more tries (GenUP: none).
    """
    from genrec_sftdata import genup_cot_reasoning_text

    if isinstance(records, Mapping):
        if "train" not in records:
            raise ProfilerError("write_cot_reasoning: no 'train' split in the records")
        records = records["train"]
    for col in ("system_prompt", "inputs", "targets"):
        if col not in records.columns:
            raise ProfilerError(f"write_cot_reasoning: records have no column {col!r} (GenUP's layout)")
    if batch_size < 1 or max_retries < 0:
        raise ProfilerError("write_cot_reasoning: batch_size must be >= 1 and max_retries >= 0")
    ids = records["record_id"].cast(pl.String).to_list() if "record_id" in records.columns else [None] * records.height
    if "user_id" in records.columns:
        users = [str(u) for u in records["user_id"].to_list()]
    else:
        users = [str(u) for u in records["inputs"].str.extract(r"trajectory of user (\S+?):", 1).to_list()]
    rows: list[dict[str, Any]] = []
    triples = list(zip(records["system_prompt"], records["inputs"], records["targets"]))
    for lo in range(0, len(triples), batch_size):
        chunk = range(lo, min(lo + batch_size, len(triples)))
        state: dict[int, dict[str, Any]] = {
            i: {"record_id": ids[i], "index": i, "user_id": users[i], "reasoning_json": None, "reasoning": None,
                "status": "failed", "error": None, "attempts": 0, "tokens_in": 0, "tokens_out": 0}
            for i in chunk
        }
        todo = list(chunk)
        for attempt in range(max_retries + 1):
            if not todo:
                break
            requests = [ProfileRequest(user_id=users[i], messages=genup_cot_messages(*triples[i]),
                                       digest=_digest(users[i]), attempt=attempt, json_mode=True,
                                       protocol="genup_cot") for i in todo]
            answers = client.complete(requests)
            if len(answers) != len(requests):
                raise ProfilerError(f"{client.backend}: {len(answers)} completions for {len(requests)} requests")
            left = []
            for i, answer in zip(todo, answers):
                row = state[i]
                row["attempts"] += 1
                row["tokens_in"] += answer.tokens_in
                row["tokens_out"] += answer.tokens_out
                obj = None if answer.error else _answer_object(answer.text)
                if obj is None:
                    row["error"] = answer.error or f"not a JSON object: {answer.text[:120]!r}"
                    left.append(i)
                    continue
                row.update(reasoning_json=answer.text, reasoning=genup_cot_reasoning_text(obj), status="ok", error=None)
            todo = left
        rows.extend(state[i] for i in chunk)
    table = pl.DataFrame(rows, schema=COT_SCHEMA)
    failed = table.filter(pl.col("status") == "failed").height
    if failed:
        logger.warning("write_cot_reasoning: %d of %d records got no reasoning", failed, table.height)
    if out is not None:
        atomic_write_parquet(out, table)
        logger.info("wrote %d records' reasoning to %s", table.height, out)
    return table

