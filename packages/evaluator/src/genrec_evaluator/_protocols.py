"""The pluggable scorer: anything with ``score`` and ``generate`` (no subclassing, no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Query:
    """What the model sees: the record's prompt (or chat ``messages`` before the answer) and the start
    of the answer (``completion_prefix``, e.g. ``"At 2012-12-21 08:29, user 42 will visit POI id"``).

    ``conversational`` marks a record whose prompt *is* a conversation (TRL's conversational formats):
    its context is the chat template's rendering of ``messages`` whatever the scorer's format, and
    ``prompt`` then only holds the messages' text (for analyses that read prompts)."""

    prompt: str
    completion_prefix: str
    messages: tuple[Mapping[str, str], ...] | None = None
    conversational: bool = False


@runtime_checkable
class Scorer(Protocol):
    """A model that scores and generates answers. ``HFScorer`` is the transformers implementation."""

    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        """Log-likelihood of each continuation after ``query.completion_prefix`` (higher is better)."""
        ...

    def generate(self, query: Query, *, seed: int) -> str:
        """Text generated after ``query.completion_prefix``, reproducible for a ``seed``."""
        ...
