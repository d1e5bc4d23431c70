"""The run-key lease on object storage (conditional PUTs on a real S3-compatible server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.lease import LeaseLock
from tasks.core.objstore import ObjectStore
from tasks.core.runlock import RunLocked
from tests.fixtures.s3 import S3State

ROOT = Path(__file__).resolve().parents[3]
HOLD = """
import sys, time
from tasks.core.lease import LeaseLock
from tasks.core.objstore import ObjectStore
lock = LeaseLock(ObjectStore.from_url(sys.argv[1]), "runs/f/k/lease", flow="f", run_key="k",
                 flow_run_id="run-of-the-child", lease_s=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def lease(store: ObjectStore, *, lease_s: float = 3.0, **kw: object) -> LeaseLock:
    return LeaseLock(store, "runs/f/k/lease", flow="f", run_key="k", flow_run_id=None, lease_s=lease_s, **kw)  # type: ignore[arg-type]


def holder_process(s3_state: S3State, lease_s: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, s3_state.url, str(lease_s)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_live_holder_is_refused_and_a_released_lease_is_free(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    first = lease(store).acquire()
    with pytest.raises(RunLocked) as info:
        lease(store).acquire()
    text = str(info.value)
    assert "is held by a live run" in text and f"pid {os.getpid()}" in text and f"{s3_state.url}/runs/f/k/lease" in text
    assert "another run_key" in text
    first.release()
    second = lease(store).acquire()
    assert second.previous is None  # released cleanly: no "previous holder died" note
    second.release()


def test_renewal_keeps_a_live_holder_past_its_lease(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    holder = holder_process(s3_state, 3.0)
    try:
        time.sleep(7.5)  # two and a half leases: only renewals keep it
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            lease(store).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_sigkilled_holder_is_taken_over_once_its_lease_expires(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    holder = holder_process(s3_state, 3.0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with pytest.raises(RunLocked):  # not yet: it renewed less than a lease ago
        lease(store).acquire()
    deadline = time.monotonic() + 15
    while True:
        try:
            taker = lease(store).acquire()
            break
        except RunLocked:
            assert time.monotonic() < deadline, "the dead holder's lease never expired"
            time.sleep(0.5)
    assert taker.previous is not None and taker.previous.pid == holder.pid
    assert taker.previous.flow_run_id == "run-of-the-child"
    body = json.loads(store.get("runs/f/k/lease").data)  # type: ignore[union-attr]
    assert body["pid"] == os.getpid() and not body["released"]
    taker.release()
    assert json.loads(store.get("runs/f/k/lease").data)["released"] is True  # type: ignore[union-attr]


def test_a_holder_that_stalled_past_its_lease_learns_it_lost_it(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    lost: list[str] = []
    stalled = lease(store, on_lost=lost.append).acquire()
    stalled._stop.set()  # its heartbeat stops, as in a process frozen for longer than the lease
    time.sleep(3.5)
    taker = lease(store).acquire()
    assert taker.previous is not None
    assert stalled.renew() is False and not stalled.held
    assert lost and "lost its lease" in lost[0]
    stalled.release()  # writes nothing: the lease is the taker's
    with pytest.raises(RunLocked):
        lease(store).acquire()
    taker.release()
