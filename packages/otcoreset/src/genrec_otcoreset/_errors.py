"""The one exception type of genrec-otcoreset."""

from __future__ import annotations

from genrec_core import GenrecError

__all__ = ["OtCoresetError"]


class OtCoresetError(GenrecError):
    """Bad input to an otcoreset function; the message names the argument and the bad value.

    A :class:`genrec_core.GenrecError` (itself a ``ValueError``), so ``except GenrecError`` and
    ``except ValueError`` both keep working for callers that do not know it.
    """
