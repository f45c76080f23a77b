"""The package's one exception type."""

from __future__ import annotations

from genrec_core import GenrecError


class EvaluatorError(GenrecError):
    """Bad input to genrec-evaluator: the message names the file, row, column or field and the value."""
