"""The package's one exception type."""

from __future__ import annotations


class SftDataError(ValueError):
    """Bad input to genrec-sftdata: the message names the file, column or field and an example value."""
