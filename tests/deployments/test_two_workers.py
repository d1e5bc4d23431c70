"""Two Prefect workers on one work pool consume runs of one deployment; a global limit holds across them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate

from flows.batch_map import batch_map_flow

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def test_two_workers_share_the_runs_and_the_global_limit(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    pool, limit_name, runs, n = f"bf-two-workers-{tag}", f"bf-two-workers-gcl-{tag}", 4, 40
    probe, log = tmp_path / "probe", tmp_path / "effects.log"
    probe.mkdir()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name, limit=2, active=True))
    deployment_id = batch_map_flow.from_source(  # type: ignore[attr-defined]
        source=str(ROOT), entrypoint="flows/batch_map.py:batch_map_flow"
    ).deploy(name=f"two-workers-{tag}", work_pool_name=pool, print_next_steps=False)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "BATCHFLOWS_STATE_DIR": str(tmp_path / "state"),
           "BF_PROBE_DIR": str(probe), "BF_SLEEP": "0.05", "BF_SIDE_EFFECT_LOG": str(log),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    workers = [
        subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--name", f"w{i}-{tag}", "--limit", "2"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for i in range(2)
    ]
    try:
        with get_client(sync_client=True) as client:
            flow_runs = [
                client.create_flow_run_from_deployment(deployment_id, parameters={
                    "source": list(range(n)), "handler": "tests.faults.helpers:probe_and_record", "chunk_size": 4,
                    "max_concurrency": 3, "concurrency_limit": limit_name, "run_key": f"two-workers-{tag}-{r}",
                })
                for r in range(runs)
            ]
            deadline = time.monotonic() + 240
            while True:
                states = [client.read_flow_run(fr.id).state for fr in flow_runs]
                if all(s is not None and s.is_final() for s in states):
                    break
                assert time.monotonic() < deadline, [s.name if s else None for s in states]
                time.sleep(1)
        assert all(s is not None and s.is_completed() for s in states), [(s.name, s.message) for s in states if s]
        assert all(s is not None and f"{n} items: {n} succeeded" in (s.message or "") for s in states)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)

    records = [line.split() for line in log.read_text().splitlines()]
    parents = {int(ppid) for _, ppid, _ in records}
    assert parents == {w.pid for w in workers}, "both workers ran flow runs (each flow run is a child of its worker)"
    assert Counter(int(item) for item, _, _ in records) == Counter({i: runs for i in range(n)})  # once per run
    observed = [int(x) for x in (probe / "observed.log").read_text().split()]
    assert len(observed) == runs * n
    assert max(observed) <= 2  # 4 runs x 3 chunks could run at once; the global limit allows 2 across workers
