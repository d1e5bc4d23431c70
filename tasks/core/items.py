"""Every item of one chunk ends succeeded, failed, skipped or (after a fatal error) not reached.

:class:`ChunkOutcomes` is the bookkeeping both chunk runners share (batch_map's handler loop below and
api_bulk's request workers): it restores what the chunk's journal says an earlier attempt finished,
records each new outcome in the journal the moment it is known, keeps the output rows in input order,
stops the other items of the chunk (and of the run, in this process) at a fatal error, and builds the
ChunkReport. Output rows are the user's data, encoded once (JSON) and written as they are.

:func:`process_chunk` runs a handler over the items of a chunk with the item retry policy:
sequentially, on ``item_concurrency`` threads (sync handlers) or as ``item_concurrency`` coroutines
(async handlers). A FatalError makes every runner stop before its next item; items already in flight
finish (their outcome is real), the rest are ``not_reached``, and the report is marked incomplete so
the rerun does exactly the items that were not done.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tasks.core.batches import BatchCalls, run_threads
from tasks.core.chunking import Chunk
from tasks.core.errors import ChunkTimeout, FatalError, ItemError, SkipItem
from tasks.core.exactjson import dumps_row
from tasks.core.failpoints import failpoint
from tasks.core.identity import chunk_hash
from tasks.core.journal import FAILED, SKIPPED, SUCCEEDED, ChunkJournal, consecutive
from tasks.core.objstore import is_url
from tasks.core.outcomes import ChunkReport, FailedItem
from tasks.core.redact import redact_text
from tasks.core.retry import RetryOn, RetryPolicy, attempts_made
from tasks.core.state import atomic_write, output_write_error
from tasks.core.timeouts import Deadline


class ChunkRef(BaseModel):
    """Who a chunk is in its run: its cache key (run identity + position), index, content hash (when the
    flow computed it) and the path of its journal. Every chunk task takes one as ``ref``."""

    key: str
    index: int
    content: str | None = None
    journal: str | None = None
    stop_at: float | None = None  # the run's run_timeout_s passes then (time.time()): no item starts after it
    abandon_at: float | None = None  # calls still running then are abandoned (see run_or_abandon)


Per = Literal["item", "batch"]
_S, _K, _F = (ord(k) for k in (SUCCEEDED, SKIPPED, FAILED))
_CODE = {SUCCEEDED: _S, SKIPPED: _K, FAILED: _F}
_SUCCESS = bytes([_S])
_together = threading.local()  # ChunkOutcomes.together: journal lines held for one write
_together_lock = threading.Lock()

# --------------------------------------------------------------------------- stop signals


class StopSignal(threading.Event):
    """A ``threading.Event`` whose state is also the plain attribute ``raised``: a hot item loop reads it before
    every item without a call."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = False  # an instance attribute: read faster than a class one

    def set(self) -> None:
        self.raised = True
        super().set()

    def clear(self) -> None:
        self.raised = False
        super().clear()


_stops: OrderedDict[str, StopSignal] = OrderedDict()
_stops_lock = threading.Lock()


def stop_signal(scope: str) -> StopSignal:
    """The event that stops every chunk of one run attempt in this process (set by a fatal error)."""
    with _stops_lock:
        event = _stops.get(scope)
        if event is None:
            event = _stops[scope] = StopSignal()
            while len(_stops) > 256:  # one per run attempt; old runs are long over
                _stops.popitem(last=False)
        return event


def _runs(todo: Sequence[int], block: int) -> list[tuple[int, int]]:
    """``todo`` (increasing positions) as runs of consecutive ones, ``(first, end)`` each, none across a multiple
    of ``block``."""
    if not todo:
        return []
    runs: list[tuple[int, int]] = []
    if isinstance(todo, range) or consecutive(todo):
        whole = [(todo[0], todo[-1] + 1)]
    else:
        whole = []
        first = previous = todo[0]
        for position in todo[1:]:
            if position != previous + 1:
                whole.append((first, previous + 1))
                first = position
            previous = position
        whole.append((first, previous + 1))
    for first, end in whole:
        while first < end:
            cut = min(end, (first // block + 1) * block)
            runs.append((first, cut))
            first = cut
    return runs


LINES_BLOCK = 100_000  # positions per block of journal lines written ahead


@functools.lru_cache(maxsize=8)
def _success_lines(block: int, width: int) -> bytes:
    """The journal lines ``<position> s`` of positions ``block * LINES_BLOCK`` on (``LINES_BLOCK`` of them),
    zero-padded to ``width`` digits, so that each line is ``width + 3`` bytes, and with a zero byte where its
    newline goes: the sequential loop stores that newline when the item's call returns, one byte per item (a
    line is whole once its newline is stored). Built column by column: in an aligned block a digit column is
    one digit (the leading ones) or a repeating pattern."""
    size, first = width + 3, block * LINES_BLOCK
    buf = bytearray(LINES_BLOCK * size)
    for column in range(width):
        repeat = 10 ** (width - 1 - column)
        if repeat >= LINES_BLOCK:
            buf[column::size] = b"%d" % (first // repeat % 10) * LINES_BLOCK
        else:
            period = b"".join(b"%d" % digit * repeat for digit in range(10))
            buf[column::size] = period * (LINES_BLOCK // len(period))
    buf[width::size] = b" " * LINES_BLOCK
    buf[width + 1::size] = SUCCEEDED.encode() * LINES_BLOCK
    return bytes(buf)


# --------------------------------------------------------------------------- the bookkeeping


@dataclass
class ChunkOutcomes:
    """Outcomes of one chunk's items (see the module docstring). Safe to call from several threads."""

    chunk: Chunk
    ref: ChunkRef | None = None
    item_key: Callable[[Any], Any] | None = None
    keep_rows: bool = False
    stop: threading.Event = field(default_factory=StopSignal)
    content: str = ""
    rows: dict[int, str] = field(default_factory=dict)
    failures: dict[int, FailedItem] = field(default_factory=dict)
    kinds: bytearray = field(default_factory=bytearray)  # per position: 0 (no outcome yet) or the kind's letter
    restored: int = 0
    fatal: str | None = None
    abandoned: bool = False  # calls were still running at the run's end: left to their threads (run_or_abandon)
    _journal: ChunkJournal | None = None
    _together: int = 0  # threads inside together(): only then is the thread-local buffer looked up

    def __post_init__(self) -> None:
        self.kinds = bytearray(len(self.chunk.items))
        ref = self.ref
        self.content = (ref.content if ref and ref.content else None) or chunk_hash(
            self.chunk.items, index=self.chunk.index, item_key=self.item_key)
        if ref is not None and ref.journal:
            self._journal = ChunkJournal(Path(ref.journal), self.content)
            self._restore(self._journal)

    def _restore(self, journal: ChunkJournal) -> None:
        for position, entry in journal.load().items():
            if position >= len(self.chunk.items):
                continue
            self.kinds[position] = _CODE[entry.kind]
            if entry.kind == SUCCEEDED and entry.payload:
                self.rows[position] = entry.payload
            elif entry.kind == FAILED:
                failure = FailedItem.model_validate_json(entry.payload)
                failure.item = self.chunk.items[position]
                self.failures[position] = failure
        self.restored = len(self.kinds) - self.kinds.count(0)

    def __enter__(self) -> ChunkOutcomes:
        if self._journal is not None:
            self._journal.open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._journal is not None:
            self._journal.close()

    def todo(self) -> Sequence[int]:
        """Positions without an outcome yet, in order (a ``range`` when none has one: a fresh chunk)."""
        kinds = self.kinds
        if kinds.count(0) == len(kinds):
            return range(len(kinds))
        return [i for i, k in enumerate(kinds) if not k]

    def stopped(self) -> bool:
        return self.stop.is_set()

    def _journal_line(self, position: int, kind: str, payload: str = "") -> None:
        if self._journal is None:
            return
        pending = getattr(_together, "lines", None) if self._together else None
        if pending is not None:
            pending.append(ChunkJournal.line(position, kind, payload))
            return
        try:
            self._journal.record(position, kind, payload)
        except OSError as exc:  # the state dir is full or read-only: nothing can be recorded any more
            raise output_write_error(exc, self._journal.path.parent, writing=True) or exc from None

    @contextmanager
    def together(self) -> Iterator[None]:
        """Journal the outcomes settled inside (in this thread) with one write at the end: a batch call's items
        are settled at once, and their lines go to disk together (or, after a crash before it, run again)."""
        _together.lines = []
        with _together_lock:
            self._together += 1
        try:
            yield
        finally:
            with _together_lock:
                self._together -= 1
            lines, _together.lines = _together.lines, None
            if lines:
                self._record_lines(lines)

    def _record_lines(self, lines: list[str]) -> None:
        """Store journal lines now; a full or read-only state dir stops the run (nothing can be recorded)."""
        if self._journal is None:
            return
        try:
            self._journal.record_lines(lines)
        except OSError as exc:
            raise output_write_error(exc, self._journal.path.parent, writing=True) or exc from None

    def succeeded(self, position: int, row: Any = None) -> None:
        """``row``: the output row (a JSON-able value, or JSON text already) when outputs are kept; a row JSON
        cannot write (a non-str dict key, a cycle) fails its item (``unwritable_output``)."""
        if not self.keep_rows:
            self._journal_line(position, SUCCEEDED)
        else:
            try:
                text = row if isinstance(row, str) else encode_row(row)
            except (TypeError, ValueError, RecursionError) as exc:
                self.failed(position, unwritable_row(self.chunk.index, position, exc))
                return
            self._journal_line(position, SUCCEEDED, text)
            self.rows[position] = text
        self.kinds[position] = _S

    def run_plain(self, handler: Callable[[Any], Any], todo: Sequence[int], stop: StopSignal,
                  raised: Callable[[int, Exception], None]) -> None:
        """Call ``handler`` on the items at ``todo`` in order, from this thread only (the chunk's one runner, no
        output rows), until ``stop`` is raised. A call that returns is journaled before the next call, as one
        byte stored into a line written ahead (:func:`_success_lines`); ``raised(position, exc)`` settles an item
        whose call raised (its retries, its failure), then the loop goes on from the next item."""
        for first, end in _runs(todo, LINES_BLOCK):
            position = first
            while position < end and not stop.raised:
                position, exc = self._plain_run(handler, first=position, end=end, stop=stop)
                if exc is not None:
                    raised(position, exc)
                    position += 1

    def _plain_run(self, handler: Callable[[Any], Any], *, first: int, end: int,
                   stop: StopSignal) -> tuple[int, Exception | None]:
        """Items ``first``..``end - 1`` until one raises (its position and exception) or ``stop`` is raised."""
        items, journal = self.chunk.items, self._journal
        slots, size = None, 0
        if journal is not None:
            width = len(str(max(len(items) - 1, 0)))
            size, block = width + 3, first // LINES_BLOCK
            ahead = memoryview(_success_lines(block, width))[(first - block * LINES_BLOCK) * size:]
            try:
                slots = journal.reserve_filled(ahead[:(end - first) * size])
            except OSError as exc:  # the state dir is full or read-only: nothing can be recorded any more
                raise output_write_error(exc, journal.path.parent, writing=True) or exc from None
            if slots is None:  # a file system that cannot map files: a write per line
                return self._one_by_one(handler, first=first, end=end, stop=stop)
        position = first
        if slots is None:
            try:
                for item in items[first:end]:
                    if stop.raised:
                        break
                    handler(item)
                    position += 1
            except Exception as exc:
                return position, exc
            finally:
                self.kinds[first:position] = _SUCCESS * (position - first)
            return position, None
        view, start = slots
        assert journal is not None  # slots come from it
        release = journal.release_from
        newline = start + size - 1  # of the first item's line: stored once its call returned
        try:
            for item in items[first:end]:
                if stop.raised:
                    break
                handler(item)
                view[newline] = 10
                newline += size
        except Exception as exc:
            if view.closed:  # the chunk ended without this thread (run_or_abandon): the call returned too late
                raise
            return first + (newline - start) // size, exc
        finally:
            position = first + (newline - start) // size
            release(start + (position - first) * size)
            self.kinds[first:position] = _SUCCESS * (position - first)
        return position, None

    def _one_by_one(self, handler: Callable[[Any], Any], *, first: int, end: int,
                    stop: StopSignal) -> tuple[int, Exception | None]:
        for position in range(first, end):
            if stop.raised:
                return position, None
            try:
                handler(self.chunk.items[position])
            except Exception as exc:
                return position, exc
            self.succeeded(position)
        return end, None

    def succeeded_many(self, positions: Sequence[int]) -> None:
        """Many items succeeded at once without output rows (a batch call's): one journal line per run of
        consecutive positions instead of one per item."""
        lines = ChunkJournal.range_lines(positions, SUCCEEDED)
        pending = getattr(_together, "lines", None) if self._together else None
        if pending is not None:
            pending.extend(lines)
        else:
            self._record_lines(lines)
        if consecutive(positions):
            self.kinds[positions[0]:positions[-1] + 1] = bytes([_S]) * len(positions)
        else:
            for position in positions:
                self.kinds[position] = _S

    def skipped(self, position: int) -> None:
        self._journal_line(position, SKIPPED)
        self.kinds[position] = _K

    def failed(self, position: int, exc: BaseException, *, attempts: int | None = None,
               transform: Callable[[FailedItem], FailedItem] | None = None) -> None:
        if isinstance(exc, FatalError):
            self.stop.set()  # first: the other runners check it before their next item (the message can wait)
        item = self.chunk.items[position]
        failure = FailedItem.from_exception(item, exc, chunk=self.chunk.index, position=position,
                                            attempts=attempts_made(exc) if attempts is None else attempts)
        if transform is not None:
            failure = transform(failure)
        if isinstance(exc, FatalError):
            failure.category = "fatal"
            self.fatal = self.fatal or failure.message
            self.stop.set()
        else:
            self._journal_line(position, FAILED, failure.model_copy(update={"item": None}).model_dump_json())
        self.failures[position] = failure
        self.kinds[position] = _F

    def ordered_rows(self) -> list[str]:
        return [self.rows[i] for i in sorted(self.rows)]

    def report(self, *, started: float, extra: dict[str, Any] | None = None) -> ChunkReport:
        kinds = bytes(self.kinds)  # as it is now: an abandoned call may still settle its item meanwhile
        failures = dict(self.failures)
        size = len(self.chunk.items)
        report = ChunkReport(
            index=self.chunk.index, size=size, succeeded=kinds.count(_S), failed=kinds.count(_F),
            skipped=kinds.count(_K), not_reached=kinds.count(0),
            failures=[failures[i] for i in sorted(failures) if kinds[i] == _F], content_hash=self.content,
            duration_s=round(time.perf_counter() - started, 6), extra=dict(extra or {}),
        )
        if self.restored:
            report.extra["items_resumed"] = self.restored
        report.complete = self.fatal is None and report.not_reached == 0
        report.stop_reason = self.fatal if self.fatal is not None else (
            f"run_timeout_s passed and {report.not_reached} item(s) had no outcome yet: handler calls still running "
            "were abandoned (Python cannot stop a thread; they run on in the background until the process ends); "
            "their items run again on the rerun" if self.abandoned
            else "stopped by a fatal error in another chunk" if report.not_reached else None)
        report.check()
        return report


def encode_row(row: Any) -> str:
    """One output row as a JSON line, exactly the user's values (numbers of a response body as the body wrote
    them: :mod:`tasks.core.exactjson`); a value JSON has no type for as the dead letters write it (ISO dates,
    models as objects), an item's bytes tagged: :func:`tasks.core.exactjson.dumps_row`. A value JSON cannot hold
    exactly (a result's bytes, a plain object), a dict key that is not a str (JSON would write ``{1: "a"}`` as
    ``{"1": "a"}``), a tuple key or a cycle raise TypeError / ValueError."""
    return dumps_row(row)


def unwritable_row(chunk: int, position: int, exc: BaseException) -> ItemError:
    """The failure of an item whose output row JSON cannot write (the handler ran: its side effects happened)."""
    msg = (f"item {position} of chunk {chunk}: the handler returned, but its output row cannot be written as JSON "
           f"({type(exc).__name__}: {exc}); return JSON-able values (str dict keys, no cycles) or convert them in "
           "the handler")
    return ItemError(msg, category="unwritable_output")


def write_jsonl_part(output_dir: Path | str, index: int, lines: Iterable[str]) -> Path | str:
    """Write one chunk's rows (JSON text) atomically to ``output_dir/part-000017.jsonl`` (one PUT in object
    storage)."""
    name = f"part-{index:06d}.jsonl"
    if is_url(str(output_dir)):
        from tasks.core.objoutput import put_part

        return put_part(str(output_dir), name, "".join(line + "\n" for line in lines).encode())
    path = Path(output_dir) / name
    try:
        with atomic_write(path, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
    except OSError as exc:  # read-only, full, a file in the way: stop the run instead of failing every chunk
        raise output_write_error(exc, output_dir, writing=True) or exc from exc
    return path


# --------------------------------------------------------------------------- batch_map's handler loop


@dataclass
class ItemOptions:
    """How items inside a chunk are run. Picklable (it travels to process and Dask workers)."""

    retries: int = 3
    retry_backoff_s: float = 1.0
    retry_on: RetryOn = "transient"
    item_concurrency: int = 1
    rate_limit_per_second: float | None = None
    rate_limit_name: str | None = None
    item_timeout_s: float | None = None
    chunk_timeout_s: float | None = None
    per: Per = "item"
    max_batch_items: int | None = None

    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.retry_backoff_s, retry_on=self.retry_on)


@dataclass
class ChunkJob:
    """Everything a chunk task needs besides the chunk itself."""

    handler: Callable[[Any], Any]
    options: ItemOptions = field(default_factory=ItemOptions)
    output_dir: str | None = None
    concurrency_limit: str | None = None
    item_key: Callable[[Any], Any] | None = None
    run_scope: str = ""


_limiters: dict[tuple[str | None, float], Any] = {}
_limiters_lock = threading.Lock()


def _limiter_for(options: ItemOptions) -> Any:
    """One limiter per (name, rate) per process, shared by every chunk running here."""
    if not options.rate_limit_per_second:
        return None
    key = (options.rate_limit_name, options.rate_limit_per_second)
    with _limiters_lock:
        if key not in _limiters:
            from tasks.core.shared_ratelimit import rate_limiter

            _limiters[key] = rate_limiter(options.rate_limit_per_second, options.rate_limit_name)
        return _limiters[key]


def process_chunk(chunk: Chunk, job: ChunkJob, ref: ChunkRef | None = None) -> ChunkReport:
    """Run ``job.handler`` over the items of ``chunk`` that have no outcome yet; report every item.

    The output part (``part-<index>.jsonl``: ``{"item": ..., "result": ...}`` per succeeded item, in input
    order, restored rows included) is written atomically after the last item; an output that cannot be
    written raises OutputWriteError (fatal for the run).
    """
    started = time.perf_counter()
    handler = job.handler
    policy = job.options.policy()
    limiter = _limiter_for(job.options)
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)
    outcomes = ChunkOutcomes(chunk, ref, item_key=job.item_key, keep_rows=bool(job.output_dir),
                             stop=stop_signal(job.run_scope) if job.run_scope else StopSignal())
    items = chunk.items
    deadline = Deadline(item_timeout_s=job.options.item_timeout_s, chunk_timeout_s=job.options.chunk_timeout_s,
                        chunk=chunk.index)
    timed_out = threading.Event()  # the chunk's deadline passed: no item starts any more

    stop_set, timed_out_set = outcomes.stop.is_set, timed_out.is_set

    def halted() -> bool:
        return stop_set() or timed_out_set()

    def done(position: int, value: Any) -> None:
        if not job.output_dir:
            outcomes.succeeded(position)
            return
        outcomes.succeeded(position, {"item": items[position], "result": value})  # a row JSON cannot write fails

    def settle(position: int, exc: Exception, attempts: int | None = None) -> None:
        if isinstance(exc, SkipItem):
            outcomes.skipped(position)
        else:
            outcomes.failed(position, exc, attempts=attempts)

    direct = limiter is None and not deadline.active  # nothing wraps a call: the handler is called as it is

    stop = outcomes.stop

    def wrapped(position: int) -> Callable[[], Any]:
        def call() -> Any:
            if limiter is not None:
                limiter.acquire_sync()
            try:
                return deadline.call(lambda: handler(items[position]))
            except FatalError:
                stop.set()  # at once: a runner finishing its item now must not start another
                raise

        return call

    keep_rows = bool(job.output_dir)
    succeeded = outcomes.succeeded

    def run_one_sync(position: int) -> None:
        """One item, when not halted(): the callers check that before each item."""
        if not direct:
            through_policy(position, lambda: policy.call(wrapped(position)))
            return
        try:  # the first attempt without a closure or a retryer (most items pass at once)
            value = handler(items[position])
        except Exception as exc:
            after_first_failure(position, exc)
            return
        if keep_rows:
            done(position, value)
        else:
            succeeded(position)

    def after_first_failure(position: int, exc: Exception) -> None:
        """A direct call raised: the retry policy takes the item from its second attempt, and settles it."""
        if isinstance(exc, FatalError):
            stop.set()  # at once, before the retry policy looks at it (it never retries it)
        through_policy(position, lambda: policy.call_after(exc, wrapped(position)))

    def through_policy(position: int, attempts: Callable[[], tuple[Any, Any]]) -> None:
        """The item's outcome after the retry policy's ``attempts``."""
        try:
            value, _ = attempts()
        except ChunkTimeout:
            timed_out.set()  # the item keeps no outcome: the chunk's retry runs it
            return
        except Exception as exc:
            settle(position, exc)
            return
        done(position, value)

    def run_many_sync(todo: Sequence[int], threads: int) -> None:
        """``threads`` workers take the next position from one shared iterator (a list iterator's ``next``
        is atomic): no future, queue or lock per item. Each worker has at most one item in flight."""
        positions = iter(todo)

        def work() -> None:
            for position in positions:
                if halted():
                    return
                run_one_sync(position)

        run_threads([work] * threads, name=f"item-{chunk.index}")

    async def run_one_async(position: int, sem: asyncio.Semaphore) -> None:
        async def call() -> Any:
            if limiter is not None:
                await limiter.acquire()
            try:
                return await deadline.acall(lambda: handler(items[position]))
            except FatalError:
                stop.set()
                raise

        async with sem:
            if halted():
                return
            try:
                value, _ = await policy.acall(call)
            except ChunkTimeout:
                timed_out.set()
                return
            except Exception as exc:
                settle(position, exc)
                return
            done(position, value)

    def run_items(todo: Sequence[int]) -> None:
        if job.options.per == "batch":
            calls = BatchCalls(items=items, handler=handler, policy=policy, deadline=deadline, limiter=limiter,
                               chunk=chunk.index, done=done, settle=settle, halted=halted, timed_out=timed_out,
                               together=outcomes.together, done_many=None if keep_rows else outcomes.succeeded_many)
            groups = calls.groups(todo, job.options.max_batch_items)
            if is_async:
                run_coroutine(lambda: calls.run_async(groups, job.options.item_concurrency))
            else:
                calls.run_sync(groups, job.options.item_concurrency)
        elif is_async:
            async def run_all() -> None:
                sem = asyncio.Semaphore(max(1, job.options.item_concurrency))
                await asyncio.gather(*(run_one_async(i, sem) for i in todo))

            run_coroutine(run_all)
        elif job.options.item_concurrency > 1 and len(todo) > 1:
            run_many_sync(todo, min(job.options.item_concurrency, len(todo)))
        elif direct and not keep_rows and isinstance(stop, StopSignal):  # one runner, nothing around a call
            outcomes.run_plain(handler, todo, stop, after_first_failure)
        else:
            for i in todo:
                if halted():
                    break
                run_one_sync(i)

    try:
        with outcomes:
            todo = outcomes.todo()
            if ref is not None and ref.abandon_at is not None:  # the run has a run_timeout_s
                outcomes.abandoned = not run_or_abandon(lambda: run_items(todo), stop_at=ref.stop_at,
                                                        abandon_at=ref.abandon_at, stop=outcomes.stop,
                                                        name=f"chunk-{chunk.index}-items")
            else:
                run_items(todo)
            if timed_out.is_set():
                left = len(outcomes.todo())
                raise deadline.chunk_error(f" ({len(items) - left} of {len(items)} items done, {left} left)")
    except BaseException:  # the chunk fails as a whole: the items it finished keep their rows (a rerun adds the rest)
        if job.output_dir and outcomes.rows:
            write_jsonl_part(job.output_dir, chunk.index, outcomes.ordered_rows())
        raise
    report = outcomes.report(started=started)
    if job.output_dir and (outcomes.rows or report.complete):
        report.output_path = str(write_jsonl_part(job.output_dir, chunk.index, outcomes.ordered_rows()))
    failpoint("chunk.after_output")
    return report


def run_or_abandon(run: Callable[[], None], *, stop_at: float | None, abandon_at: float, stop: threading.Event,
                   name: str) -> bool:
    """Run a chunk's items (``run``) in a daemon thread, for a run with a ``run_timeout_s``: at ``stop_at`` (the
    timeout; ``time.time()``) ``stop`` is set, so no item starts any more; at ``abandon_at`` calls still running
    are abandoned: False is returned and the chunk reports what is done (the rest is not reached, for the rerun),
    so that a call that never returns cannot keep the run, its Ctrl-C or the interpreter's exit waiting. True
    when ``run`` ended (its error raised here)."""
    box: list[BaseException] = []
    finished = threading.Event()

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the waiting thread
            box.append(exc)
        finally:
            finished.set()

    if stop_at is not None and time.time() >= stop_at:  # a chunk that starts late (a worker process started late)
        stop.set()
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    if stop_at is not None and not finished.wait(max(stop_at - time.time(), 0)):
        stop.set()
    if not finished.wait(max(abandon_at - time.time(), 0)):
        return False
    if box:
        raise box[0]
    return True


def run_coroutine(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def describe_stop(report: ChunkReport) -> str:
    """One line for logs: why a chunk ended incomplete."""
    return redact_text(f"chunk {report.index}: {report.stop_reason}; {report.not_reached} item(s) not reached")


__all__ = [
    "ChunkJob",
    "ChunkOutcomes",
    "ChunkRef",
    "ItemOptions",
    "StopSignal",
    "describe_stop",
    "encode_row",
    "process_chunk",
    "run_coroutine",
    "run_or_abandon",
    "stop_signal",
    "write_jsonl_part",
]
