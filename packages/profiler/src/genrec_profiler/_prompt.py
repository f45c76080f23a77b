"""GenUP-style prompt: the user's most recent check-ins that fit, the digest, and the JSON schema."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from genrec_profiler._client import Message
from genrec_profiler._schema import AGE_GROUPS, EDUCATION_LEVELS, GENDERS, SOCIOECO_LEVELS, TRAIT_POLES

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an expert in human mobility and personality. From a user's location check-ins you infer a "
    "profile and answer with one JSON object only."
)

_TRAITS = "; ".join(f"{hi} or {lo}" for _, hi, lo in TRAIT_POLES)
SCHEMA_TEXT = (
    "Answer with only a JSON object with exactly these keys:\n"
    f'"traits": a list of five Big Five poles, one from each pair in this order: {_TRAITS};\n'
    f'"age": one of {", ".join(AGE_GROUPS)};\n'
    f'"gender": one of {", ".join(g for g in GENDERS if g != "unknown")};\n'
    f'"education": one of {", ".join(EDUCATION_LEVELS)};\n'
    f'"socioeco": one of {", ".join(SOCIOECO_LEVELS)};\n'
    '"preferences": a list of short phrases about the places and activities the user likes;\n'
    '"routines": a list of short phrases about when and where the user usually goes;\n'
    '"summary": about 200 words describing the user in the second person ("You are ..."), usable as a '
    "system prompt."
)
DRAFT_TEXT = (
    "A draft profile computed from the check-in statistics alone (keep its format; change any value "
    "that the check-ins suggest differently and write a richer summary):\n{draft}"
)
# GenUP's prompt (gpt.py, GPT.generate_user_profile), character for character: one user message,
# {user_id} and {user_history_prompt} filled with str.format, the braces of the JSON example doubled.
GENUP_PROMPT = (
    "Given the following check-ins of user {user_id}, generate a 200-word user profile summary to be used as a "
    "system prompt to another LLM that simulates this person's behavior, preferences, routines, hobbies, "
    "schedule, etc. Predict this user's Big Five Inventory traits: (1) extroverted / introverted, (2) agreeable "
    "/ antagonistic, (3) conscientious / unconscientious, (4) neurotic / emotionally stable, (5) open / closed "
    "to experience. Also predict their age: child (<13) / adolescent (13-17) / adult (18-64) / older adult "
    "(>64); their gender: male / female; their educational background: some schooling / high school / college "
    "& beyond; and their socioeconomic level: lower / middle / upper. Also include any patterns that is "
    "observed and POI IDs of important places that might be visited in the future in the user profile summary. "
    "This system prompt will be used to make future check-in predictions. Return your response in JSON format: "
    '{{"traits": [trait1, trait2, trait3, trait4, trait5], "attributes": [age, gender, edu, socioeco], '
    '"preferences": [preference1, preference2, preference3, ...], "routines": [routine1, routine2, routine3, '
    '...], "user_profile": "200-word user profile summary"}}\n{user_history_prompt}'
)


def genup_messages(user_id: str, sentences: Sequence[str]) -> tuple[Message, ...]:
    """GenUP's request: its prompt over every check-in sentence joined by single spaces
    (generate_user_profile.py: ``" ".join(user_df["prompt"].values)``), as the only (user) message."""
    return ({"role": "user", "content": GENUP_PROMPT.format(user_id=user_id, user_history_prompt=" ".join(sentences))},)


FEEDBACK = (
    "Your answer could not be used: {error}. Reply again with only the JSON object, with all eight keys "
    "and only the allowed values."
)


@dataclass(frozen=True, kw_only=True)
class FittedPrompt:
    messages: tuple[Message, ...]
    n_used: int
    n_cut: int


def render_messages(
    user_id: str, sentences: Sequence[str], digest_text: str, n_cut: int, draft: str | None = None
) -> tuple[Message, ...]:
    if n_cut:
        intro = (
            f"Here are the {len(sentences)} most recent check-ins of user {user_id} (the {n_cut} older "
            "ones did not fit and are only covered by the statistics below), oldest first:"
        )
    else:
        intro = f"Here are all {len(sentences)} check-ins of user {user_id}, oldest first:"
    body = "\n".join(sentences)
    user = f"{intro}\n{body}\n\n{digest_text}\n\n{SCHEMA_TEXT}"
    if draft is not None:
        user += "\n\n" + DRAFT_TEXT.format(draft=draft)
    return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})


def fit_prompt(
    user_id: str,
    sentences: Sequence[str],
    digest_text: str,
    *,
    budget: int | None,
    count_tokens,
    max_checkins: int | None = None,
    draft: str | None = None,
) -> FittedPrompt:
    """Keep the most recent check-ins whose tokens fit in ``budget`` next to the fixed parts.

    Token counts are summed per sentence (plus one for the newline), which is exact up to merges
    across sentence boundaries; we keep a small safety margin for those and for the chat template.
    """
    kept = list(sentences[-max_checkins:]) if max_checkins else list(sentences)
    if budget is not None and kept:
        fixed = render_messages(user_id, [], digest_text, n_cut=len(sentences), draft=draft)
        overhead = sum(count_tokens([m["content"] for m in fixed])) + 16 * len(fixed)
        room = int((budget - overhead) * 0.97)
        if room <= 0:
            logger.warning(
                "user %s: the instructions and digest alone take %d tokens, more than the prompt budget %d; "
                "sending them without check-ins", user_id, overhead, budget,
            )
        counts = count_tokens(kept)
        total = 0
        start = len(kept)
        while start > 0 and total + counts[start - 1] + 1 <= room:
            total += counts[start - 1] + 1
            start -= 1
        kept = kept[start:]
    n_cut = len(sentences) - len(kept)
    return FittedPrompt(
        messages=render_messages(user_id, kept, digest_text, n_cut, draft),
        n_used=len(kept),
        n_cut=n_cut,
    )


def feedback_messages(messages: Sequence[Message], answer: str, error: str) -> tuple[Message, ...]:
    """The conversation for a retry: the prompt, the rejected answer and what was wrong with it."""
    return (
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": FEEDBACK.format(error=error)},
    )
