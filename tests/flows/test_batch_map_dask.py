"""batch_map on Dask (prefect-dask): a LocalCluster of worker processes, and an existing cluster by address.

Chunk tasks run in Dask worker processes, so everything the engine promises must hold across
processes: item retries, the resume cache (records under the state dir), global concurrency limits
(taken by the chunk task through the Prefect API, from the worker), exact counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from flows.batch_map import batch_map
from tasks.core.errors import ConfigError
from tasks.core.outcomes import RunSummary
from tests.run_flow import ROOT, finish, start_flow, summary_in

pytestmark = pytest.mark.slow


def run(params: dict, env: dict[str, str]) -> RunSummary:
    proc = start_flow("batch-map", params, env)
    out = finish(proc, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return summary_in(out, RunSummary)


def test_retries_resume_and_a_global_limit_hold_on_a_local_cluster(tmp_path: Path) -> None:
    name = "bf-test-dask-gcl"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
    probe, log = tmp_path / "probe", tmp_path / "effects.log"
    probe.mkdir()
    env = {"BF_PROBE_DIR": str(probe), "BF_SLEEP": "0.02", "BF_SIDE_EFFECT_LOG": str(log)}
    params = {"source": list(range(60)), "handler": "tests.handlers:flaky_then_probe", "chunk_size": 5,
              "max_concurrency": 2, "task_runner": "dask", "retries": 1, "retry_backoff_s": 0.01,
              "concurrency_limit": name, "run_key": "dask-gcl"}
    first = run(params, env)
    assert (first.total, first.succeeded, first.failed, first.chunks_total) == (60, 60, 0, 12)  # retried in the workers
    observed = [int(x) for x in (probe / "observed.log").read_text().split()]
    assert len(observed) == 60 and max(observed) == 1  # 2 chunks could run at once; the limit allows 1
    workers = {line.split()[1] for line in log.read_text().splitlines()}
    assert len(workers) >= 2 and str(os.getpid()) not in workers  # chunks ran in several Dask worker processes

    again = run(params, env)
    assert again.chunks_resumed == 12 and again.succeeded == 60
    effects = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert effects == Counter(range(60))  # each item's effect once, across both runs


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """An existing Dask cluster (scheduler + 2 worker processes) in its own process group: (address, its env).

    Its workers run the handlers, so they get the handlers' environment (not the flow process's).
    """
    env = {"BF_SIDE_EFFECT_LOG": str(tmp_path / "effects.log"), "BF_PROBE_DIR": str(tmp_path), "BF_SLEEP": "0"}
    script = (
        "import sys, time\n"
        "from distributed import LocalCluster\n"
        "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host='127.0.0.1',"
        " dashboard_address=None)\n"
        "print(cluster.scheduler_address, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://"), f"the Dask cluster did not start: {address!r}"
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_an_existing_cluster_by_address(dask_cluster: tuple[str, dict[str, str]]) -> None:
    address, env = dask_cluster
    log = Path(env["BF_SIDE_EFFECT_LOG"])
    params = {"source": list(range(40)), "handler": "tests.handlers:flaky_then_probe", "chunk_size": 10,
              "max_concurrency": 2, "task_runner": "dask", "dask_address": address, "retries": 1,
              "retry_backoff_s": 0.01, "run_key": "dask-address"}
    s = run(params, env)
    assert (s.total, s.succeeded, s.chunks_total) == (40, 40, 4)
    assert run(params, env).chunks_resumed == 4
    assert Counter(int(line.split()[0]) for line in log.read_text().splitlines()) == Counter(range(40))


def test_a_bad_or_dead_address_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        batch_map([1], "tests.handlers:double", task_runner="dask", dask_address="localhost:8786")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"dask_address 'tcp://127.0.0.1:9': no Dask scheduler answered.*LocalCluster"):
        batch_map([1, 2], "tests.handlers:double", task_runner="dask", dask_address="tcp://127.0.0.1:9")
    assert time.monotonic() - started < 60  # the connect timeout is 10 s, not distributed's 30 s


def test_an_unnamed_rate_limit_holds_across_dask_workers(tmp_path: Path) -> None:
    from tests.handlers import busiest_second

    times = tmp_path / "times.log"
    params = {"source": list(range(60)), "handler": "tests.handlers:timed", "chunk_size": 5, "max_concurrency": 2,
              "task_runner": "dask", "rate_limit_per_second": 10, "run_key": "rate-dask"}
    run(params, {"BF_TIMES": str(times)})
    most, processes = busiest_second(times)
    assert processes >= 2 and most <= 13, (most, processes)  # one budget for the run, not one per worker
