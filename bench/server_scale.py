"""How many chunk tasks per second a Prefect server sustains: SQLite-backed vs PostgreSQL-backed (issue 16).

    .venv/bin/python -m bench.server_scale [--items 20000] [--chunk-size 10] [--max-concurrency 8] [--largest 0]

Two real ``prefect server start`` processes in the same run: the default (SQLite in its PREFECT_HOME) and one
on a throwaway PostgreSQL 15 cluster (PREFECT_API_DATABASE_CONNECTION_URL, asyncpg). Against each, a
batch_map run in a fresh process (``python -m tests.run_flow``) of ``--items`` trivial items in chunks of
``--chunk-size``: one Prefect task run per chunk, ``--max-concurrency`` in flight. Printed per server: chunk
task runs per second inside the run (the summary's duration) and end to end (process start to exit).
``--largest N``: one more run of N items on the PostgreSQL-backed server (the largest run tried).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, print_table
from bench.db_migrate import pg_cluster
from deployments.local_server import PrefectServer


def run_batch_map(api_url: str, items: int, chunk_size: int, max_concurrency: int, state: Path) -> dict[str, Any]:
    source = state.parent / f"items-{items}.jsonl"
    source.write_text("".join(f"{i}\n" for i in range(items)))
    params = {"source": str(source), "handler": "tests.handlers:double", "chunk_size": chunk_size,
              "max_concurrency": max_concurrency}
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT), "BATCHFLOWS_STATE_DIR": str(state),
           "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tests.run_flow", "batch-map", json.dumps(params)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - started
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("SUMMARY ")), None)
    if proc.returncode != 0 or line is None:
        msg = f"batch_map failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        raise RuntimeError(msg)
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["succeeded"] == items, summary["message"]
    return {"chunks": summary["chunks_total"], "inside_s": summary["duration_s"], "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--largest", type=int, default=0, help="items of one more run on the PostgreSQL server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    rows = []
    with pg_cluster() as cluster:
        servers = {"SQLite": PrefectServer(work / "sqlite-home"),
                   "PostgreSQL": PrefectServer(work / "pg-home", database_url=cluster.url(cluster.create_database()))}
        for label, server in servers.items():
            server.start(timeout=240)
            try:
                todo = [args.items] + ([args.largest] if args.largest and label == "PostgreSQL" else [])
                for items in todo:
                    got = run_batch_map(server.api_url, items, args.chunk_size, args.max_concurrency, work / label)
                    rows.append({"server database": label, "items": f"{items:,}", "chunk task runs": f"{got['chunks']:,}",
                                 "inside the run s": f"{got['inside_s']:.1f}",
                                 "task runs/s inside": f"{got['chunks'] / got['inside_s']:.0f}",
                                 "end to end s": f"{got['wall_s']:.1f}",
                                 "task runs/s end to end": f"{got['chunks'] / got['wall_s']:.0f}"})
                    print(f"  {label}: {items:,} items, {got['chunks']:,} chunk task runs, "
                          f"{got['inside_s']:.1f}s inside the run", flush=True)
            finally:
                server.stop()
    print_table(f"chunk task runs per second a server sustains (chunk_size={args.chunk_size}, "
                f"max_concurrency={args.max_concurrency}, one batch_map process)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
