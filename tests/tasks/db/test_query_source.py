"""A database query as a batch_map source, against the session's throwaway PostgreSQL cluster and SQLite files:
keyset pages, every row once in key order, resume after a stop, credentials kept out of parameters."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret

from flows.batch_map import batch_map
from tasks.core.errors import ConfigError, FatalError, SourceError
from tasks.core.flowdef import RunFailed
from tasks.db.query_source import query_source
from tests.tasks.db.test_migration import pg_exec

seen: list[int] = []
lock = threading.Lock()
_stopped = threading.Event()


def record(row: dict[str, Any]) -> int:
    with lock:
        seen.append(row["id"])
    return row["id"]


def stop_once_at_250(row: dict[str, Any]) -> int:
    if row["id"] == 250 and not _stopped.is_set():
        _stopped.set()
        raise FatalError("the downstream service is gone")
    return record(row)


@pytest.fixture
def accounts(pg_target: str) -> str:
    pg_exec(pg_target, """CREATE TABLE accounts (id bigint PRIMARY KEY, email text, balance numeric(12, 2),
                          active boolean);
                          INSERT INTO accounts SELECT i, 'user' || i || '@example.com', i * 1.25, mod(i, 3) <> 0
                          FROM generate_series(1, 700) AS i""")
    return pg_target


def test_rows_come_once_in_key_order_across_pages(accounts: str) -> None:
    src = query_source(accounts, "SELECT id, email, balance FROM accounts WHERE active", key="id", page_rows=64)
    rows = list(src.iterate())
    expected = [i for i in range(1, 701) if i % 3 != 0]
    assert [r["id"] for r in rows] == expected
    assert rows[0] == {"id": 1, "email": "user1@example.com", "balance": Decimal("1.25")}
    assert [r["id"] for r in src.iterate()] == expected  # a query source can be read again (a resume)


def test_batch_map_over_a_query_resumes_after_a_stop_and_keeps_the_password_out(accounts: str, pg_cluster: Any) -> None:
    seen.clear()
    _stopped.clear()
    kwargs: dict[str, Any] = {"query": "SELECT id, email FROM accounts", "query_key": "id", "chunk_size": 100,
                              "max_concurrency": 1, "run_key": "accounts-sync"}
    with pytest.raises(RunFailed, match="downstream service is gone") as err:
        batch_map(accounts, stop_once_at_250, **kwargs)
    first = err.value.summary
    assert pg_cluster.password not in first.model_dump_json()
    again = batch_map(accounts, stop_once_at_250, **kwargs)
    assert again.ok and again.total == 700 and again.chunks_resumed == 2
    assert sorted(seen) == list(range(1, 701)) and len(seen) == 700  # every row handled exactly once


def test_a_secret_block_url_for_deployments_and_what_is_refused(accounts: str, tmp_path: Path) -> None:
    name = f"bf-test-db-{uuid.uuid4().hex[:6]}"
    Secret(value=accounts).save(name, overwrite=True)
    s = batch_map(f"secret:{name}", record, query="SELECT id FROM accounts WHERE id <= 10", query_key="id")
    assert s.ok and s.total == 10
    with pytest.raises(ConfigError, match="query and query_key go together"):
        batch_map(accounts, record, query="SELECT id FROM accounts")
    with pytest.raises(ConfigError, match="Secret block"):
        from flows.batch_map import BatchMapParams

        BatchMapParams.parse({"source": accounts, "handler": "x.y:z", "query": "SELECT 1 AS id", "query_key": "id"})
    with pytest.raises(ConfigError, match="single SELECT"):
        query_source(accounts, "DELETE FROM accounts", key="id")
    with pytest.raises(SourceError, match="has no column 'uid'"):
        list(query_source(accounts, "SELECT id FROM accounts", key="uid").iterate())
    with pytest.raises(SourceError, match=r"has no column 'uid' \(columns: \['id'\]\); pass one of them as query_key"):
        batch_map(f"secret:{name}", record, query="SELECT id FROM accounts", query_key="uid")  # the parameter's name


def test_sqlite_query_source(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 26)])
    rows = list(query_source(f"sqlite:///{path}", "SELECT k, v FROM t", key="k", page_rows=7).iterate())
    assert [r["k"] for r in rows] == list(range(1, 26)) and rows[-1] == {"k": 25, "v": "v25"}
