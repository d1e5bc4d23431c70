"""Exactly once, under real SIGKILLs: the properties the run_key promises, checked end to end.

* Random item streams (hypothesis) with exact duplicates (whole identical chunks among them) and non-JSON
  items, random chunk sizes and concurrency, and a random kill point either inside a handler or in the
  window after a chunk's output is written and before its record: after the rerun, every handler side
  effect happened once per input item (plus at most the items in flight at the kill, when the kill lands
  inside handlers), the outputs and dead letters are exactly the expected rows, and the counts add up.
* The same window after the output (or the COMMIT) for api_bulk, file_transform and db_migrate in every
  mode and write path: the rerun writes nothing twice and reports the right counts.
* One live run per run_key: a second run is refused naming the holder; a SIGKILLed holder is taken over
  and its flow run marked Crashed on the server.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.db_migrate import MigrationSummary
from tasks.core.identity import canonical
from tasks.core.outcomes import RunSummary, read_dead_letters
from tasks.core.state import RunDir
from tests.faults.helpers import finish, kill, outcome_of, passed, seeded_items, wait_until
from tests.fixtures.api_server import ApiServer
from tests.run_flow import start_flow, summary_in
from tests.tasks.db.test_migration import pg_exec, sqlite_exec

pytestmark = pytest.mark.slow
FAILPOINTS = {"BATCHFLOWS_FAILPOINTS": "tests.faults.helpers:failpoint"}


def records(state_dir: Path, flow: str, run_key: str) -> int:
    chunks = RunDir.for_run(flow, run_key, state_dir).chunks
    return len([p for p in chunks.iterdir() if p.is_file()]) if chunks.exists() else 0


def gated(tmp: Path, name: str, limit: int, *, failpoint: str | None = None) -> tuple[Path, dict[str, str]]:
    """A gate dir and the env that holds calls number ``limit`` and up (the handler's gate, or a failpoint's)."""
    gate = tmp / name
    gate.mkdir()
    if failpoint is None:
        return gate, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit)}
    return gate, {**FAILPOINTS, "BF_FAILPOINT": failpoint, "BF_FP_GATE_DIR": str(gate), "BF_FP_GATE_OPEN": str(limit)}


def as_json(value: Any) -> Any:
    """A value as output rows and dead letters write it (a datetime as ISO text: tasks.core.exactjson.jsonable)."""
    from tasks.core.exactjson import jsonable

    return json.loads(json.dumps(value, default=jsonable, ensure_ascii=False))


def jsonl_rows(out: Path) -> list[Any]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


# --------------------------------------------------------------------------- random streams, random kills


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), n=st.integers(24, 90), chunk=st.integers(1, 12),
       window=st.sampled_from([1, 2]), item_concurrency=st.sampled_from([1, 3]),
       where=st.sampled_from(["handler", "after_output"]), point=st.floats(0.15, 0.85))
def test_random_streams_and_kill_points_end_exactly_once(
        tmp_path_factory: pytest.TempPathFactory, seed: int, n: int, chunk: int, window: int, item_concurrency: int,
        where: str, point: float) -> None:
    tmp = tmp_path_factory.mktemp("once")
    state, out, effects = tmp / "state", tmp / "out", tmp / "effects.log"
    base = {"BF_SEED": str(seed), "BF_N": str(n), "BF_EFFECTS": str(effects), "BATCHFLOWS_STATE_DIR": str(state)}
    items = seeded_items_for(seed, n)
    params = {"source": "tests.faults.helpers:seeded_items", "handler": "tests.faults.helpers:recorded_effect",
              "chunk_size": chunk, "max_concurrency": window, "item_concurrency": item_concurrency, "retries": 0,
              "run_key": "prop", "output": str(out), "min_success_ratio": 0.0}
    chunks = math.ceil(n / chunk)
    if where == "handler":
        limit = int(point * n)
        gate, env = gated(tmp, "gate", limit)
    else:
        limit = min(int(point * chunks), chunks - 1)
        gate, env = gated(tmp, "gate", limit, failpoint="chunk.after_output")
    proc = start_flow("batch-map", params, {**base, **env})
    wait_until(lambda: passed(gate) > limit, proc, what=f"kill point {where} #{limit}")
    if where == "after_output":
        parts = len(list(out.glob("part-*.jsonl")))
        assert parts > records(state, "batch-map", "prop")  # the window is real: an output without its record
    kill(proc)
    effects_before = effects.read_text().splitlines() if effects.exists() else []

    rerun = start_flow("batch-map", params, base)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    # only items in flight at the kill may have run twice: none of a chunk held after its output (its items are
    # all journaled), at most item_concurrency in each other chunk of the window
    in_flight = (window - 1 if where == "after_output" else window) * item_concurrency
    assert_exactly_once(summary_in(output, RunSummary), items, effects, out, in_flight=in_flight,
                        before=len(effects_before))


def assert_exactly_once(s: RunSummary, items: list[Any], effects: Path, out: Path, *, in_flight: int,
                        before: int = 0) -> None:
    """Counts add up to the items' outcomes, every item's side effect happened (at most ``in_flight`` twice),
    outputs and dead letters are exactly the expected rows."""
    n = len(items)
    kinds = [outcome_of(x) for x in items]
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, kinds.count("ok"), kinds.count("fail"),
                                                          kinds.count("skip")), s.message
    assert s.succeeded + s.failed + s.skipped == s.total and s.remaining == 0
    done = Counter(effects.read_text().splitlines())
    expected = Counter(json.dumps(canonical(x)) for x in items)
    assert all(done[k] >= c for k, c in expected.items()) and set(done) == set(expected)  # nothing skipped
    extra = sum(done.values()) - n
    assert 0 <= extra <= in_flight, (extra, before, done - expected)
    assert jsonl_rows(out) == [{"item": as_json(x), "result": as_json(x)} for x, k in zip(items, kinds, strict=True)
                               if k == "ok"]
    dead = sorted(read_dead_letters(s.dead_letter_path or ""), key=lambda d: (d["chunk"], d["position"]))
    assert [d["item"] for d in dead] == [as_json(x) for x, k in zip(items, kinds, strict=True) if k == "fail"]


def test_a_batch_handler_killed_mid_call_reruns_only_the_items_without_an_outcome(
        tmp_path: Path, state_dir: Path) -> None:
    """per='batch': outcomes are journaled when a call returns, so a kill inside calls redoes at most the items
    of the calls in flight (window x item_concurrency x max_batch_items), and nothing else."""
    n, seed, window, concurrency, per_call = 72, 7, 2, 2, 4
    state, out, effects = tmp_path / "state", tmp_path / "out", tmp_path / "effects.log"
    base = {"BF_SEED": str(seed), "BF_N": str(n), "BF_EFFECTS": str(effects), "BATCHFLOWS_STATE_DIR": str(state)}
    items = seeded_items_for(seed, n)
    params = {"source": "tests.faults.helpers:seeded_items", "handler": "tests.faults.helpers:recorded_batch_effect",
              "per": "batch", "max_batch_items": per_call, "chunk_size": 12, "max_concurrency": window,
              "item_concurrency": concurrency, "retries": 0, "run_key": "batch-prop", "output": str(out),
              "min_success_ratio": 0.0}
    gate, env = gated(tmp_path, "gate", 41)
    proc = start_flow("batch-map", params, {**base, **env})
    wait_until(lambda: passed(gate) > 41, proc, what="the kill point inside a batch call")
    kill(proc)
    rerun = start_flow("batch-map", params, base)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    assert_exactly_once(summary_in(output, RunSummary), items, effects, out, in_flight=window * concurrency * per_call)


def seeded_items_for(seed: int, n: int) -> list[Any]:
    saved = {k: os.environ.get(k) for k in ("BF_SEED", "BF_N")}
    os.environ.update({"BF_SEED": str(seed), "BF_N": str(n)})
    try:
        return seeded_items()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- the post-output window, per flow


def test_api_bulk_after_the_output_before_the_record(api_server: ApiServer, tmp_path: Path, state_dir: Path) -> None:
    n, chunk = 60, 10
    out = tmp_path / "out"
    params = {"items": [{"path": f"/ok/{i}", "method": "POST", "json": {"i": i}} for i in range(n)],
              "base_url": api_server.url, "chunk_size": chunk, "max_concurrency": 1, "item_concurrency": 4,
              "output": str(out), "run_key": "api-window"}
    gate, env = gated(tmp_path, "gate", 2, failpoint="chunk.after_output")
    proc = start_flow("flows.api_bulk:api_bulk", params, env)
    wait_until(lambda: passed(gate) > 2, proc, what="the third chunk's output")
    assert (out / "part-000002.jsonl").exists() and records(state_dir, "api-bulk", "api-window") == 2
    kill(proc)
    rerun = start_flow("flows.api_bulk:api_bulk", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    s = summary_in(output, RunSummary)
    assert (s.total, s.succeeded, s.chunks_resumed) == (n, n, 2)
    assert Counter(r.path for r in api_server.requests) == Counter(f"/ok/{i}" for i in range(n))  # each POST once
    rows = jsonl_rows(out)
    assert [r["item"]["json"]["i"] for r in rows] == list(range(n)) == [int(r["body"]["id"]) for r in rows] and all(
        r["body"]["idempotency_key"] for r in rows)


def test_file_transform_after_the_output_before_the_record(tmp_path: Path, state_dir: Path) -> None:
    src = tmp_path / "in" / "data.csv"
    src.parent.mkdir()
    src.write_text("id,amount\n" + "".join(f"{i},{i * 0.5}\n" for i in range(3000)))
    out = tmp_path / "out"
    params = {"source": str(src), "output_dir": str(out), "schema": {"id": "int64", "amount": "float64"},
              "chunk_bytes": 4000, "max_concurrency": 1, "run_key": "files-window", "output_format": "csv"}
    gate, env = gated(tmp_path, "gate", 3, failpoint="chunk.after_output")
    proc = start_flow("flows.file_transform:file_transform", params, env)
    wait_until(lambda: passed(gate) > 3, proc, what="the fourth chunk's output")
    kill(proc)
    assert len(list(out.glob("part-*.csv"))) == 4 and records(state_dir, "file-transform", "files-window") == 3
    rerun = start_flow("flows.file_transform:file_transform", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    s = summary_in(output, RunSummary)
    assert s.ok and s.chunks_resumed == 3 and s.extra["rows_in"] == s.extra["rows_out"] == 3000
    ids = pl.read_csv(sorted(out.glob("part-*.csv")))["id"].to_list()
    assert ids == list(range(3000))  # every row once, in order
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
@pytest.mark.parametrize("path", ["copy", "rows", "sqlite"])
def test_db_migrate_after_the_commit_before_the_record(mode: str, path: str, pg_items: str, pg_target: str,
                                                       sqlite_url: str, tmp_path: Path, state_dir: Path) -> None:
    target = sqlite_url if path == "sqlite" else pg_target
    total = pg_exec(pg_items, "SELECT count(*) FROM items")[0][0]
    run_key = f"commit-window-{mode}-{path}"
    params = {"source_url": pg_items, "target_url": target, "table": "items", "chunk_rows": 400, "mode": mode,
              "run_key": run_key, "max_concurrency": 1, "copy_format": "rows" if path == "rows" else "auto"}
    gate, env = gated(tmp_path, "gate", 2, failpoint="db.after_commit")
    proc = start_flow("flows.db_migrate:db_migrate", params, env)
    wait_until(lambda: passed(gate) > 2, proc, what="the third range's COMMIT")
    kill(proc)
    count = (sqlite_exec if path == "sqlite" else pg_exec)(target, "SELECT count(*) FROM items")[0][0]
    assert records(state_dir, "db-migrate", run_key) == 2 and count > 0  # three ranges committed, two recorded

    rerun = start_flow("flows.db_migrate:db_migrate", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    s = summary_in(output, MigrationSummary)
    assert s.ok and (s.total, s.succeeded, s.skipped) == (total, total, 0), s.message
    assert s.ranges_resumed == 3 and s.ranges_recovered == 1 and s.ranges_copied == s.ranges_total - 3
    assert not s.ranges_mismatched and s.ranges_verified == s.ranges_total
    query = "SELECT count(*), count(DISTINCT id) FROM items"
    assert (sqlite_exec if path == "sqlite" else pg_exec)(target, query) == [(total, total)]  # nothing twice


# --------------------------------------------------------------------------- one live run per run_key


def flow_run_state(flow_run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]


def test_a_second_run_of_a_key_is_refused_and_a_killed_holder_is_taken_over(tmp_path: Path, state_dir: Path) -> None:
    effects = tmp_path / "effects.log"
    params = {"source": list(range(40)), "handler": "tests.faults.helpers:effect", "chunk_size": 5,
              "max_concurrency": 1, "retries": 0, "run_key": "held", "min_success_ratio": 0.5}
    gate, env = gated(tmp_path, "gate", 12)
    holder = start_flow("batch-map", params, {**env, "BF_EFFECTS": str(effects)})
    wait_until(lambda: passed(gate) > 12, holder, what="the holder's 13th item")

    second = start_flow("batch-map", params, {"BF_EFFECTS": str(effects)})
    refused = finish(second)
    assert second.returncode != 0
    assert "is held by a live run" in refused and f"pid {holder.pid}" in refused and "flow run" in refused
    assert len(effects.read_text().split()) == 12  # the refused run touched nothing

    lock = json.loads((RunDir.for_run("batch-map", "held", state_dir).root / "lock").read_text())
    dead_run = lock["flow_run_id"]
    assert flow_run_state(dead_run)["type"] == "RUNNING"
    kill(holder)
    assert flow_run_state(dead_run)["type"] == "RUNNING"  # a zombie, until someone takes the key over

    rerun = start_flow("batch-map", params, {"BF_EFFECTS": str(effects)})
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    assert "ended without finishing" in output and f"pid {holder.pid}" in output
    s = summary_in(output, RunSummary)
    assert (s.total, s.succeeded, s.failed, s.skipped) == (40, 32, 4, 4)
    assert Counter(int(x) for x in effects.read_text().split()) == Counter(range(40))  # each item once
    deadline = time.monotonic() + 20
    while flow_run_state(dead_run)["type"] != "CRASHED":
        assert time.monotonic() < deadline, flow_run_state(dead_run)
        time.sleep(0.2)
    assert s.flow_run_id in flow_run_state(dead_run)["message"]
