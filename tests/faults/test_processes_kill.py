"""task_runner="processes": SIGKILL of the flow process ends its pool workers too.

Prefect's ProcessPoolTaskRunner workers used to outlive a SIGKILLed flow process: they went on with the
chunk they held (side effects included) while the rerun of the run_key ran the same items again, and
the two worked one run_key at once. Now each worker dies with its parent (tasks.core.engine.die_with_parent).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tasks.core.outcomes import RunSummary
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.run_flow import start_flow, summary_in

pytestmark = pytest.mark.slow


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_pool_workers_die_with_the_flow_process(tmp_path: Path) -> None:
    n, chunk, window, limit = 120, 20, 2, 10
    gate, effects, out = tmp_path / "gate", tmp_path / "effects.log", tmp_path / "out"
    gate.mkdir()
    params = {"source": list(range(n)), "handler": "tests.faults.helpers:effect", "chunk_size": chunk,
              "max_concurrency": window, "retries": 0, "run_key": "procs-kill", "output": str(out),
              "task_runner": "processes", "min_success_ratio": 0.5}
    proc = start_flow("batch-map", params, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit),
                                            "BF_EFFECTS": str(effects)})
    workers: list[psutil.Process] = []
    try:
        wait_until(lambda: passed(gate) >= limit + window and len(effects.read_text().split()) >= limit,
                   proc, what=f"{limit} handler calls and {window} held ones", timeout=180)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        kill(proc)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(workers), f"pool workers outlived the killed flow process: {_alive(workers)}"
        (gate / "open").touch()  # an orphan held at the gate would go on now
        time.sleep(1)
        assert len(effects.read_text().split()) == limit
    finally:
        for worker in _alive(workers):
            worker.kill()

    rerun = start_flow("batch-map", params, {"BF_EFFECTS": str(effects)})
    output = finish(rerun)
    assert rerun.returncode == 0, output
    s = summary_in(output, RunSummary)
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, n - 24, 12, 12)
    counts = Counter(int(x) for x in effects.read_text().split())
    assert set(counts) == set(range(n))
    assert max(counts.values()) <= 2
    assert len([x for x, c in counts.items() if c > 1]) <= window  # only the items in flight at the kill
