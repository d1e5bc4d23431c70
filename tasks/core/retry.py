"""Item retry policy: one small value that builds tenacity retryers.

One retry layer per failure kind: handlers (and the HTTP layer) *classify* failures by raising
``RetryableError`` (optionally with ``retry_after``), ``ItemError`` (permanent), ``SkipItem`` or
``FatalError``; this policy is the only loop that waits and tries again.

What else is retried is the policy's ``retry_on``: ``"transient"`` (the default) retries only what is
likely to pass on a second try: ``RetryableError``, timeouts, connection errors (``ConnectionError``,
network errnos, the connection errors of httpx, aiohttp, requests, psycopg, SQLAlchemy, sqlite3's
"database is locked", botocore, redis) and errors carrying an HTTP status 408/425/429/5xx. A
``KeyError`` or ``TypeError`` from a bug in a handler fails at once, with one attempt, instead of being
retried with backoff. ``"any"`` retries every exception except ItemError, SkipItem and FatalError.
"""

from __future__ import annotations

import asyncio
import errno
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from tasks.core.errors import ChunkTimeout, FatalError, ItemError, RetryableError, SkipItem

T = TypeVar("T")

NOT_RETRIED: tuple[type[BaseException], ...] = (ItemError, SkipItem, FatalError, ChunkTimeout, KeyboardInterrupt)
RetryOn = Literal["transient", "any"]
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                               errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET})
_TRANSIENT_CLASSES = frozenset({  # (top-level package, class name) anywhere in the exception's MRO
    ("httpx", "TransportError"), ("httpx", "TimeoutException"), ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ServerTimeoutError"), ("aiohttp", "ClientPayloadError"), ("requests", "ConnectionError"),
    ("requests", "Timeout"), ("psycopg", "OperationalError"), ("psycopg2", "OperationalError"),
    ("sqlalchemy", "OperationalError"), ("botocore", "EndpointConnectionError"),
    ("botocore", "ConnectTimeoutError"), ("botocore", "ReadTimeoutError"), ("redis", "ConnectionError"),
    ("redis", "TimeoutError"),
})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is likely to pass on a retry (see the module docstring)."""
    if isinstance(exc, RetryableError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    response = getattr(exc, "response", None)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    if isinstance(status, int) and status in TRANSIENT_STATUS:
        return True
    if isinstance(exc, sqlite3.OperationalError):  # also "no such table" and syntax errors: only locks pass
        return any(word in str(exc).lower() for word in ("locked", "busy"))
    return any((cls.__module__.split(".")[0], cls.__name__) in _TRANSIENT_CLASSES for cls in type(exc).__mro__)


def is_retryable(exc: BaseException, retry_on: RetryOn = "any") -> bool:
    """Never permanent item errors, skips, fatal errors and interrupts; then ``retry_on`` decides."""
    if not isinstance(exc, Exception) or isinstance(exc, NOT_RETRIED):
        return False
    return retry_on == "any" or is_transient(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts with exponential backoff and full jitter, Retry-After aware.

    The wait before attempt n+1 is ``uniform(0, min(max_backoff_s, backoff_s * 2**(n-1)))`` unless the
    exception carries ``retry_after`` (seconds), which then wins (capped at ``max_retry_after_s``).
    """

    retries: int = 3
    backoff_s: float = 1.0
    retry_on: RetryOn = "transient"
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def wait_seconds(self, state: RetryCallState) -> float:
        return self.backoff(state.attempt_number, state.outcome.exception() if state.outcome else None)

    def backoff(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (``exc``'s ``retry_after`` wins)."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return min(float(retry_after), self.max_retry_after_s)
        ceiling = min(self.max_backoff_s, self.backoff_s * (2 ** max(attempt - 1, 0)))
        return self.rng.uniform(0, ceiling)

    def retries_left(self, attempt: int, exc: BaseException) -> bool:
        """Whether ``exc`` from attempt number ``attempt`` gets another attempt."""
        return attempt <= self.retries and is_retryable(exc, self.retry_on)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retries + 1),
            "wait": self.wait_seconds,
            "retry": retry_if_exception(lambda exc: is_retryable(exc, self.retry_on)),
            "reraise": True,
        }

    def retrying(self) -> Retrying:
        return Retrying(sleep=self.sleep, **self._kwargs())

    def async_retrying(self) -> AsyncRetrying:
        return AsyncRetrying(sleep=self.async_sleep, **self._kwargs())

    def call(self, fn: Callable[[], T]) -> tuple[T, int]:
        """Run ``fn`` under the policy; return (result, attempts).

        The first attempt runs outside tenacity (most calls succeed at once, and building a retryer
        per call is measurable at thousands of calls per second); a retryable failure is replayed into
        tenacity as attempt 1, so waits and the attempt budget are the same as a plain retry loop. The
        last exception propagates with ``attempts_made(exc)`` telling how many attempts were made.
        """
        try:
            return fn(), 1
        except Exception as exc:
            return self.call_after(exc, fn)

    def call_after(self, exc: Exception, fn: Callable[[], T]) -> tuple[T, int]:
        """The rest of :meth:`call` once its first attempt (made by the caller: the engine's item loop calls
        a handler directly when nothing else wraps it) failed with ``exc``: re-raise it when it is not
        retried, otherwise wait and try again under the policy."""
        first: Exception | None = _first_failure(exc, self.retries, self.retry_on)
        attempts = 1
        try:
            for attempt in self.retrying():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if first is not None:
                        pending, first = first, None
                        raise pending
                    return fn(), attempts
        except Exception as err:
            err.batchflows_attempts = attempts  # type: ignore[attr-defined]
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """Async twin of :meth:`call`."""
        try:
            return await fn(), 1
        except Exception as exc:
            first: Exception | None = _first_failure(exc, self.retries, self.retry_on)
        attempts = 1
        try:
            async for attempt in self.async_retrying():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if first is not None:
                        pending, first = first, None
                        raise pending
                    return await fn(), attempts
        except Exception as exc:
            exc.batchflows_attempts = attempts  # type: ignore[attr-defined]
            raise
        raise AssertionError("unreachable")  # pragma: no cover


def _first_failure(exc: Exception, retries: int, retry_on: RetryOn) -> Exception:
    """The failed first attempt, to replay into tenacity; re-raised at once when it is not retried."""
    if not is_retryable(exc, retry_on) or retries == 0:
        exc.batchflows_attempts = 1  # type: ignore[attr-defined]
        raise exc
    return exc


def attempts_made(exc: BaseException) -> int:
    """Attempts made before ``exc`` escaped a :class:`RetryPolicy` (1 when unknown)."""
    return int(getattr(exc, "batchflows_attempts", 1) or 1)


__all__ = ["NOT_RETRIED", "TRANSIENT_STATUS", "RetryOn", "RetryPolicy", "attempts_made", "is_retryable", "is_transient"]
