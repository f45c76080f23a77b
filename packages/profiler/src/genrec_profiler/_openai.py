"""The ``openai`` backend: any OpenAI-compatible chat-completions server over httpx.

Requests of a batch run concurrently on a thread pool (at most ``concurrency`` in flight), each with
a request timeout and bounded retries with exponential backoff on 429, 5xx, timeouts, connection
errors and unreadable responses. A ``Retry-After`` header is honoured (capped). JSON mode
(``response_format={"type": "json_object"}``) is used when the server accepts it; a server that
rejects it with HTTP 400 is asked again without it, and not asked with it again.
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
from typing import Any

import httpx

from genrec_profiler._client import Completion, ProfileRequest
from genrec_profiler._errors import ProfilerError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    """Profiles from an OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama, ...).

    ``base_url`` defaults to ``$OPENAI_BASE_URL`` or the OpenAI API, ``model`` to ``$OPENAI_MODEL``;
    the API key is read from the environment variable named by ``api_key_env`` (sent as a bearer token
    when set). ``response_format``: ``"auto"`` (JSON mode, dropped if the server refuses it),
    ``"json"`` (always) or ``"none"``.
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
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        name = model or os.environ.get("OPENAI_MODEL")
        if not name:
            raise ProfilerError("OpenAIBackend: model is required (pass model= or set OPENAI_MODEL)")
        if concurrency < 1:
            raise ProfilerError(f"OpenAIBackend: concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ProfilerError(f"OpenAIBackend: max_retries must be at least 0, got {max_retries}")
        if response_format not in ("auto", "json", "none"):
            raise ProfilerError(f"OpenAIBackend: response_format must be auto, json or none, got {response_format!r}")
        self.base_url = base.rstrip("/")
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
        self._json_mode = response_format != "none"
        self._json_forced = response_format == "json"
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers,
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
        if self._json_mode or request.json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _post_once(self, request: ProfileRequest) -> Completion:
        with self._lock:
            self.requests_sent += 1
        payload = self._payload(request)
        try:
            response = self._http.post(f"{self.base_url}/chat/completions", json=payload)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout after {self.timeout:g}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        if response.status_code == 400 and "response_format" in payload and not (self._json_forced or request.json_mode):
            logger.info("%s rejected response_format (HTTP 400); continuing without JSON mode", self.base_url)
            with self._lock:
                self._json_mode = False
            raise _Retryable("HTTP 400 with response_format", retry_after=0.0)
        if response.status_code in _RETRY_STATUS:
            retry_after = response.headers.get("retry-after")
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}", retry_after=wait)
        if response.status_code != 200:
            raise ProfilerError(f"{self.base_url}/chat/completions: HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed response ({type(exc).__name__}): {response.text[:200]!r}") from None
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )

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
                logger.debug("user %s: %s; retry %d in %.2fs", request.user_id, error, attempt + 1, wait)
                time.sleep(wait)
            except ProfilerError as exc:
                return Completion(text="", error=str(exc))
        return Completion(text="", error=f"gave up after {self.max_retries + 1} attempts: {error}")

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        if len(requests) <= 1 or self.concurrency == 1:
            return [self.complete_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.complete_one, requests))
