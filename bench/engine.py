"""Engine benchmarks (``make bench``): overhead per chunk, baselines, resume cost.

1. 10k chunks of trivial items through batch_map against a real ``prefect server start``:
   ms per chunk and peak RSS (targets: <= 20 ms/chunk, <= 500 MB).
2. The same items as a plain Python loop and as a bare Prefect ``.map`` of one task per item.
3. Resume: a full run vs a rerun after SIGKILL at ~90 % (target: rerun <= 20 % of the full run).
4. The item journal's cost: the chunk item loop (tasks.core.items.process_chunk) over 200k trivial items,
   without and with outputs, each with and without its journal (one write per finished item).
5. Batch handlers (per="batch"): 200k items in calls of 100 to a handler that costs 1 ms per call (a
   bulk API's round trip) plus a little work per item, beside a plain loop over the same batches; one
   call in flight (the engine's cost) and four (what item_concurrency buys).
6. Flow retries: 20k items (1 ms each, 8 in flight per chunk) run straight through, and the same run stopped
   by a fatal error at 90 % with flow_retries=1 (no delay): what the retry costs beyond the work itself.
7. Per-item engine cost (issue 18), each beside its baseline in the same run, inside the run
   (``summary.duration_s``: flow start excluded) and end to end:
   ``io``: 200k I/O-bound items (``time.sleep(0.001)``), ``ThreadPoolExecutor(64).map`` vs batch_map at the
   same total concurrency (4 chunks x 16 threads, 8 x 8; target >= 0.9x);
   ``trivial``: 1M trivial items, a plain loop calling the same function vs batch_map (target >= 0.5x).

Task-run log lines are at WARNING (PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL) as in the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import ROOT, PeakRss, prefect_server, print_table, wait_server_idle


def trivial(x: int) -> int:
    return x + 1


def trivial_batch(xs: list[int]) -> list[int]:
    """``trivial`` over a batch (per="batch"): the same calls, the engine's bookkeeping per call."""
    return [trivial(x) for x in xs]


def _variant(name: str, n_chunks: int) -> dict[str, float]:
    """Run one variant in this process (a fresh one per variant, so peak RSS is its own)."""
    from prefect import flow, task

    from flows.batch_map import batch_map

    items = list(range(n_chunks))

    @task
    def one(x: int) -> int:
        return trivial(x)

    @flow
    def bare_map(xs: list[int]) -> int:
        return len(one.map(xs).result())

    started = time.perf_counter()
    if name == "loop":
        [trivial(x) for x in items]
    elif name == "bare_map":
        bare_map(items)
    else:
        summary = batch_map(items, trivial, chunk_size=1, max_concurrency=8, retries=0)
        assert summary.ok and summary.chunks_total == n_chunks, summary.render_text()
    return {"seconds": time.perf_counter() - started}


def _run_variant(name: str, n_chunks: int) -> tuple[float, float]:
    wait_server_idle()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.engine", "--variant", name, "--chunks", str(n_chunks)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    with PeakRss(proc.pid) as rss:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], rss.mb


def overhead(n_chunks: int) -> list[dict[str, object]]:
    rows = []
    secs, mb = _run_variant("loop", n_chunks)
    rows.append({"variant": "plain Python loop", "seconds": f"{secs:.3f}", "ms/chunk": f"{1000 * secs / n_chunks:.4f}",
                 "peak RSS MB (process)": f"{mb:.0f}", "ratio to bare .map": "-"})
    secs_map, mb = _run_variant("bare_map", n_chunks)
    rows.append({"variant": f"bare Prefect .map ({n_chunks} task runs)", "seconds": f"{secs_map:.2f}",
                 "ms/chunk": f"{1000 * secs_map / n_chunks:.2f}", "peak RSS MB (process)": f"{mb:.0f}",
                 "ratio to bare .map": "1.00"})
    secs_bm, mb = _run_variant("batch_map", n_chunks)
    rows.append({"variant": f"batch_map ({n_chunks} chunks of 1 item)", "seconds": f"{secs_bm:.2f}",
                 "ms/chunk": f"{1000 * secs_bm / n_chunks:.2f}", "peak RSS MB (process)": f"{mb:.0f}",
                 "ratio to bare .map": f"{secs_map / secs_bm:.2f}"})
    return rows


def _run_subprocess(params: dict, env: dict[str, str], kill_at: int | None, log: Path) -> float:
    cmd = [sys.executable, "-m", "tests.run_flow", "batch-map", json.dumps(params)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if kill_at is None:
        proc.wait()
        return time.perf_counter() - started
    while proc.poll() is None:
        if log.exists() and log.stat().st_size and len(log.read_bytes().split()) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    return time.perf_counter() - started


def resume_cost(n_items: int, chunk_size: int) -> list[dict[str, object]]:
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-resume-"))
    base = {"source": "tests.handlers:numbers", "handler": "tests.handlers:side_effect", "chunk_size": chunk_size,
            "max_concurrency": 4, "retries": 0}
    env = {"BF_N": str(n_items), "BATCHFLOWS_STATE_DIR": str(tmp / "state"), "PYTHONPATH": str(ROOT),
           "BF_SLEEP": "0.003"}
    wait_server_idle()
    full_log = tmp / "full.log"
    full = _run_subprocess({**base, "run_key": "full"}, {**env, "BF_SIDE_EFFECT_LOG": str(full_log)}, None, full_log)
    wait_server_idle()
    kill_log = tmp / "kill.log"
    _run_subprocess({**base, "run_key": "killed"}, {**env, "BF_SIDE_EFFECT_LOG": str(kill_log)},
                    int(n_items * 0.9), kill_log)
    done_at_kill = len(kill_log.read_bytes().split())
    wait_server_idle()
    rerun = _run_subprocess({**base, "run_key": "killed"}, {**env, "BF_SIDE_EFFECT_LOG": str(kill_log)}, None,
                            kill_log)
    total_effects = len(kill_log.read_bytes().split())
    wait_server_idle()
    cached = _run_subprocess({**base, "run_key": "killed"}, {**env, "BF_SIDE_EFFECT_LOG": str(kill_log)}, None,
                             kill_log)
    return [
        {"run": "full run (subprocess)", "seconds": f"{full:.2f}", "items done": len(full_log.read_bytes().split()),
         "ratio to full": "1.00"},
        {"run": "rerun after SIGKILL at ~90 %", "seconds": f"{rerun:.2f}",
         "items done": f"{total_effects - done_at_kill} (killed at {done_at_kill})", "ratio to full": f"{rerun / full:.2f}"},
        {"run": "rerun of the finished run (fixed cost: process, imports, flow run)", "seconds": f"{cached:.2f}",
         "items done": str(len(kill_log.read_bytes().split()) - total_effects), "ratio to full": f"{cached / full:.2f}"},
    ]


def journal_cost(n_items: int, chunk_size: int = 1000) -> list[dict[str, object]]:
    """Per-item cost of the journal in the item loop itself (no Prefect), best of three per variant."""
    from tasks.core import Chunk, ChunkJob, ChunkRef, ItemOptions, process_chunk

    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-journal-"))
    chunks = [Chunk(i, list(range(i * chunk_size, (i + 1) * chunk_size)), i * chunk_size)
              for i in range(n_items // chunk_size)]
    rows = []
    for output in (False, True):
        timings = {}
        for journal in (False, True):
            best = float("inf")
            for attempt in range(3):
                job = ChunkJob(handler=trivial, options=ItemOptions(retries=0),
                               output_dir=str(tmp / f"out-{output}-{journal}-{attempt}") if output else None)
                started = time.perf_counter()
                for c in chunks:
                    ref = ChunkRef(key=f"c{c.index}", index=c.index,
                                   journal=str(tmp / f"j-{output}-{attempt}" / f"{c.index}.jsonl") if journal else None)
                    process_chunk(c, job, ref)
                best = min(best, time.perf_counter() - started)
            timings[journal] = best
        for journal in (False, True):
            rows.append({"item loop": f"{'with' if output else 'no'} output, {'with' if journal else 'no'} journal",
                         "seconds": f"{timings[journal]:.2f}", "us/item": f"{1e6 * timings[journal] / n_items:.2f}",
                         "ratio to no journal": f"{timings[False] / timings[journal]:.2f}"})
    return rows


def bulk_call(batch: list[int]) -> list[int]:
    """A batch handler: one 1 ms round trip per call, then a result per item."""
    time.sleep(0.001)
    return [x * 2 for x in batch]


def batches_cost(n_items: int, per_call: int = 100) -> list[dict[str, object]]:
    from flows.batch_map import batch_map

    items = list(range(n_items))
    started = time.perf_counter()
    for i in range(0, n_items, per_call):
        bulk_call(items[i:i + per_call])
    plain = time.perf_counter() - started
    rows = [{"run": f"plain loop, {n_items // per_call} calls of {per_call}", "seconds": f"{plain:.2f}",
             "items/s": f"{n_items / plain:,.0f}", "ratio to plain": "1.00"}]
    for concurrency in (1, 4):
        wait_server_idle()
        started = time.perf_counter()
        summary = batch_map(items, bulk_call, per="batch", max_batch_items=per_call, chunk_size=20_000,
                            max_concurrency=1, item_concurrency=concurrency, retries=0)
        total = time.perf_counter() - started
        assert summary.ok and summary.succeeded == n_items, summary.render_text()
        inside = summary.duration_s
        rows.append({"run": f"batch_map per='batch', {concurrency} call(s) in flight (inside the run / end to end)",
                     "seconds": f"{inside:.2f} / {total:.2f}", "items/s": f"{n_items / inside:,.0f}",
                     "ratio to plain": f"{plain / inside:.2f} / {plain / total:.2f}"})
    return rows


_fatal_at: list[int] = []


def sleepy_once_fatal(x: int) -> int:
    """1 ms of I/O; item ``_fatal_at[0]`` answers a fatal error the first time it is seen."""
    time.sleep(0.001)
    if _fatal_at and x == _fatal_at[0]:
        _fatal_at.clear()
        from tasks.core.errors import FatalError

        raise FatalError("the credentials expired")
    return x


def flow_retry_cost(n_items: int = 20_000) -> list[dict[str, object]]:
    from flows.batch_map import batch_map

    os.environ["BATCHFLOWS_FLOW_RETRY_DELAY_S"] = "0"
    kwargs = {"chunk_size": 500, "max_concurrency": 4, "item_concurrency": 8, "retries": 0}
    rows = []
    batch_map(list(range(2_000)), sleepy_once_fatal, **kwargs)  # warm up: imports, server connections
    for label, fatal in (("straight through", None), ("fatal error at 90 %, flow_retries=1", int(n_items * 0.9))):
        best, resumed = float("inf"), 0
        for _ in range(2):  # best of two
            _fatal_at[:] = [] if fatal is None else [fatal]
            wait_server_idle()
            started = time.perf_counter()
            summary = batch_map(list(range(n_items)), sleepy_once_fatal, flow_retries=1, **kwargs)
            best = min(best, time.perf_counter() - started)
            assert summary.ok and summary.succeeded == n_items, summary.render_text()
            resumed = summary.chunks_resumed
        rows.append({"run": label, "seconds": f"{best:.2f}", "chunks resumed by the retry": str(resumed)})
    extra = float(rows[1]["seconds"]) - float(rows[0]["seconds"])
    rows.append({"run": "cost of the retry", "seconds": f"{extra:.2f}",
                 "chunks resumed by the retry": f"{extra / float(rows[0]['seconds']):.2f} of the full run"})
    return rows


def sleepy(x: int) -> int:
    """1 ms of I/O (a short round trip)."""
    time.sleep(0.001)
    return x


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _batch_map_timed(items: list[int], handler: Callable[[int], int], **kwargs: Any) -> tuple[float, float]:
    """(inside the run, end to end) seconds of one batch_map run over ``items``."""
    from flows.batch_map import batch_map

    wait_server_idle()
    started = time.perf_counter()
    summary = batch_map(items, handler, retries=0, **kwargs)
    total = time.perf_counter() - started
    assert summary.ok and summary.succeeded == len(items), summary.render_text()
    return summary.duration_s, total


def io_cost(n_items: int = 200_000, repeats: int = 3, chunk_size: int = 5_000) -> list[dict[str, object]]:
    """ThreadPoolExecutor(64).map vs batch_map with 64 items in flight, each run ``repeats`` times interleaved."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(range(n_items))
    shapes = ((4, 16), (8, 8))
    base: list[float] = []
    runs: dict[tuple[int, int], list[tuple[float, float]]] = {shape: [] for shape in shapes}
    _batch_map_timed(items[:2_000], sleepy, chunk_size=500, max_concurrency=4, item_concurrency=16)  # warm up
    for _ in range(repeats):
        wait_server_idle()
        started = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            for _ in pool.map(sleepy, items):
                pass
        base.append(time.perf_counter() - started)
        for chunks, threads in shapes:
            runs[(chunks, threads)].append(_batch_map_timed(items, sleepy, chunk_size=chunk_size,
                                                            max_concurrency=chunks, item_concurrency=threads))
    plain = _median(base)
    rows = [{"run": f"ThreadPoolExecutor(64).map, {n_items:,} items of 1 ms", "seconds": f"{plain:.2f}",
             "items/s": f"{n_items / plain:,.0f}", "ratio to baseline (inside / end to end)": "1.00"}]
    for (chunks, threads), timings in runs.items():
        inside, total = _median([t[0] for t in timings]), _median([t[1] for t in timings])
        rows.append({"run": f"batch_map {chunks} chunks x {threads} threads, chunk_size={chunk_size}",
                     "seconds": f"{inside:.2f} / {total:.2f}", "items/s": f"{n_items / inside:,.0f}",
                     "ratio to baseline (inside / end to end)": f"{plain / inside:.2f} / {plain / total:.2f}"})
    return rows


def _hash_seconds(items: list[int], chunk_size: int) -> float:
    """Seconds to hash ``items`` in chunks of ``chunk_size`` as batch_map does (tasks.core.identity.chunk_hash)."""
    from tasks.core.identity import chunk_hash

    started = time.perf_counter()
    for i in range(0, len(items), chunk_size):
        chunk_hash(items[i:i + chunk_size])
    return time.perf_counter() - started


def trivial_cost(n_items: int = 1_000_000, repeats: int = 3, chunk_size: int = 50_000) -> list[dict[str, object]]:
    """A plain loop calling ``trivial`` vs batch_map over the same items, each run ``repeats`` times interleaved."""
    items = list(range(n_items))
    base: list[float] = []
    runs: list[tuple[float, float]] = []
    batched: list[tuple[float, float]] = []
    _batch_map_timed(items[:2_000], trivial, chunk_size=500, max_concurrency=2)  # warm up
    for _ in range(repeats):
        wait_server_idle()
        started = time.perf_counter()
        for x in items:
            trivial(x)
        base.append(time.perf_counter() - started)
        runs.append(_batch_map_timed(items, trivial, chunk_size=chunk_size, max_concurrency=2))
        batched.append(_batch_map_timed(items, trivial_batch, per="batch", max_batch_items=10_000,
                                        chunk_size=chunk_size, max_concurrency=2))
    plain = _median(base)
    hashed = _median([_hash_seconds(items, chunk_size) for _ in range(repeats)])
    rows = [{"run": f"plain loop, {n_items:,} trivial items", "seconds": f"{plain:.3f}",
             "items/s": f"{n_items / plain:,.0f}", "ratio to baseline (inside / end to end)": "1.00"},
            {"run": "ceiling: the loop plus the chunks' content hashes alone (what a resume checks; no Prefect, no "
                    "journal)", "seconds": f"{plain + hashed:.3f}", "items/s": f"{n_items / (plain + hashed):,.0f}",
             "ratio to baseline (inside / end to end)": f"{plain / (plain + hashed):.3f}"}]
    for label, timings in ((f"batch_map, chunk_size={chunk_size}, max_concurrency=2", runs),
                           ("the same, per='batch' (max_batch_items=10,000, the loop inside the handler)", batched)):
        inside, total = _median([t[0] for t in timings]), _median([t[1] for t in timings])
        rows.append({"run": label, "seconds": f"{inside:.2f} / {total:.2f}", "items/s": f"{n_items / inside:,.0f}",
                     "ratio to baseline (inside / end to end)": f"{plain / inside:.3f} / {plain / total:.3f}"})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--resume-items", type=int, default=40_000)
    parser.add_argument("--only", choices=["overhead", "resume", "journal", "batches", "retry", "io", "trivial"], default=None)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case of io and trivial (medians)")
    parser.add_argument("--chunk-size", type=int, default=None, help="chunk_size of io (5,000) and trivial (50,000)")
    parser.add_argument("--variant", choices=["loop", "bare_map", "batch_map"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_variant(args.variant, args.chunks)))
        return 0
    if args.only == "journal":
        print_table("item journal cost, 200,000 trivial items in chunks of 1,000", journal_cost(200_000))
        return 0
    with prefect_server() as url:
        print(f"Prefect server: {url}; {os.cpu_count()} cores")
        if args.only in (None, "overhead"):
            print_table(f"engine overhead, {args.chunks} chunks", overhead(args.chunks))
        if args.only in (None, "resume"):
            print_table(f"resume cost, {args.resume_items} items in chunks of 100", resume_cost(args.resume_items, 100))
        if args.only in (None, "batches"):
            print_table("batch handlers, 200,000 items, 1 ms per call of 100", batches_cost(200_000))
        if args.only in (None, "retry"):
            print_table("flow retries, 20,000 items of 1 ms", flow_retry_cost())
        if args.only in (None, "io"):
            size = {"chunk_size": args.chunk_size} if args.chunk_size else {}
            print_table(f"I/O-bound items, 64 in flight, median of {args.repeats}", io_cost(repeats=args.repeats, **size))
        if args.only in (None, "trivial"):
            size = {"chunk_size": args.chunk_size} if args.chunk_size else {}
            print_table(f"trivial items, median of {args.repeats}", trivial_cost(repeats=args.repeats, **size))
    if args.only is None:
        print_table("item journal cost, 200,000 trivial items in chunks of 1,000", journal_cost(200_000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
