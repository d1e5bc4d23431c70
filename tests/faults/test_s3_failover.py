"""Failover through object storage: a run SIGKILLed on one "machine" is finished by another that shares only S3.

Each machine is a subprocess with its own working directory and its own local state cache
(``BATCHFLOWS_STATE_CACHE``); the only thing they share is ``BATCHFLOWS_STATE_DIR=s3://...`` on a moto
server on loopback (and the Prefect server). The promise checked: every chunk whose record reached object
storage is resumed, never rerun; of the chunks in flight, the items their journals in storage hold are
restored, so with the journals pushed after the last finished item no handler call repeats at all; every
item ends succeeded, failed or skipped exactly once in the summary; the dead letters hold every failed item
once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.db_migrate import MigrationSummary
from tasks.core.journal import ChunkJournal, journal_content
from tasks.core.outcomes import RunSummary, read_dead_letters
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.fixtures.s3 import CREDENTIALS, S3State
from tests.run_flow import ROOT, summary_in
from tests.tasks.db.test_migration import pg_exec

pytestmark = pytest.mark.slow
LEASE_S = 4.0


def machine(tmp: Path, name: str, s3_state: S3State, params: dict[str, Any], env: dict[str, str],
            target: str = "batch-map") -> subprocess.Popen[str]:
    """``python -m tests.run_flow <target>`` as another machine: its own working dir and state cache."""
    workdir = tmp / f"wd-{name}"
    workdir.mkdir(exist_ok=True)
    full = {**os.environ, **s3_state.env(cache=tmp / f"cache-{name}"), "BATCHFLOWS_STATE_LEASE_S": str(LEASE_S),
            "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "tests.run_flow", target, json.dumps(params)], cwd=workdir,
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stored_reports(s3_state: S3State, prefix: str) -> dict[int, Any]:
    """The chunk records in object storage, by chunk index."""
    from prefect._internal.result_records import ResultRecord

    client = s3_state.client()
    found = {}
    for key in s3_state.objects(prefix + "chunks/"):
        report = ResultRecord.deserialize(client.get_object(Bucket=s3_state.bucket, Key=key)["Body"].read()).result
        found[report.index] = report
    return found


def stored_journal_items(s3_state: S3State, prefix: str, tmp: Path) -> int:
    """Items the journals in object storage hold (read with the journal's own reader)."""
    client = s3_state.client()
    total = 0
    for key in s3_state.objects(prefix + "journal/"):
        copy = tmp / "journal-copy.jsonl"
        copy.write_bytes(client.get_object(Bucket=s3_state.bucket, Key=key)["Body"].read())
        content = journal_content(copy)
        total += len(ChunkJournal(copy, content).load()) if content else 0
    return total


def gated_run(tmp_path: Path, s3_state: S3State, run_key: str, *, n: int, chunk: int, window: int
              ) -> tuple[str, Path, Path, dict[str, Any]]:
    """(state prefix of the run, side-effect log, gate dir, batch_map params) of a gated run into s3://<bucket>/out."""
    effects, gate = tmp_path / "effects.log", tmp_path / "gate"
    gate.mkdir()
    params = {"source": list(range(n)), "handler": "tests.faults.helpers:effect", "chunk_size": chunk,
              "max_concurrency": window, "retries": 0, "run_key": run_key, "min_success_ratio": 0.5,
              "output": f"s3://{s3_state.bucket}/out"}
    return f"state/runs/batch-map/{run_key}/", effects, gate, params


def test_batch_map_killed_on_one_machine_resumes_on_another_from_s3(s3_state: S3State, tmp_path: Path) -> None:
    n, chunk, window, limit = 200, 10, 2, 93
    prefix, effects, gate, params = gated_run(tmp_path, s3_state, "failover", n=n, chunk=chunk, window=window)
    first = machine(tmp_path, "a", s3_state, params,
                    {"BF_EFFECTS": str(effects), "BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit),
                     "BATCHFLOWS_STATE_JOURNAL_PUSH_S": "0.5"})
    wait_until(lambda: passed(gate) >= limit + window and len(stored_reports(s3_state, prefix)) >= 8, first,
               what=f"{limit} handler calls and 8 chunk records in S3")
    wait_until(lambda: sum(r.size for r in stored_reports(s3_state, prefix).values())
               + stored_journal_items(s3_state, prefix, tmp_path) == limit, first,
               what="the journals of the chunks in flight in S3", timeout=60)
    early = machine(tmp_path, "b", s3_state, params, {"BF_EFFECTS": str(effects)})  # while the first one lives
    refused = finish(early)
    assert early.returncode != 0 and "is held by a live run" in refused and f"pid {first.pid}" in refused
    kill(first)
    recorded = stored_reports(s3_state, prefix)
    assert all(r.complete for r in recorded.values())
    assert f"{prefix}plan.log" in s3_state.objects(prefix) and f"{prefix}lease" in s3_state.objects(prefix)
    time.sleep(LEASE_S + 0.5)  # the dead holder's lease runs out

    rerun = machine(tmp_path, "b", s3_state, params, {"BF_EFFECTS": str(effects)})
    output = finish(rerun)
    assert rerun.returncode == 0, output[-4000:]
    assert "ended without finishing" in output and f"pid {first.pid}" in output
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output + refused  # never in a log line or message
    s = summary_in(output, RunSummary)
    failing, skipped = {x for x in range(n) if x % 10 == 3}, {x for x in range(n) if x % 10 == 5}
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, n - 40, 20, 20)
    assert s.succeeded + s.failed + s.skipped == s.total
    assert s.chunks_resumed == len(recorded)  # every chunk record in S3 was reused, and only those
    assert s.run_dir == f"{s3_state.url}/runs/batch-map/failover"

    # every handler call exactly once: recorded chunks were reused, the journals restored the finished items of
    # the chunks in flight, and the items blocked at the kill had not made their side effect yet
    assert Counter(int(x) for x in effects.read_text().split()) == Counter(range(n))
    assert not s3_state.objects(prefix + "journal/")  # dropped once their chunks were recorded
    # the outputs are parts in S3 too (one PUT each): every succeeded item once, in input order
    assert s.output_path == f"s3://{s3_state.bucket}/out"
    assert len(s3_state.objects("out/")) == n // chunk
    rows = list(s.results())
    assert [r["item"] for r in rows] == [x for x in range(n) if x not in failing | skipped]
    assert all(r["result"] == 2 * r["item"] for r in rows)

    assert sorted(d["item"] for d in read_dead_letters(s.dead_letter_path or "")) == sorted(failing)
    stored = s3_state.client().get_object(Bucket=s3_state.bucket, Key=f"{prefix}dead_letter.jsonl")["Body"].read()
    assert sorted(json.loads(line)["item"] for line in stored.decode().splitlines()) == sorted(failing)
    summary = json.loads(s3_state.client().get_object(Bucket=s3_state.bucket, Key=f"{prefix}summary.json")["Body"].read())
    assert (summary["succeeded"], summary["failed"], summary["skipped"]) == (n - 40, 20, 20)
    assert len(stored_reports(s3_state, prefix)) == n // chunk
    lease = json.loads(s3_state.client().get_object(Bucket=s3_state.bucket, Key=f"{prefix}lease")["Body"].read())
    assert lease["released"] is True
    assert not list((tmp_path / "cache-b" / "runs" / "batch-map" / "failover" / "journal").glob("*.jsonl"))
    assert not skipped & set(d["item"] for d in read_dead_letters(s.dead_letter_path or ""))


def test_db_migrate_killed_on_one_machine_resumes_on_another_from_s3(
        s3_state: S3State, pg_items: str, pg_target: str, tmp_path: Path) -> None:
    chunk, limit = 100, 4
    total = pg_exec(pg_items, "SELECT count(*) FROM items")[0][0]
    prefix = "state/runs/db-migrate/failover-db/"
    params = {"source_url": pg_items, "target_url": pg_target, "table": "items", "chunk_rows": chunk,
              "mode": "append", "run_key": "failover-db", "transform": "tests.faults.helpers:gated_frame",
              "max_concurrency": 2}
    gate = tmp_path / "gate"
    gate.mkdir()
    target = "flows.db_migrate:db_migrate"
    first = machine(tmp_path, "a", s3_state, params, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit)}, target)
    wait_until(lambda: len(s3_state.objects(prefix + "chunks/")) >= limit, first, what=f"{limit} range records in S3")
    kill(first)
    recorded = len(s3_state.objects(prefix + "chunks/"))
    assert f"{prefix}checkpoint.json" in s3_state.objects(prefix)  # the planned ranges, pushed when planned
    committed = pg_exec(pg_target, "SELECT count(*) FROM items")[0][0]
    assert 0 < committed < total
    time.sleep(LEASE_S + 0.5)

    rerun = machine(tmp_path, "b", s3_state, params, {}, target)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-4000:]
    assert "ended without finishing" in output
    s = summary_in(output, MigrationSummary)
    assert s.ok and s.ranges_resumed >= recorded and not s.ranges_mismatched
    assert s.ranges_resumed + s.ranges_copied == s.ranges_total
    assert pg_exec(pg_target, "SELECT count(*), count(DISTINCT id) FROM items") == [(total, total)]
    ordered = "SELECT * FROM items ORDER BY id"
    assert pg_exec(pg_items, ordered) == pg_exec(pg_target, ordered)  # exactly the source, nothing twice
    assert len(s3_state.objects(prefix + "chunks/")) == s.ranges_total


def test_a_run_taken_back_by_its_first_machine_keeps_what_the_second_one_finished(s3_state: S3State,
                                                                                   tmp_path: Path) -> None:
    """A -> B -> A: A is killed, B takes the key over and pushes the journal of the chunk it carried on, B is
    killed, A reruns with its own (older) local journal of that chunk: the stored one holds more and counts."""
    n, first_calls, second_calls = 40, 4, 10
    prefix = "state/runs/batch-map/aba/"
    effects = tmp_path / "effects.log"
    params = {"source": list(range(n)), "handler": "tests.faults.helpers:effect", "chunk_size": 20,
              "max_concurrency": 1, "retries": 0, "run_key": "aba", "min_success_ratio": 0.5}
    fast_push = {"BF_EFFECTS": str(effects), "BATCHFLOWS_STATE_JOURNAL_PUSH_S": "0.3"}
    for name, calls, done in (("a", first_calls, first_calls), ("b", second_calls, first_calls + second_calls)):
        gate = tmp_path / f"gate-{name}"
        gate.mkdir()
        proc = machine(tmp_path, name, s3_state, params, {**fast_push, "BF_GATE_DIR": str(gate),
                                                          "BF_GATE_OPEN": str(calls)})
        wait_until(lambda g=gate, c=calls, d=done: passed(g) > c and stored_journal_items(s3_state, prefix, tmp_path) == d,
                   proc, what=f"{done} items in the journal in S3")
        kill(proc)
        time.sleep(LEASE_S + 0.5)  # the dead holder's lease runs out

    rerun = machine(tmp_path, "a", s3_state, params, {"BF_EFFECTS": str(effects)})  # A again, its cache as it was
    output = finish(rerun)
    assert rerun.returncode == 0, output[-4000:]
    s = summary_in(output, RunSummary)
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, n - 8, 4, 4)
    # the items blocked at each kill had made no side effect yet: every handler call happened exactly once
    assert Counter(int(x) for x in effects.read_text().split()) == Counter(range(n))


def bucket_objects(s3_state: S3State) -> dict[str, bytes]:
    """Every object in the test's bucket and its bytes."""
    client = s3_state.client()
    return {key: client.get_object(Bucket=s3_state.bucket, Key=key)["Body"].read() for key in s3_state.objects()}


def test_a_run_frozen_past_its_lease_writes_nothing_once_another_machine_took_its_key_over(
        s3_state: S3State, tmp_path: Path) -> None:
    """A is frozen (SIGSTOP) past its lease with two chunks in flight; B takes the key over and completes it; A
    wakes (SIGCONT): it finds its lease lost and ends Failed, and writes nothing to the bucket on its way out (no
    summary, record, journal, plan or dead letter of its own, no record deleted, no output part replaced), so
    B's summary, records and output rows stand and a rerun reuses every chunk without calling the handler."""
    n, chunk, window, limit = 60, 5, 2, 23
    prefix, effects, gate, params = gated_run(tmp_path, s3_state, "frozen", n=n, chunk=chunk, window=window)
    push = {"BF_EFFECTS": str(effects), "BATCHFLOWS_STATE_JOURNAL_PUSH_S": "0.5"}
    first = machine(tmp_path, "a", s3_state, params, {**push, "BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit)})
    wait_until(lambda: passed(gate) >= limit + window and sum(r.size for r in stored_reports(s3_state, prefix).values())
               + stored_journal_items(s3_state, prefix, tmp_path) == limit, first,
               what=f"{limit} handler calls recorded or journaled in S3")
    first.send_signal(signal.SIGSTOP)
    try:
        time.sleep(LEASE_S + 1)  # its lease runs out while it is frozen
        taker = machine(tmp_path, "b", s3_state, params, push)
        taken = finish(taker)
        assert taker.returncode == 0, taken[-4000:]
        assert "ended without finishing" in taken and f"pid {first.pid}" in taken
        s = summary_in(taken, RunSummary)
        assert (s.state, s.total, s.succeeded, s.failed, s.skipped) == ("Completed", n, n - 12, 6, 6)
        written = bucket_objects(s3_state)
    finally:
        (gate / "open").touch()
        first.send_signal(signal.SIGCONT)
    woke = finish(first)
    assert first.returncode != 0 and "lost its lease" in woke, woke[-4000:]
    assert summary_in(woke, RunSummary).state == "Failed"

    now = bucket_objects(s3_state)
    assert sorted(set(now) ^ set(written)) == []  # nothing added, nothing deleted
    assert [key for key in written if now[key] != written[key]] == []  # nothing overwritten
    stored = json.loads(now[f"{prefix}summary.json"])
    assert (stored["state"], stored["total"], stored["succeeded"]) == ("Completed", n, n - 12)
    assert len(stored_reports(s3_state, prefix)) == n // chunk
    rows = [json.loads(line)["item"] for key in s3_state.objects("out/") for line in now[key].decode().splitlines()]
    assert rows == [x for x in range(n) if x % 10 not in (3, 5)]

    calls = len(effects.read_text().split())
    rerun = machine(tmp_path, "c", s3_state, params, push)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-4000:]
    again = summary_in(output, RunSummary)
    assert (again.state, again.succeeded, again.chunks_resumed) == ("Completed", n - 12, n // chunk)
    assert len(effects.read_text().split()) == calls  # no handler call repeated
