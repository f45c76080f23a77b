"""Every relative link and every repository path the docs name points at something that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "docs" / "design.md", ROOT / "bench" / "README.md"]
DOCS += sorted((ROOT / "packages").glob("*/README.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Backticked repository paths (`packages/x/...`, `bench/...`, `tests/...`, `docs/...`) that name files.
PATH = re.compile(r"`((?:packages|bench|tests|docs)/[\w./-]+\.(?:py|md|toml|json))`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    for target in PATH.findall(text):
        if "*" in target or "<" in target:
            continue
        if not (ROOT / target).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist: {missing}"
