"""The Python example in the pipeline README runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("readme", [ROOT / "README.md", ROOT / "packages" / "pipeline" / "README.md"])
def test_readme_python_example_runs(readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    assert blocks, "the README lost its Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(readme), "exec"), namespace)
    records = namespace["records"]
    assert records.files["train"].is_file()  # type: ignore[attr-defined]
    assert os.path.isdir(tmp_path / "work" / "profiles")
