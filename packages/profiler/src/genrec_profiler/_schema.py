"""The profile schema and ``parse_profile``: validate, repair and normalise one model output.

Models answer in many near-miss shapes: JSON inside a code fence or after a preamble, single quotes,
trailing commas, output cut off by ``max_new_tokens``, keys such as ``"Age Group"`` or
``"socio_economic_level"``, values such as ``"Adult"``, ``"adult (18-64)"`` or ``"extraverted"``, traits
as a list, a dict of dimension -> pole or dimension -> high/low. We accept all of those, record each
repair, keep unknown keys aside in ``extra``, and only fail a profile when a field cannot be recovered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "repaired", "failed"]

#: The five Big Five dimensions and their two poles, in the order the ``traits`` list uses.
TRAIT_POLES: tuple[tuple[str, str, str], ...] = (
    ("extraversion", "extroverted", "introverted"),
    ("agreeableness", "agreeable", "antagonistic"),
    ("conscientiousness", "conscientious", "unconscientious"),
    ("neuroticism", "neurotic", "emotionally stable"),
    ("openness", "open to experience", "closed to experience"),
)
AGE_GROUPS = ("child", "adolescent", "adult", "older adult")
GENDERS = ("male", "female", "non-binary", "unknown")
EDUCATION_LEVELS = ("some schooling", "high school", "college & beyond")
SOCIOECO_LEVELS = ("lower", "middle", "upper")

FIELDS = ("traits", "age", "gender", "education", "socioeco", "preferences", "routines", "summary")

# Key spellings seen in model outputs -> our field. Keys are compared after _key() normalisation.
_KEY_ALIASES: dict[str, str] = {
    **{k: "traits" for k in ("traits", "trait", "big_five", "big5", "bigfive", "personality",
                             "personality_traits", "big_five_traits", "big_five_personality_traits")},
    **{k: "age" for k in ("age", "age_group", "agegroup", "age_range", "age_category")},
    **{k: "gender" for k in ("gender", "sex")},
    **{k: "education" for k in ("education", "education_level", "educational_level", "educational_background",
                                "education_background", "schooling")},
    **{k: "socioeco" for k in ("socioeco", "socio_economic", "socioeconomic", "socio_economic_level",
                               "socioeconomic_level", "socio_economic_status", "socioeconomic_status",
                               "ses", "income", "income_level", "economic_status", "social_class",
                               "class")},
    **{k: "preferences" for k in ("preferences", "preference", "interests", "likes", "favorites",
                                  "favourites")},
    **{k: "routines" for k in ("routines", "routine", "habits", "daily_routines", "patterns")},
    **{k: "summary" for k in ("summary", "profile_summary", "description", "system_prompt", "bio",
                              "overview", "user_profile", "user_profile_summary")},
    # GenUP's schema: one list [age, gender, edu, socioeco] (split into the four fields below).
    **{k: "attributes" for k in ("attributes", "demographics")},
}
#: The keys of GenUP's profile JSON (gpt.py: ``{"traits", "attributes", "preferences", "routines",
#: "user_profile"}``), and the fields its ``attributes`` list holds, in order.
GENUP_KEYS = ("traits", "attributes", "preferences", "routines", "user_profile")
GENUP_ATTRIBUTES = ("age", "gender", "education", "socioeco")
# GenUP's prompt offers "open / closed to experience"; models answer "open" or "closed", which is
# GenUP's own spelling of our pole, not a repair.
_GENUP_NATIVE_TRAITS = frozenset({"open", "closed"})

# Value spellings -> canonical value, compared after _norm() (lower case, no parenthetical).
_AGE_ALIASES = {
    "child": "child", "children": "child", "kid": "child",
    "adolescent": "adolescent", "adolescents": "adolescent", "teen": "adolescent",
    "teenager": "adolescent", "youth": "adolescent",
    "adult": "adult", "adults": "adult", "young adult": "adult", "middle aged": "adult",
    "middle-aged": "adult", "middle aged adult": "adult", "grown up": "adult",
    "older adult": "older adult", "older adults": "older adult", "old adult": "older adult",
    "senior": "older adult", "seniors": "older adult", "elderly": "older adult", "old": "older adult",
    "older": "older adult", "retiree": "older adult",
}
_GENDER_ALIASES = {
    "male": "male", "m": "male", "man": "male", "men": "male", "boy": "male",
    "female": "female", "f": "female", "woman": "female", "women": "female", "girl": "female",
    "non-binary": "non-binary", "nonbinary": "non-binary", "non binary": "non-binary",
    "unknown": "unknown", "unspecified": "unknown", "not specified": "unknown", "n/a": "unknown",
    "undisclosed": "unknown", "other": "non-binary",
}
_EDUCATION_ALIASES = {
    "some schooling": "some schooling", "some school": "some schooling", "primary": "some schooling",
    "primary school": "some schooling", "elementary": "some schooling", "elementary school": "some schooling",
    "less than high school": "some schooling", "middle school": "some schooling",
    "high school": "high school", "highschool": "high school", "high-school": "high school",
    "secondary": "high school", "secondary school": "high school", "high school diploma": "high school",
    "college & beyond": "college & beyond", "college and beyond": "college & beyond",
    "college": "college & beyond", "university": "college & beyond", "bachelor": "college & beyond",
    "bachelors": "college & beyond", "bachelor's": "college & beyond", "bachelor's degree": "college & beyond",
    "graduate": "college & beyond", "postgraduate": "college & beyond", "master": "college & beyond",
    "masters": "college & beyond", "master's": "college & beyond", "phd": "college & beyond",
    "college degree": "college & beyond", "college educated": "college & beyond",
    "college or beyond": "college & beyond", "college+": "college & beyond", "higher education": "college & beyond",
}
_SOCIOECO_ALIASES = {
    "lower": "lower", "low": "lower", "lower class": "lower", "low income": "lower", "working class": "lower",
    "poor": "lower",
    "middle": "middle", "medium": "middle", "middle class": "middle", "average": "middle",
    "moderate": "middle", "middle income": "middle", "upper middle": "middle", "upper-middle": "middle",
    "lower middle": "middle", "lower-middle": "middle", "upper middle class": "middle",
    "lower middle class": "middle", "upper-middle class": "middle", "lower-middle class": "middle",
    "upper": "upper", "high": "upper", "upper class": "upper", "high income": "upper", "wealthy": "upper",
    "affluent": "upper", "rich": "upper",
}
# Trait spellings -> (dimension index, pole).
_TRAIT_ALIASES: dict[str, tuple[int, str]] = {}
for _i, (_dim, _hi, _lo) in enumerate(TRAIT_POLES):
    _TRAIT_ALIASES[_hi] = (_i, _hi)
    _TRAIT_ALIASES[_lo] = (_i, _lo)
for _word, (_i, _pole) in {
    "extraverted": (0, "extroverted"), "extrovert": (0, "extroverted"), "extravert": (0, "extroverted"),
    "extroversion": (0, "extroverted"), "extraversion": (0, "extroverted"), "outgoing": (0, "extroverted"),
    "introvert": (0, "introverted"), "introversion": (0, "introverted"),
    "agreeableness": (1, "agreeable"), "disagreeable": (1, "antagonistic"), "antagonism": (1, "antagonistic"),
    "conscientiousness": (2, "conscientious"), "unconscientiousness": (2, "unconscientious"),
    "not conscientious": (2, "unconscientious"), "careless": (2, "unconscientious"),
    "neuroticism": (3, "neurotic"), "emotional stability": (3, "emotionally stable"),
    "stable": (3, "emotionally stable"), "emotionally-stable": (3, "emotionally stable"),
    "open": (4, "open to experience"), "openness": (4, "open to experience"),
    "open to experiences": (4, "open to experience"), "open to new experiences": (4, "open to experience"),
    "openness to experience": (4, "open to experience"), "open-minded": (4, "open to experience"),
    "closed": (4, "closed to experience"), "closed to experiences": (4, "closed to experience"),
    "closed to new experiences": (4, "closed to experience"), "closed-minded": (4, "closed to experience"),
}.items():
    _TRAIT_ALIASES[_word] = (_i, _pole)
# Dimension names for the dict form {"openness": "high"}.
_DIMENSION_ALIASES = {
    "extraversion": 0, "extroversion": 0, "agreeableness": 1, "conscientiousness": 2, "neuroticism": 3,
    "emotional_stability": 3, "openness": 4, "openness_to_experience": 4,
}
_HIGH = {"high", "yes", "true", "very high", "above average", "strong"}
_LOW = {"low", "no", "false", "very low", "below average", "weak"}


@dataclass(frozen=True, kw_only=True)
class ParsedProfile:
    """One model output after validation: the fields (``None`` where not recovered), the status, the
    repairs applied and the unknown keys kept aside."""

    traits: tuple[str, ...] = ()
    age: str | None = None
    gender: str | None = None
    education: str | None = None
    socioeco: str | None = None
    preferences: tuple[str, ...] = ()
    routines: tuple[str, ...] = ()
    summary: str | None = None
    status: Status = "failed"
    error: str | None = None
    repairs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``"genup"`` when the output was GenUP's schema (``attributes`` list, ``user_profile`` text).
    schema: Literal["genrec", "genup"] = "genrec"
    #: Where each recovered field came from: ``"model"`` (the model wrote it and it was used as
    #: written), ``"repair"`` (the model wrote it, the parser had to fix it: an alias, a split list,
    #: a truncated string closed), ``"draft"`` (the model did not give it; the statistical draft's).
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True unless the status is ``failed``."""
        return self.status != "failed"

    def to_row(self) -> dict[str, Any]:
        """The profile columns of docs/design.md §2 (plus ``repairs`` and ``extra`` as JSON)."""
        row = asdict(self)
        row["traits"] = list(self.traits)
        row["preferences"] = list(self.preferences)
        row["routines"] = list(self.routines)
        row["repairs"] = list(self.repairs)
        row["extra"] = json.dumps(self.extra, sort_keys=True, default=str) if self.extra else None
        row["sources"] = json.dumps(self.sources) if self.sources else None
        del row["schema"]
        return row


def _key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.strip().lower()).strip("_")


def _norm(value: str) -> str:
    text = re.sub(r"\(.*?\)", " ", value.lower())  # "adult (18-64)" -> "adult"
    text = text.replace("_", " ")
    text = re.sub(r"[\s]+", " ", text).strip(" .;:,!'\"")
    return text


# ---------------------------------------------------------------------------------------- JSON text


def _strip_fences(text: str) -> str:
    match = re.search(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", text, flags=re.S)
    return match.group(1) if match else text


def _closers(text: str) -> tuple[str, bool]:
    """The brackets (and quote) that close ``text``; the flag says whether a string was left open."""
    stack: list[str] = []
    in_str = escape = False
    for ch in text:
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return ('"' if in_str else "") + "".join(reversed(stack)), in_str


def _balanced_object(text: str) -> str | None:
    """The first complete ``{...}`` in ``text``, or None when the braces never balance."""
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    in_str = escape = False
    for pos in range(start, len(text)):
        ch = text[pos]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : pos + 1]
    return None


def _lenient_loads(candidate: str) -> tuple[Any, list[str]]:
    """json.loads, then the usual near-misses: trailing commas, single quotes, Python literals."""
    try:
        return json.loads(candidate), []
    except json.JSONDecodeError:
        pass
    repairs = []
    fixed = re.sub(r",\s*([}\]])", r"\1", candidate)
    if fixed != candidate:
        repairs.append("removed trailing commas")
    try:
        return json.loads(fixed), repairs
    except json.JSONDecodeError:
        pass
    if "'" in fixed and '"' not in fixed:
        fixed = fixed.replace("'", '"')
        repairs.append("replaced single quotes")
    fixed2 = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    if fixed2 != fixed:
        repairs.append("replaced Python literals")
    return json.loads(fixed2), repairs  # raises JSONDecodeError when still invalid


def _close_truncated(body: str) -> tuple[Any, list[str]]:
    """Parse JSON that was cut off: close the open string and brackets, dropping a dangling key or
    half-written element when needed."""
    cuts = [len(body), *[m.start() for m in re.finditer(",", body)][::-1]]
    for cut in cuts:
        head = body[:cut].rstrip()
        head = re.sub(r'[,:]\s*$', "", head)
        closers, open_string = _closers(head)
        if open_string and not re.search(r'"summary"\s*:\s*"(?:[^"\\]|\\.)*$', head):
            continue  # a half-written value other than the summary is not worth keeping
        try:
            value, repairs = _lenient_loads(head + closers)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value, [*repairs, "closed truncated JSON"]
    raise json.JSONDecodeError("cannot close truncated JSON", body, 0)


def _extract_object(text: str) -> tuple[dict[str, Any], list[str]]:
    repairs: list[str] = []
    stripped = text.strip()
    # A valid object as written (what constrained decoding gives) is taken as is: its strings may
    # hold anything, fences included, that the repairs below would misread.
    try:
        whole_value = json.loads(stripped)
    except json.JSONDecodeError:
        whole_value = None
    if isinstance(whole_value, dict):
        return whole_value, repairs
    body = _strip_fences(stripped)
    if body != stripped:
        repairs.append("removed code fence")
    start = body.find("{")
    if start < 0:
        raise ValueError("no JSON object in the output")
    if body[:start].strip():
        repairs.append("removed text before the JSON object")
    whole = _balanced_object(body)
    if whole is not None:
        if body[start + len(whole) :].strip():
            repairs.append("removed text after the JSON object")
        try:
            value, more = _lenient_loads(whole)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    else:
        try:
            value, more = _close_truncated(body[start:])
        except json.JSONDecodeError:
            raise ValueError("truncated JSON that cannot be closed") from None
    if not isinstance(value, dict):
        raise ValueError(f"JSON is a {type(value).__name__}, not an object")
    return value, repairs + more


# ------------------------------------------------------------------------------------------- fields


def _as_text_list(value: Any, name: str, repairs: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [p for p in re.split(r"[;\n]|,(?![^()]*\))", value)]
        repairs.append(f"{name}: split a string into a list")
    elif isinstance(value, dict):
        items = [f"{k}: {v}" if v not in (None, "", True) else str(k) for k, v in value.items()]
        repairs.append(f"{name}: flattened an object into a list")
    elif isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, dict):
                items.append("; ".join(str(v) for v in item.values() if v not in (None, "")))
                repairs.append(f"{name}: flattened an object item")
            elif item is not None:
                items.append(str(item))
    else:
        raise ValueError(f"field {name!r}: expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for item in items:
        clean = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", item).strip()
        if clean and clean not in out:
            out.append(clean)
    if not out:
        raise ValueError(f"field {name!r}: empty list")
    # Surrounding blanks are trimmed silently (normalisation, not a repair of what the model meant).
    if isinstance(value, list) and out != [v.strip() if isinstance(v, str) else v for v in value]:
        repairs.append(f"{name}: stripped bullets, blanks or duplicates")
    return tuple(out)


def _choice(value: Any, name: str, aliases: dict[str, str], allowed: tuple[str, ...], repairs: list[str]) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
        repairs.append(f"{name}: unwrapped a one-element list")
    if not isinstance(value, str):
        raise ValueError(f"field {name!r}: expected one of {', '.join(allowed)}, got {value!r}")
    if value in allowed:
        return value
    norm = _norm(value)
    found = aliases.get(norm)
    if found is None:
        # "Adult male", "middle-class household": take a known phrase contained in the value, longest
        # first, but only when all hits agree.
        hits = {canon for alias, canon in aliases.items() if re.search(rf"(?<![\w-]){re.escape(alias)}(?![\w-])", norm)}
        if len(hits) == 1:
            found = hits.pop()
    if found is None:
        raise ValueError(f"field {name!r}: {value!r} is not one of {', '.join(allowed)}")
    repairs.append(f"{name}: {value!r} -> {found!r}")
    return found


def _trait_pole(text: str) -> tuple[int, str] | None:
    norm = _norm(text)
    if norm in _TRAIT_ALIASES:
        return _TRAIT_ALIASES[norm]
    norm = re.sub(r"^(?:highly|very|quite|somewhat|mostly|rather|slightly|high in|low in)\s+", "", norm)
    negated = re.match(r"^(?:not|un|non)[\s-]+(.*)$", norm)
    if norm in _TRAIT_ALIASES:
        return _TRAIT_ALIASES[norm]
    if negated and negated.group(1) in _TRAIT_ALIASES:
        dim, pole = _TRAIT_ALIASES[negated.group(1)]
        other = TRAIT_POLES[dim][2] if pole == TRAIT_POLES[dim][1] else TRAIT_POLES[dim][1]
        return dim, other
    return None


def _traits(
    value: Any, repairs: list[str], fallback: Sequence[str] = (), native: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    poles: dict[int, str] = {}
    items: list[tuple[str | None, Any]]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        # [{"trait": "Extraversion", "level": "high"}, ...] -> {"Extraversion": "high", ...}
        pairs = [[x for x in v.values() if isinstance(x, (str, int, float))] for v in value]
        if all(len(p) == 2 for p in pairs):
            value = {str(p[0]): p[1] for p in pairs}
            repairs.append("traits: flattened a list of trait objects")
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        items = [(None, v) for v in re.split(r"[,;/\n]", value) if v.strip()]
        repairs.append("traits: split a string into a list")
    elif isinstance(value, list):
        items = [(None, v) for v in value]
    else:
        raise ValueError(f"field 'traits': expected a list of five poles, got {type(value).__name__}")
    for key, item in items:
        dim_from_key = _DIMENSION_ALIASES.get(_key(key)) if key is not None else None
        hit: tuple[int, str] | None = None
        if isinstance(item, str):
            hit = _trait_pole(item)
            if hit is None and dim_from_key is not None:
                level = _norm(item)
                _, hi, lo = TRAIT_POLES[dim_from_key]
                if level in _HIGH:
                    hit = (dim_from_key, hi)
                elif level in _LOW:
                    hit = (dim_from_key, lo)
        elif isinstance(item, (int, float)) and dim_from_key is not None:
            _, hi, lo = TRAIT_POLES[dim_from_key]
            scale = 1.0 if float(item) <= 1.0 else 10.0 if float(item) <= 10 else 100.0
            hit = (dim_from_key, hi if float(item) / scale >= 0.5 else lo)
        if hit is None and key is not None and dim_from_key is None:
            hit = _trait_pole(key) if item in (True, "yes", "true") else None
        if hit is None:
            raise ValueError(f"field 'traits': {item!r} is not a Big Five pole")
        dim, pole = hit
        if dim in poles and poles[dim] != pole:
            raise ValueError(f"field 'traits': both {poles[dim]!r} and {pole!r} given for {TRAIT_POLES[dim][0]}")
        plain = isinstance(item, str) and key is None and (item == pole or item in native)
        if not plain:
            repairs.append(f"traits: {item!r} -> {pole!r}" if key is None else f"traits: {key}={item!r} -> {pole!r}")
        poles[dim] = pole
    for pole in fallback:
        hit = _trait_pole(pole)
        if hit is not None and hit[0] not in poles:
            poles[hit[0]] = hit[1]
            repairs.append(f"traits: no pole for {TRAIT_POLES[hit[0]][0]}; kept the draft's {hit[1]!r}")
    missing = [TRAIT_POLES[d][0] for d in range(len(TRAIT_POLES)) if d not in poles]
    if missing:
        raise ValueError(f"field 'traits': no pole for {', '.join(missing)}")
    ordered = tuple(poles[d] for d in range(len(TRAIT_POLES)))
    given = [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    if len(given) == len(ordered) and set(given) == set(ordered) and tuple(given) != ordered:
        repairs.append("traits: reordered to extraversion, agreeableness, conscientiousness, neuroticism, openness")
    return ordered


def _unwrap(obj: dict[str, Any], repairs: list[str]) -> dict[str, Any]:
    """``{"profile": {...}}`` or ``{"user_profile": {...}}`` -> the inner object."""
    known = {_KEY_ALIASES.get(_key(k)) for k in obj}
    if len(known - {None}) >= 3:
        return obj
    nested = [v for v in obj.values() if isinstance(v, dict)]
    if len(nested) == 1 and len({_KEY_ALIASES.get(_key(k)) for k in nested[0]} - {None}) >= 3:
        repairs.append("unwrapped a nested profile object")
        return {**{k: v for k, v in obj.items() if not isinstance(v, dict)}, **nested[0]}
    return obj


def parse_profile(text: str, *, draft: Mapping[str, Any] | None = None) -> ParsedProfile:
    """Validate, repair and normalise one model output into a :class:`ParsedProfile`.

    ``status`` is ``ok`` when the output was valid as given, ``repaired`` when it needed repairs that
    are listed in ``repairs``, ``failed`` when a field could not be recovered (``error`` says which and
    why; the fields that could be recovered are still filled in). Never raises on bad model output.
    """
    repairs: list[str] = []
    try:
        obj, json_repairs = _extract_object(text or "")
    except ValueError as exc:
        return ParsedProfile(status="failed", error=str(exc))
    repairs.extend(json_repairs)
    obj = _unwrap(obj, repairs)
    # A value the truncation repair closed is the model's text, cut: counted as repaired.
    cut_key = _KEY_ALIASES.get(_key(next(reversed(obj)))) if obj and "closed truncated JSON" in json_repairs else None

    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        target = _KEY_ALIASES.get(_key(key))
        if target is None:
            extra[key] = value
            continue
        if target in values:
            extra[key] = value
            repairs.append(f"key {key!r}: duplicate of {target!r}, kept aside")
            continue
        if key != target and not (key == "user_profile" and isinstance(value, str)):
            repairs.append(f"key {key!r} -> {target!r}")
        values[target] = value

    errors: list[str] = []
    schema: Literal["genrec", "genup"] = "genrec"
    if "attributes" in values:
        schema = "genup"
        attrs = values.pop("attributes")
        if isinstance(attrs, dict):
            named = {_KEY_ALIASES.get(_key(str(k))): v for k, v in attrs.items()}
            attrs = [named.get(name) for name in GENUP_ATTRIBUTES]
            repairs.append("attributes: an object instead of GenUP's [age, gender, edu, socioeco] list")
        if isinstance(attrs, list) and len(attrs) == len(GENUP_ATTRIBUTES):
            for name, value in zip(GENUP_ATTRIBUTES, attrs):
                if name in values:
                    extra.setdefault("attributes", attrs)
                    repairs.append(f"attributes: {name} also given on its own, kept that one")
                else:
                    values[name] = value
        else:
            extra["attributes"] = attrs
            errors.append(f"field 'attributes': expected GenUP's [age, gender, edu, socioeco], got {attrs!r}")
    native = _GENUP_NATIVE_TRAITS if schema == "genup" else frozenset()
    fields: dict[str, Any] = {}
    fallback: Sequence[str] = tuple(draft.get("traits", ())) if draft else ()
    parsers = {
        "traits": lambda v: _traits(v, repairs, fallback, native),
        "age": lambda v: _choice(v, "age", _AGE_ALIASES, AGE_GROUPS, repairs),
        "gender": lambda v: _choice(v, "gender", _GENDER_ALIASES, GENDERS, repairs),
        "education": lambda v: _choice(v, "education", _EDUCATION_ALIASES, EDUCATION_LEVELS, repairs),
        "socioeco": lambda v: _choice(v, "socioeco", _SOCIOECO_ALIASES, SOCIOECO_LEVELS, repairs),
        "preferences": lambda v: _as_text_list(v, "preferences", repairs),
        "routines": lambda v: _as_text_list(v, "routines", repairs),
    }
    sources: dict[str, str] = {}
    for name, parse in parsers.items():
        problem = None
        before = len(repairs)
        if name not in values or values[name] in (None, ""):
            problem = f"field {name!r}: missing"
        else:
            try:
                fields[name] = parse(values[name])
                mine = repairs[before:]
                sources[name] = ("draft" if any("draft" in r for r in mine) else
                                 "repair" if mine or (cut_key is not None and cut_key in (name, "attributes" if name in GENUP_ATTRIBUTES else ""))
                                 else "model")
            except ValueError as exc:
                problem = str(exc)
        if problem is not None and draft is not None and draft.get(name) not in (None, ""):
            # The model was asked to improve the draft: a field it dropped or garbled keeps the
            # draft's value, and the repair says so. The summary never comes from the draft.
            try:
                fields[name] = parse(draft[name])
                repairs.append(f"{problem}; kept the draft's value")
                sources[name] = "draft"
                continue
            except ValueError:
                pass
        if problem is not None and not (schema == "genup" and name in GENUP_ATTRIBUTES and "attributes" in extra
                                        and problem.endswith("missing")):
            errors.append(problem)
    summary = values.get("summary")
    summary_source = "repair" if cut_key == "summary" else "model"
    if isinstance(summary, list) and all(isinstance(s, str) for s in summary):
        summary = " ".join(summary)
        repairs.append("summary: joined a list of strings")
        summary_source = "repair"
    if not isinstance(summary, str) or not summary.strip():
        errors.append("field 'summary': missing" if summary in (None, "") else "field 'summary': not a string")
    else:
        fields["summary"] = summary.strip()
        sources["summary"] = summary_source

    if errors:
        status: Status = "failed"
    elif repairs:
        status = "repaired"
    else:
        status = "ok"
    return ParsedProfile(
        **fields,
        status=status,
        error="; ".join(errors) if errors else None,
        repairs=tuple(repairs),
        extra=extra,
        schema=schema,
        sources={name: sources[name] for name in FIELDS if name in sources},
    )
