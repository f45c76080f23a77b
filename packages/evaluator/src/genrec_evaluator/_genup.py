"""GenUP's evaluation as published (github.com/w11wo/GenUP): its decoding settings, its answer parsing and
its two analyses, for ``protocol="genup"``. Our own protocol (``"genrec"``) lives in ``_nextpoi`` and
``_analysis``; every difference is listed in the package README.

Sources: ``src/eval_next_poi.py`` (``parse_args`` defaults, ``GenerationConfig``, the ``re.split`` of
``llama_prompt``, ``re.sub(r"[^0-9]", "", ...)``), the README's and ``eval_next_poi.sh``'s evaluation
commands (per model family and city), ``src/user_cold_start_analysis.py`` and
``src/trajectory_length_analysis.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from genrec_evaluator._errors import EvaluatorError

#: ``eval_next_poi.py``'s argparse defaults and its fixed ``max_new_tokens=5`` (always ``do_sample=True``).
GENUP_SCRIPT_DEFAULTS: dict[str, Any] = {
    "temperature": 0.6, "top_k": 40, "top_p": 0.1, "typical_p": 1.0, "repetition_penalty": 1.176,
    "max_new_tokens": 5,
}  # fmt: skip
#: The README / ``eval_next_poi.sh`` commands for Llama-3.x on TKY (Meta-Llama-3.1-8B-FourSquare-TKY-POI)
#: and CA (Meta-Llama-3.2-1B-...-POI on Gowalla-CA-POI).
_LLAMA3_TKY_CA = {"temperature": 0.65, "top_k": 50, "top_p": 0.92, "typical_p": 0.95, "repetition_penalty": 1.0}
#: The README commands for Llama-3.x on Moscow (Llama-3.1-8B) and Sao Paulo (Meta-Llama-3.2-1B).
_LLAMA3_MOSCOW_SAOPAULO = {"temperature": 0.6, "top_k": 50, "top_p": 0.1, "typical_p": 0.95, "repetition_penalty": 1.0}

CITIES = ("nyc", "tky", "ca", "moscow", "sao_paulo")
_CITY_PATTERNS = (
    ("sao_paulo", re.compile(r"s[aã]o[-_ ]?paulo", re.IGNORECASE)),
    ("moscow", re.compile(r"moscow", re.IGNORECASE)),
    ("nyc", re.compile(r"(?<![a-z])(nyc|new[-_ ]?york)(?![a-z])", re.IGNORECASE)),
    ("tky", re.compile(r"(?<![a-z])(tky|tokyo)(?![a-z])", re.IGNORECASE)),
    ("ca", re.compile(r"(?<![a-z])(ca|gowalla|california)(?![a-z])", re.IGNORECASE)),
)
_FAMILY = re.compile(r"llama[-_ ]?(\d)", re.IGNORECASE)
# GenUP's own split of a ``llama_prompt`` into prompt, answer and rest (the answer is "<id>. </s>").
_GENUP_ANSWER = re.compile(r"(\d+\.\s</s>)")
_NON_DIGITS = re.compile(r"[^0-9]")
# eval_next_poi.py counts nothing: it compares strings. Its trajectory length is this count over `inputs`.
_VISITS = re.compile(r"user \d+ visited POI id")


def genup_city(text: str | None) -> str | None:
    """The GenUP city a name stands for (``"FourSquare-TKY-POI"`` -> ``"tky"``), or ``None``."""
    if not text:
        return None
    for city, pattern in _CITY_PATTERNS:
        if pattern.search(str(text)):
            return city
    return None


def genup_family(model: str | Path | None) -> str | None:
    """``"llama2"`` or ``"llama3"`` from a model name, hub id or family word (``"Meta-Llama-3.1-8B"``,
    ``"w11wo/Llama-2-7b-longlora-32k-merged"``, ``"llama3"``); a local model folder is asked
    :func:`genrec_core.models.model_family`. ``None`` when neither says."""
    if model is None:
        return None
    text = str(model)
    match = _FAMILY.search(Path(text).name) or _FAMILY.search(text)
    if match:
        return f"llama{match[1]}"
    path = Path(text).expanduser()
    if path.is_dir():
        from genrec_core.models import model_family

        family = model_family(path)
        return family if family in ("llama2", "llama3") else None
    return None


def genup_generation_settings(model: str | Path | None, city: str | None) -> dict[str, Any]:
    """GenUP's decoding settings for a model (name, hub id, family word or folder) evaluated on ``city``.

    GenUP publishes settings only through commands: ``eval_next_poi.py``'s defaults (temperature 0.6,
    top_k 40, top_p 0.1, typical_p 1.0, repetition penalty 1.176, 5 new tokens) serve Llama-2 everywhere
    and Llama-3.x on NYC; Llama-3.x on TKY and CA uses 0.65 / 50 / 0.92 / 0.95 / 1.0, on Moscow and
    Sao Paulo 0.6 / 50 / 0.1 / 0.95 / 1.0. The city is the one evaluated on (the README's CA command
    runs a TKY-trained adapter on Gowalla-CA-POI with the CA settings).
    """
    family = str(model) if str(model) in ("llama2", "llama3") else genup_family(model)
    where = city if city in CITIES else genup_city(city)
    settings = dict(GENUP_SCRIPT_DEFAULTS)
    if family == "llama3":
        if where in ("tky", "ca"):
            settings.update(_LLAMA3_TKY_CA)
        elif where in ("moscow", "sao_paulo"):
            settings.update(_LLAMA3_MOSCOW_SAOPAULO)
        elif where is None:
            raise EvaluatorError(
                f"protocol genup: GenUP decodes Llama-3.x differently per city; say which city {model!s} is "
                f"evaluated on (--city, one of {', '.join(CITIES)}), got {city!r}"
            )
    return settings


def genup_split_prompt(text: str) -> tuple[str, str] | None:
    """(prompt, target digits) as ``eval_next_poi.py`` cuts a ``llama_prompt``: everything before the
    first ``<id>. </s>`` (so the prompt ends in ``"POI id "``, space included) and that id's digits."""
    parts = _GENUP_ANSWER.split(text, maxsplit=1)
    if len(parts) < 3:
        return None
    return parts[0], _NON_DIGITS.sub("", parts[1])


def genup_answer(generated: str) -> str:
    """What GenUP compares with the target: every digit of the generation, in order, nothing else."""
    return _NON_DIGITS.sub("", generated)


def genup_trajectory_length(inputs: str) -> int:
    """``trajectory_length_analysis.py``'s length: the check-ins of the trajectory the prompt shows."""
    return len(_VISITS.findall(inputs))


def genup_value_groups(values: Sequence[int], labels: Sequence[str]) -> list[str]:
    """``trajectory_length_analysis.py``'s rule: with ``n = len(values) // 3``, every value among the
    ``n`` largest is ``labels[2]``, then every value among the ``n`` smallest is ``labels[0]`` (that
    one wins), the rest ``labels[1]``. Groups are by value, so ties make them unequal."""
    n = len(values) // 3
    if n == 0:
        return [labels[1]] * len(values)
    ordered = sorted(values)
    short, long = ordered[n - 1], ordered[-n]
    return [labels[0] if v <= short else labels[2] if v >= long else labels[1] for v in values]


def genup_activity_groups(users: Sequence[str], counts: Sequence[int], labels: Sequence[str]) -> list[str]:
    """``user_cold_start_analysis.py``'s rule over every train user (``users`` in the order of the
    pandas series GenUP builds: count descending; see below): with ``n = len(users) // 3``,
    ``nlargest(n)`` users are ``labels[2]``, then ``nsmallest(n)`` users ``labels[0]`` (that one wins),
    the rest ``labels[1]``. Both take exactly ``n`` users, ties going to the earliest in the series,
    so a tie can put one user in both (and then in ``labels[0]``).
    """
    n = len(users) // 3
    out = [labels[1]] * len(users)
    if n == 0:
        return out
    positions = range(len(users))
    for i in sorted(positions, key=lambda i: (-counts[i], i))[:n]:
        out[i] = labels[2]
    for i in sorted(positions, key=lambda i: (counts[i], i))[:n]:
        out[i] = labels[0]
    return out


def genup_user_activity(train_users: Sequence[str]) -> pl.DataFrame:
    """``user_id, n_train_trajectories, user_group`` for every user of ``train_users`` (one entry per
    train trajectory, i.e. per row of GenUP's train split, in order).

    GenUP's series is ``value_counts().sort_values(ascending=False)``: pandas' default sort is not
    stable, so its order among users with equal counts depends on the numpy build. We order them by
    first appearance in the train data (what a stable sort gives); only users tied at a group
    boundary can land differently from GenUP's own run.
    """
    from genrec_evaluator._analysis import USER_GROUPS

    frame = pl.DataFrame({"user_id": pl.Series(list(train_users), dtype=pl.String)}).with_row_index("_first")
    counts = (
        frame.group_by("user_id")
        .agg(pl.len().cast(pl.Int64).alias("n_train_trajectories"), pl.col("_first").min())
        .sort(["n_train_trajectories", "_first"], descending=[True, False])
    )
    labels = genup_activity_groups(counts["user_id"].to_list(), counts["n_train_trajectories"].to_list(), USER_GROUPS)
    return counts.drop("_first").with_columns(pl.Series("user_group", labels, dtype=pl.String))
