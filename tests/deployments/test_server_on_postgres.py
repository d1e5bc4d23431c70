"""The production shape of the server on one machine: `prefect server start` on a PostgreSQL database (a
throwaway cluster behind PREFECT_API_DATABASE_CONNECTION_URL), two process workers on one work pool, each
in its own working directory with its own cache and the state only in object storage (a moto S3 server on
loopback), and a Dask cluster started as separate `dask scheduler` / `dask worker` processes that one
deployment's chunk tasks run on.

What it proves: deployments, flow runs, task runs, global concurrency limits and artifacts work on a
PostgreSQL-backed server; the runs spread over both workers; every item ran once per run; the global limit
held across workers and the Dask cluster. A run whose worker is SIGKILLed mid-run is resumed by a new run of
its run_key on the other worker: finished chunks from their records in S3, the dead run marked Crashed, the
global concurrency slots its chunks held given back when their lease ran out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.local_server import PrefectServer, free_port
from tests.deployments.pool_helpers import (
    check_once_per_run_under_the_limit,
    pool_with_deployment,
    probe_params,
    run_and_wait,
    stop,
)
from tests.faults.helpers import passed
from tests.fixtures.postgres import PG_PASSWORD
from tests.fixtures.s3 import S3State

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_server(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    url = pg_cluster.url(pg_cluster.create_database())
    server = PrefectServer(tmp_path_factory.mktemp("prefect-on-pg"), database_url=url)
    server.start(timeout=240)
    try:
        yield server
    finally:
        server.stop()


def start(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    cwd.mkdir(parents=True, exist_ok=True)
    with (cwd / "output.log").open("wb") as log:  # kept for the failure message
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_workers_and_a_dask_cluster_on_a_postgresql_backed_server(pg_server: PrefectServer, s3_state: S3State,
                                                                      tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    pool, limit_name, runs, n = f"bf-pg-{tag}", f"bf-pg-gcl-{tag}", 4, 40
    probe, log = tmp_path / "probe", tmp_path / "effects.log"
    probe.mkdir()
    common = {**os.environ, **s3_state.env(), "PYTHONPATH": str(ROOT), "PREFECT_API_URL": pg_server.api_url,
              "BF_PROBE_DIR": str(probe),
              "BF_SLEEP": "0.05", "BF_SIDE_EFFECT_LOG": str(log), "PREFECT_WORKER_QUERY_SECONDS": "1",
              "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    scheduler = free_port()
    dask_address = f"tcp://127.0.0.1:{scheduler}"
    procs = [start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(scheduler),
                    "--no-dashboard"], common, tmp_path / "dask-scheduler")]
    with temporary_settings(updates={PREFECT_API_URL: pg_server.api_url}):
        deployment_id = pool_with_deployment(pool, limit_name, f"pg-{tag}")
        try:
            procs.append(start([str(BIN / "dask"), "worker", dask_address, "--nworkers", "1", "--nthreads", "2",
                                "--no-dashboard"], common, tmp_path / "dask-worker"))
            for i in range(2):  # each worker: its own working directory and cache; state only in S3
                env = {**common, "BATCHFLOWS_STATE_CACHE": str(tmp_path / f"w{i}" / "cache")}
                procs.append(start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", f"w{i}-{tag}",
                                    "--limit", "2"], env, tmp_path / f"w{i}"))
            with get_client(sync_client=True) as client:
                states = run_and_wait(client, deployment_id, [
                    {**probe_params(n, limit_name, f"pg-{tag}-{r}"),
                     **({"task_runner": "dask", "dask_address": dask_address} if r == 0 else {})}
                    for r in range(runs)])
                artifacts = client.read_artifacts()
        finally:
            stop(procs)
    parents = check_once_per_run_under_the_limit(states, n, log, probe, limit=2)
    assert any(a.key and "summary" in a.key for a in artifacts)  # artifacts are stored in PostgreSQL too

    worker_pids = {p.pid for p in procs[2:]}
    assert worker_pids <= parents  # both workers ran flow runs (a flow run's process is a child of its worker)
    assert len(parents - worker_pids) >= 1  # and the Dask worker ran the chunks of the dask run
    with_cache = [w for w in ("w0", "w1") if (tmp_path / w / "cache" / "runs" / "batch-map").exists()]
    assert with_cache == ["w0", "w1"]  # no shared local state: each worker has its own cache
    summaries = [k for k in s3_state.objects("state/runs/batch-map/") if k.endswith("/summary.json")]
    assert len(summaries) == runs  # the Dask run's too: records and summaries of every run are in S3
    assert PG_PASSWORD not in (pg_server.log_path.read_text() if pg_server.log_path.exists() else "")


def test_a_run_killed_with_its_worker_resumes_on_the_other_worker_from_s3(pg_server: PrefectServer, s3_state: S3State,
                                                                          tmp_path: Path) -> None:
    """Two process workers sharing only S3 state (own working directories, own caches): SIGKILL the worker and
    the flow run it runs mid-run; a new run of the same run_key on the other worker resumes from S3."""
    tag = uuid.uuid4().hex[:8]
    pool, n, chunk, limit, lease_s = f"bf-s3-{tag}", 120, 10, 53, 4.0
    prefix = "state/runs/batch-map/pg-failover/"
    effects, gate = tmp_path / "effects.log", tmp_path / "gate"
    gate.mkdir()
    common = {**os.environ, **s3_state.env(), "PYTHONPATH": str(ROOT), "PREFECT_API_URL": pg_server.api_url,
              "BF_EFFECTS": str(effects), "BATCHFLOWS_STATE_LEASE_S": str(lease_s),
              "BATCHFLOWS_CONCURRENCY_LEASE_S": "60",  # Prefect's shortest slot lease
              "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    limit_name = f"bf-s3-gcl-{tag}"
    params = {"source": list(range(n)), "handler": "tests.faults.helpers:effect", "chunk_size": chunk,
              "max_concurrency": 2, "retries": 0, "run_key": "pg-failover", "min_success_ratio": 0.5,
              "concurrency_limit": limit_name}

    def worker(name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {**common, "BATCHFLOWS_STATE_CACHE": str(tmp_path / name / "cache"), **extra}
        return start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", f"{name}-{tag}", "--limit",
                      "1"], env, tmp_path / name)

    with temporary_settings(updates={PREFECT_API_URL: pg_server.api_url}):
        deployment_id = pool_with_deployment(pool, limit_name, f"s3-{tag}")
        procs = [worker("w0", {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit)})]
        try:
            with get_client(sync_client=True) as client:
                dead_run = client.create_flow_run_from_deployment(deployment_id, parameters=params)
                deadline = time.monotonic() + 240
                while passed(gate) < limit + 2 or len(s3_state.objects(prefix + "chunks/")) < 4:
                    assert time.monotonic() < deadline, (tmp_path / "w0" / "output.log").read_text()[-3000:]
                    time.sleep(0.2)
                holder = json.loads(s3_state.client().get_object(Bucket=s3_state.bucket, Key=prefix + "lease")
                                    ["Body"].read())
                held = client.read_global_concurrency_limit_by_name(limit_name).active_slots
                os.kill(holder["pid"], signal.SIGKILL)  # the flow run's process, then its worker
                os.killpg(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
                recorded = len(s3_state.objects(prefix + "chunks/"))
                time.sleep(lease_s + 0.5)
                procs.append(worker("w1", {}))
                [state] = run_and_wait(client, deployment_id, [params])
                deadline = time.monotonic() + 30
                while (client.read_flow_run(dead_run.id).state.type.value != "CRASHED"  # type: ignore[union-attr]
                       and time.monotonic() < deadline):
                    time.sleep(0.5)
                dead_state = client.read_flow_run(dead_run.id).state
                left = client.read_global_concurrency_limit_by_name(limit_name).active_slots
        finally:
            stop(procs[1:])
    assert state.is_completed(), (state.message, (tmp_path / "w1" / "output.log").read_text()[-3000:])
    assert f"{n} items: {n - 24} succeeded, 12 failed, 12 skipped" in (state.message or ""), state.message
    assert dead_state is not None and dead_state.type.value == "CRASHED"
    # the dead run's chunks held both slots; their leases expired and the rerun's chunks got them (it completed),
    # and the rerun gave every slot back
    assert held == 2 and left == 0
    summary = json.loads(s3_state.client().get_object(Bucket=s3_state.bucket, Key=prefix + "summary.json")
                         ["Body"].read())
    assert summary["chunks_resumed"] == recorded >= 4
    counts = Counter(int(x) for x in effects.read_text().split())
    assert set(counts) == set(range(n)) and max(counts.values()) <= 2
    assert sum(c - 1 for c in counts.values()) <= 2 * chunk  # only the chunks in flight on the dead worker
    assert not list((tmp_path / "w1" / "cache" / "runs" / "batch-map" / "pg-failover").glob("journal/*"))
    assert not (tmp_path / "w0" / "cache" / "runs" / "batch-map" / "pg-failover" / "summary.json").exists()
