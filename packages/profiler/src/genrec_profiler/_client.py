"""The LLM client Protocol that every backend implements, and the request/response records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from genrec_profiler._digest import UserDigest

Message = dict[str, str]


@dataclass(frozen=True, kw_only=True)
class ProfileRequest:
    """One prompt for one user: chat messages plus the statistics they were built from (a backend
    that does not read text, such as the template backend, works from ``digest``)."""

    user_id: str
    messages: tuple[Message, ...]
    digest: UserDigest
    attempt: int = 0
    #: The statistical draft shown in the prompt, if any: fields the model leaves out or gets wrong
    #: keep the draft's value (the prompt asks the model to change only what the check-ins contradict).
    draft: Mapping[str, Any] | None = None
    #: Ask for JSON mode whatever the backend's own setting (GenUP's requests always do); a backend
    #: without one ignores it.
    json_mode: bool = False
    #: Which profile schema the answer must follow (``genrec`` or ``genup``, see
    #: :func:`genrec_profiler.profile_json_schema`): backends that constrain decoding enforce it.
    protocol: str = "genrec"


@dataclass(frozen=True, kw_only=True)
class Completion:
    """What a backend answered for one request. ``error`` is set (and ``text`` may be empty) when the
    backend could not get an answer at all, for example after exhausting HTTP retries."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None
    error: str | None = None


@runtime_checkable
class LLMClient(Protocol):
    """Anything that turns chat prompts into text. Implement it to plug in your own backend.

    ``complete`` receives a batch (the backend decides how to run it: one padded batch, N concurrent
    HTTP requests, ...) and returns one :class:`Completion` per request, in order. It should not raise
    for a single bad request; put the reason in ``Completion.error`` instead.
    """

    #: Written to the ``backend`` column.
    backend: str
    #: Written to the ``model`` column.
    model: str

    @property
    def prompt_token_budget(self) -> int | None:
        """How many tokens a prompt may use (context length minus room for the answer and one retry);
        ``None`` for no limit."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` as this backend's model sees them (an estimate is fine)."""
        ...

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        """One completion per request, in order."""
        ...
