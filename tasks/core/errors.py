"""One exception tree for batchflows.

Every message says what was wrong and what to do about it. The engine maps the classes to item
outcomes: ``SkipItem`` -> skipped, ``ItemError`` -> failed at once (not retried), ``FatalError`` -> the
whole run stops; any other exception raised by a handler is retried, then failed.

Every error a user catches is here: the handler's (above), ``ConfigError`` (bad parameters, before any work),
``RunFailed`` (a run that ended Failed) and ``TooManyToCollect`` (``collect=True`` past its cap).
"""

from __future__ import annotations

from typing import Any


class BatchflowsError(Exception):
    """Base class of every error batchflows raises on purpose."""


class ConfigError(BatchflowsError, ValueError):
    """A parameter or setting is invalid; raised before any work is done."""


class SourceError(BatchflowsError):
    """An input (file, import path, iterable, table) cannot be read as asked."""


class SettingError(ConfigError):
    """A ``BATCHFLOWS_*`` environment variable holds a value its setting does not accept."""


class InputNotFound(SourceError, ConfigError):
    """An input the parameters name (a source file, a SQLite database file) does not exist: a mistake to fix,
    so neither ``flow_retries`` nor chunk retries run it again (an unreachable server stays a SourceError)."""


class ItemError(BatchflowsError):
    """One item failed permanently: retrying it would not help.

    ``category`` is a short machine-readable label (``"http_4xx"``, ``"bad_item"`` ...) that ends up in
    the dead-letter file and the summary's top errors.
    """

    def __init__(self, message: str, *, category: str = "item_error") -> None:
        super().__init__(message)
        self.category = category


class RetryableError(BatchflowsError):
    """A transient failure. ``retry_after`` (seconds) is honored by the retry policy when set."""

    def __init__(self, message: str, *, retry_after: float | None = None, category: str = "retryable") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.category = category


class SkipItem(BatchflowsError):
    """Raised by a handler to mark its item as skipped (not an error)."""


class FatalError(BatchflowsError):
    """The run cannot go on (bad credentials, wrong endpoint, ...): stop at once with this reason."""


class RunFailed(BatchflowsError):
    """A run ended Failed; ``summary`` says why and what was done (``summary.message`` is the reason)."""

    def __init__(self, summary: Any) -> None:
        super().__init__(getattr(summary, "message", str(summary)))
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # a persisted (pickled) Failed state keeps its summary
        return (type(self), (self.summary,))


class TooManyToCollect(ConfigError):
    """``collect=True`` on a run with more rows than ``tasks.core.results.COLLECT_MAX_ROWS``; ``summary`` is
    the finished run."""

    def __init__(self, message: str, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


class ItemTimeout(RetryableError, TimeoutError):
    """One handler call (or request) ran past ``item_timeout_s``; transient, so it is retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, category="timeout")


class ChunkTimeout(BatchflowsError, TimeoutError):
    """A chunk ran past ``chunk_timeout_s``: the chunk task fails (retried by ``chunk_retries``, then its
    unfinished items are dead-lettered). Never retried per item."""

    category = "timeout"


__all__ = [
    "BatchflowsError",
    "ChunkTimeout",
    "ConfigError",
    "FatalError",
    "InputNotFound",
    "ItemError",
    "ItemTimeout",
    "RetryableError",
    "RunFailed",
    "SettingError",
    "SkipItem",
    "SourceError",
    "TooManyToCollect",
]
