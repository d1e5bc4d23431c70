"""Two Prefect workers on one work pool consume runs of one deployment; a global limit holds across them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from tests.deployments.pool_helpers import (
    check_once_per_run_under_the_limit,
    pool_with_deployment,
    probe_params,
    run_and_wait,
    stop,
)

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def test_two_workers_share_the_runs_and_the_global_limit(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    pool, limit_name, runs, n = f"bf-two-workers-{tag}", f"bf-two-workers-gcl-{tag}", 4, 40
    probe, log = tmp_path / "probe", tmp_path / "effects.log"
    probe.mkdir()
    deployment_id = pool_with_deployment(pool, limit_name, f"two-workers-{tag}")

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
            states = run_and_wait(client, deployment_id, [probe_params(n, limit_name, f"two-workers-{tag}-{r}")
                                                          for r in range(runs)], timeout=240)
    finally:
        stop(workers)

    parents = check_once_per_run_under_the_limit(states, n, log, probe, limit=2)
    assert parents == {w.pid for w in workers}, "both workers ran flow runs (each flow run is a child of its worker)"
    # 4 runs x 3 chunks could run at once; the global limit allowed 2 across workers
