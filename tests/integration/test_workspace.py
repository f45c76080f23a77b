"""The workspace foundation: every package installs, reports its version, answers --help, and the
light packages stay light."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["sftdata", "profiler", "otcoreset", "trainer", "evaluator", "pipeline"]
# genrec-core: the foundation, a library without a command of its own.
LIBRARIES = ["core"]
SCRIPTS = {name: f"genrec-{name}" for name in PACKAGES} | {"pipeline": "genrec"}
# docs/design.md §1: the only genrec siblings each package may depend on (core is below all of them).
ALLOWED_SIBLINGS = {
    "core": set(),
    "sftdata": {"core"},
    "profiler": {"core", "sftdata"},
    "otcoreset": {"core"},
    "trainer": {"core"},
    "evaluator": {"core", "sftdata"},
    "pipeline": {"core", "sftdata", "profiler", "otcoreset", "trainer", "evaluator"},
}


def _pyproject(name: str) -> dict:
    return tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())


def _installed(name: str) -> bool:
    return importlib.util.find_spec(f"genrec_{name}") is not None


@pytest.mark.parametrize("name", PACKAGES + LIBRARIES)
def test_layout_and_metadata(name: str) -> None:
    pkg = ROOT / "packages" / name
    meta = _pyproject(name)["project"]
    assert meta["name"] == f"genrec-{name}"
    assert meta["version"] == "0.1.0"
    assert (pkg / "README.md").read_text().strip().startswith(f"# genrec-{name}")
    assert (pkg / "src" / f"genrec_{name}" / "py.typed").is_file()
    if name in LIBRARIES:
        assert "scripts" not in meta
    else:
        assert meta["scripts"] == {SCRIPTS[name]: f"genrec_{name}._cli:main"}


@pytest.mark.parametrize("name", PACKAGES + LIBRARIES)
def test_sibling_dependencies_follow_the_design(name: str) -> None:
    deps = _pyproject(name)["project"]["dependencies"]
    siblings = {}
    for dep in deps:
        if dep.startswith("genrec-"):
            head = dep.split(">")[0].split("[")[0].split("=")[0].split("<")[0]
            siblings[head.removeprefix("genrec-")] = dep
    assert set(siblings) == ALLOWED_SIBLINGS[name]
    for dep in siblings.values():
        assert "==" not in dep and ">=" in dep and "<" in dep, f"sibling pins must be ranges: {dep}"


@pytest.mark.parametrize("name", PACKAGES + LIBRARIES)
def test_version_and_public_names(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"genrec-{name} is not installed in this environment")
    mod = importlib.import_module(f"genrec_{name}")
    assert mod.__version__ == "0.1.0"
    assert "__version__" in mod.__all__
    for public in mod.__all__:
        assert hasattr(mod, public), f"genrec_{name}.__all__ names missing {public}"


@pytest.mark.parametrize("name", PACKAGES)
def test_cli_version_and_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not _installed(name):
        pytest.skip(f"genrec-{name} is not installed in this environment")
    cli = importlib.import_module(f"genrec_{name}._cli")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"{SCRIPTS[name]} 0.1.0"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert f"usage: {SCRIPTS[name]}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["core", "sftdata", "evaluator", "profiler"])
def test_light_packages_do_not_import_torch(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"genrec-{name} is not installed in this environment")
    code = (
        f"import sys, genrec_{name}, genrec_{name}._cli; "
        "heavy = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"importing genrec_{name} pulled in {proc.stdout.strip()} {proc.stderr}"


@pytest.mark.parametrize("name", PACKAGES)
def test_console_script_runs(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"genrec-{name} is not installed in this environment")
    exe = Path(sys.executable).parent / SCRIPTS[name]
    if not exe.exists():
        pytest.skip(f"{exe} not installed as a console script")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{SCRIPTS[name]} 0.1.0"
