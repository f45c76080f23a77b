"""The package's one exception type."""

from __future__ import annotations


class ProfilerError(ValueError):
    """Bad input to genrec-profiler: the message names the file, row or field and the bad value."""
