"""TRL dataset formats, standard and conversational: what is trained on, token by token."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_core.models import build_tiny_model
from genrec_trainer import TrainerError, load_config, train
from genrec_trainer._data import IGNORE_INDEX, read_records, tokenize_records
from genrec_trainer._model import load_tokenizer

PROMPT = [
    {"role": "system", "content": "predict the next poi"},
    {"role": "user", "content": "poi p1 then"},
    {"role": "assistant", "content": "p2"},  # a worked example inside the prompt: never trained
    {"role": "user", "content": "poi p5 then"},
]
COMPLETION = [{"role": "assistant", "content": "p6 ."}]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def chat(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    # "\n\n" is one token in Llama 3's vocabulary as well; the character-level tiny tokenizer has
    # no such character pair otherwise.
    extra = ("\n\n",) if request.param == "llama3" else ()
    folder = build_tiny_model(
        tmp_path_factory.mktemp(request.param) / "model",
        family=request.param,
        max_positions=512,
        extra_tokens=extra,
    )
    return folder, load_tokenizer(folder)


def _tokenize(frame: pl.DataFrame, tok, fmt: str = "auto"):
    return tokenize_records(frame, tok, fmt=fmt, max_length=512, truncation=False, path="x.jsonl")


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_conversational_prompt_completion(chat, tmp_path: Path) -> None:
    _, tok = chat
    # Through a JSON lines file: polars reads the message lists as lists of structs.
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps({"record_id": "c0", "prompt": PROMPT, "completion": COMPLETION}) + "\n")
    ts = _tokenize(read_records(path), tok)
    assert ts.format == "prompt"
    ex = ts.examples[0]
    prompt_text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(PROMPT + COMPLETION, tokenize=False)
    assert full_text.startswith(prompt_text)
    n_prompt = len(_ids(tok, prompt_text))
    assert list(ex.input_ids) == _ids(tok, full_text)
    assert tok.decode(list(ex.input_ids)) == full_text
    assert "{'role'" not in tok.decode(list(ex.input_ids))
    # -100 exactly on the prompt (its generation prompt included), the ids on the completion.
    assert list(ex.labels[:n_prompt]) == [IGNORE_INDEX] * n_prompt
    assert list(ex.labels[n_prompt:]) == list(ex.input_ids[n_prompt:])
    assert n_prompt < len(ex.input_ids)
    completion_text = tok.decode(list(ex.input_ids[n_prompt:]))
    assert completion_text == full_text[len(prompt_text) :]
    assert completion_text.startswith("p6 .") and tok.eos_token in completion_text


def test_standard_prompt_completion(chat) -> None:
    _, tok = chat
    ex = _tokenize(pl.DataFrame({"prompt": ["poi p1 then"], "completion": ["p2"]}), tok).examples[0]
    p_ids = list(tok("poi p1 then")["input_ids"])  # with the tokenizer's BOS, as at inference
    assert list(ex.input_ids) == [*p_ids, *_ids(tok, "p2"), tok.eos_token_id]
    assert list(ex.labels) == [IGNORE_INDEX] * len(p_ids) + [*_ids(tok, "p2"), tok.eos_token_id]


def test_conversational_language_modeling(chat) -> None:
    _, tok = chat
    messages = PROMPT + COMPLETION
    ex = _tokenize(pl.DataFrame({"messages": [messages]}), tok).examples[0]
    full_text = tok.apply_chat_template(messages, tokenize=False)
    assert list(ex.input_ids) == _ids(tok, full_text)
    # The messages format trains every assistant reply, the one inside the prompt too.
    trained = tok.decode([i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX])
    assert trained.startswith("p2") and "p6 ." in trained
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ex.input_ids, ex.labels))


def test_standard_language_modeling(chat) -> None:
    _, tok = chat
    ts = _tokenize(pl.DataFrame({"record_id": ["t0"], "text": ["user u1 visited p3 then p4"]}), tok)
    assert ts.format == "text"
    ex = ts.examples[0]
    want = [*tok("user u1 visited p3 then p4")["input_ids"], tok.eos_token_id]
    assert list(ex.input_ids) == want and list(ex.labels) == want


def test_prompt_only_is_refused_by_name(chat) -> None:
    _, tok = chat
    for prompt in ("poi p1 then", PROMPT):
        frame = pl.DataFrame({"record_id": ["q"], "prompt": [prompt]})
        with pytest.raises(TrainerError, match=r"prompt-only records .* no completion to learn") as exc:
            _tokenize(frame, tok)
        assert "\n" not in str(exc.value) and "columns: ['record_id', 'prompt']" in str(exc.value)


def test_unknown_shapes_are_refused_naming_the_record(chat) -> None:
    _, tok = chat
    frame = pl.DataFrame({"record_id": ["p"], "chosen": ["a"], "rejected": ["b"]})
    with pytest.raises(
        TrainerError, match=r"no known record format \(columns: \['record_id', 'chosen', 'rejected'\]\)"
    ):
        _tokenize(frame, tok)
    cases = [
        (
            {"prompt": [PROMPT], "completion": ["p6"]},
            r"prompt and completion must both be strings or both be message lists",
        ),
        (
            {"prompt": [[{"role": "user", "text": "x"}]], "completion": [COMPLETION]},
            r"'prompt' must be a string or a list",
        ),
        (
            {"prompt": [[1, 2]], "completion": [[3]]},
            r"'prompt' must be a string or a list of .* got a list of int",
        ),
        ({"text": [7]}, r"'text' must be a string, got int"),
        ({"messages": ["hello"]}, r"'messages' must be a list of \{role, content\} messages, got str"),
    ]
    for columns, needle in cases:
        frame = pl.DataFrame({"record_id": ["k"], **columns}, strict=False)
        with pytest.raises(TrainerError, match=r"x\.jsonl: record 'k' \(row 0\): " + needle) as exc:
            _tokenize(frame, tok)
        message = str(exc.value)
        assert "\n" not in message and f"columns: {frame.columns}" in message
    # Without record ids the row names the record.
    frame = pl.DataFrame({"prompt": ["a", "b"], "completion": ["c", None]})
    with pytest.raises(TrainerError, match=r"record 'row 1' has a null prompt or completion"):
        _tokenize(frame, tok)


def test_completion_must_follow_the_generation_prompt(chat) -> None:
    _, tok = chat
    frame = pl.DataFrame(
        {"record_id": ["u"], "prompt": [PROMPT], "completion": [[{"role": "user", "content": "x"}]]}
    )
    with pytest.raises(
        TrainerError, match=r"record 'u' \(row 0\): .*does the completion start with an assistant"
    ):
        _tokenize(frame, tok)


def test_conversational_records_need_a_chat_template(tiny_model: Path) -> None:
    tok = load_tokenizer(build_tiny_model(tiny_model.parent / "llama2", family="llama2"))
    frame = pl.DataFrame({"record_id": ["n"], "prompt": [PROMPT], "completion": [COMPLETION]})
    with pytest.raises(
        TrainerError, match=r"record 'n' \(row 0\): conversational prompt/completion needs a chat"
    ):
        _tokenize(frame, tok)


def test_trains_on_conversational_prompt_completion(chat, tmp_path: Path) -> None:
    folder, _ = chat
    path = tmp_path / "conv.jsonl"
    lines = [
        {"record_id": f"r{i}", "prompt": [{"role": "user", "content": f"poi p{i}"}],
         "completion": [{"role": "assistant", "content": f"p{i + 1}"}]}
        for i in range(8)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = train(
        load_config(
            None,
            model=str(folder),
            train=str(path),
            output=str(tmp_path / "run"),
            max_steps=2,
            batch_size=4,
            progress=False,
            dtype="float32",
        )
    )
    assert result.steps == 2 and result.n_records == 8
