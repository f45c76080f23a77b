"""Credentials out of everything genrec records or logs: URLs, server messages, errors.

Every package that writes a URL, a server's reply or an exception text into a table, a JSON file or a
log passes it through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, overload
from urllib.parse import unquote, urlsplit

__all__ = ["REDACTED", "redact", "redact_all", "redact_url", "url_secrets"]

REDACTED = "***"

# scheme://user:password@host or scheme://token@host: the userinfo part goes.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/\s@?#\"']+)@")
# "Authorization: Bearer xyz", "Bearer xyz", "Basic xyz", in headers echoed as text or JSON.
_AUTH = re.compile(r"(?i)\b(?P<kind>bearer|basic|token)(?P<sep>\s+|\"?\s*:\s*\"?)(?P<value>[A-Za-z0-9._~+/=-]{6,})")
_AUTH_HEADER = re.compile(r"(?i)(?P<name>\"?(?:authorization|x-api-key|api[-_]key)\"?\s*[:=]\s*\"?)(?P<value>(?:(?:bearer|basic|token)\s+)?[^\"\s,}]+)")
# Well-known key shapes (OpenAI, Anthropic, Hugging Face, GitHub), wherever they appear.
_KEY_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{8,})")
# Query parameters that carry credentials.
_QUERY = re.compile(
    r"(?i)(?P<name>[?&;](?:api[-_]?key|key|token|access[-_]?token|auth|password|passwd|secret|sig|signature)=)"
    r"(?P<value>[^&;\s#\"']+)"
)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The password and user name inside ``url`` (decoded and as written), to redact elsewhere."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = []
    for value in (parts.password, parts.username):
        if value:
            found += [value, unquote(value)]
    return tuple(dict.fromkeys(v for v in found if len(v) >= 3))


def redact_url(url: str) -> str:
    """``url`` without its user name and password (``https://***@host/v1``) or credential queries."""
    return redact(url)


@overload
def redact(text: str, secrets: Iterable[str | None] = ()) -> str: ...
@overload
def redact(text: None, secrets: Iterable[str | None] = ()) -> None: ...
@overload
def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None: ...
def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """``text`` with credentials replaced by ``***``: each of ``secrets`` verbatim (an API key, a URL's
    password), the userinfo of URLs, bearer/basic tokens, authorization headers, credential query
    parameters and well-known key shapes. ``None`` stays ``None``."""
    if not text:
        return text
    # Longest first, so that a secret containing another is replaced whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['name']}{REDACTED}", text)
    text = _AUTH.sub(lambda m: f"{m['kind']}{m['sep']}{REDACTED}", text)
    text = _QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)
    return _KEY_SHAPES.sub(REDACTED, text)


def redact_all(value: Any, secrets: Iterable[str | None] = ()) -> Any:
    """:func:`redact` over every string inside a JSON-like value (dicts, lists, tuples)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_all(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v, secrets) for v in value]
    return value
