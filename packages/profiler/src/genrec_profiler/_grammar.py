"""Constrained decoding: the profile's JSON schema, and grammar engines that turn it into a token mask.

:func:`profile_json_schema` is what the model must write (``genrec`` or ``genup`` protocol): bounded
arrays, bounded strings, enums where a field is categorical, every key required, no other key. The
OpenAI backend sends it as ``response_format`` ``json_schema``; the local backend enforces it in its
own decode loop through a :class:`GrammarEngine` (one matcher per row, a bitmask of allowed tokens per
step). Three engines sit behind the same small interface so they can be measured on the same loop
(numbers in the README, "Constrained decoding"); ``xgrammar`` is the default.

Nothing here imports torch or an engine until an engine is built.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

from genrec_profiler._errors import ProfilerError
from genrec_profiler._schema import AGE_GROUPS, EDUCATION_LEVELS, GENDERS, SOCIOECO_LEVELS, TRAIT_POLES

logger = logging.getLogger(__name__)

#: Engines in the order ``"auto"`` tries them (the measured best first; README).
ENGINES = ("xgrammar", "llguidance", "outlines")

# Bounds sized so that the whole object closes within the default config's 220 new tokens for
# SmolLM2's tokenizer (about 4 characters a token in these strings, ~75 tokens of keys, enums and
# punctuation): a bounded string is closed by the grammar itself, never by the token budget.
PHRASE_CHARS = (3, 48)
LIST_ITEMS = (1, 3)
SUMMARY_CHARS = (40, 400)


def _phrases() -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": PHRASE_CHARS[0], "maxLength": PHRASE_CHARS[1]},
        "minItems": LIST_ITEMS[0],
        "maxItems": LIST_ITEMS[1],
    }


def _traits() -> dict[str, Any]:
    return {
        "type": "array",
        "prefixItems": [{"enum": [hi, lo]} for _, hi, lo in TRAIT_POLES],
        "items": False,
        "minItems": len(TRAIT_POLES),
        "maxItems": len(TRAIT_POLES),
    }


def profile_json_schema(protocol: Literal["genrec", "genup", "genup_cot"] = "genrec") -> dict[str, Any]:
    """The JSON schema of one profile as the model writes it, keys in the order they are asked.

    ``genrec``: our eight keys (``traits, age, gender, education, socioeco, preferences, routines,
    summary``); ``genup``: GenUP's five (``traits, attributes, preferences, routines, user_profile``,
    ``attributes`` being ``[age, gender, edu, socioeco]``). Categorical fields are enums of the
    canonical values :func:`parse_profile` accepts without a repair; ``unknown`` is not offered for
    gender (a model asked to guess should guess; the template backend is the one that says unknown).
    ``genup_cot`` is not a profile: GenUP's chain-of-thought reasoning object (gpt.py
    ``generate_poi_intention``: six string values, :data:`genrec_profiler.GENUP_COT_KEYS`).
    """
    if protocol == "genup_cot":
        from genrec_profiler._cot import GENUP_COT_KEYS

        return {
            "title": "genup_poi_reasoning",
            "type": "object",
            "properties": {k: {"type": "string"} for k in GENUP_COT_KEYS},
            "required": list(GENUP_COT_KEYS),
            "additionalProperties": False,
        }
    summary = {"type": "string", "minLength": SUMMARY_CHARS[0], "maxLength": SUMMARY_CHARS[1]}
    genders = [g for g in GENDERS if g != "unknown"]
    if protocol == "genup":
        props: dict[str, Any] = {
            "traits": _traits(),
            "attributes": {
                "type": "array",
                "prefixItems": [{"enum": list(AGE_GROUPS)}, {"enum": genders[:2]},
                                {"enum": list(EDUCATION_LEVELS)}, {"enum": list(SOCIOECO_LEVELS)}],
                "items": False,
                "minItems": 4,
                "maxItems": 4,
            },
            "preferences": _phrases(),
            "routines": _phrases(),
            "user_profile": summary,
        }
    elif protocol == "genrec":
        props = {
            "traits": _traits(),
            "age": {"enum": list(AGE_GROUPS)},
            "gender": {"enum": genders},
            "education": {"enum": list(EDUCATION_LEVELS)},
            "socioeco": {"enum": list(SOCIOECO_LEVELS)},
            "preferences": _phrases(),
            "routines": _phrases(),
            "summary": summary,
        }
    else:
        raise ProfilerError(
            f"profile_json_schema: protocol must be 'genrec', 'genup' or 'genup_cot', got {protocol!r}"
        )
    return {
        "title": "genup_profile" if protocol == "genup" else "genrec_profile",
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


# ------------------------------------------------------------------------------------------ engines


class GrammarEngine:
    """One engine bound to one tokenizer and one schema: matchers, masks, and the end of an object.

    Masks are int32 bitmasks of shape ``(rows, ceil(vocab / 32))`` (bit ``t % 32`` of word ``t // 32``
    set where token ``t`` is allowed), the layout all three engines write.
    """

    name = ""

    def __init__(self, tokenizer: Any, vocab_size: int, schema: dict[str, Any], stop_ids: Sequence[int]) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.stop_ids = sorted(int(t) for t in stop_ids)
        self._encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        import time

        t0 = time.perf_counter()
        self._compile(tokenizer, schema)
        #: Seconds the schema took to compile for this tokenizer (the README's comparison).
        self.compile_s = time.perf_counter() - t0

    def _compile(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        raise NotImplementedError

    def matcher(self) -> Any:
        """A fresh matcher at the start of the object."""
        raise NotImplementedError

    def start(self, prefix: str = "") -> Any:
        """A matcher that has read ``prefix`` (the start of the answer written into the prompt)."""
        m = self.matcher()
        for token in self._encode(prefix) if prefix else ():
            if not self.accept(m, token):
                raise ProfilerError(f"{self.name}: the answer prefix {prefix!r} does not start a profile")
        return m

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        """Write row ``i``'s allowed tokens into ``bitmask[i]`` for each matcher."""
        raise NotImplementedError

    def accept(self, matcher: Any, token: int) -> bool:
        """Advance ``matcher`` by ``token``; False where the grammar refuses it."""
        raise NotImplementedError

    def closed(self, matcher: Any) -> bool:
        """True once the object is complete (nothing but a stop token may follow)."""
        raise NotImplementedError


class _LLGuidance(GrammarEngine):
    name = "llguidance"

    def _compile(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self._ll = llguidance
        self._fill = llguidance.torch.fill_next_token_bitmask
        self._tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                 eos_token=self.stop_ids[0] if self.stop_ids else None)
        # Compact separators: flexible whitespace lets a small model pad the answer with newlines.
        self._grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ",
                                          "key_separator": ": "})
        first = self.matcher()  # compiles (llguidance builds lazily); later matchers reuse its caches
        if first.is_error():
            raise ProfilerError(f"llguidance: {first.get_error()}")

    def matcher(self) -> Any:
        return self._ll.LLMatcher(self._tok, self._grammar)

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        for i, m in enumerate(matchers):
            self._fill(m, bitmask, i)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))

    def closed(self, matcher: Any) -> bool:
        # The root is one JSON object: accepting means its "}" was written, only the end may follow.
        return bool(matcher.is_stopped() or matcher.is_accepting())


class _XGrammar(GrammarEngine):
    name = "xgrammar"

    def _compile(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                  stop_token_ids=self.stop_ids or None)
        compiler = xgr.GrammarCompiler(info, max_threads=2)
        self._compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                      separators=(", ", ": "))

    def matcher(self) -> Any:
        return self._xgr.GrammarMatcher(self._compiled)

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, i)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token))

    def closed(self, matcher: Any) -> bool:
        return bool(matcher.is_terminated() or matcher.is_completed())


class _Outlines(GrammarEngine):
    name = "outlines"

    def _compile(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern=r"")
        eos = self.stop_ids[0] if self.stop_ids else int(tokenizer.eos_token_id)
        vocab: dict[bytes, list[int]] = {}
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        decoder = _byte_decoder()
        for text, idx in tokenizer.get_vocab().items():
            if idx in special or idx >= self.vocab_size:
                continue
            try:
                raw = bytes(decoder[c] for c in text)
            except KeyError:  # not a byte-level BPE token: take it as text
                raw = text.encode("utf-8")
            vocab.setdefault(raw, []).append(idx)
        self._index = outlines_core.Index(regex, outlines_core.Vocabulary(eos, vocab))
        self._guide_cls = outlines_core.Guide

    def matcher(self) -> Any:
        return self._guide_cls(self._index)

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        for i, g in enumerate(matchers):
            g.write_mask_into(bitmask[i].data_ptr(), self.words, 4)

    def accept(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token)
        except ValueError:
            return False
        return True

    def closed(self, matcher: Any) -> bool:
        return bool(matcher.is_finished())


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet back to bytes (the characters tokens are spelt in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_CLASSES: dict[str, type[GrammarEngine]] = {"llguidance": _LLGuidance, "xgrammar": _XGrammar, "outlines": _Outlines}
_IMPORTS = {"llguidance": "llguidance", "xgrammar": "xgrammar", "outlines": "outlines_core"}


def available_engines() -> tuple[str, ...]:
    """The engines importable here, in :data:`ENGINES` order."""
    import importlib.util

    return tuple(e for e in ENGINES if importlib.util.find_spec(_IMPORTS[e]) is not None)


def build_engine(name: str, tokenizer: Any, vocab_size: int, schema: dict[str, Any],
                 stop_ids: Sequence[int]) -> GrammarEngine:
    """The engine ``name`` (one of :data:`ENGINES`) compiled for ``schema`` and this tokenizer."""
    if name not in _CLASSES:
        raise ProfilerError(f"grammar engine must be one of {', '.join(ENGINES)}, got {name!r}")
    return _CLASSES[name](tokenizer, vocab_size, schema, stop_ids)


def apply_bitmask(logits: Any, bitmask: Any) -> Any:
    """``logits`` (rows x vocab, float) with every token the bitmask forbids at ``-inf``, in place.

    Plain torch (unpack 32 bits a word), the same for every engine: 0.1 ms for 12 rows of 49k tokens.
    """
    import torch

    rows, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:rows].unsqueeze(-1) >> shifts) & 1).view(rows, -1)[:, :vocab].bool()
    return logits.masked_fill_(~allowed, float("-inf"))
