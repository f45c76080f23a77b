"""The one base exception of genrec: bad input, named so a person can fix it."""

from __future__ import annotations

__all__ = ["GenrecError"]


class GenrecError(ValueError):
    """Bad input to a genrec function or command.

    The message is one readable line naming the file, row, field or key and the bad value. Every
    package's own error type derives from it, so ``except GenrecError`` catches them all, and it is a
    ``ValueError`` so that callers that know none of them keep working.
    """
