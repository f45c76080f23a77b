"""The ``openai`` backend: any OpenAI-compatible chat-completions server over httpx.

Requests of a batch run concurrently on a thread pool (at most ``concurrency`` in flight), each with
a request timeout and bounded retries with exponential backoff on 429, 5xx, timeouts, connection
errors and unreadable responses. A ``Retry-After`` header is honoured (capped).

Structured output: the profile's JSON schema is sent as ``response_format`` ``{"type": "json_schema",
...}`` (vLLM, SGLang, Ollama and OpenAI enforce it while decoding); a server that refuses it (HTTP 400
or 422) is asked again with JSON mode (``{"type": "json_object"}``), and one that refuses that too
without any, the repair parser being the last line. Each step down is remembered by the client, so
a refusal costs one extra request per level, not one per profile.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from genrec_core import redact, url_secrets
from genrec_profiler._client import Completion, ProfileRequest
from genrec_profiler._errors import ProfilerError
from genrec_profiler._grammar import profile_json_schema

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: ``response_format`` levels, strictest first: a refusal moves a client one level down.
FORMAT_LEVELS = ("json_schema", "json_object", "none")
_FORMATS = {"auto": "json_schema", "json_schema": "json_schema", "json": "json_object", "none": "none"}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    """Profiles from an OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama, ...).

    ``base_url`` defaults to ``$OPENAI_BASE_URL`` or the OpenAI API, ``model`` to ``$OPENAI_MODEL``;
    the API key is read from the environment variable named by ``api_key_env`` (sent as a bearer token
    when set). ``response_format``: ``"auto"`` (the profile's JSON schema, then JSON mode, then
    neither, each dropped for good when the server refuses it), ``"json_schema"`` (the schema, never
    dropped), ``"json"`` (JSON mode, never dropped) or ``"none"``. ``response_format_level`` tells
    what the client sends now. GenUP requests (``ProfileRequest.json_mode``) never go below JSON mode.
    """

    backend = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = 1024,
        temperature: float = 0.0,
        seed: int | None = 0,
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        response_format: str = "auto",
        context_length: int = 8192,
    ) -> None:
        from genrec_profiler._checks import check_float, check_int, check_str

        check_str("OpenAIBackend", "base_url", base_url, optional=True)
        check_str("OpenAIBackend", "model", model, optional=True)
        check_int("OpenAIBackend", "max_tokens", max_tokens, minimum=1)
        check_float("OpenAIBackend", "temperature", temperature, low=0.0, high=2.0)
        check_int("OpenAIBackend", "seed", seed, optional=True)
        check_int("OpenAIBackend", "concurrency", concurrency, minimum=1)
        check_int("OpenAIBackend", "max_retries", max_retries, minimum=0)
        check_float("OpenAIBackend", "timeout", timeout, low=0.0, low_open=True)
        check_float("OpenAIBackend", "backoff", backoff, low=0.0)
        check_float("OpenAIBackend", "max_backoff", max_backoff, low=0.0)
        check_int("OpenAIBackend", "context_length", context_length, minimum=1)
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        name = model or os.environ.get("OPENAI_MODEL")
        if not name:
            raise ProfilerError("OpenAIBackend: model is required (pass model= or set OPENAI_MODEL)")
        if response_format not in _FORMATS:
            raise ProfilerError(
                f"OpenAIBackend: response_format must be auto, json_schema, json or none, got {response_format!r}")
        # Requests go to the URL as given (credentials included); everything recorded or logged
        # (``base_url``, errors, log lines) gets the redacted form.
        # Credentials in the URL go into HTTP basic auth, out of the URL itself: httpx logs every
        # request's URL.
        parts = urlsplit(base.rstrip("/"))
        auth = None
        if parts.username is not None or parts.password is not None:
            auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self._url = urlunsplit(parts)
        self.base_url = str(redact(self._url))
        self.model = name
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.context_length = context_length
        #: What requests carry now (one of FORMAT_LEVELS); lowered once per refusal, for good.
        self.response_format_level = _FORMATS[response_format]
        self._format_forced = response_format in ("json_schema", "json")
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        basic = auth._auth_header.split(" ", 1)[1] if auth is not None else None  # what a server may echo
        self._secrets = tuple(x for x in (key, basic, *url_secrets(base)) if x)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            auth=auth,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        #: Attempts made, for the run's statistics and for tests of the retry loop.
        self.requests_sent = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prompt_token_budget(self) -> int | None:
        return max(64, self.context_length - 2 * self.max_tokens - 96)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        # We do not know the server's tokenizer; 3 characters per token over-estimates English text
        # a little, which is the safe side for fitting a prompt.
        return [math.ceil(len(t) / 3) for t in texts]

    def _payload(self, request: ProfileRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        level = self._level(request)
        if level == "json_schema":
            kind: Literal["genrec", "genup", "genup_cot"] = (
                "genup" if request.protocol == "genup" else "genup_cot" if request.protocol == "genup_cot" else "genrec"
            )
            schema = profile_json_schema(kind)
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema["title"], "schema": schema, "strict": True},
            }
        elif level == "json_object":
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _level(self, request: ProfileRequest) -> str:
        level = self.response_format_level
        if level == "none" and request.json_mode:  # GenUP's requests always ask for JSON
            return "json_object"
        return level

    def _post_once(self, request: ProfileRequest) -> Completion:
        with self._lock:
            self.requests_sent += 1
        payload = self._payload(request)
        try:
            response = self._http.post(f"{self._url}/chat/completions", json=payload)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout after {self.timeout:g}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {self._clean(str(exc))}") from None
        if response.status_code in (400, 422) and "response_format" in payload and not self._format_forced:
            sent = payload["response_format"]["type"]
            floor = "json_object" if request.json_mode else "none"
            if sent != floor:
                with self._lock:
                    # Concurrent requests may all be refused: step down from what was sent, once.
                    if FORMAT_LEVELS.index(self.response_format_level) <= FORMAT_LEVELS.index(sent):
                        self.response_format_level = FORMAT_LEVELS[FORMAT_LEVELS.index(sent) + 1]
                        logger.info("%s refused response_format %s (HTTP %d: %s); now sending %s", self.base_url,
                                    sent, response.status_code, self._body(response, 120), self.response_format_level)
                raise _Retryable(f"HTTP {response.status_code} with response_format {sent}", retry_after=0.0)
        if response.status_code in _RETRY_STATUS:
            retry_after = response.headers.get("retry-after")
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            raise _Retryable(f"HTTP {response.status_code}: {self._body(response)}", retry_after=wait)
        if response.status_code != 200:
            raise ProfilerError(f"{self.base_url}/chat/completions: HTTP {response.status_code}: {self._body(response)}")
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed response ({type(exc).__name__}): {self._body(response)!r}") from None
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )

    def _clean(self, text: str) -> str:
        return str(redact(text, self._secrets))

    def redact(self, text: str) -> str:
        """``text`` without this client's API key or URL credentials (and anything shaped like one)."""
        return self._clean(text)

    def _body(self, response: httpx.Response, limit: int = 200) -> str:
        # Redacted before it is cut: a cut could split a secret and let its head through.
        return self._clean(response.text)[:limit]

    def complete_one(self, request: ProfileRequest) -> Completion:
        """One request with retries; never raises (the last error goes into ``Completion.error``)."""
        error = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(request)
            except _Retryable as exc:
                error = str(exc)
                if attempt == self.max_retries:
                    break
                wait = exc.retry_after
                if wait is None:
                    wait = self.backoff * 2**attempt * (0.5 + random.random())
                wait = min(wait, self.max_backoff)
                logger.debug("user %s: %s; retry %d in %.2fs", request.user_id, self._clean(error), attempt + 1, wait)
                time.sleep(wait)
            except ProfilerError as exc:
                return Completion(text="", error=self._clean(str(exc)))
        return Completion(text="", error=self._clean(f"gave up after {self.max_retries + 1} attempts: {error}"))

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        if len(requests) <= 1 or self.concurrency == 1:
            return [self.complete_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.complete_one, requests))
