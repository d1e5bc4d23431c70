"""Scale (issue 18): a 10^8-item generator through batch_map in flat memory, beside the 10M-item run.

    python -m bench.huge [--items 10000000 100000000] [--target-chunk-seconds 1.0] [--max-concurrency 2]

Each size runs ``tests.handlers:numbers`` (``BF_N`` integers) -> ``tests.handlers:double`` with
``chunking="adaptive"`` in a fresh ``python -m tests.run_flow batch-map`` process (how a scheduled run
starts) against one real ``prefect server start``. Per run it prints: time inside the run
(``summary.duration_s``) and end to end (process start to exit), items/s, the flow process's peak RSS
(sampled every 100 ms, and ``ru_maxrss`` of the child from ``wait4``), the Prefect task runs the server
holds for the flow run (``POST /task_runs/count`` by ``flow_run_id``), chunks, whether the counts add up
(succeeded == items, nothing failed, skipped or left) and the state dir's disk use (peak while running,
at the end, by part: chunk records, journals, plan.log). Each run's state dir is removed after it.

Targets: the largest run's peak RSS within 10 % of the smallest run's, and at most one task run per
10,000 items. Adaptive chunks grow toward ``target_chunk_seconds`` up to the strategy's 100,000 items,
so any target above ~0.1 s of work keeps chunks above 10,000 items on this handler.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import PeakRss, prefect_server, print_table, wait_server_idle

RSS_TOLERANCE = 0.10
ITEMS_PER_TASK_RUN = 10_000
_KEEP_LINES = 400


def disk_use(root: Path) -> dict[str, int]:
    """Bytes on disk (allocated blocks) under ``root``, by part of the state layout."""
    parts: dict[str, int] = collections.Counter()
    for dirpath, _dirs, files in os.walk(root):
        where = Path(dirpath)
        part = "records" if where.name == "chunks" else "journals" if where.name == "journal" else "other"
        for name in files:
            try:
                used = (where / name).stat().st_blocks * 512
            except FileNotFoundError:  # a journal deleted between the listing and the stat
                continue
            parts["plan.log" if name == "plan.log" else part] += used
    return dict(parts)


class DiskSampler:
    """The peak of ``disk_use(root)`` summed, sampled every ``interval_s`` in a thread."""

    def __init__(self, root: Path, interval_s: float = 2.0) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(disk_use(self.root).values()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class HugeRun:
    items: int
    inside_s: float = 0.0
    end_to_end_s: float = 0.0
    sampled_rss_mb: float = 0.0
    maxrss_mb: float = 0.0
    task_runs: int = -1
    chunks: int = 0
    counts_ok: bool = False
    disk_peak_mb: float = 0.0
    disk_end: dict[str, int] = field(default_factory=dict)
    largest_chunk: int = 0
    rss_over_time: str = ""
    summary: Any = None

    @property
    def task_runs_per_10k(self) -> float:
        return self.task_runs * ITEMS_PER_TASK_RUN / self.items


def count_task_runs(api_url: str, flow_run_id: str, expected: int, timeout_s: float = 180.0) -> int:
    """Task runs the server holds for the flow run. Task runs reach the server as events, so the count is
    read until it reaches ``expected`` or stops moving (then that count is the answer)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last, same = -1, 0
    body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}}
    while True:
        count = int(httpx.post(f"{api_url}/task_runs/count", json=body, timeout=30).json())
        same = same + 1 if count == last else 0
        if count >= expected or same >= 5 or time.monotonic() > deadline:
            return count
        last = count
        time.sleep(2.0)


def run_one(items: int, *, state: Path, api_url: str, target_chunk_seconds: float, max_concurrency: int) -> HugeRun:
    from tasks.core.outcomes import RunSummary
    from tests.run_flow import start_flow, summary_in

    params = {"source": "tests.handlers:numbers", "handler": "tests.handlers:double", "chunking": "adaptive",
              "target_chunk_seconds": target_chunk_seconds, "max_concurrency": max_concurrency, "retries": 0,
              "run_key": f"huge-{items}"}
    result = HugeRun(items)
    wait_server_idle()
    lines: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)
    started = time.perf_counter()
    proc = start_flow("batch-map", params, {"BF_N": str(items), "BATCHFLOWS_STATE_DIR": str(state)})
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    with PeakRss(proc.pid, interval_s=0.1, record=True) as rss, DiskSampler(state) as disk:
        _, status, usage = os.wait4(proc.pid, 0)
    result.end_to_end_s = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    output = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"the {items:,}-item run failed (exit {proc.returncode}):\n{output[-4000:]}")
    summary = summary_in(output, RunSummary)
    result.summary = summary
    result.inside_s = summary.duration_s
    result.sampled_rss_mb = rss.mb
    result.maxrss_mb = usage.ru_maxrss / 1e3  # KiB on Linux
    result.rss_over_time = rss_quarters(rss.history or [])
    result.chunks = summary.chunks_total
    result.counts_ok = (summary.total == summary.succeeded == items and summary.failed == summary.skipped == 0
                        and summary.remaining == 0)
    run_dir = Path(summary.run_dir or state)
    plan = run_dir / "plan.log"
    result.largest_chunk = max((int(x) for x in plan.read_text().split()), default=0) if plan.is_file() else 0
    result.disk_end = disk_use(state)
    result.disk_peak_mb = max(disk.peak, sum(result.disk_end.values())) / 1e6
    wait_server_idle()
    result.task_runs = count_task_runs(api_url, str(summary.flow_run_id), expected=summary.chunks_total)
    return result


def rss_quarters(history: list[tuple[float, int]]) -> str:
    """The highest RSS (MB) in each quarter of the process's life: flat memory shows as four equal figures
    (the first quarter includes the imports, the last the exit)."""
    if not history:
        return "-"
    end = history[-1][0] or 1.0
    peaks = [0, 0, 0, 0]
    for at, rss in history:
        quarter = min(int(4 * at / end), 3)
        peaks[quarter] = max(peaks[quarter], rss)
    return " / ".join(f"{p / 1e6:.0f}" for p in peaks)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def rows_of(runs: list[HugeRun]) -> list[dict[str, object]]:
    return [{
        "items": f"{r.items:,}", "inside s": f"{r.inside_s:.1f}", "end to end s": f"{r.end_to_end_s:.1f}",
        "items/s": f"{r.items / r.inside_s:,.0f}" if r.inside_s else "-",
        "peak RSS MB (sampled / ru_maxrss)": f"{r.sampled_rss_mb:.0f} / {r.maxrss_mb:.0f}",
        "RSS MB per quarter of the run": r.rss_over_time,
        "task runs": r.task_runs, "chunks (largest)": f"{r.chunks} ({r.largest_chunk:,})",
        "task runs per 10k items": f"{r.task_runs_per_10k:.3f}",
        "succeeded == items": "yes" if r.counts_ok else f"NO ({r.summary.counts_line()})",
        "state dir MB peak / end (records, journals, plan.log)": (
            f"{r.disk_peak_mb:.1f} / {_mb(r.disk_end.get('records', 0))}, {_mb(r.disk_end.get('journals', 0))}, "
            f"{_mb(r.disk_end.get('plan.log', 0))}"),
    } for r in runs]


def verdicts(runs: list[HugeRun]) -> list[dict[str, object]]:
    base, big = runs[0], runs[-1]
    ratio = big.maxrss_mb / base.maxrss_mb
    sampled = big.sampled_rss_mb / base.sampled_rss_mb
    rows: list[dict[str, object]] = [{
        "check": f"peak RSS {big.items:,} / {base.items:,} within {RSS_TOLERANCE:.0%}",
        "value": f"{ratio:.3f} (sampled {sampled:.3f})",
        "result": "PASS" if abs(ratio - 1) <= RSS_TOLERANCE else "MISS",
    }]
    rows += [{
        "check": f"{r.items:,} items: task runs <= 1 per {ITEMS_PER_TASK_RUN:,} items",
        "value": f"{r.task_runs} task runs for {r.items:,} items ({r.task_runs_per_10k:.3f} per 10k)",
        "result": "PASS" if 0 <= r.task_runs <= r.items / ITEMS_PER_TASK_RUN else "MISS",
    } for r in runs]
    rows += [{
        "check": f"{r.items:,} items: succeeded == items", "value": r.summary.counts_line(),
        "result": "PASS" if r.counts_ok else "MISS",
    } for r in runs]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000_000, 100_000_000],
                        help="sizes to run, smallest first (the RSS ratio is the last over the first)")
    parser.add_argument("--target-chunk-seconds", type=float, default=1.0)
    parser.add_argument("--max-concurrency", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-huge-"))
    runs: list[HugeRun] = []
    try:
        with prefect_server() as url:
            print(f"Prefect server: {url}; {os.cpu_count()} cores; state under {tmp}")
            for items in args.items:
                state = tmp / f"state-{items}"
                runs.append(run_one(items, state=state, api_url=url, target_chunk_seconds=args.target_chunk_seconds,
                                    max_concurrency=args.max_concurrency))
                shutil.rmtree(state, ignore_errors=True)
                print(f"{items:,} items done: {runs[-1].inside_s:.1f} s inside the run, "
                      f"{runs[-1].maxrss_mb:.0f} MB peak RSS, {runs[-1].task_runs} task runs", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    title = (f"batch_map, generator -> double, chunking=adaptive, target_chunk_seconds={args.target_chunk_seconds:g}, "
             f"max_concurrency={args.max_concurrency}, a fresh process per run")
    print_table(title, rows_of(runs))
    if len(runs) > 1:
        print_table("targets", verdicts(runs))
    return 0 if all(r.counts_ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
