"""genrec-profiler: LLM-written user profiles (GenUP) from check-ins.

Backends behind one Protocol (:class:`LLMClient`): :class:`LocalBackend` (transformers),
:class:`OpenAIBackend` (any OpenAI-compatible server) and :class:`TemplateBackend` (statistics, no
LLM). torch and transformers are imported only when a local backend or an encoder is built.
"""

from importlib.metadata import PackageNotFoundError, version

from genrec_profiler._client import Completion, LLMClient, ProfileRequest
from genrec_profiler._cot import GENUP_COT_KEYS, GENUP_COT_PROMPT, genup_cot_prompt, write_cot_reasoning
from genrec_profiler._digest import UserDigest
from genrec_profiler._errors import ProfilerError
from genrec_profiler._generate import (
    PROFILE_SCHEMA,
    ProfilerConfig,
    ProfileRunResult,
    generate_profiles,
    read_profiles,
)
from genrec_profiler._genup import read_genup_profiles, write_genup_profiles
from genrec_profiler._grammar import ENGINES as GRAMMAR_ENGINES
from genrec_profiler._grammar import profile_json_schema
from genrec_profiler._models import resolve_model
from genrec_profiler._openai import OpenAIBackend
from genrec_profiler._prompt import GENUP_PROMPT, genup_messages
from genrec_profiler._schema import (
    AGE_GROUPS,
    EDUCATION_LEVELS,
    GENDERS,
    GENUP_KEYS,
    SOCIOECO_LEVELS,
    TRAIT_POLES,
    ParsedProfile,
    parse_profile,
)
from genrec_profiler._similar import similar_users
from genrec_profiler._stats import ProfileStats, profile_stats
from genrec_profiler._template import TemplateBackend

try:
    __version__ = version("genrec-profiler")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"


def __getattr__(name: str) -> object:
    # LocalBackend's module is cheap, but keeping it out of the eager imports makes the
    # "no torch on import" guarantee obvious.
    if name == "LocalBackend":
        from genrec_profiler._local import LocalBackend

        return LocalBackend
    raise AttributeError(f"module 'genrec_profiler' has no attribute {name!r}")


__all__ = [
    "AGE_GROUPS",
    "EDUCATION_LEVELS",
    "GENDERS",
    "GENUP_COT_KEYS",
    "GENUP_COT_PROMPT",
    "GENUP_KEYS",
    "GENUP_PROMPT",
    "GRAMMAR_ENGINES",
    "PROFILE_SCHEMA",
    "SOCIOECO_LEVELS",
    "TRAIT_POLES",
    "Completion",
    "LLMClient",
    "LocalBackend",
    "OpenAIBackend",
    "ParsedProfile",
    "ProfileRequest",
    "ProfileRunResult",
    "ProfileStats",
    "ProfilerConfig",
    "ProfilerError",
    "TemplateBackend",
    "UserDigest",
    "__version__",
    "generate_profiles",
    "genup_cot_prompt",
    "genup_messages",
    "parse_profile",
    "profile_json_schema",
    "profile_stats",
    "read_genup_profiles",
    "read_profiles",
    "resolve_model",
    "similar_users",
    "write_cot_reasoning",
    "write_genup_profiles",
]
