"""What the work-pool tests share: batch_map runs of a deployment, waited for, and the checks that every
item ran once per run under a global limit (tests.faults.helpers:probe_and_record writes who ran what)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate

from flows.batch_map import batch_map_flow

ROOT = Path(__file__).resolve().parents[2]


def pool_with_deployment(pool: str, limit_name: str, deployment: str) -> UUID:
    """A process work pool, a global concurrency limit of 2 named ``limit_name`` and a batch_map deployment of
    this checkout on the pool (the API is the one of the current settings); the deployment's id."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name, limit=2, active=True))
    return batch_map_flow.from_source(  # type: ignore[attr-defined]
        source=str(ROOT), entrypoint="flows/batch_map.py:batch_map_flow"
    ).deploy(name=deployment, work_pool_name=pool, print_next_steps=False)


def run_and_wait(client: Any, deployment_id: UUID, parameters: list[dict[str, Any]], *, timeout: float = 300
                 ) -> list[Any]:
    """Create one flow run per parameter set and wait until all are final; their states."""
    flow_runs = [client.create_flow_run_from_deployment(deployment_id, parameters=p) for p in parameters]
    deadline = time.monotonic() + timeout
    while True:
        states = [client.read_flow_run(fr.id).state for fr in flow_runs]
        if all(s is not None and s.is_final() for s in states):
            return states
        assert time.monotonic() < deadline, [s.name if s else None for s in states]
        time.sleep(1)


def probe_params(n: int, limit_name: str, run_key: str) -> dict[str, Any]:
    return {"source": list(range(n)), "handler": "tests.faults.helpers:probe_and_record", "chunk_size": 4,
            "max_concurrency": 3, "concurrency_limit": limit_name, "run_key": run_key}


def check_once_per_run_under_the_limit(states: list[Any], n: int, log: Path, probe: Path, *, limit: int
                                       ) -> set[int]:
    """Every run completed with all n items, each item ran once per run, at most ``limit`` chunks ran at
    once; returns the parent pids of the processes that ran items."""
    runs = len(states)
    assert all(s is not None and s.is_completed() for s in states), [(s.name, s.message) for s in states if s]
    assert all(s is not None and f"{n} items: {n} succeeded" in (s.message or "") for s in states)
    records = [line.split() for line in log.read_text().splitlines()]
    assert Counter(int(item) for item, _, _ in records) == Counter({i: runs for i in range(n)})  # once per run
    observed = [int(x) for x in (probe / "observed.log").read_text().split()]
    assert len(observed) == runs * n and max(observed) <= limit  # the global limit held across processes
    return {int(ppid) for _, ppid, _ in records}


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group (workers, Dask), then SIGKILL what has not exited within 30 s."""
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
