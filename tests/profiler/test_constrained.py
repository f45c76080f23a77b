"""Constrained decoding: whatever a model writes, the local backend's answer is the profile schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genrec_profiler import (
    ProfilerConfig,
    generate_profiles,
    parse_profile,
    profile_json_schema,
    profile_stats,
)

pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

from tests.profiler.test_local import prompt_corpus, sharp_model, tiny_model  # noqa: F401 - fixtures


def _check(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema profile_json_schema uses (no jsonschema dependency in the tests)."""
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
        return
    kind = schema["type"]
    if kind == "object":
        assert isinstance(value, dict) and list(value) == schema["required"], f"{where}: keys {list(value)}"
        for key, sub in schema["properties"].items():
            _check(value[key], sub, f"{where}.{key}")
    elif kind == "array":
        assert isinstance(value, list) and schema["minItems"] <= len(value) <= schema["maxItems"], where
        for i, item in enumerate(value):
            _check(item, schema["prefixItems"][i] if "prefixItems" in schema else schema["items"], f"{where}[{i}]")
    elif kind == "string":
        assert isinstance(value, str) and schema["minLength"] <= len(value) <= schema["maxLength"], where
        assert not any(ord(c) < 32 for c in value), f"{where}: control character"


@pytest.mark.parametrize("protocol", ["genrec", "genup"])
def test_constrained_sampling_always_writes_the_schema(sharp_model: Path, protocol: str) -> None:  # noqa: F811
    from genrec_profiler import LocalBackend
    from genrec_profiler._local import CONSTRAINED_PREFIX

    schema = profile_json_schema(protocol)  # type: ignore[arg-type]
    prompts = None
    for seed in (0, 1, 2, 3):
        # A random model sampled at temperature 1.5: only the grammar keeps it on the schema. The budget
        # fits the longest object the bounds allow, so every row closes by itself.
        backend = LocalBackend(sharp_model, max_new_tokens=1100, do_sample=True, temperature=1.5, top_p=1.0,
                               seed=seed, dtype="float32")
        prompts = prompts or [backend.render([{"role": "user", "content": t}], CONSTRAINED_PREFIX)
                              for t in ("hi", "profile user 7 who visits coffee shops", "x " * 40)]
        for text, _, n_out, finish in backend.generate_texts(prompts, protocol):
            value = json.loads(CONSTRAINED_PREFIX + text)
            _check(value, schema)
            assert finish == "stop" and 0 < n_out <= 1100
            parsed = parse_profile(CONSTRAINED_PREFIX + text)
            # The schema cannot forbid a repeated list item (no uniqueItems in the engines): the parser
            # drops the repeat, the only repair a constrained answer can need.
            assert parsed.schema == protocol and all("duplicates" in r for r in parsed.repairs), parsed.repairs
            assert set(parsed.sources.values()) <= {"model", "repair"}
        assert backend.grammar_engine == "xgrammar"


def test_a_run_records_model_fields_and_quality(tiny_model: Path, city: Any, tmp_path: Path) -> None:  # noqa: F811
    from genrec_profiler import LocalBackend

    backend = LocalBackend(tiny_model, max_new_tokens=1100, dtype="float32")
    result = generate_profiles(city, client=backend, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(users=3, batch_size=3, max_retries=0))
    assert (result.n_ok, result.n_repaired, result.n_failed) == (3, 0, 0)
    stats = profile_stats(result.path, data=city.path)
    assert stats.valid_rate == 1.0 and stats.truncated == 0 and stats.field_sources == {"model": 1.0}
    assert stats.copied is not None and 0.0 <= stats.copied <= 1.0
    assert stats.top3_agreement is not None and set(stats.distinct) >= {"age", "gender", "education", "socioeco"}
    assert stats.warnings() == [] or all(w.startswith("WARNING") for w in stats.warnings())

