"""genrec-core: the foundation every genrec package builds on.

Torch-free at import time: the table contracts (:mod:`genrec_core` ``CHECKINS``, ``PROFILES``,
``SFT_RECORDS``, ``FEATURES``, ``SELECTION``, ``PREDICTIONS`` and ``validate_metrics``), atomic
writes, the cache folder and content fingerprints, folder locks, and the CLI helpers. The model
resolver, dtype probes and tiny models live in :mod:`genrec_core.models` (extra ``models``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from genrec_core._cache import (
    HASH_LIMIT_BYTES,
    FolderLock,
    LockHeldError,
    UnsafeCacheError,
    cache_dir,
    fingerprint,
    locked,
    private_cache_dir,
    sha256_file,
)
from genrec_core._cli import add_config_args, command_parser, config_from_args, dispatch, run_main
from genrec_core._contracts import (
    CHECKINS,
    CONTRACTS,
    FEATURES,
    PREDICTIONS,
    PROFILES,
    RAW_CHECKINS,
    SELECTION,
    SFT_RECORDS,
    SPLITS,
    TASK_COLUMNS,
    TASKS,
    Column,
    Contract,
    ContractError,
    contracts_markdown,
    read_table,
    validate_metrics,
)
from genrec_core._errors import GenrecError
from genrec_core._io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
)
from genrec_core._redact import REDACTED, redact, redact_all, redact_url, url_secrets

try:
    __version__ = version("genrec-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "CHECKINS",
    "CONTRACTS",
    "FEATURES",
    "HASH_LIMIT_BYTES",
    "PREDICTIONS",
    "PROFILES",
    "RAW_CHECKINS",
    "REDACTED",
    "SELECTION",
    "SFT_RECORDS",
    "SPLITS",
    "TASKS",
    "TASK_COLUMNS",
    "Column",
    "Contract",
    "ContractError",
    "FolderLock",
    "GenrecError",
    "LockHeldError",
    "UnsafeCacheError",
    "__version__",
    "add_config_args",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "cache_dir",
    "command_parser",
    "config_from_args",
    "contracts_markdown",
    "dispatch",
    "fingerprint",
    "locked",
    "private_cache_dir",
    "read_table",
    "redact",
    "redact_all",
    "redact_url",
    "run_main",
    "sha256_file",
    "url_secrets",
    "validate_metrics",
]
