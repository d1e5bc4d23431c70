"""One exception tree for batchflows.

Every message says what was wrong and what to do about it. The engine maps the classes to item
outcomes: ``SkipItem`` -> skipped, ``ItemError`` -> failed at once (not retried), ``FatalError`` -> the
whole run stops; any other exception raised by a handler is retried, then failed.
"""

from __future__ import annotations


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
    "SettingError",
    "SkipItem",
    "SourceError",
]
