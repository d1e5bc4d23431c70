"""Shared pieces of the benchmarks: a real Prefect server, peak-RSS sampling, a result table."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


_server_pid: int | None = None


def wait_server_idle(max_wait_s: float = 180.0, threshold_pct: float = 15.0) -> float:
    """Wait until the Prefect server has worked off its event backlog (CPU below threshold for 2 s).

    The server shares the machine's 2 cores; a variant measured while it still digests the task-run
    events of the previous one would be charged for them. Returns the seconds waited.
    """
    if _server_pid is None:
        return 0.0
    started = time.monotonic()
    procs = [psutil.Process(_server_pid), *psutil.Process(_server_pid).children(recursive=True)]
    calm = 0
    while time.monotonic() - started < max_wait_s and calm < 4:
        busy = 0.0
        for p in procs:
            try:
                busy += p.cpu_percent(interval=None)
            except psutil.NoSuchProcess:
                continue
        calm = calm + 1 if busy < threshold_pct else 0
        time.sleep(0.5)
    return time.monotonic() - started


@contextmanager
def prefect_server() -> Iterator[str]:
    """A real ``prefect server start`` for the benchmark (before prefect is imported here)."""
    from deployments.local_server import ensure_server

    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    global _server_pid
    server = ensure_server()
    _server_pid = server.proc.pid if server is not None and server.proc is not None else None
    try:
        yield os.environ["PREFECT_API_URL"]
    finally:
        if server is not None:
            server.stop()


class PeakRss:
    """Samples the RSS of a process (default: this one) and its children every ``interval_s`` (20 ms);
    ``record=True`` keeps every sample as (seconds since start, bytes) in ``history``."""

    def __init__(self, pid: int | None = None, *, interval_s: float = 0.02, record: bool = False) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.interval_s = interval_s
        self.history: list[tuple[float, int]] | None = [] if record else None
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            rss = self._sample()
            self.peak = max(self.peak, rss)
            if self.history is not None and rss:
                self.history.append((time.monotonic() - started, rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def mb(self) -> float:
        return self.peak / 1e6


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run fn; return (seconds, peak RSS MB, result)."""
    with PeakRss() as rss:
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
    return elapsed, rss.mb, result


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}")
    if not rows:
        return
    cols = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in cols]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]).ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")


@contextmanager
def row_path() -> Iterator[None]:
    """db_migrate's row-by-row path (``BATCHFLOWS_DB_COLUMNAR=false``), to print it beside the columnar one."""
    old = os.environ.get("BATCHFLOWS_DB_COLUMNAR")
    os.environ["BATCHFLOWS_DB_COLUMNAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BATCHFLOWS_DB_COLUMNAR", None)
        else:
            os.environ["BATCHFLOWS_DB_COLUMNAR"] = old
