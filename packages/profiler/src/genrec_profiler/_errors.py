"""The package's one exception type."""

from __future__ import annotations

from genrec_core import GenrecError


class ProfilerError(GenrecError):
    """Bad input to genrec-profiler: the message names the file, row or field and the bad value."""
