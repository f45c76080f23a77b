"""The pipeline's exception type."""

from __future__ import annotations


class PipelineError(ValueError):
    """A run could not be planned or a stage failed; the message names the config key or stage."""
