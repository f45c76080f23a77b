"""Reading what the model is asked and what it should answer from records in any of TRL's dataset
formats: standard prompt/completion (strings), conversational prompt/completion (lists of {role,
content} messages) and conversational ``messages``. Only the shape is read here; rendering the chat
template is the scorer's (it holds the tokenizer)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._protocols import Query

_EXPECTED = (
    "expected prompt + completion (both strings, or both lists of {role, content} messages), "
    "a prompt alone, or messages"
)


@dataclass(frozen=True, slots=True)
class RecordInput:
    """One record's model input and expected answer (``None`` when the record carries none)."""

    record_id: str
    prompt: str
    messages: tuple[Mapping[str, str], ...] | None
    conversational: bool
    answer: str | None

    def query(self, completion_prefix: str = "") -> Query:
        return Query(prompt=self.prompt, completion_prefix=completion_prefix, messages=self.messages,
                     conversational=self.conversational)


def _messages(value: Any) -> tuple[dict[str, str], ...] | None:
    """``value`` as {role, content} messages, or ``None`` when it is not a list of them."""
    if not isinstance(value, list | tuple):
        return None
    out = []
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _text(messages: tuple[Mapping[str, str], ...]) -> str:
    return "\n".join(m["content"] for m in messages)


def prompt_text(value: Any) -> str:
    """A prompt cell as text: the string itself, or the contents of its messages (for analyses that
    search prompts, whatever the record format)."""
    if isinstance(value, str):
        return value
    messages = _messages(value)
    return _text(messages) if messages else ""


def record_inputs(records: pl.DataFrame, *, source: str = "records", need_answer: bool = True) -> list[RecordInput]:
    """Each record's input and answer; a record of no known shape is one error line naming it and the
    columns found.

    Standard records (string prompt) keep their ``messages`` column, when there is one, as the chat
    form of the same record (genrec's SFT records carry both; the scorer's format picks, as
    genrec-trainer does). Conversational prompts are always rendered with the chat template.
    """
    columns = records.columns
    wanted = [c for c in ("prompt", "completion", "messages") if c in columns]
    ids = (
        records["record_id"].cast(pl.String).to_list() if "record_id" in columns
        else [f"row {i}" for i in range(records.height)]
    )
    out = []
    # No input column at all still refuses each record by name (a bare select would yield no rows).
    rows = records.select(wanted).iter_rows(named=True) if wanted else ({} for _ in ids)
    for rid, row in zip(ids, rows):
        def refuse(problem: str, rid: str = rid) -> EvaluatorError:
            return EvaluatorError(f"{source}: record {rid!r}: {problem} (columns: {columns}); {_EXPECTED}")

        prompt, completion, chat = row.get("prompt"), row.get("completion"), row.get("messages")
        if isinstance(prompt, str):
            if completion is not None and not isinstance(completion, str):
                raise refuse("a string prompt with a completion that is not a string")
            if need_answer and completion is None:
                raise refuse("no completion to read the expected answer from")
            msgs = _messages(chat) if chat else None
            out.append(RecordInput(record_id=rid, prompt=prompt, messages=msgs or None, conversational=False,
                                   answer=completion))
        elif prompt is not None:
            msgs = _messages(prompt)
            if not msgs:
                raise refuse("prompt is neither a string nor a list of {role, content} messages")
            answer = None
            if completion is not None:
                reply = _messages(completion)
                said = [m["content"] for m in reply or () if m["role"] == "assistant"]
                if not said:
                    raise refuse("a conversational prompt whose completion is not an assistant message")
                answer = said[-1]
            elif need_answer:
                raise refuse("no completion to read the expected answer from")
            out.append(RecordInput(record_id=rid, prompt=_text(msgs), messages=msgs, conversational=True,
                                   answer=answer))
        elif chat is not None:
            msgs = _messages(chat)
            if not msgs:
                raise refuse("messages is not a list of {role, content} messages")
            answer = None
            if msgs[-1]["role"] == "assistant":
                answer, msgs = msgs[-1]["content"], msgs[:-1]
            elif need_answer:
                raise refuse("the messages do not end with the assistant's answer")
            if not msgs:
                raise refuse("no messages before the assistant's answer")
            out.append(RecordInput(record_id=rid, prompt=_text(msgs), messages=msgs, conversational=True,
                                   answer=answer))
        else:
            raise refuse("no prompt and no messages")
    return out
