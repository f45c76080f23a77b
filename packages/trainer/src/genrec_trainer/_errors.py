"""The package's one exception type."""

from __future__ import annotations

from genrec_core import GenrecError


class TrainerError(GenrecError):
    """Bad input to the trainer: the message names the file, column, record or config field at fault."""
