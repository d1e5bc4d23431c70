"""Async iterables (async generators, async cursors) as sources of a synchronous run, in bounded memory.

The async iterable runs on its own event loop in a daemon thread. Its items travel to the run in
batches through a bounded queue: the producer waits when the run is :data:`DEPTH` batches behind
(memory stays at most ``DEPTH x BATCH`` items), and a batch is handed over when it is full or
:data:`FLUSH_S` after its first item, so a slow source (an API page every few seconds) does not wait for a
full batch. When the run stops reading (a fatal error, the end of the run), the producer is told to
stop and the async iterable is closed on its own loop (``aclose()``: its ``finally`` blocks run).
An exception inside the async iterable reaches the run as a SourceError naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterable, Iterator
from typing import Any

from tasks.core.errors import SourceError

BATCH = 1_000
DEPTH = 8
FLUSH_S = 0.05
CLOSE_WAIT_S = 5.0  # how long a stopped run waits for the source to close (then its thread is left to end)
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def iterate_async(source: AsyncIterable[Any], *, label: str = "async source") -> Iterator[Any]:
    """The items of ``source`` as a plain iterator (see the module docstring)."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=DEPTH)
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    async def pump() -> None:
        iterator = source.__aiter__()
        buffer: list[Any] = []
        first_at = 0.0
        pending: asyncio.Future[Any] | None = None
        try:
            while not stop.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(iterator.__anext__())
                wait = None if not buffer else max(0.0, first_at + FLUSH_S - time.monotonic())
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if not done:  # the source is slow: hand over what is there, keep waiting for the next item
                    if not put(buffer):
                        return
                    buffer = []
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    pending = None
                    break
                pending = None
                if not buffer:
                    first_at = time.monotonic()
                buffer.append(item)
                if len(buffer) >= BATCH:
                    if not put(buffer):
                        return
                    buffer = []
            if buffer:
                put(buffer)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                with contextlib.suppress(RuntimeError):  # "already running": a step was just cancelled
                    await closer()

    def run() -> None:
        try:
            asyncio.run(pump())
        except BaseException as exc:  # handed to the reading side
            put(_Failed(exc))
        else:
            put(_END)

    thread = threading.Thread(target=run, name="async-source", daemon=True)
    thread.start()
    try:
        while True:
            got = handoff.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                msg = f"{label} raised {type(got.exc).__name__}: {got.exc}"
                raise SourceError(msg) from got.exc
            yield from got
    finally:
        stop.set()
        give_up = time.monotonic() + CLOSE_WAIT_S
        while thread.is_alive() and time.monotonic() < give_up:  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.1)


__all__ = ["BATCH", "CLOSE_WAIT_S", "DEPTH", "FLUSH_S", "iterate_async"]
