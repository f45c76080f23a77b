"""parse_profile on a corpus of malformed and near-miss model outputs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec_profiler import AGE_GROUPS, EDUCATION_LEVELS, GENDERS, SOCIOECO_LEVELS, TRAIT_POLES, parse_profile

GOOD = {
    "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open to experience"],
    "age": "adult",
    "gender": "male",
    "education": "college & beyond",
    "socioeco": "middle",
    "preferences": ["coffee shops", "jazz bars"],
    "routines": ["gym at 7am on weekdays"],
    "summary": "You are a sociable adult who loves coffee and jazz.",
}


def dumps(**changes: object) -> str:
    return json.dumps({**GOOD, **changes})


def test_valid_output_is_ok() -> None:
    parsed = parse_profile(json.dumps(GOOD))
    assert parsed.status == "ok"
    assert parsed.error is None
    assert parsed.repairs == ()
    assert parsed.traits == tuple(GOOD["traits"])
    assert (parsed.age, parsed.gender, parsed.education, parsed.socioeco) == ("adult", "male", "college & beyond", "middle")
    assert parsed.preferences == ("coffee shops", "jazz bars")
    assert parsed.summary == GOOD["summary"]


# (model output, field, expected canonical value)
NEAR_MISSES = [
    (dumps(age="Adult"), "age", "adult"),
    (dumps(age="adult (18-64)"), "age", "adult"),
    (dumps(age="Young Adult"), "age", "adult"),
    (dumps(age="senior"), "age", "older adult"),
    (dumps(age="Teenager"), "age", "adolescent"),
    (dumps(age=["adult"]), "age", "adult"),
    (dumps(gender="Woman"), "gender", "female"),
    (dumps(gender="M"), "gender", "male"),
    (dumps(education="Bachelor's degree"), "education", "college & beyond"),
    (dumps(education="College and beyond"), "education", "college & beyond"),
    (dumps(education="High School"), "education", "high school"),
    (dumps(socioeco="Upper-middle class"), "socioeco", "middle"),
    (dumps(socioeco="HIGH"), "socioeco", "upper"),
    (dumps(socioeco="low income"), "socioeco", "lower"),
    (dumps(preferences="coffee; jazz bars"), "preferences", ("coffee", "jazz bars")),
    (dumps(routines=["1. gym", "- gym", "2) brunch"]), "routines", ("gym", "brunch")),
]


@pytest.mark.parametrize(("text", "field", "expected"), NEAR_MISSES)
def test_near_misses_are_repaired(text: str, field: str, expected: object) -> None:
    parsed = parse_profile(text)
    assert parsed.status == "repaired", parsed.error
    assert getattr(parsed, field) == expected
    assert parsed.repairs


TRAIT_VARIANTS = [
    ["Extraverted", "Agreeable", "Conscientious", "Emotionally Stable", "Open to Experience"],
    ["extrovert", "agreeableness", "conscientiousness", "emotional stability", "openness"],
    # any order is accepted and put in canonical order
    ["open to new experiences", "stable", "conscientious", "agreeable", "outgoing"],
    "extroverted, agreeable, conscientious, emotionally stable, open",
    {"Openness": "high", "Extraversion": "High", "Agreeableness": "yes", "Conscientiousness": 0.9, "Neuroticism": "low"},
    {"extraversion": "extraverted", "agreeableness": "agreeable", "conscientiousness": "conscientious",
     "neuroticism": "emotionally stable", "openness": "open to experience"},
    [{"trait": "Extraversion", "level": "high"}, {"trait": "Agreeableness", "level": "high"},
     {"trait": "Conscientiousness", "level": "high"}, {"trait": "Neuroticism", "level": "low"},
     {"trait": "Openness", "level": "high"}],
]


@pytest.mark.parametrize("traits", TRAIT_VARIANTS)
def test_trait_spellings(traits: object) -> None:
    parsed = parse_profile(dumps(traits=traits))
    assert parsed.status == "repaired", parsed.error
    assert parsed.traits == tuple(GOOD["traits"])


def test_negated_and_low_traits() -> None:
    parsed = parse_profile(dumps(traits=["introvert", "disagreeable", "not conscientious", "Neurotic", "closed"]))
    assert parsed.traits == ("introverted", "antagonistic", "unconscientious", "neurotic", "closed to experience")
    assert parsed.status == "repaired"


JSON_SHAPES = [
    ("```json\n" + json.dumps(GOOD) + "\n```", "removed code fence"),
    ("Sure! Here is the profile:\n" + json.dumps(GOOD) + "\nHope this helps.", "removed text before the JSON object"),
    (json.dumps(GOOD, indent=2)[:-2] + ",\n}", "removed trailing commas"),
    (str(GOOD), "replaced single quotes"),  # a Python dict repr
    (json.dumps({"profile": GOOD}), "unwrapped a nested profile object"),
    (json.dumps({"Age Group": "adult", **{k: v for k, v in GOOD.items() if k != "age"}}), "key 'Age Group' -> 'age'"),
]


@pytest.mark.parametrize(("text", "repair"), JSON_SHAPES)
def test_json_shapes(text: str, repair: str) -> None:
    parsed = parse_profile(text)
    assert parsed.status == "repaired", parsed.error
    assert repair in parsed.repairs
    assert parsed.traits == tuple(GOOD["traits"])
    assert parsed.summary == GOOD["summary"]


def test_extra_keys_are_kept_aside_without_a_repair() -> None:
    parsed = parse_profile(dumps(confidence=0.8, occupation="engineer"))
    assert parsed.status == "ok"
    assert parsed.extra == {"confidence": 0.8, "occupation": "engineer"}
    assert json.loads(parsed.to_row()["extra"]) == {"confidence": 0.8, "occupation": "engineer"}


def test_truncated_inside_summary_keeps_the_partial_summary() -> None:
    text = json.dumps(GOOD)
    cut = text[: text.index("loves coffee") + 5]
    parsed = parse_profile(cut)
    assert parsed.status == "repaired"
    assert "closed truncated JSON" in parsed.repairs
    assert parsed.summary == "You are a sociable adult who loves"


def test_truncated_before_summary_fails_and_names_the_field() -> None:
    text = json.dumps(GOOD)
    cut = text[: text.index('"routines"') + 14]  # half-way into the routines list
    parsed = parse_profile(cut)
    assert parsed.status == "failed"
    assert "field 'routines': missing" in parsed.error
    assert "field 'summary': missing" in parsed.error
    # what could be recovered is still there
    assert parsed.age == "adult"
    assert parsed.preferences == ("coffee shops", "jazz bars")


FAILURES = [
    ("", "no JSON object"),
    ("I'm sorry, I can't help with that.", "no JSON object"),
    ("[1, 2, 3]", "no JSON object"),
    ('{"traits": oops}', "invalid JSON"),
    (dumps(age="banana"), "field 'age': 'banana' is not one of"),
    (dumps(traits=["extroverted", "agreeable"]), "no pole for conscientiousness, neuroticism, openness"),
    (dumps(traits=["extroverted", "introverted", "agreeable", "conscientious", "neurotic"]), "both"),
    (dumps(traits=["happy", "agreeable", "conscientious", "neurotic", "open"]), "'happy' is not a Big Five pole"),
    (dumps(preferences=[]), "field 'preferences': empty list"),
    (dumps(summary=42), "field 'summary': not a string"),
    (dumps(socioeco="lower-upper"), "field 'socioeco'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "gender"}), "field 'gender': missing"),
]


@pytest.mark.parametrize(("text", "message"), FAILURES)
def test_unrecoverable_outputs_fail_with_a_named_error(text: str, message: str) -> None:
    parsed = parse_profile(text)
    assert parsed.status == "failed"
    assert message in parsed.error
    assert not parsed.ok


canonical_profiles = st.fixed_dictionaries({
    "traits": st.tuples(*[st.sampled_from(p[1:]) for p in TRAIT_POLES]).map(list),
    "age": st.sampled_from(AGE_GROUPS),
    "gender": st.sampled_from(GENDERS),
    "education": st.sampled_from(EDUCATION_LEVELS),
    "socioeco": st.sampled_from(SOCIOECO_LEVELS),
    "preferences": st.lists(st.text(alphabet="abcdefgh xyz", min_size=1).map(str.strip).filter(bool), min_size=1, max_size=4, unique=True),
    "routines": st.lists(st.text(alphabet="abcdefgh xyz", min_size=1).map(str.strip).filter(bool), min_size=1, max_size=4, unique=True),
    "summary": st.text(min_size=1).filter(str.strip),
})


@settings(max_examples=60, deadline=None)
@given(profile=canonical_profiles, upper=st.booleans())
def test_canonical_profiles_round_trip(profile: dict, upper: bool) -> None:
    """Every canonical profile parses to itself; upper-casing the categorical values only repairs."""
    text = json.dumps({**profile, "age": profile["age"].upper()} if upper else profile)
    parsed = parse_profile(text)
    assert parsed.status == ("repaired" if upper else "ok")
    assert list(parsed.traits) == profile["traits"]
    assert parsed.age == profile["age"]
    assert parsed.socioeco == profile["socioeco"]
    assert list(parsed.preferences) == profile["preferences"]
    assert parsed.summary == profile["summary"].strip()


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    parsed = parse_profile(text)
    assert parsed.status in {"ok", "repaired", "failed"}


def test_draft_fills_what_the_model_dropped_and_says_so() -> None:
    from genrec_profiler import parse_profile

    draft = {
        "traits": ["extroverted", "agreeable", "conscientious", "emotionally stable", "open to experience"],
        "age": "adult", "gender": "unknown", "education": "college & beyond", "socioeco": "middle",
        "preferences": ["coffee"], "routines": ["weekday mornings"], "summary": "from the draft",
    }  # fmt: skip
    # SmolLM2's habit: four of the five poles, no education.
    text = (
        '{"traits": ["introverted", "conscientious", "neurotic", "closed to experience"], "age": "adult",'
        ' "gender": "female", "socioeco": "upper", "preferences": ["parks"], "routines": ["runs at dawn"],'
        ' "summary": "Written by the model."}'
    )
    alone = parse_profile(text)
    assert alone.status == "failed"
    assert "agreeableness" in (alone.error or "") or "education" in (alone.error or "")
    filled = parse_profile(text, draft=draft)
    assert filled.status == "repaired"
    assert filled.traits == ("introverted", "agreeable", "conscientious", "neurotic", "closed to experience")
    assert filled.education == "college & beyond"
    assert filled.gender == "female" and filled.socioeco == "upper"  # the model's own values win
    assert filled.summary == "Written by the model."
    assert any("kept the draft" in r for r in filled.repairs)
    # The summary is the model's work: a missing one is never taken from the draft.
    no_summary = parse_profile(text.replace(', "summary": "Written by the model."', ""), draft=draft)
    assert no_summary.status == "failed" and "summary" in (no_summary.error or "")
