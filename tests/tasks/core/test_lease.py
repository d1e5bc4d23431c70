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
from tasks.core.run import ChunkedRun
from tasks.core.runlock import OutputInUse, RunLocked
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
    with pytest.raises(RunLocked, match="leased to a run of this machine that is no longer running") as refused:
        lease(store).acquire()  # not yet: it renewed less than a lease ago (and other machines cannot know it died)
    assert "Rerun with the same run_key in " in str(refused.value) and "held by a live run" not in str(refused.value)
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


def test_an_output_folder_is_one_live_runs_across_machines_sharing_the_state(
        s3_state: S3State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two machines (two caches, one state bucket) cannot write to one output folder at once: each one's flock
    is in its own cache, so the output is held by a lease in the bucket."""
    out = f"s3://{s3_state.bucket}/out"
    with ChunkedRun("batch-map", run_key="first", total=None) as first:
        first.claim_output(out)
        s3_state.client().put_object(Bucket=s3_state.bucket, Key="out/part-000000.jsonl", Body=b'{"item": 1}\n')
        monkeypatch.setenv("BATCHFLOWS_STATE_CACHE", str(tmp_path / "cache-b"))
        with ChunkedRun("api-bulk", run_key="second", total=None) as second:
            with pytest.raises(OutputInUse) as refused:
                second.claim_output(f"{out}/")
            text = str(refused.value)
            assert "batch-map run_key 'first'" in text and f"pid {os.getpid()}" in text and "lease expires in" in text
            assert f"{s3_state.url}/outputs/" in text and "run_key 'second'" in text and "own output folder" in text
            assert s3_state.objects("out/") == ["out/part-000000.jsonl"]  # nothing of the live run deleted
            assert second.output_lock is None
            first.close()  # the first run ends: the folder is free
            second.claim_output(out)
            assert second.output_lock is not None and second.output_lock.held
            assert second.output_lock.previous is None  # released cleanly: no dead holder
        assert not second.output_lock.held


HOLD_OUTPUT = """
import sys, time
from pathlib import Path
from tasks.core.objstore import ObjectStore
from tasks.core.runlock import OutputLock
lock = OutputLock(sys.argv[2], state_dir=Path(sys.argv[3]), store=ObjectStore.from_url(sys.argv[1]), flow="batch-map",
                  run_key="dead", flow_run_id="run-of-the-child", lease_s=3.0).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_runs_output_folder_is_taken_over_once_its_lease_expires(s3_state: S3State, tmp_path: Path) -> None:
    from tasks.core.runlock import OutputLock

    out, store = f"s3://{s3_state.bucket}/out", ObjectStore.from_url(s3_state.url)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OUTPUT, s3_state.url, out, str(tmp_path / "cache-a")],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    def take() -> OutputLock:
        return OutputLock(out, state_dir=tmp_path / "cache-b", store=store, flow="f", run_key="next",
                          flow_run_id=None, lease_s=3.0).acquire()

    try:
        time.sleep(4)  # past one lease: only its renewals keep it
        with pytest.raises(OutputInUse, match=f"run_key 'dead' .*pid {holder.pid}.*run-of-the-child"):
            take()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 15
    while True:
        try:
            taker = take()
            break
        except OutputInUse:
            assert time.monotonic() < deadline, "the killed holder's output lease never expired"
            time.sleep(0.5)
    assert taker.previous is not None and taker.previous.pid == holder.pid
    taker.release()
    assert json.loads(store.get(taker._lease.rel).data)["released"] is True  # type: ignore[union-attr]
