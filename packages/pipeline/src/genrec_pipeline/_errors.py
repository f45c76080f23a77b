"""The pipeline's exception type."""

from __future__ import annotations

from genrec_core import GenrecError


class PipelineError(GenrecError):
    """A run could not be planned or a stage failed; the message names the config key or stage."""
