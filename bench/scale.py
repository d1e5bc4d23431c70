"""Scale-out benchmark (``python -m bench.scale``): one CPU-bound batch_map on each task runner.

The same N items (default 200,000) of pure-Python work (about a quarter of a millisecond each,
holding the GIL) through ``batch_map`` with ``task_runner`` = threads, processes and dask (a
LocalCluster with one single-threaded worker process per core), beside the plain baseline of the
same run: ``multiprocessing.Pool(cores).map`` with a sensible chunksize. Reports items/s, the ratio
to the Pool, and peak RSS (the variant's process and all its children: pool, Dask workers).

Each variant runs in its own process against one real ``prefect server start``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

from bench.common import ROOT, PeakRss, prefect_server, print_table, wait_server_idle

WORK = 2_500  # loop steps per item: ~0.2-0.3 ms of GIL-holding Python on this machine


def burn(x: int) -> int:
    """CPU-bound, deterministic, GIL-bound: what threads cannot parallelize and processes can."""
    acc = x
    for i in range(WORK):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def _variant(name: str, n: int, chunk: int) -> dict[str, float]:
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    if name == "pool":
        with multiprocessing.get_context("spawn").Pool(cores) as pool:
            total = sum(pool.map(burn, range(n), chunksize=chunk))
        assert total > 0
    else:
        from flows.batch_map import batch_map

        window = cores if name == "threads" else 2 * cores  # processes/dask: keep every worker fed
        summary = batch_map(range(n), "bench.scale:burn", chunk_size=chunk, max_concurrency=window,
                            task_runner=name, retries=0)  # type: ignore[arg-type]
        assert summary.ok and summary.succeeded == n, summary.render_text()
    return {"seconds": time.perf_counter() - started}


def _run_variant(name: str, n: int, chunk: int) -> tuple[float, float]:
    wait_server_idle()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.scale", "--variant", name, "--items", str(n), "--chunk", str(chunk)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    with PeakRss(proc.pid) as rss:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])["seconds"], rss.mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--variant", choices=["pool", "threads", "processes", "dask"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(_variant(args.variant, args.items, args.chunk)))
        return 0
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    per_item = time.perf_counter()
    burn(1)
    per_item = time.perf_counter() - per_item
    with prefect_server() as url:
        print(f"Prefect server {url}; {os.cpu_count()} cores; {args.items:,} items of ~{per_item * 1e3:.2f} ms, "
              f"chunks of {args.chunk}", flush=True)
        rows = []
        base: float | None = None
        for name, label in (("pool", f"multiprocessing.Pool({os.cpu_count()}).map (baseline)"),
                            ("threads", "batch_map, task_runner='threads'"),
                            ("processes", "batch_map, task_runner='processes'"),
                            ("dask", f"batch_map, task_runner='dask' (LocalCluster({os.cpu_count()}))")):
            secs, mb = _run_variant(name, args.items, args.chunk)
            rate = args.items / secs
            base = base or rate
            rows.append({"variant": label, "seconds": f"{secs:.1f}", "items/s": f"{rate:,.0f}",
                         "vs Pool": f"{rate / base:.2f}x", "peak RSS MB (tree)": f"{mb:.0f}"})
            print(f"  {label}: {rate:,.0f} items/s", flush=True)
        print_table(f"CPU-bound batch_map, {args.items:,} items", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
