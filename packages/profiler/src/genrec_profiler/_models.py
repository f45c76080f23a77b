"""The profiler's model argument: genrec_core's resolver with the profiler's default model.

A model is an alias (``smollm2``), an HF folder, a ``.gguf`` file (converted once into
``$GENREC_CACHE/models/``) or a hub id ``org/name``; see :func:`genrec_core.models.resolve_model`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genrec_core.models import ResolvedModel

DEFAULT_MODEL = "smollm2"


def resolve_model(model: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """The local HF folder (``.path``) and the name worth recording (``.name``) of ``model``
    (default :data:`DEFAULT_MODEL`). Raises ``genrec_core.models.ModelNotFoundError`` (a
    ``GenrecError``) with one line naming the argument."""
    # Imported here: genrec_core.models is the torch side of core, kept out of import time.
    from genrec_core.models import resolve_model as resolve

    return resolve(DEFAULT_MODEL if model is None else model)
