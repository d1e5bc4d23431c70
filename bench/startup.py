"""The fixed cost of a run from a fresh process, per flow: how a scheduled deployment starts.

    python -m bench.startup [--repeat 3]

For each flow, a fresh ``python -m tests.run_flow <flow> <params>`` runs a tiny input (20 items, a
100-row file, a 100-row table) against one real Prefect server, so what is timed is the process start,
the imports and the flow run's own machinery (flow run and task runs on the server, state dir, lock,
summary, artifacts), not the work. Beside it, ``python -c "import prefect"`` and ``import flows.<x>``
in fresh processes; the target is a run's fixed cost <= ``import prefect`` + 1 s. Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import ROOT, prefect_server, print_table, wait_server_idle


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return took


def best(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        wait_server_idle()
        times.append(_timed(cmd, env))
    return min(times)


def inputs(tmp: Path, api_url: str) -> dict[str, Callable[[int], dict[str, Any]]]:
    """flow name (module ``flows.<name>``, entry point ``<name>``) -> the parameters of tiny run ``i``."""
    csv = tmp / "small.csv"
    csv.write_text("id,amount,day\n" + "".join(f"{i},{i * 0.5},2026-01-{i % 28 + 1:02d}\n" for i in range(100)))
    src = tmp / "src.db"
    with sqlite3.connect(src) as con:
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount REAL)")
        con.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i * 0.5) for i in range(100)])
    return {
        "batch_map": lambda i: {"source": "tests.handlers:numbers", "handler": "tests.handlers:double",
                                "chunk_size": 10},
        "api_bulk": lambda i: {"items": [{"path": f"/ok/{n}"} for n in range(20)], "base_url": api_url,
                               "chunk_size": 10},
        "api_extract": lambda i: {"url": f"{api_url}/pages/offset", "page_size": 100,
                                  "output": str(tmp / f"out-api-{i}")},
        "file_transform": lambda i: {"source": str(csv), "output_dir": str(tmp / f"out-files-{i}"),
                                     "schema": {"id": "int64", "amount": "float64", "day": "date"}},
        "db_migrate": lambda i: {"source_url": f"sqlite:///{src}", "target_url": f"sqlite:///{tmp / f'dst-{i}.db'}",
                                 "table": "items", "mode": "upsert"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="flows to measure (default: all)")
    args = parser.parse_args()
    from tests.fixtures.api_server import ApiServer

    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-startup-"))
    api = ApiServer().start()
    try:
        with prefect_server():
            env = {**os.environ, "PYTHONPATH": str(ROOT), "BF_N": "20", "BATCHFLOWS_STATE_DIR": str(tmp / "state")}
            py = sys.executable
            base = best([py, "-c", "pass"], env, args.repeat)
            imp_prefect = best([py, "-c", "import prefect"], env, args.repeat)
            target = imp_prefect + 1.0
            rows = [{"flow": "(python -c pass)", "import flow s": "", "run s": f"{base:.2f}", "target s": "",
                     "ratio to target": ""},
                    {"flow": "(import prefect)", "import flow s": f"{imp_prefect:.2f}", "run s": "", "target s": "",
                     "ratio to target": ""}]
            for name, params in inputs(tmp, api.url).items():
                if args.only and name not in args.only:
                    continue
                imported = best([py, "-c", f"import flows.{name}"], env, args.repeat)
                runs = []
                for i in range(args.repeat):
                    wait_server_idle()
                    run = {**params(i), "run_key": f"startup-{name}-{i}"}
                    runs.append(_timed([py, "-m", "tests.run_flow", f"flows.{name}:{name}", json.dumps(run)], env))
                took = min(runs)
                rows.append({"flow": name, "import flow s": f"{imported:.2f}", "run s": f"{took:.2f}",
                             "target s": f"{target:.2f}", "ratio to target": f"{took / target:.2f}"})
            print_table("fixed cost of a run from a fresh process (tiny input; target: import prefect + 1 s; "
                        "ratio <= 1.00 meets it)", rows)
    finally:
        api.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
