"""ChunkedRun: state in object storage (lease, pull, records another machine can resume from), and the Prefect
state it releases for every finished chunk."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tasks.core.engine import release_task_run
from tasks.core.lease import LeaseLock
from tasks.core.objstore import ObjectStore
from tasks.core.outcomes import ChunkReport
from tasks.core.run import ChunkedRun
from tasks.core.runlock import RunLocked
from tests.fixtures.s3 import S3State


def test_a_record_written_elsewhere_is_rebuilt_and_resumable_on_another_machine(
        s3_state: S3State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = ChunkReport(index=3, size=10, succeeded=9, skipped=1, complete=True, content_hash="abc")
    with ChunkedRun("batch-map", run_key="rebuilt", total=None) as run:
        assert run.lease is not None and run.lease.held
        with pytest.raises(RunLocked, match="held by a live run"):  # another machine, same key
            monkeypatch.setenv("BATCHFLOWS_STATE_CACHE", str(tmp_path / "cache-c"))
            ChunkedRun("batch-map", run_key="rebuilt", total=None)
        key = run.ref(3).key
        assert not (run.run_dir.chunks / key).exists()  # as when a Dask worker on another machine wrote it
        run._push_record(key, report)
    monkeypatch.setenv("BATCHFLOWS_STATE_CACHE", str(tmp_path / "cache-b"))
    with ChunkedRun("batch-map", run_key="rebuilt", total=None) as there:
        assert there.run_dir.root.is_relative_to(tmp_path / "cache-b") and there.lease is not None
        assert there.lease.previous is None  # released cleanly
        resumed = there.cached_report(key)
    assert resumed is not None and resumed.resumed
    assert resumed.model_dump(exclude={"resumed"}) == report.model_dump(exclude={"resumed"})


def test_a_run_that_loses_its_lease_stops_and_writes_no_more_state(s3_state: S3State,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_STATE_LEASE_S", "3")
    with ChunkedRun("batch-map", run_key="frozen", total=None) as run:
        assert run.lease is not None and not run.should_stop()
        run.lease._stop.set()  # its heartbeat stops, as in a process frozen for longer than the lease
        time.sleep(3.5)
        store = ObjectStore.from_url(s3_state.url)
        taker = LeaseLock(store, f"{run.run_dir.rel}/lease", flow="batch-map", run_key="frozen", flow_run_id=None,
                          lease_s=3).acquire()
        assert run.lease.renew() is False
        assert run.should_stop() and run.fatal is not None and "lost its lease" in run.fatal
        run._push_record(run.ref(0).key, ChunkReport(index=0, size=1, succeeded=1, complete=True))
        assert not s3_state.objects("state/runs/batch-map/frozen/chunks/")  # the key is the taker's now
    taker.release()


def _report_task(index: int) -> ChunkReport:
    return ChunkReport(index=index, size=3, succeeded=3, content_hash=f"h{index}", extra={"rows": index})


def _prefect_leftovers(release: bool) -> tuple[int, int, int]:
    """(run_results, task_run_assets, the runner's cancel events) after 6 task runs, released or not."""
    from prefect import flow, task
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    chunk_task = task(_report_task, name="report")

    @flow(name="release-probe")
    def probe() -> tuple[int, int, int]:
        with ThreadPoolTaskRunner(max_workers=2) as runner:
            for i in range(6):
                future = runner.submit(chunk_task, parameters={"index": i})
                future.wait()
                if release:
                    release_task_run(future.state, runner)
            ctx = FlowRunContext.get()
            assert ctx is not None
            return len(ctx.run_results), len(ctx.task_run_assets), len(runner._cancel_events)

    return probe()


def test_a_released_task_run_leaves_nothing_behind_in_the_flow_process() -> None:
    """What Prefect keeps per finished task run until the flow run ends grew a flow process ~4 KB per chunk."""
    kept = _prefect_leftovers(release=False)
    assert all(n >= 6 for n in kept), kept  # still what Prefect does: otherwise this test proves nothing
    assert _prefect_leftovers(release=True) == (0, 0, 0)


_seen: list[tuple[int, int]] = []


def _probe_links(x: int) -> int:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    assert ctx is not None
    _seen.append((len(ctx.run_results), len(ctx.task_run_assets)))
    return x


def test_batch_map_keeps_no_prefect_state_per_finished_chunk() -> None:
    from flows.batch_map import batch_map

    _seen.clear()
    summary = batch_map(range(60), _probe_links, chunk_size=3, max_concurrency=1)
    assert summary.succeeded == 60 and summary.chunks_total == 20
    # one chunk at a time: each finished chunk is released before the next is submitted
    assert max(links for links, _ in _seen) == 0
    assert max(assets for _, assets in _seen) <= 1  # the running chunk's own


def _tag(item: dict[str, int]) -> dict[str, int]:
    return {"seen": item["id"]}


def _write_jsonl(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))


@pytest.mark.parametrize(("first", "cut", "named"), [(30, 20, "chunk(s) 2 "), (45, 10, "chunk(s) 1, 2, 3, 4 ")])
def test_a_source_that_now_ends_before_recorded_chunks_is_a_source_change(
        tmp_path: Path, first: int, cut: int, named: str) -> None:
    """A chunk is its position plus its content: a chunk the source no longer reaches changed too."""
    from flows.batch_map import batch_map
    from tasks.core.journal import SourceChanged

    src, out = tmp_path / "items.jsonl", tmp_path / "out"
    _write_jsonl(src, first)
    assert batch_map(str(src), _tag, chunk_size=10, run_key="cut", output=out).succeeded == first
    _write_jsonl(src, cut)  # the file is cut short at a chunk boundary
    with pytest.raises(SourceChanged, match=f"ends after {cut // 10} chunk.*{re.escape(named)}past that end") as err:
        batch_map(str(src), _tag, chunk_size=10, run_key="cut", output=out)
    assert "new run_key" in str(err.value)
    # starting over under another cache_version is the way out: only the new source's rows come back
    again = batch_map(str(src), _tag, chunk_size=10, run_key="cut", output=out, cache_version="2")
    assert again.ok and again.total == cut
    assert [r["result"]["seen"] for r in again.results()] == list(range(cut))


_BLOCKED_RUN = """
import json, sys, threading, time
import tasks.core.run
from flows.batch_map import batch_map

tasks.core.run.STILL_RUNNING_S = 0.5  # the run warns 0.5 s after its timeout and abandons calls 1 s after it
forever = threading.Event()
sevens = []

def blocks_on_7(x):
    if x == 7:
        sevens.append(x)
        forever.wait()  # a sync call that never returns (no item_timeout_s)
    return x

out = []
for key, kwargs in (("seq", {}), ("threads", {"item_concurrency": 3}), ("batch", {"per": "batch", "max_batch_items": 4})):
    started = time.monotonic()
    handler = (lambda xs: [blocks_on_7(x) for x in xs]) if kwargs.get("per") else blocks_on_7
    s = batch_map(list(range(40)), handler, chunk_size=10, max_concurrency=2, run_timeout_s=1.0, run_key=key,
                  raise_on_failure=False, **kwargs)
    out.append({"key": key, "seconds": time.monotonic() - started, "ok": s.ok, "message": s.message,
                "succeeded": s.succeeded, "remaining": s.remaining})
forever.set()  # the abandoned calls return now, long after their runs ended: nothing calls them again
time.sleep(1.0)
out.append({"sevens": len(sevens)})
print("RESULT " + json.dumps(out))
sys.stdout.flush()
"""


def test_a_call_that_never_returns_does_not_keep_a_run_past_its_run_timeout_from_ending() -> None:
    """A sync handler call that never returns, no item_timeout_s, run_timeout_s=1: the run ends Failed soon after
    its timeout (the call is abandoned, its item left for the rerun), sequential, on item threads and per batch,
    and the process exits (the stuck threads do not keep the interpreter alive)."""
    import subprocess
    import sys

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _BLOCKED_RUN], cwd=Path(__file__).parents[3], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    *runs, late = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert late == {"sevens": 3}  # one call of item 7 per run, none after its abandoned call returned
    for run in runs:
        assert not run["ok"] and "run_timeout_s=1s passed" in run["message"], run
        assert "Rerun with run_key=" in run["message"] and run["remaining"] and run["remaining"] > 0, run
        assert run["succeeded"] + run["remaining"] == 40 and run["seconds"] < 20, run
    assert "were abandoned" in done.stdout + done.stderr
    assert time.monotonic() - started < 110


def test_a_run_recorded_by_batchflows_0_14_resumes_under_its_packed_hashes(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """0.15 hashes chunks of 32-bit ints from their marshal bytes; a run_key that 0.12-0.14 started (ints packed as
    8-byte values) resumes its finished chunks from their records, nothing run twice; a changed chunk is still
    refused."""
    from prefect._internal.result_records import ResultRecord

    from flows.batch_map import batch_map
    from tasks.core import identity
    from tasks.core.errors import SourceError
    from tests import handlers

    log = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    with identity.legacy_chunk_hashes("packed"):
        packed = [identity.chunk_hash(list(range(i, i + 10))) for i in (0, 10)]
    with monkeypatch.context() as old:
        old.setattr(identity, "_marshalled_ints", lambda keys: None)  # 0.14: no marshal form
        first = batch_map(list(range(20)), handlers.side_effect, chunk_size=10, run_key="from-0.14")
    records = sorted(ResultRecord.deserialize(p.read_bytes()).result.content_hash
                     for p in Path(first.run_dir, "chunks").iterdir())
    assert records == sorted(packed) and not set(packed) & {identity.chunk_hash(list(range(10)))}
    again = batch_map(list(range(20)), handlers.side_effect, chunk_size=10, run_key="from-0.14")
    assert (again.chunks_resumed, again.succeeded) == (2, 20)
    assert sorted(map(int, log.read_text().split())) == list(range(20))  # nothing ran twice
    with pytest.raises(SourceError, match=r"source changed .* chunk 1"):
        batch_map([*range(10), 99, *range(11, 20)], handlers.side_effect, chunk_size=10, run_key="from-0.14")
