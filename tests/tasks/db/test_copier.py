"""char(n) (bpchar) through every write path and pair, on pgbench's own table shape (pgbench_accounts:
aid, bid, abalance, filler character(84)): PG->PG by COPY and by rows, SQLite->PG, PG->SQLite->PG."""

from __future__ import annotations

from typing import Any

import pytest

from flows.db_migrate import db_migrate
from tests.tasks.db.test_migration import pg_exec, sqlite_exec

ROWS = 1000
DDL = ("CREATE TABLE pgbench_accounts (aid integer NOT NULL PRIMARY KEY, bid integer, abalance integer, "
       "filler character(84))")


@pytest.fixture
def accounts(pg_target: str) -> str:
    pg_exec(pg_target, DDL)
    pg_exec(pg_target, """INSERT INTO pgbench_accounts
                          SELECT i, 1 + i / 100, mod(i * 37, 1000) - 500, CASE WHEN mod(i, 3) = 0 THEN NULL
                          WHEN mod(i, 3) = 1 THEN '' ELSE 'filler ' || i END
                          FROM generate_series(1, %s) AS i""", (ROWS,))
    return pg_target


def pg_rows(url: str) -> list[tuple[Any, ...]]:
    return pg_exec(url, "SELECT aid, bid, abalance, filler FROM pgbench_accounts ORDER BY aid")


@pytest.mark.parametrize("copy_format", ["auto", "text", "rows"])
def test_char_columns_copy_pg_to_pg_by_every_path(accounts: str, pg_cluster: Any, copy_format: str) -> None:
    target = str(pg_cluster.url(pg_cluster.create_database()))
    s = db_migrate(accounts, target, "pgbench_accounts", chunk_rows=300, copy_format=copy_format, mode="append")
    assert s.ok and s.succeeded == ROWS, s.render_text()
    assert pg_rows(target) == pg_rows(accounts)
    assert pg_exec(target, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                           "'pgbench_accounts'::regclass AND attname = 'filler'") == [("character(84)",)]


def test_char_columns_round_trip_through_sqlite(accounts: str, pg_cluster: Any, sqlite_url: str) -> None:
    out = db_migrate(accounts, sqlite_url, "pgbench_accounts", chunk_rows=300)
    assert out.ok and out.succeeded == ROWS, out.render_text()
    assert sqlite_exec(sqlite_url, "SELECT count(*) FROM pgbench_accounts") == [(ROWS,)]
    back = str(pg_cluster.url(pg_cluster.create_database()))
    again = db_migrate(sqlite_url, back, "pgbench_accounts", chunk_rows=300)
    assert again.ok and again.succeeded == ROWS, again.render_text()
    assert pg_rows(back) == pg_rows(accounts)  # char(84) padding: PostgreSQL pads on the way in, as it did


def test_a_type_batchflows_cannot_encode_stops_the_run_naming_the_real_cause() -> None:
    import psycopg

    from tasks.core.errors import FatalError
    from tasks.db.copier import _pg_error
    from tasks.db.schema import KeyRange

    err = _pg_error(psycopg.ProgrammingError("cannot find a dumper for type foo (oid 99999) format BINARY"),
                    KeyRange(index=3, lower=None, upper=None), ["a"], ["a"], None)
    assert isinstance(err, FatalError)
    assert "range 3" in str(err) and "limitation of batchflows" in str(err) and "not a problem of the target" in str(err)


@pytest.mark.parametrize("copy_format", ["auto", "rows"])
def test_upsert_copies_an_empty_range_straight_in_and_merges_a_full_one(accounts: str, pg_cluster: Any,
                                                                        copy_format: str) -> None:
    target = str(pg_cluster.url(pg_cluster.create_database()))
    first = db_migrate(accounts, target, "pgbench_accounts", chunk_rows=300, copy_format=copy_format)
    assert first.ok and pg_rows(target) == pg_rows(accounts)  # upsert into empty ranges: a plain COPY
    pg_exec(accounts, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid %% 2 = 0")
    pg_exec(target, "DELETE FROM pgbench_accounts WHERE aid > 900")  # the last range: partly empty
    again = db_migrate(accounts, target, "pgbench_accounts", chunk_rows=300, copy_format=copy_format)
    assert again.ok and pg_rows(target) == pg_rows(accounts)  # ranges with rows: merged (ON CONFLICT)


def test_a_key_written_by_another_writer_during_a_direct_upsert_is_a_retryable_conflict(
        accounts: str, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.core import RetryableError
    from tasks.db import copier
    from tasks.db.conn import parse_table_name
    from tasks.db.schema import KeyRange

    target = str(pg_cluster.url(pg_cluster.create_database()))
    assert db_migrate(accounts, target, "pgbench_accounts", chunk_rows=300).ok
    # as if the range had been empty when checked and another writer inserted its keys right after
    monkeypatch.setattr(copier, "_stage_or_target", lambda db, t, mode, keys, rng: (t.sql(db.dialect), False))
    for copy_format in ("auto", "rows"):
        with pytest.raises(RetryableError, match="another writer"):
            copier.copy_range(accounts, target, "pgbench_accounts", KeyRange(index=0, upper=[300]),
                              target_table=str(parse_table_name("pgbench_accounts")), copy_format=copy_format)
    assert pg_rows(target) == pg_rows(accounts)  # nothing written twice
