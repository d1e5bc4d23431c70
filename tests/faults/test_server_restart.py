"""The Prefect server stopped and started again (same port, same PREFECT_HOME) while a run is in progress.

The tests use a server of their own (not the session's), and move through stages on events, never on
sleeps: a handler gate with a movable limit (tests.handlers:staged_record) holds every item past the
limit, and the test waits for the chunk result records in the state dir before it acts.

* restarted mid-run: chunks keep finishing while the server is down (the engine must not wait for
  the API), the run completes after the restart and the restarted server records it Completed;
* gone until the flow process gives up: the process fails within bounds with a readable error that
  says how to finish, and a rerun with the same run_key against the restarted server completes
  without running any item again.

Both assert nothing lost and nothing done twice: the exact handler calls per item, the output rows,
the dead letters and the summary counts.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.local_server import PrefectServer
from tasks.core.outcomes import RunSummary, read_dead_letters
from tasks.core.state import RunDir
from tests.faults.helpers import CHUNK, FAILING, OPEN, SKIPPED, WINDOW, N, finish, wait_until
from tests.handlers import held_items, set_stage_limit
from tests.run_flow import start_flow, summary_in

pytestmark = pytest.mark.slow


class RestartableServer:
    """A real ``prefect server start`` that can be stopped and started again on the same port and home."""

    def __init__(self, home: Path) -> None:
        self.server = PrefectServer(home)
        self.port, self.api_url = self.server.port, self.server.api_url

    def start(self) -> None:
        self.server = PrefectServer(self.server.home)
        self.server.port, self.server.api_url = self.port, self.api_url
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def ensure_up(self) -> None:
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.start()

    def env(self) -> dict[str, str]:
        return self.server.env()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    """One server for this module: a start costs ~12 s, and each test leaves it running."""
    srv = RestartableServer(tmp_path_factory.mktemp("prefect-home"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(module_server: RestartableServer) -> RestartableServer:
    module_server.ensure_up()  # after a test that failed while it was down
    return module_server


def records(state_dir: Path, run_key: str) -> int:
    """Finished chunks: result records named by their 40-hex cache key."""
    chunks = RunDir.for_run("batch-map", run_key, state_dir).chunks
    return len([p for p in chunks.iterdir() if re.fullmatch("[0-9a-f]{40}", p.name)]) if chunks.exists() else 0


def start(server: RestartableServer, stage: Path, run_key: str, out: Path,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    params = {"source": list(range(N)), "handler": "tests.handlers:staged_record", "chunk_size": CHUNK,
              "max_concurrency": WINDOW, "retries": 0, "run_key": run_key, "output": str(out),
              "min_success_ratio": 0.5}
    return start_flow("batch-map", params, {**server.env(), "BF_STAGE_DIR": str(stage), **(extra_env or {})})


def wait_for_chunks(proc: subprocess.Popen[str], state_dir: Path, stage: Path, run_key: str, chunks: int) -> None:
    """Until ``chunks`` chunks are recorded and the next ones wait at the gate (the run stands still there)."""
    wait_until(lambda: records(state_dir, run_key) >= chunks and held_items(stage, chunks * CHUNK) >= WINDOW,
               proc, what=f"{chunks} finished chunks", timeout=90)
    assert records(state_dir, run_key) == chunks


def assert_exact(stage: Path, out: Path, summary: RunSummary) -> None:
    """Every item handled exactly once, each result once, each failure dead-lettered once."""
    calls = Counter(int(x) for x in (stage / "calls.log").read_text().split())
    assert calls == Counter(range(N)), [x for x, c in calls.items() if c != 1]
    assert (summary.total, summary.succeeded, summary.failed, summary.skipped) == (N, N - 40, 20, 20)
    rows = [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert sorted(r["item"] for r in rows) == sorted(set(range(N)) - FAILING - SKIPPED)
    assert all(r["result"] == 3 * r["item"] for r in rows)
    assert sorted(d["item"] for d in read_dead_letters(summary.dead_letter_path or "")) == sorted(FAILING)


def flow_run_state(server: RestartableServer, flow_run_id: str) -> str:
    return httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]


def test_run_continues_while_the_server_restarts_and_completes(server: RestartableServer, tmp_path: Path,
                                                              state_dir: Path) -> None:
    stage, out, run_key = tmp_path / "stage", tmp_path / "out", "restart-mid-run"
    stage.mkdir()
    set_stage_limit(stage, 5 * CHUNK)
    proc = start(server, stage, run_key, out)
    wait_for_chunks(proc, state_dir, stage, run_key, 5)

    server.stop()
    set_stage_limit(stage, 12 * CHUNK)  # seven more chunks must finish with no server at all
    wait_for_chunks(proc, state_dir, stage, run_key, 12)
    server.start()
    set_stage_limit(stage, OPEN)
    output = finish(proc, timeout=120)

    assert proc.returncode == 0, output[-4000:]
    summary = summary_in(output, RunSummary)
    assert summary.state == "Completed" and summary.chunks_total == N // CHUNK and summary.chunks_resumed == 0
    assert_exact(stage, out, summary)
    assert summary.flow_run_id and flow_run_state(server, summary.flow_run_id) == "COMPLETED"


def test_server_gone_until_the_flow_gives_up_fails_clearly_then_rerun_completes(
        server: RestartableServer, tmp_path: Path, state_dir: Path) -> None:
    """PREFECT_CLIENT_MAX_RETRIES=1 keeps Prefect's own retries of its final state short (the default,
    5, takes about two minutes to give up); the outcome is the same."""
    stage, out, run_key = tmp_path / "stage", tmp_path / "out", "server-gone"
    stage.mkdir()
    set_stage_limit(stage, 5 * CHUNK)
    proc = start(server, stage, run_key, out, {"PREFECT_CLIENT_MAX_RETRIES": "1"})
    wait_for_chunks(proc, state_dir, stage, run_key, 5)

    server.stop()
    set_stage_limit(stage, OPEN)
    output = finish(proc, timeout=150)  # bounded: no hang at exit on undeliverable events

    assert proc.returncode != 0
    assert records(state_dir, run_key) == N // CHUNK  # every chunk finished without the server
    error = next((line for line in output.splitlines() if line.startswith("tasks.core.progress.PrefectApiUnreachable: ")),
                 output[-4000:])
    assert error.startswith(f"tasks.core.progress.PrefectApiUnreachable: the Prefect API at {server.api_url} did not "
                            "answer, so Prefect could not create or finish this batch-map flow run"), error
    assert f"rerun with run_key={run_key!r}" in error and "Nothing is lost" in error
    written: dict[str, Any] = json.loads(RunDir.for_run("batch-map", run_key, state_dir).summary.read_text())
    assert (written["total"], written["succeeded"]) == (N, N - 40)

    server.start()
    rerun = start(server, stage, run_key, out)
    output = finish(rerun, timeout=120)
    assert rerun.returncode == 0, output[-4000:]
    summary = summary_in(output, RunSummary)
    assert summary.state == "Completed" and summary.chunks_resumed == summary.chunks_total == N // CHUNK
    assert_exact(stage, out, summary)  # nothing ran twice across both runs
    assert summary.flow_run_id and flow_run_state(server, summary.flow_run_id) == "COMPLETED"
