"""docs/design.md carries the contracts as the code defines them."""

from __future__ import annotations

import re
from pathlib import Path

from genrec_core import contracts_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def test_design_doc_contracts_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- contracts:begin[^>]*-->\n(.*)\n<!-- contracts:end -->", text, re.S)
    assert block is not None, "docs/design.md lost its generated contracts block"
    assert block.group(1).strip() == contracts_markdown().strip(), (
        "docs/design.md §2 is out of date: paste genrec_core.contracts_markdown() between the markers"
    )
