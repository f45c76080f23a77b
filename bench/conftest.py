"""Shared by every bench/<package>/bench_*.py: stamps each benchmark's ``extra_info`` with the device,
the bench size (``GENREC_BENCH_SIZE``) and library versions, when pytest-benchmark writes its JSON.

It registers no markers or options (the root config runs with ``--strict-markers``) and imports
nothing heavy: torch only when naming a GPU needs it, and then only once at the end of the session.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

# `--import-mode=importlib` does not put this folder on sys.path; the helpers live next to us.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)  # appended: bench/<package> folders must not shadow installed modules

from _benchtool.provenance import annotate, provenance  # noqa: E402

# bench/run.py sends SIGUSR1 to a package that runs out of time: dump every thread's stack to the
# file it names, so a hung benchmark says where it hangs. The file's existence tells run.py that the
# handler is in place (before that, SIGUSR1 would simply kill pytest).
_STACKS = os.environ.get("GENREC_BENCH_STACKS")
if _STACKS and hasattr(signal, "SIGUSR1"):
    _stacks_file = open(_STACKS, "w")  # noqa: SIM115 -- stays open for the whole session
    faulthandler.register(signal.SIGUSR1, file=_stacks_file, all_threads=True)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    info = provenance()
    machine_info["genrec"] = {key: info[key] for key in ("device_name", "device_slug", "device_kind")}
    machine_info["genrec"]["versions"] = info["versions"]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    annotate(output_json.get("benchmarks") or [], provenance())
