"""The ``template`` backend: a deterministic profile from check-in statistics, no LLM.

It is a fast stand-in for pipelines and tests and the baseline that shows what an LLM adds. The rules
are deliberately simple and stated here; gender cannot be read from check-ins, so it says ``unknown``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from genrec_profiler._client import Completion, ProfileRequest
from genrec_profiler._digest import UserDigest

_SOCIAL = ("bar", "pub", "club", "nightlife", "restaurant", "caf", "coffee", "lounge", "brewery",
           "music", "concert", "theater", "theatre", "stadium", "food", "pizza", "diner")
_STUDY = ("college", "university", "school", "library", "academic")


def _share(digest: UserDigest, words: Sequence[str]) -> float:
    hits = sum(n for name, n in digest.top_categories if any(w in name.lower() for w in words))
    return hits / digest.n_checkins if digest.n_checkins else 0.0


def template_profile(digest: UserDigest) -> dict[str, object]:
    """The profile the template backend writes for ``digest`` (a dict in the JSON schema)."""
    social = _share(digest, _SOCIAL)
    study = _share(digest, _STUDY)
    diversity = digest.n_categories / digest.n_checkins if digest.n_checkins else 0.0
    traits = [
        "extroverted" if social >= 0.3 else "introverted",
        "antagonistic" if digest.night_share > 0.5 else "agreeable",
        "conscientious" if digest.revisit_rate >= 0.5 else "unconscientious",
        "neurotic" if digest.night_share > 0.35 else "emotionally stable",
        "open to experience" if diversity >= 0.2 or digest.n_categories >= 10 else "closed to experience",
    ]
    preferences = [f"{name} ({n / digest.n_checkins:.0%} of check-ins)" for name, n in digest.top_categories]
    routines = [f"most active around {h:02d}:00" for h, _ in digest.top_hours[:2]]
    routines += [f"busiest on {day}" for day, _ in digest.top_weekdays[:2]]
    if digest.night_share > 0.3:
        routines.append("often out at night")
    if digest.weekend_share > 0.4:
        routines.append("spends much of the weekend out")
    top = ", ".join(name for name, _ in digest.top_categories[:3]) or "various places"
    hours = " and ".join(f"{h:02d}:00" for h, _ in digest.top_hours[:2]) or "no fixed time"
    days = " and ".join(day for day, _ in digest.top_weekdays[:2]) or "no particular day"
    home = (
        f"Your home area is around latitude {digest.home[0]:.3f}, longitude {digest.home[1]:.3f}. "
        if digest.home
        else ""
    )
    summary = (
        f"You are user {digest.user_id}, an adult city dweller with {digest.n_checkins} check-ins at "
        f"{digest.n_pois} distinct places in {digest.n_categories} categories between {digest.first} and "
        f"{digest.last}. Your favourite kinds of places are {top}. You are most often out around {hours}, "
        f"and your busiest days are {days}. {home}"
        f"You come back to places you know {digest.revisit_rate:.0%} of the time, "
        f"{'so you keep steady habits' if digest.revisit_rate >= 0.5 else 'so you like trying new places'}; "
        f"{digest.night_share:.0%} of your check-ins are at night and {digest.weekend_share:.0%} at the "
        f"weekend. You come across as {traits[0]}, {traits[1]}, {traits[2]}, {traits[3]} and "
        f"{traits[4]}. When you choose where to go next, you favour places like the ones you already "
        f"visit, at the times you are usually out."
    )
    return {
        "traits": traits,
        "age": "adult",
        "gender": "unknown",
        "education": "college & beyond" if study >= 0.05 else "high school",
        "socioeco": "middle",
        "preferences": preferences,
        "routines": routines,
        "summary": summary,
    }


class TemplateBackend:
    """Deterministic profiles from check-in statistics (see :func:`template_profile`)."""

    backend = "template"
    model = "template-v1"

    @property
    def prompt_token_budget(self) -> int | None:
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        return [Completion(text=json.dumps(template_profile(r.digest)), finish_reason="stop") for r in requests]
