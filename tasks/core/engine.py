"""The chunk engine: process items of a chunk, and run chunk tasks in a bounded, resumable window.

Two layers:

* :func:`tasks.core.items.process_chunk` is a plain function: run a handler over the items of one chunk with
  the item retry policy, journal and classify every outcome, write the chunk's output atomically,
  return a ChunkReport. :func:`run_chunk` is its Prefect task.
* :func:`run_window` submits one Prefect task per chunk through a task runner, never more than
  ``max_in_flight`` at once (refilled as they finish, paused while the process is over its memory
  limit), and hands each finished future to a callback. Every flow of batchflows runs on it.

Resume: the chunk task's cache key is ``hash(flow, run_key, run identity, chunk position)`` and its
result (the ChunkReport, with the chunk's content hash) is persisted under the run's state dir, so a
rerun with the same run key after a crash finds finished chunks by position, checks that the source
still holds the same items there, and runs only the rest (tasks.core.run).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State

from tasks.core.chunking import Chunk
from tasks.core.errors import BatchflowsError, ConfigError, FatalError
from tasks.core.items import ChunkJob, ChunkRef, ItemOptions, process_chunk
from tasks.core.outcomes import ChunkReport
from tasks.core.redact import redact_text

log = logging.getLogger("batchflows.engine")

TaskRunnerName = Literal["threads", "processes", "dask"]
U = TypeVar("U")


# --------------------------------------------------------------------------- the Prefect chunk task


def _no_retry_on_fatal(task: Any, task_run: Any, state: State) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, FatalError | ConfigError)


def _cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    ref = parameters["ref"]
    return str(ref.key if isinstance(ref, ChunkRef) else ref["key"])


class ChunkFailed(BatchflowsError):
    """A chunk task failed as a whole; the message is the original error's, credentials masked."""


def sanitized(exc: BaseException) -> BaseException:
    """The exception to let Prefect record (state message, logs, the pickled result): same class when it
    is one of ours, its message redacted, no chained original (whose text may hold a secret)."""
    text = redact_text(str(exc) or type(exc).__name__)
    if isinstance(exc, BatchflowsError):
        try:
            clean = copy.copy(exc)
            clean.args = (text,)
            clean.__cause__ = clean.__context__ = None
            clean.__traceback__ = None
            return clean
        except Exception:  # an exotic subclass that cannot be copied: fall through
            pass
    return ChunkFailed(f"{type(exc).__name__}: {text}")


@contextmanager
def recorded_safely(what: str) -> Iterator[None]:
    """Run a chunk task's body; an exception leaves it redacted (see :func:`sanitized`), its traceback logged
    once, redacted, for whoever debugs it."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not isinstance(exc, BatchflowsError):
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("%s failed:\n%s", what, redact_text(trace))
        clean = sanitized(exc)
        clean.batchflows_attempts = _attempt_number()  # type: ignore[attr-defined]  # the dead letters' `attempts`
        raise clean from None


def _attempt_number() -> int:
    """Which attempt of the current task run this is (1 + the retries so far)."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return int(ctx.task_run.run_count) if ctx is not None and ctx.task_run.run_count else 1


@task(name="chunk", task_run_name="chunk-{chunk.index}", persist_result=True, log_prints=False)
def run_chunk(chunk: Chunk, ref: ChunkRef, job: ChunkJob) -> ChunkReport:
    """Prefect face of :func:`tasks.core.items.process_chunk`; holds a global concurrency slot when asked."""
    with recorded_safely(f"chunk {chunk.index}"):
        if job.concurrency_limit:
            from tasks.core.concurrency import held_slot
            from tasks.core.settings import EngineSettings

            with held_slot(job.concurrency_limit, lease_s=EngineSettings().concurrency_lease_s):
                return process_chunk(chunk, job, ref)
        return process_chunk(chunk, job, ref)


def chunk_cache_key(*parts: str) -> str:
    """Hash of the parts that identify a chunk: flow, run key, the run's identity, the chunk's position."""
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

        runner = ProcessPoolTaskRunner(max_workers=max_workers, initializer=die_with_parent, initargs=(os.getpid(),))
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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_INTERVAL_S = 0.2


def die_with_parent(parent_pid: int) -> None:
    """Initializer of the ``task_runner="processes"`` workers: a worker ends when the flow process does.

    A pool worker outlives a SIGKILLed flow process (the OOM killer, ``kill -9``) otherwise: it goes on
    with the chunk it holds and the queued ones, side effects included, while the rerun of the run_key
    (whose lock the dead process lost) runs the same items again. On Linux the kernel kills the worker
    when its parent goes (``PR_SET_PDEATHSIG``); a watchdog thread covers a parent that died before this
    ran and other systems: it ends the worker at once when its parent process is no longer ``parent_pid``.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl here: the watchdog alone
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="batchflows-parent-watchdog",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_INTERVAL_S)
    os._exit(1)


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
    runner: Callable[[], Any] = lambda: None,
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
        release_task_run(state, runner())
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


def release_task_run(state: State, runner: Any = None) -> None:
    """Drop what Prefect keeps in the flow process about a finished task run until the flow run ends.

    Prefect 3.8.8 links every task result, and each field of it, to a copy of its final state in
    ``FlowRunContext.run_results`` (for tasks that take another task's result as input, which chunk tasks
    never do), records the task run's assets in ``task_run_assets``, and the thread and process pool task
    runners keep a cancel event per submitted task run. None of it is released before the flow run ends:
    tracemalloc counted ~4 KB per chunk, the one part of a batch_map flow process that grew with the number
    of chunks (~45 MB over 10^9 items in chunks of 100,000). Called for each finished chunk, from the
    thread that submits (the runner's cancel-all on exit iterates its events in that thread too).
    """
    task_run_id = getattr(state.state_details, "task_run_id", None)
    if task_run_id is None:
        return

    ctx = FlowRunContext.get()
    if ctx is not None:
        getattr(ctx, "task_run_assets", {}).pop(task_run_id, None)
        links = getattr(ctx, "run_results", None)
        if links:
            for key, link in list(links.items()):  # a few entries: those of the chunks not collected yet
                linked = link[0] if isinstance(link, tuple) else None
                if getattr(getattr(linked, "state_details", None), "task_run_id", None) == task_run_id:
                    links.pop(key, None)
    events = getattr(runner, "_cancel_events", None)
    if isinstance(events, dict):
        events.pop(task_run_id, None)


def state_report(state: State) -> ChunkReport | BaseException:
    """The ChunkReport of a finished chunk task, or the exception that failed it."""
    if not state.is_final():  # e.g. a Dask future that raised outside Prefect's engine: the API says Pending
        return RuntimeError(f"chunk task ended without a final state (it is {state.name}): its worker may have died "
                            "or lost its connection; rerun with the same run_key to run the chunk again")
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
    "ChunkFailed",
    "ChunkJob",
    "ChunkRef",
    "ItemOptions",
    "TaskRunnerName",
    "WindowStats",
    "chunk_cache_key",
    "configure_chunk_task",
    "die_with_parent",
    "open_task_runner",
    "process_chunk",
    "recorded_safely",
    "release_task_run",
    "run_chunk",
    "run_window",
    "sanitized",
    "state_report",
]
