"""SIGKILL of a running flow process at seeded random points, then a rerun with the same run_key.

For each public flow (batch_map, api_bulk, file_transform, db_migrate) and three seeds: the kill
point (how many units finish before the kill) comes from ``random.Random(seed)``; a gate in the
flow's own code path (tests/faults/helpers.py) holds every later unit, so the point is exact under
any load. After the rerun every case asserts nothing lost and nothing duplicated: summary counts,
outputs and dead letters compared to exact expected sets, and side effects repeated only for the
units that were in flight at the kill.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.db_migrate import MigrationSummary
from tasks.core.outcomes import RunSummary, read_dead_letters
from tasks.core.state import RunDir
from tasks.files.process import plan_chunks, resolve_inputs
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.fixtures.api_server import LoopbackHTTPServer
from tests.run_flow import start_flow, summary_in
from tests.tasks.db.test_migration import pg_exec

pytestmark = pytest.mark.slow
SEEDS = (1, 2, 3)


def kill_point(seed: int, low: int, high: int) -> int:
    return random.Random(seed).randint(low, high)


def records(state_dir: Path, flow: str, run_key: str) -> int:
    """Finished chunks of a run: its result records (written after the chunk's output)."""
    chunks = RunDir.for_run(flow, run_key, state_dir).chunks
    return len([p for p in chunks.iterdir() if p.is_file()]) if chunks.exists() else 0


def gate_env(tmp_path: Path, limit: int) -> tuple[Path, dict[str, str]]:
    gate = tmp_path / "gate"
    gate.mkdir()
    return gate, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(limit)}


def jsonl_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def at_most_in_flight_twice(counts: Counter[int], in_flight: int) -> None:
    """Items run twice are at most those in flight at the kill (every finished item is journaled)."""
    twice = {x for x, c in counts.items() if c > 1}
    assert max(counts.values()) <= 2, counts.most_common(3)
    assert len(twice) <= in_flight, sorted(twice)


# --------------------------------------------------------------------------- batch_map


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_map(seed: int, tmp_path: Path, state_dir: Path) -> None:
    n, chunk, window = 300, 10, 2
    limit = kill_point(seed, 20, n - 40)  # items whose handler completes before the kill
    gate, env = gate_env(tmp_path, limit)
    effects, out = tmp_path / "effects.log", tmp_path / "out"
    params = {"source": list(range(n)), "handler": "tests.faults.helpers:effect", "chunk_size": chunk,
              "max_concurrency": window, "retries": 0, "run_key": f"kill-{seed}", "output": str(out),
              "min_success_ratio": 0.5}
    env["BF_EFFECTS"] = str(effects)
    proc = start_flow("batch-map", params, env)
    wait_until(lambda: passed(gate) >= limit + 1 and effects.exists() and len(effects.read_text().split()) >= limit,
               proc, what=f"{limit} handler calls")
    kill(proc)
    assert len(effects.read_text().split()) == limit

    rerun = start_flow("batch-map", params, {"BF_EFFECTS": str(effects)})
    output = finish(rerun)
    assert rerun.returncode == 0, output
    s = summary_in(output, RunSummary)
    failing, skipped = {x for x in range(n) if x % 10 == 3}, {x for x in range(n) if x % 10 == 5}
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, n - 60, 30, 30)
    assert s.chunks_resumed >= limit // chunk - window
    counts = Counter(int(x) for x in effects.read_text().split())
    assert set(counts) == set(range(n))  # every item handled
    at_most_in_flight_twice(counts, window)  # item_concurrency 1: one item in flight per chunk
    rows = jsonl_rows(out)
    assert sorted(r["item"] for r in rows) == sorted(set(range(n)) - failing - skipped)  # each result once
    assert all(r["result"] == 2 * r["item"] for r in rows)
    dead = [d["item"] for d in read_dead_letters(s.dead_letter_path or "")]
    assert sorted(dead) == sorted(failing)  # each failure dead-lettered exactly once


# --------------------------------------------------------------------------- api_bulk


class GatedApi:
    """Loopback API: GET /item/{i} answers {"id": i} (404 for i % 17 == 0); items >= `hold_from` wait for `opened`."""

    def __init__(self) -> None:
        self.arrived: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.hold_from = 10**9
        self.opened = threading.Event()
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                i = int(self.path.rsplit("/", 1)[-1])
                with api.lock:
                    api.arrived[i] += 1
                if i >= api.hold_from:
                    api.opened.wait(120)
                status = 404 if i % 17 == 0 else 200
                body = json.dumps({"id": i} if status == 200 else {"error": "no such item"}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # a held request of the killed run: its client is gone
                    self.close_connection = True
                    return
                with api.lock:
                    api.answered[i] += 1

        self.server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gated_api() -> Iterator[GatedApi]:
    api = GatedApi()
    yield api
    api.opened.set()
    api.server.shutdown()
    api.server.server_close()


@pytest.mark.parametrize("seed", SEEDS)
def test_api_bulk(seed: int, gated_api: GatedApi, tmp_path: Path, state_dir: Path) -> None:
    n, chunk, window = 240, 12, 2
    done_chunks = kill_point(seed, 2, n // chunk - 4)
    gated_api.hold_from = done_chunks * chunk  # every later request waits: the run stalls right there
    out = tmp_path / "out"
    run_key = f"kill-api-{seed}"
    params = {"items": [{"id": i} for i in range(n)], "base_url": gated_api.url, "path_template": "/item/{id}",
              "chunk_size": chunk, "max_concurrency": window, "item_concurrency": 4, "retries": 0,
              "output": str(out), "run_key": run_key, "min_success_ratio": 0.5}
    proc = start_flow("flows.api_bulk:api_bulk", params)
    wait_until(lambda: records(state_dir, "api-bulk", run_key) >= done_chunks, proc,
               what=f"{done_chunks} finished chunks")
    kill(proc)
    assert records(state_dir, "api-bulk", run_key) == done_chunks
    finished = set(range(done_chunks * chunk))
    assert gated_api.answered == Counter(finished)  # nothing past the gate was answered

    gated_api.opened.set()
    rerun = start_flow("flows.api_bulk:api_bulk", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output
    s = summary_in(output, RunSummary)
    missing = {i for i in range(n) if i % 17 == 0}
    assert (s.total, s.succeeded, s.failed, s.skipped) == (n, n - len(missing), len(missing), 0)
    # a record the kill cut short (Prefect writes it in place) is ignored; the chunk's journal gives its items back
    assert done_chunks - 1 <= s.chunks_resumed <= done_chunks
    assert set(gated_api.answered) == set(range(n))
    assert all(gated_api.arrived[i] == 1 for i in finished)  # finished requests were not sent again
    # only the requests held at the kill were sent twice: at most the requests in flight (journaled per request)
    twice = {i for i, c in gated_api.arrived.items() if c > 1}
    assert max(gated_api.arrived.values()) <= 2 and len(twice) <= window * 4, sorted(twice)
    rows = jsonl_rows(out)
    assert sorted(r["body"]["id"] for r in rows) == sorted(set(range(n)) - missing)  # each response once
    dead = list(read_dead_letters(s.dead_letter_path or ""))
    assert sorted(d["item"]["id"] for d in dead) == sorted(missing) and {d["status"] for d in dead} == {404}


# --------------------------------------------------------------------------- file_transform

SCHEMA = {"id": "int64", "amount": "float64", "day": "date"}


def write_csv(path: Path, rows: int) -> set[int]:
    """A CSV whose every 50th row has an amount that is not a number; returns the bad ids."""
    bad = set(range(7, rows, 50))
    lines = ["id,amount,day"]
    lines += [f"{i},{'n/a' if i in bad else i * 0.5},2024-02-{i % 28 + 1:02d}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize("seed", SEEDS)
def test_file_transform(seed: int, tmp_path: Path, state_dir: Path) -> None:
    rows = 4000
    src = tmp_path / "in" / "data.csv"
    src.parent.mkdir()
    bad = write_csv(src, rows)
    out = tmp_path / "out"
    run_key = f"kill-files-{seed}"
    params = {"source": str(src), "output_dir": str(out), "schema": SCHEMA, "chunk_bytes": 4000,
              "max_concurrency": 2, "run_key": run_key, "transform": "tests.faults.helpers:gated_chunk",
              "min_success_ratio": 0.5}
    chunks = len(plan_chunks(resolve_inputs(str(src)), chunk_bytes=4000))
    assert chunks >= 10
    limit = kill_point(seed, 2, chunks - 4)
    _, env = gate_env(tmp_path, limit)
    proc = start_flow("flows.file_transform:file_transform", params, env)
    wait_until(lambda: records(state_dir, "file-transform", run_key) >= limit, proc, what=f"{limit} chunks")
    kill(proc)
    assert records(state_dir, "file-transform", run_key) == limit

    rerun = start_flow("flows.file_transform:file_transform", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output
    s = summary_in(output, RunSummary)
    assert s.chunks_total == chunks and limit - 1 <= s.chunks_resumed <= limit  # a record cut short runs again
    assert s.extra["rows_in"] == rows and s.extra["rows_rejected"] == len(bad)
    good = pl.read_parquet(sorted(out.glob("part-*.parquet")))["id"].to_list()
    assert sorted(good) == sorted(set(range(rows)) - bad) and len(good) == len(set(good))  # no dup, no gap
    rejected = pl.concat([pl.read_csv(p, infer_schema=False) for p in sorted((out / "_rejects").glob("part-*"))])
    assert sorted(int(i) for i in rejected["id"]) == sorted(bad)
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- db_migrate

ORDERED = "SELECT * FROM items ORDER BY id"


@pytest.mark.parametrize("seed", SEEDS)
def test_db_migrate(seed: int, pg_items: str, pg_target: str, tmp_path: Path, state_dir: Path) -> None:
    chunk = 100
    total = pg_exec(pg_items, "SELECT count(*) FROM items")[0][0]
    run_key = f"kill-db-{seed}"
    params = {"source_url": pg_items, "target_url": pg_target, "table": "items", "chunk_rows": chunk,
              "mode": "append", "run_key": run_key, "transform": "tests.faults.helpers:gated_frame",
              "max_concurrency": 2}
    limit = kill_point(seed, 2, total // chunk - 4)
    _, env = gate_env(tmp_path, limit)
    proc = start_flow("flows.db_migrate:db_migrate", params, env)
    wait_until(lambda: records(state_dir, "db-migrate", run_key) >= limit, proc, what=f"{limit} committed ranges")
    kill(proc)
    committed = pg_exec(pg_target, "SELECT count(*) FROM items")[0][0]
    assert 0 < committed < total

    rerun = start_flow("flows.db_migrate:db_migrate", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output
    s = summary_in(output, MigrationSummary)
    assert s.ok and s.ranges_resumed == limit and not s.ranges_mismatched
    assert s.ranges_resumed + s.ranges_copied == s.ranges_total
    assert pg_exec(pg_target, "SELECT count(*), count(DISTINCT id) FROM items") == [(total, total)]
    assert pg_exec(pg_items, ORDERED) == pg_exec(pg_target, ORDERED)  # exactly the source
