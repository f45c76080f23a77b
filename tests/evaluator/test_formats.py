"""TRL's dataset formats in the evaluator, and the candidates' tokens reused across records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genrec_evaluator import EvaluatorError, NextPoiConfig, evaluate_next_poi
from genrec_evaluator._formats import prompt_text, record_inputs
from genrec_evaluator._protocols import Query

PROMPT = "User u1 visited POI ids 3, 17, 9. Where next?\n"
ANSWER = "At 2024-01-01 10:00:00, user u1 will visit POI id 12."
SYSTEM = {"role": "system", "content": "You predict the next POI."}
USER = {"role": "user", "content": PROMPT}
REPLY = {"role": "assistant", "content": ANSWER}
BASE = {"record_id": ["r1"], "user_id": ["u1"], "target_poi_idx": [12], "num_pois": [40]}


def _frame(**columns: object) -> pl.DataFrame:
    return pl.DataFrame({**BASE, **{k: [v] for k, v in columns.items()}})


FORMATS = {
    "standard": _frame(prompt=PROMPT, completion=ANSWER),
    "conversational": _frame(prompt=[SYSTEM, USER], completion=[REPLY]),
    "messages": _frame(messages=[SYSTEM, USER, REPLY]),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_trl_format_gives_the_prompt_side_and_the_answer(name: str) -> None:
    (rec,) = record_inputs(FORMATS[name])
    assert rec.answer == ANSWER
    assert rec.conversational is (name != "standard")
    if name == "standard":
        assert rec.prompt == PROMPT and rec.messages is None
    else:
        assert rec.messages == (SYSTEM, USER)
        assert PROMPT in rec.prompt  # what the analyses search for POI ids
    if "prompt" in FORMATS[name].columns:
        assert PROMPT in prompt_text(FORMATS[name]["prompt"].to_list()[0])


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"prompt": PROMPT, "completion": [REPLY]}, "completion that is not a string"),
        ({"prompt": [USER], "completion": ANSWER}, "not an assistant message"),
        ({"prompt": [USER], "completion": [{"role": "user", "content": "hi"}]}, "not an assistant message"),
        ({"messages": [SYSTEM, USER]}, "do not end with the assistant"),
        ({"text": PROMPT + ANSWER}, "no prompt and no messages"),
        ({"prompt": PROMPT}, "no completion"),
    ],
)
def test_unknown_shapes_are_one_line_naming_the_record_and_columns(columns: dict, problem: str) -> None:
    with pytest.raises(EvaluatorError, match=problem) as exc:
        record_inputs(_frame(**columns))
    message = str(exc.value)
    assert "\n" not in message and "'r1'" in message and "columns: [" in message
    for column in columns:
        assert column in message


class _Recorder:
    """A scorer that remembers the queries it was asked (and ranks the target first)."""

    def __init__(self) -> None:
        self.queries: list[Query] = []

    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        self.queries.append(query)
        return -np.abs(np.arange(len(continuations)) - 12).astype(float)

    def generate(self, query: Query, *, seed: int) -> str:
        raise AssertionError("ranked mode only")


@pytest.mark.parametrize("name", list(FORMATS))
def test_next_poi_reads_the_answer_in_every_format(name: str) -> None:
    scorer = _Recorder()
    result = evaluate_next_poi(FORMATS[name], model=scorer, config=NextPoiConfig(n_boot=10, baselines=()))
    assert result.metrics["model"]["acc@1"] == 1.0
    (query,) = scorer.queries
    assert query.completion_prefix == "At 2024-01-01 10:00:00, user u1 will visit POI id"
    assert query.conversational is (name != "standard")


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from genrec_core.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-chatml", family="chatml", max_positions=1024)


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_context_fed_is_the_chat_template_rendering(chatml: Path, name: str) -> None:
    from genrec_evaluator._models import load_model
    from genrec_evaluator._nextpoi import _queries
    from genrec_evaluator._scoring import HFScorer

    model, tok = load_model(chatml, dtype="float64")
    # fmt="prompt" (trained on strings): a conversational record is still a conversation.
    scorer = HFScorer(model, tok, fmt="prompt")
    fed: list[list[int]] = []
    forward = model.forward

    def spy(*args: object, **kwargs: object) -> object:
        if kwargs.get("past_key_values") is None:
            fed.append(kwargs["input_ids"][0].tolist())  # type: ignore[index]
        return forward(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    ((query, sep, end),) = _queries(FORMATS[name])
    scores = scorer.score(query, [f"{sep}{c}{end}" for c in range(20)])
    (context,) = fed
    prefix = tok("At 2024-01-01 10:00:00, user u1 will visit POI id", add_special_tokens=False)["input_ids"]
    if name == "standard":
        expected = tok(PROMPT)["input_ids"]
    else:
        rendered = tok.apply_chat_template([SYSTEM, USER], tokenize=False, add_generation_prompt=True)
        expected = tok(rendered, add_special_tokens=False)["input_ids"]
        assert rendered.endswith("<|im_start|>assistant\n")
    # The candidates " 0." .. " 19." share the separator's token, which joins the context.
    assert context == expected + prefix + tok(" ", add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(scores, scorer.score_each(query, [f"{sep}{c}{end}" for c in range(20)]), atol=1e-9)


def test_conversational_record_without_chat_template_is_refused(tiny_llama: Path) -> None:
    from genrec_evaluator._models import load_model
    from genrec_evaluator._scoring import HFScorer

    model, tok = load_model(tiny_llama)
    tok.chat_template = None
    ((rec),) = record_inputs(FORMATS["conversational"])
    with pytest.raises(EvaluatorError, match="needs a chat template"):
        HFScorer(model, tok, fmt="auto").score(rec.query("POI id"), [" 1.", " 2."])


@pytest.mark.parametrize(
    ("family", "words", "reused"),
    [
        ("generic", (), True),
        ("chatml", ("POI", " id", " 1", " 12", "2.", "d 1"), True),
        # "I id 1" spans the prefix's last word and the candidate: the probes see it, no reuse.
        ("llama3", (" id", " 1", "I id 1"), False),
    ],
)
def test_reused_candidate_tokens_score_bit_identically(tmp_path: Path, family: str, words: tuple, reused: bool) -> None:
    pytest.importorskip("transformers")
    from genrec_core.models import build_tiny_model
    from genrec_evaluator._models import load_model
    from genrec_evaluator._scoring import HFScorer

    model, tok = load_model(build_tiny_model(tmp_path / family, family=family, extra_tokens=words, max_positions=1024))
    cached = HFScorer(model, tok, fmt="prompt", max_nodes=16)
    plain = HFScorer(model, tok, fmt="prompt", max_nodes=16, reuse_candidates=False)
    candidates = [f" {i}." for i in range(130)]
    for user, when in (("u1", "2024-01-01 10:00:00"), ("u22", "2024-02-03 11:30:00"), ("u3", "2024-03-04 09:05:00")):
        query = Query(prompt=f"User {user} visited POI ids 3, 17, 9.\n",
                      completion_prefix=f"At {when}, user {user} will visit POI id")
        assert (cached._reused(query, candidates) is not None) is reused
        assert cached.token_sequences(query, candidates) == plain.token_sequences(query, candidates)
        fast, slow = cached.score(query, candidates), plain.score(query, candidates)
        assert np.array_equal(fast, slow)  # bit for bit
    assert len(cached._plans) == 1  # the candidates were tokenized once for the three records
