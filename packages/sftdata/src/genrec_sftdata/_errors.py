"""The package's one exception type."""

from __future__ import annotations

from genrec_core import GenrecError


class SftDataError(GenrecError):
    """Bad input to genrec-sftdata: the message names the file, column or field and an example value."""
