"""Time limits inside a chunk: ``item_timeout_s`` per handler call, ``chunk_timeout_s`` per chunk attempt.

* An **async** call past its limit is cancelled (``asyncio.timeout``).
* A **sync** call runs in its own daemon thread and is waited for up to its limit. Python cannot stop a
  thread, so a call past its limit is *abandoned*: its result, if it ever comes, is discarded, the item
  is failed with ``ItemTimeout`` (category ``timeout``, transient: retried like other transient errors)
  and the chunk moves on. The abandoned thread keeps running until the handler returns; the process
  ends without waiting for it. More than :data:`MAX_ABANDONED` such threads alive in one process stop
  the run (FatalError): a handler that never returns needs its own timeout (a client timeout, a
  statement timeout).
* The chunk limit binds every call of the chunk: when it is reached, no further item starts, calls in
  flight are cut, and the chunk task raises :class:`ChunkTimeout`. Items finished before that are kept
  (journal); the retry of the chunk (``chunk_retries``) runs only the rest, and after the last retry
  the unfinished items are dead-lettered with the timeout.
* ``run_timeout_s`` (every resumable flow) bounds a whole run gracefully (tasks.core.run.ChunkedRun): when
  it passes, no chunk starts, chunks in flight stop before their next item, and the run ends Failed with
  what is left for a rerun with the same run_key.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from tasks.core.errors import ChunkTimeout, FatalError, ItemTimeout

T = TypeVar("T")
MAX_ABANDONED = 100
run_timeout: ContextVar[float | None] = ContextVar("batchflows_run_timeout", default=None)
"""The ``run_timeout_s`` of the flow body running in this context (set by FlowSpec.run, read by ChunkedRun)."""

_abandoned: set[threading.Thread] = set()
_abandoned_lock = threading.Lock()


def abandoned_calls() -> int:
    """How many timed-out sync calls are still running in this process."""
    with _abandoned_lock:
        _abandoned.difference_update([t for t in _abandoned if not t.is_alive()])
        return len(_abandoned)


def _abandon(thread: threading.Thread) -> None:
    with _abandoned_lock:
        _abandoned.difference_update([t for t in _abandoned if not t.is_alive()])
        _abandoned.add(thread)
        stuck = len(_abandoned)
    if stuck > MAX_ABANDONED:
        msg = (f"{stuck} handler calls are still running past their timeout in this process (Python cannot stop "
               "a thread): the handler blocks without end; give its I/O its own timeout (HTTP client, database "
               "statement_timeout), then rerun with the same run_key")
        raise FatalError(msg)


class Deadline:
    """The time limits of one chunk attempt (see the module docstring)."""

    def __init__(self, *, item_timeout_s: float | None, chunk_timeout_s: float | None, chunk: int) -> None:
        self.item_s = item_timeout_s
        self.chunk_s = chunk_timeout_s
        self.chunk = chunk
        self.ends = None if chunk_timeout_s is None else time.monotonic() + chunk_timeout_s

    @property
    def active(self) -> bool:
        return self.item_s is not None or self.chunk_s is not None

    def passed(self) -> bool:
        return self.ends is not None and time.monotonic() >= self.ends

    def chunk_error(self, detail: str = "") -> ChunkTimeout:
        msg = (f"chunk {self.chunk} did not finish within chunk_timeout_s={self.chunk_s:g}s{detail}; the items it "
               "finished are kept, the rest run again on the chunk's retry (chunk_retries) or are dead-lettered "
               "after the last one")
        return ChunkTimeout(msg)

    def _limit(self) -> tuple[float | None, bool]:
        """(seconds the next call may take, whether the chunk's deadline is what limits it)."""
        left = None if self.ends is None else self.ends - time.monotonic()
        if left is not None and left <= 0:
            raise self.chunk_error()
        if self.item_s is not None and (left is None or self.item_s < left):
            return self.item_s, False
        return left, True

    def _item_error(self) -> ItemTimeout:
        return ItemTimeout(f"the handler did not return within item_timeout_s={self.item_s:g}s")

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` within the limits; a sync call past them is abandoned (module docstring)."""
        if not self.active:
            return fn()
        limit, chunk_bound = self._limit()
        box: dict[str, Any] = {}
        finished = threading.Event()

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                finished.set()

        thread = threading.Thread(target=target, name=f"item-call-chunk-{self.chunk}", daemon=True)
        thread.start()
        if not finished.wait(limit):
            _abandon(thread)
            raise self.chunk_error() if chunk_bound else self._item_error()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    async def acall(self, factory: Callable[[], Awaitable[T]]) -> T:
        """``await factory()`` within the limits; past them the call is cancelled."""
        if not self.active:
            return await factory()
        limit, chunk_bound = self._limit()
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await factory()
        except TimeoutError:
            if not scope.expired():
                raise  # the handler's own TimeoutError
        raise self.chunk_error() if chunk_bound else self._item_error()


__all__ = ["MAX_ABANDONED", "Deadline", "abandoned_calls", "run_timeout"]
