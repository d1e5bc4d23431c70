"""Where an item's microseconds go (``make profile``): cProfile over a batch_map run, every thread.

Runs batch_map (against a real ``prefect server start``) with cProfile enabled in the flow's thread and
in every thread started during the run (Prefect's task-runner workers, the item threads of each chunk),
merges the profiles and prints the top functions by cumulative and by own time, and the own time per
item by component (the engine's modules; the handler; Prefect; the rest), in microseconds per item.
The profilers count each thread's CPU time (``time.thread_time``), so sleeping and waiting cost nothing
and the figures add up to CPU per item. Profiling slows everything down (~2-3x), so read the split, not
the absolute figures; ``bench.engine --only io`` / ``--only trivial`` measure the real rates beside
their baselines.

    python -m bench.profile_engine --case io        # 1 ms I/O-bound items, 4 chunks x 16 threads
    python -m bench.profile_engine --case trivial   # trivial items, 2 chunks in flight
    python -m bench.profile_engine --case batch     # the same with per="batch" (max_batch_items=10,000)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import threading
import time
from collections import defaultdict
from typing import Any

from bench.common import prefect_server, wait_server_idle
from bench.engine import sleepy, trivial, trivial_batch

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(*_: Any) -> None:
    """``threading.setprofile`` hook: the first call in a new thread replaces itself by a cProfile profiler."""
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


COMPONENTS = (  # (label, substring of the file path), first match wins
    ("handler (bench function)", "bench/engine.py"),
    ("batch calls tasks/core/batches.py", "tasks/core/batches.py"),
    ("item loop tasks/core/items.py", "tasks/core/items.py"),
    ("journal tasks/core/journal.py", "tasks/core/journal.py"),
    ("retry tasks/core/retry.py", "tasks/core/retry.py"),
    ("timeouts tasks/core/timeouts.py", "tasks/core/timeouts.py"),
    ("content hash tasks/core/identity.py", "tasks/core/identity.py"),
    ("outcomes/report tasks/core/outcomes.py", "tasks/core/outcomes.py"),
    ("progress tasks/core/progress.py", "tasks/core/progress.py"),
    ("limiter tasks/core/ratelimit.py", "ratelimit.py"),
    ("source + chunking tasks/core/sources.py, chunking.py", "tasks/core/sources.py"),
    ("source + chunking tasks/core/sources.py, chunking.py", "tasks/core/chunking.py"),
    ("run/window tasks/core/run.py, engine.py", "tasks/core/"),
    ("pydantic", "pydantic"),
    ("prefect", "prefect"),
    ("concurrent.futures / threading / queue", "concurrent/futures"),
    ("concurrent.futures / threading / queue", "threading.py"),
    ("concurrent.futures / threading / queue", "queue.py"),
)


def _component(filename: str, name: str) -> str:
    if "time.sleep" in name:
        return "time.sleep (entering the sleep)"
    for label, part in COMPONENTS:
        if part in filename:
            return label
    if filename == "~":
        if "posix.write" in name or "os.write" in name:
            return "os.write (journal, outputs)"
        if "lock" in name.lower() or "acquire" in name:
            return "locks / waits (built-in)"
        return "other built-ins"
    return "other Python"


def by_component(stats: pstats.Stats, n_items: int) -> list[tuple[str, float]]:
    totals: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        totals[_component(filename, name)] += tt
    return sorted(((k, 1e6 * v / n_items) for k, v in totals.items()), key=lambda kv: -kv[1])


class _Report:
    """print, and append to ``path`` when given (the run's own log lines go to stdout too)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path:
            open(path, "w").close()

    def __call__(self, text: str) -> None:
        print(text)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["io", "trivial", "batch"], default="io")
    parser.add_argument("--items", type=int, default=None, help="items (io: 100,000; trivial, batch: 500,000)")
    parser.add_argument("--chunk-size", type=int, default=None, help="io: 5,000; trivial: 50,000")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()
    n = args.items or (100_000 if args.case == "io" else 500_000)
    cases: dict[str, tuple[Any, dict[str, Any]]] = {
        "io": (sleepy, {"max_concurrency": 4, "item_concurrency": 16, "chunk_size": args.chunk_size or 5_000}),
        "trivial": (trivial, {"max_concurrency": 2, "chunk_size": args.chunk_size or 50_000}),
        "batch": (trivial_batch, {"max_concurrency": 2, "chunk_size": args.chunk_size or 50_000, "per": "batch",
                                  "max_batch_items": 10_000}),
    }
    handler, kwargs = cases[args.case]
    with prefect_server():
        from flows.batch_map import batch_map

        batch_map(list(range(2_000)), handler, retries=0, **{**kwargs, "chunk_size": 500})  # warm up
        wait_server_idle()
        items = list(range(n))
        main_profile = cProfile.Profile(time.thread_time)
        threading.setprofile(_start_in_thread)
        started = time.perf_counter()
        main_profile.enable()
        try:
            summary = batch_map(items, handler, retries=0, **kwargs)
        finally:
            main_profile.disable()
            threading.setprofile(None)  # type: ignore[arg-type]
        wall = time.perf_counter() - started
    assert summary.ok and summary.succeeded == n, summary.render_text()
    report = _Report(args.out)
    stats = pstats.Stats(main_profile)
    for profile in _profiles:
        stats.add(profile)
    report(f"case {args.case}: {n:,} items, {kwargs}; under the profiler: {summary.duration_s:.2f} s inside the run, "
          f"{wall:.2f} s end to end; {len(_profiles)} threads profiled")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(args.top)
        body = [line for line in out.getvalue().splitlines() if line.strip() and "function calls" not in line]
        report(f"\n## top {args.top} by {order} (seconds of thread CPU)\n" + "\n".join(body[1:]))
    report("\n## own time per item by component (microseconds of CPU per item, summed over threads; under cProfile)")
    total = 0.0
    for label, us in by_component(stats, n):
        total += us
        report(f"{label:52s} {us:9.2f}")
    report(f"{'total':52s} {total:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
