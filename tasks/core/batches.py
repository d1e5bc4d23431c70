"""Batch handlers (``per="batch"``): one call for a list of items, one outcome per item.

The handler gets the items of (a slice of) a chunk as a list and returns a list of the same length,
one entry per item: a result (succeeded), or an exception *instance*: ``SkipItem`` -> skipped,
``ItemError`` -> failed at once, ``FatalError`` -> failed and the run stops, anything else -> retried
when the retry policy says so (the handler is called again with the list of the items that need it,
after the policy's backoff), failed after the last attempt.

An exception *raised* by the call is about the whole call: it is retried (the whole list again) when
the policy says so, then every item of the call fails with it. A return value that is not a list of the
right length fails the chunk (:class:`BatchResultError`, retried by ``chunk_retries``, then its items
dead-lettered) and says what came back.

``max_batch_items`` caps the list size (a chunk of 5,000 items can be 50 calls of 100);
``item_concurrency`` calls are in flight at once (threads for sync handlers, one event loop for async
ones). Each item's outcome is journaled as it is settled, so a crash mid-chunk reruns only the items
without one. Rate limits and ``item_timeout_s`` count calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import BatchflowsError, ChunkTimeout, SkipItem
from tasks.core.journal import consecutive
from tasks.core.retry import RetryPolicy
from tasks.core.timeouts import Deadline


class BatchResultError(BatchflowsError):
    """A batch handler returned something other than a list with one entry per item."""


def describe_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


def _take(items: Sequence[Any], positions: Sequence[int]) -> list[Any]:
    """The items at ``positions`` (increasing): a slice when they are consecutive, as they mostly are."""
    if consecutive(positions):
        batch = items[positions[0]:positions[-1] + 1]
        return batch if type(batch) is list else list(batch)  # a list's slice is a new list already
    return [items[p] for p in positions]


@dataclass
class BatchCalls:
    """The batch calls of one chunk attempt (see the module docstring)."""

    items: Sequence[Any]
    handler: Callable[[list[Any]], Any]
    policy: RetryPolicy
    deadline: Deadline
    limiter: Any
    chunk: int
    done: Callable[[int, Any], None]
    settle: Callable[[int, Exception, int], None]
    halted: Callable[[], bool]
    timed_out: threading.Event
    together: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext  # one journal write per call
    done_many: Callable[[Sequence[int]], None] | None = None  # every item of a call succeeded, no output rows kept

    def groups(self, todo: Sequence[int], max_batch_items: int | None) -> list[Sequence[int]]:
        size = max_batch_items or max(len(todo), 1)
        return [todo[i:i + size] for i in range(0, len(todo), size)]

    def _check(self, value: Any, n: int) -> list[Any]:
        if not isinstance(value, list) or len(value) != n:
            msg = (f"chunk {self.chunk}: the per='batch' handler returned {describe_value(value)} for a batch of "
                   f"{n} items; it must return a list with one entry per item, in order (a result, or an exception "
                   "instance for an item that failed or is skipped)")
            raise BatchResultError(msg)
        return value

    def _fold(self, pending: Sequence[int], results: list[Any], attempt: int) -> tuple[list[int], BaseException | None]:
        """Settle what is final (journaled in one write); return the positions to call again and one of their
        errors (for the wait)."""
        again: list[int] = []
        last: BaseException | None = None
        if self.done_many is not None and not any(issubclass(t, BaseException) for t in set(map(type, results))):
            self.done_many(pending)  # the common case: one journal line for the whole call
            return again, last
        with self.together():
            for position, result in zip(pending, results, strict=True):
                if not isinstance(result, BaseException):
                    self.done(position, result)
                elif isinstance(result, Exception) and not isinstance(result, SkipItem) \
                        and self.policy.retries_left(attempt, result):
                    again.append(position)
                    last = result
                else:
                    self.settle(position, result if isinstance(result, Exception) else RuntimeError(repr(result)),
                                attempt)
        return again, last

    def _whole_call_failed(self, pending: Sequence[int], exc: Exception, attempt: int) -> bool:
        """True when the whole call is tried again; else every pending item is settled with ``exc``."""
        if self.policy.retries_left(attempt, exc):
            return True
        with self.together():
            for position in pending:
                self.settle(position, exc, attempt)
        return False

    def _steps(self, group: Sequence[int]) -> Generator[tuple[str, Any], Any, None]:
        """The calls of one group as a plan, the same for sync and async handlers: yields ``("call", batch)``
        and gets back ``(value, None)`` or ``(None, exception)``; yields ``("wait", seconds)`` between attempts."""
        pending, attempt = group, 1
        while pending and not self.halted():
            value, error = yield "call", _take(self.items, pending)
            if isinstance(error, ChunkTimeout):
                self.timed_out.set()
                return
            if error is not None:
                if not self._whole_call_failed(pending, error, attempt):
                    return
                wait_for: BaseException | None = error
            else:
                pending, wait_for = self._fold(pending, self._check(value, len(pending)), attempt)
                if not pending:
                    return
            yield "wait", self.policy.backoff(attempt, wait_for)
            attempt += 1

    # ------------------------------------------------------------------ sync

    def run_group(self, group: Sequence[int]) -> None:
        steps = self._steps(group)
        reply: Any = None
        with contextlib.suppress(StopIteration):
            while True:
                kind, arg = steps.send(reply)
                if kind == "wait":
                    time.sleep(arg)
                    reply = None
                    continue
                try:
                    if self.limiter is not None:
                        self.limiter.acquire_sync()
                    reply = (self.deadline.call(lambda batch=arg: self.handler(batch)), None)
                except Exception as exc:
                    reply = (None, exc)

    def run_sync(self, groups: list[Sequence[int]], item_concurrency: int) -> None:
        if item_concurrency > 1 and len(groups) > 1:
            queue = iter(groups)  # a list iterator's next is atomic: each thread takes the next group

            def work() -> None:
                for group in queue:
                    if self.halted():
                        return
                    self.run_group(group)

            run_threads([work] * min(item_concurrency, len(groups)), name=f"batch-{self.chunk}")
            return
        for group in groups:
            if self.halted():
                break
            self.run_group(group)

    # ------------------------------------------------------------------ async

    async def arun_group(self, group: Sequence[int], sem: asyncio.Semaphore) -> None:
        steps = self._steps(group)
        reply: Any = None
        async with sem:
            with contextlib.suppress(StopIteration):
                while True:
                    kind, arg = steps.send(reply)
                    if kind == "wait":
                        await asyncio.sleep(arg)
                        reply = None
                        continue
                    try:
                        if self.limiter is not None:
                            await self.limiter.acquire()
                        reply = (await self.deadline.acall(lambda batch=arg: self.handler(batch)), None)
                    except Exception as exc:
                        reply = (None, exc)

    async def run_async(self, groups: list[Sequence[int]], item_concurrency: int) -> None:
        sem = asyncio.Semaphore(max(1, item_concurrency))
        await asyncio.gather(*(self.arun_group(g, sem) for g in groups))


def run_threads(targets: Sequence[Callable[[], None]], *, name: str) -> None:
    """Run each target in its own daemon thread (in a copy of this context) and wait for all; the first error
    raised is raised here. Daemon threads, not a ThreadPoolExecutor: a call that never returns must not keep
    the interpreter from exiting once its run has ended (run_or_abandon)."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the waiting thread
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(guarded, t), name=f"{name}-{i}",
                                daemon=True) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


__all__ = ["BatchCalls", "BatchResultError", "describe_value", "run_threads"]
