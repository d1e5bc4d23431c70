"""The chunk engine: process items of a chunk, and run chunk tasks in a bounded, resumable window.

Two layers:

* :func:`process_chunk` is a plain function: run a handler over the items of one chunk with the item
  retry policy, classify every outcome, write the chunk's output atomically, return a ChunkReport.
* :func:`run_window` submits one Prefect task per chunk through a task runner, never more than
  ``max_in_flight`` at once (refilled as they finish, paused while the process is over its memory
  limit), and hands each finished future to a callback. Every flow of batchflows runs on it.

Resume: the chunk task's cache key is ``hash(flow, run_key, cache_version, handler, chunk content)``
and its result (the ChunkReport) is persisted under the run's state dir, so a rerun with the same
run key after a crash gets finished chunks back as ``Cached`` and runs only the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State

from tasks.chunking import Chunk
from tasks.errors import ConfigError, FatalError, SkipItem
from tasks.outcomes import ChunkReport, FailedItem
from tasks.redact import redact
from tasks.retry import RetryPolicy, attempts_made
from tasks.state import atomic_write, output_write_error

log = logging.getLogger("batchflows.engine")

TaskRunnerName = Literal["threads", "processes", "dask"]
U = TypeVar("U")


# --------------------------------------------------------------------------- one chunk, plain


@dataclass
class ItemOptions:
    """How items inside a chunk are run. Picklable (it travels to process and Dask workers)."""

    retries: int = 3
    retry_backoff_s: float = 1.0
    item_concurrency: int = 1
    rate_limit_per_second: float | None = None
    rate_limit_name: str | None = None

    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.retry_backoff_s)


@dataclass
class ChunkJob:
    """Everything a chunk task needs besides the chunk itself."""

    handler: Callable[[Any], Any]
    options: ItemOptions = field(default_factory=ItemOptions)
    output_dir: str | None = None
    concurrency_limit: str | None = None


_limiters: dict[tuple[str | None, float], Any] = {}
_limiters_lock = threading.Lock()


def _limiter_for(options: ItemOptions) -> Any:
    """One limiter per (name, rate) per process, shared by every chunk running here."""
    if not options.rate_limit_per_second:
        return None
    key = (options.rate_limit_name, options.rate_limit_per_second)
    with _limiters_lock:
        if key not in _limiters:
            from tasks.ratelimit_shared import rate_limiter

            _limiters[key] = rate_limiter(options.rate_limit_per_second, options.rate_limit_name)
        return _limiters[key]


def process_chunk(chunk: Chunk, job: ChunkJob) -> ChunkReport:
    """Run ``job.handler`` over every item of ``chunk``; every item ends succeeded, failed or skipped.

    A ``FatalError`` from any item propagates (the run must stop); nothing of the chunk is written then.
    So does an output that cannot be written (OutputWriteError, naming the directory and the fix).
    """
    started = time.perf_counter()
    handler = job.handler
    policy = job.options.policy()
    limiter = _limiter_for(job.options)
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)
    report = ChunkReport(index=chunk.index, size=len(chunk.items))
    results: list[Any] = [None] * len(chunk.items) if job.output_dir else []
    outcomes: list[tuple[str, Any]] = [("", None)] * len(chunk.items)

    def run_one_sync(position: int, item: Any) -> None:
        def call() -> Any:
            if limiter is not None:
                limiter.acquire_sync()
            return handler(item)

        outcomes[position] = _attempt(lambda: policy.call(call))

    async def run_one_async(position: int, item: Any, sem: asyncio.Semaphore) -> None:
        async def call() -> Any:
            if limiter is not None:
                await limiter.acquire()
            return await handler(item)

        async with sem:
            try:
                value, _ = await policy.acall(call)
                outcomes[position] = ("ok", value)
            except SkipItem as exc:
                outcomes[position] = ("skip", exc)
            except FatalError:
                raise
            except Exception as exc:
                outcomes[position] = ("fail", exc)

    if is_async:
        async def run_all() -> None:
            sem = asyncio.Semaphore(max(1, job.options.item_concurrency))
            await asyncio.gather(*(run_one_async(i, item, sem) for i, item in enumerate(chunk.items)))

        _run_coroutine(run_all)
    elif job.options.item_concurrency > 1:
        with ThreadPoolExecutor(max_workers=job.options.item_concurrency, thread_name_prefix="item") as pool:
            for f in [pool.submit(run_one_sync, i, item) for i, item in enumerate(chunk.items)]:
                f.result()
    else:
        for i, item in enumerate(chunk.items):
            run_one_sync(i, item)

    for position, (kind, value) in enumerate(outcomes):
        if kind == "ok":
            report.succeeded += 1
            if job.output_dir:
                results[position] = value
        elif kind == "skip":
            report.skipped += 1
        else:
            report.failed += 1
            report.failures.append(
                FailedItem.from_exception(
                    chunk.items[position], value, chunk=chunk.index, position=position, attempts=attempts_made(value)
                )
            )
    if job.output_dir:
        rows = (
            {"item": item, "result": results[i]} for i, item in enumerate(chunk.items) if outcomes[i][0] == "ok"
        )
        try:
            report.output_path = str(write_jsonl_part(Path(job.output_dir), chunk.index, rows))
        except OSError as exc:  # read-only, full, a file in the way: stop the run instead of failing every chunk
            raise output_write_error(exc, job.output_dir, writing=True) or exc from exc
    report.duration_s = round(time.perf_counter() - started, 6)
    report.check()
    return report


def _attempt(call: Callable[[], tuple[Any, int]]) -> tuple[str, Any]:
    try:
        value, _ = call()
        return "ok", value
    except SkipItem as exc:
        return "skip", exc
    except FatalError:
        raise
    except Exception as exc:
        return "fail", exc


def _run_coroutine(factory: Callable[[], Any]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(factory())
        return
    with ThreadPoolExecutor(max_workers=1) as pool:  # a loop already runs in this thread
        pool.submit(lambda: asyncio.run(factory())).result()


def write_jsonl_part(output_dir: Path, index: int, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one chunk's rows atomically to ``output_dir/part-000017.jsonl`` (secrets redacted)."""
    path = output_dir / f"part-{index:06d}.jsonl"
    with atomic_write(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(redact(row), default=str, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- the Prefect chunk task


def _no_retry_on_fatal(task: Any, task_run: Any, state: State) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, FatalError | ConfigError)


def _cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    return str(parameters["cache_key"])


@task(name="chunk", task_run_name="chunk-{chunk.index}", persist_result=True, log_prints=False)
def run_chunk(chunk: Chunk, cache_key: str, job: ChunkJob) -> ChunkReport:
    """Prefect face of :func:`process_chunk`; holds a global concurrency slot when asked."""
    if job.concurrency_limit:
        from prefect.concurrency.sync import concurrency

        with concurrency(job.concurrency_limit, occupy=1, strict=True):
            return process_chunk(chunk, job)
    return process_chunk(chunk, job)


def chunk_cache_key(*parts: str) -> str:
    """Hash of the parts that identify a chunk's work: flow, run key, cache version, handler, content."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=20).hexdigest()


def configure_chunk_task(
    base: Any, *, results_dir: Path, chunk_retries: int, tags: Iterable[str] = (), retry_delay_s: float = 1.0
) -> Any:
    """Per-run options of a chunk task: where results persist (the resume cache), retries, tags."""
    return base.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=_cache_key),
        result_storage=results_dir,
        persist_result=True,
        retries=chunk_retries,
        retry_delay_seconds=retry_delay_s,
        retry_condition_fn=_no_retry_on_fatal,
        tags=set(tags),
        # Prefect's in-memory result cache is one cachetools.LRUCache shared by every run of the task and
        # not thread-safe: with threads past 1,000 chunks a commit raced on it (KeyError) and the chunk's
        # record was rolled back, i.e. not resumable. The report is small; read it from its record.
        cache_result_in_memory=False,
    )


# --------------------------------------------------------------------------- the window


@contextmanager
def open_task_runner(kind: TaskRunnerName, max_workers: int, dask_address: str | None = None) -> Iterator[Any]:
    """A task runner for chunk tasks, chosen at run time (so it can be a deployment parameter)."""
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        runner: Any = ThreadPoolTaskRunner(max_workers=max_workers)
    elif kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=max_workers)
    elif kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - a locked dependency
            msg = "task_runner='dask' needs prefect-dask installed"
            raise ConfigError(msg) from exc
        if dask_address:
            runner = DaskTaskRunner(address=validate_dask_address(dask_address))
        else:  # a LocalCluster: one single-threaded worker process per core
            workers = os.cpu_count() or 1
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    else:
        msg = f"task_runner {kind!r} is not one of threads, processes, dask"
        raise ConfigError(msg)
    with runner:
        if kind == "dask" and dask_address:
            connect_dask(runner, dask_address)
        yield runner


def connect_dask(runner: Any, address: str) -> None:
    """Connect a DaskTaskRunner now (it would on first submit) so a dead address is one clear error."""
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": DASK_CONNECT_TIMEOUT}):
        try:
            runner.client  # noqa: B018 - the property connects
        except (OSError, TimeoutError) as exc:
            msg = (
                f"dask_address {address!r}: no Dask scheduler answered ({type(exc).__name__}: {exc}); start one "
                "(`dask scheduler` plus `dask worker <address>`) or omit dask_address to run on a LocalCluster "
                "on this machine"
            )
            raise ConfigError(msg) from None


DASK_CONNECT_TIMEOUT = "10s"


def validate_dask_address(address: str) -> str:
    """``tcp://host:port`` (or tls://, ws://, wss://, inproc://); ConfigError naming it otherwise."""
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or scheme not in ("tcp", "tls", "ws", "wss", "inproc") or (scheme != "inproc" and not (
            colon and host and port.isdigit() and 0 < int(port) < 65536)):
        msg = (f"dask_address {address!r} is not a Dask scheduler address; expected e.g. 'tcp://10.0.0.5:8786' "
               "(scheme tcp, tls, ws or wss, a host and a port)")
        raise ConfigError(msg)
    return address


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


@dataclass
class WindowStats:
    submitted: int = 0
    finished: int = 0
    memory_pauses: int = 0
    stopped_early: bool = False


def run_window(
    units: Iterable[U],
    submit: Callable[[U], PrefectFuture[Any]],
    on_done: Callable[[U, State], None],
    *,
    max_in_flight: int,
    should_stop: Callable[[], bool] = lambda: False,
    memory_limit_mb: float | None = None,
    logger: Any = log,
) -> WindowStats:
    """Submit a task per unit with at most ``max_in_flight`` running; call ``on_done`` as each ends.

    Units are pulled from the iterable only when there is room, so the input is never materialized.
    When ``should_stop()`` turns true (fail-fast, fatal error) no more units are pulled and the
    in-flight ones are drained. On KeyboardInterrupt / cancellation the window also drains before
    the exception propagates, so every started chunk either finishes (and is cached) or rolls back.
    """
    if max_in_flight < 1:
        msg = f"max_concurrency must be >= 1, got {max_in_flight}"
        raise ConfigError(msg)
    stats = WindowStats()
    done_q: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()
    in_flight: dict[int, tuple[U, PrefectFuture[Any]]] = {}

    def collect_one() -> None:
        future = done_q.get()
        unit, _ = in_flight.pop(id(future))
        future.wait()  # sets the future's final state from the runner's result, no API round trip
        state = future.state
        _forget_result_links(state)
        stats.finished += 1
        on_done(unit, state)

    iterator = iter(units)
    try:
        while not should_stop():
            while len(in_flight) >= max_in_flight:
                collect_one()
            if should_stop():
                break
            if memory_limit_mb and in_flight and rss_mb() > memory_limit_mb:
                stats.memory_pauses += 1
                logger.warning(
                    "flow process RSS %.0f MB is above BATCHFLOWS_MEMORY_LIMIT_MB=%.0f: waiting for a chunk to "
                    "finish before submitting more", rss_mb(), memory_limit_mb,
                )
                collect_one()
                continue
            try:
                unit = next(iterator)
            except StopIteration:
                break
            future = submit(unit)
            in_flight[id(future)] = (unit, future)
            future.add_done_callback(done_q.put)
            stats.submitted += 1
        stats.stopped_early = should_stop()
        while in_flight:
            collect_one()
    except BaseException:
        logger.warning("run interrupted: draining %d chunk(s) in flight, submitting no more", len(in_flight))
        _drain_quietly(in_flight)
        raise
    return stats


def _drain_quietly(in_flight: dict[int, tuple[Any, PrefectFuture[Any]]]) -> None:
    for _, future in list(in_flight.values()):
        try:
            future.wait(timeout=300)
        except BaseException:
            continue


def _forget_result_links(state: State) -> None:
    """Prefect keeps a link from every task result to its state for the flow's lifetime: drop ours."""
    ctx = FlowRunContext.get()
    if ctx is None:
        return
    data = getattr(state, "data", None)
    if data is not None:
        ctx.run_results.pop(id(data), None)


def state_report(state: State) -> ChunkReport | BaseException:
    """The ChunkReport of a finished chunk task, or the exception that failed it."""
    if state.is_completed():
        result = state.result(raise_on_failure=False)
        if isinstance(result, ChunkReport):
            if state.name == "Cached":
                result = result.model_copy(update={"resumed": True})
            return result
        return TypeError(f"chunk task returned {type(result).__name__}, not a ChunkReport")
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return result
    return RuntimeError(f"chunk task ended in state {state.name}: {state.message}")


__all__ = [
    "ChunkJob",
    "ItemOptions",
    "TaskRunnerName",
    "WindowStats",
    "chunk_cache_key",
    "configure_chunk_task",
    "open_task_runner",
    "process_chunk",
    "run_chunk",
    "run_window",
    "state_report",
    "write_jsonl_part",
]
