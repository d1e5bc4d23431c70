"""batch_map in real subprocesses: SIGKILL and resume, bounded memory, a limit shared by two runs."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from tasks.core.outcomes import RunSummary
from tests.run_flow import finish, start_flow, summary_in

ROOT = Path(__file__).resolve().parents[2]


def start(params: dict, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_flow("batch-map", params, env)


def summary_of(output: str) -> RunSummary:
    return summary_in(output, RunSummary)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().split()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"flow ended before the kill point:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    n, chunk, window = 400, 20, 2
    env = {"BF_N": str(n), "BF_SIDE_EFFECT_LOG": str(log), "BF_SLEEP": "0.01"}
    params = {"source": "tests.handlers:numbers", "handler": "tests.handlers:side_effect", "chunk_size": chunk,
              "max_concurrency": window, "run_key": "killed-run", "retries": 0}
    proc = start(params, env)
    wait_for_lines(log, n // 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = [int(x) for x in log.read_text().split()]
    assert len(before) < n, "the run finished before it was killed; the test proves nothing"

    rerun = start(params, {**env, "BF_SLEEP": "0"})
    out = finish(rerun, timeout=300)
    assert rerun.returncode == 0, out
    summary = summary_of(out)
    assert (summary.total, summary.succeeded, summary.failed, summary.skipped) == (n, n, 0, 0)
    assert summary.chunks_resumed >= (len(before) // chunk) - window

    effects = [int(x) for x in log.read_text().split()]
    assert set(effects) == set(range(n))  # nothing lost
    counts: dict[int, int] = {}
    for x in effects:
        counts[x] = counts.get(x, 0) + 1
    twice = {x for x, c in counts.items() if c > 1}
    assert all(c <= 2 for c in counts.values())
    # only items of the chunks in flight at the kill ran twice: at most `window` whole chunks
    chunks_twice = {x // chunk for x in twice}
    assert len(chunks_twice) <= window, sorted(chunks_twice)


@pytest.mark.slow
def test_one_million_item_generator_runs_in_bounded_memory(tmp_path: Path) -> None:
    n = 1_000_000
    params = {"source": "tests.handlers:numbers", "handler": "tests.handlers:double", "chunk_size": 20_000,
              "max_concurrency": 2, "retries": 0}
    proc = start(params, {"BF_N": str(n)})
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out
    summary = summary_of(out)
    assert summary.total == summary.succeeded == n
    assert summary.remaining == 0
    assert peak < 500e6, f"peak RSS {peak / 1e6:.0f} MB"


@pytest.mark.slow
def test_two_runs_share_an_existing_global_concurrency_limit(tmp_path: Path) -> None:
    name = "bf-test-gcl-shared"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2, active=True))
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {"BF_PROBE_DIR": str(probe), "BF_SLEEP": "0.05", "BF_N": "60"}
    params = {"source": "tests.handlers:numbers", "handler": "tests.handlers:concurrency_probe", "chunk_size": 3,
              "max_concurrency": 3, "concurrency_limit": name}
    runs = [start({**params, "run_key": f"shared-{i}"}, env) for i in range(2)]
    for proc in runs:
        out = finish(proc, timeout=300)
        assert proc.returncode == 0, out
        assert summary_of(out).succeeded == 60
    observed = [int(x) for x in (probe / "observed.log").read_text().split()]
    assert len(observed) == 120
    assert max(observed) <= 2  # 2 runs x 3 chunks in flight would allow 6 without the shared limit
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 2  # used as it was, not resized


@pytest.mark.slow
def test_ctrl_c_drains_the_chunks_in_flight_and_the_rerun_does_nothing_twice(tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    n = 400
    env = {"BF_N": str(n), "BF_SIDE_EFFECT_LOG": str(log), "BF_SLEEP": "0.02"}
    params = {"source": "tests.handlers:numbers", "handler": "tests.handlers:side_effect", "chunk_size": 20,
              "max_concurrency": 2, "run_key": "interrupted", "retries": 0}
    proc = start(params, env)
    wait_for_lines(log, n // 2, proc)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, timeout=120)
    assert proc.returncode != 0
    # 2 in flight, or 1 when the signal lands between a chunk's end and the next submit
    assert re.search(r"run interrupted: draining [12] chunk\(s\) in flight", out), out[-3000:]
    done_at_interrupt = len(log.read_text().split())
    assert done_at_interrupt % 20 == 0, "a chunk was cut in the middle"  # in-flight chunks finished whole
    rerun = start(params, {**env, "BF_SLEEP": "0"})
    out = finish(rerun, timeout=300)
    assert rerun.returncode == 0, out
    summary = summary_of(out)
    assert summary.succeeded == n and summary.chunks_resumed == done_at_interrupt // 20
    effects = log.read_text().split()
    assert len(effects) == n and len(set(effects)) == n  # exactly once


@pytest.mark.slow
def test_dask_task_runner_counts_and_resumes_like_threads() -> None:
    params = {"source": list(range(200)), "handler": "tests.handlers:mixed", "chunk_size": 50, "max_concurrency": 2,
              "task_runner": "dask", "retries": 0, "min_success_ratio": 0.5, "run_key": "on-dask"}
    first = start(params, {})
    out = finish(first, timeout=300)
    assert first.returncode == 0, out
    s = summary_of(out)
    assert (s.total, s.succeeded, s.failed, s.skipped, s.chunks_total) == (200, 140, 40, 20, 4)
    again = start(params, {})
    out = finish(again, timeout=300)
    assert summary_of(out).chunks_resumed == 4


@pytest.mark.slow
def test_an_unnamed_rate_limit_holds_across_worker_processes(tmp_path: Path) -> None:
    """rate_limit_per_second without a name is one budget for the whole run, not one per worker process."""
    from tests.handlers import busiest_second

    times = tmp_path / "times.log"
    params = {"source": list(range(60)), "handler": "tests.handlers:timed", "chunk_size": 5, "max_concurrency": 2,
              "task_runner": "processes", "rate_limit_per_second": 10, "run_key": "rate-processes"}
    proc = start(params, {"BF_TIMES": str(times)})
    out = finish(proc, timeout=300)
    assert proc.returncode == 0, out[-3000:]
    most, processes = busiest_second(times)
    assert processes == 2  # two workers shared the budget (each alone would allow 10/s: 20/s together)
    assert most <= 13, most  # 10/s plus one token of burst per holder and timer slack; never 2 x 10
