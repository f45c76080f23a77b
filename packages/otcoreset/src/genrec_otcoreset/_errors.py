"""The one exception type of genrec-otcoreset."""

from __future__ import annotations

__all__ = ["OtCoresetError"]


class OtCoresetError(ValueError):
    """Bad input to an otcoreset function; the message names the argument and the bad value.

    A ``ValueError`` subclass, so ``except ValueError`` keeps working for callers that do not know it.
    """
