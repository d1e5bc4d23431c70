"""db_migrate into and out of SQLite where its loose typing used to change data: numeric keys and floats.

Real PostgreSQL and MariaDB (throwaway servers), real SQLite files, a real Prefect server. A numeric key
(PostgreSQL ``numeric(20,0)``, MariaDB ``BIGINT UNSIGNED``) is stored as a SQLite integer, so each range's
predicate, delete and verify touch only its own keys in every mode; a key past 64 bits fails its range naming
the row and column; a decimal key SQLite cannot order is refused up front. A float NaN (SQLite stores NULL)
fails its range naming the row and column; -0.0 and the infinities arrive as they are.
"""

from __future__ import annotations

import math
import sqlite3
from decimal import Decimal
from typing import Any

import pytest

from flows.db_migrate import MigrationSummary, db_migrate, db_verify
from tasks.core import ConfigError
from tests.tasks.db.test_migration import pg_exec, sqlite_exec
from tests.tasks.db.test_mysql import my_exec

IDS = [-5, 1, 2, 3, 9, 10, 20, 2**63 - 1]  # text order: 10 before 9 (one range), 2**63-1 before 3
ROWS = [(i, f"v{i}", Decimal("12.50") if i % 2 else Decimal("3.10")) for i in IDS]


def assert_clean(summary: MigrationSummary, ranges: int) -> None:
    assert summary.ok, summary.render_text()
    assert summary.ranges_total == ranges == summary.ranges_verified == summary.ranges_matching
    assert summary.ranges_mismatched == [] and summary.ranges_failed == []


def lite(url: str, sql: str) -> list[tuple[Any, ...]]:
    return sqlite_exec(url, sql)


def test_numeric_key_to_sqlite_every_mode_keeps_ranges_apart(pg_url: str, sqlite_url: str, pg_target: str) -> None:
    pg_exec(pg_url, "CREATE TABLE t (id numeric(20,0) PRIMARY KEY, v text, amount numeric(12,2))")
    for row in ROWS:
        pg_exec(pg_url, "INSERT INTO t VALUES (%s, %s, %s)", row)
    ranges = -(-len(ROWS) // 2)
    for i, mode in enumerate(["upsert", "replace", "replace", "upsert"]):  # the first creates the table
        summary = db_migrate(pg_url, sqlite_url, "t", mode=mode, chunk_rows=2)  # type: ignore[arg-type]
        assert_clean(summary, ranges)
        assert summary.rows_copied == len(ROWS)
        if i == 0:
            assert "DECIMAL_INT(20,0) NOT NULL" in (summary.ddl or "") and "DECIMAL_TEXT(12,2)" in (summary.ddl or "")
        stored = lite(sqlite_url, "SELECT id, typeof(id), v, amount FROM t ORDER BY id")
        assert stored == [(k, "integer", v, str(a)) for k, v, a in ROWS], mode  # 12.50 keeps its text
    # each range's delete took its own keys only: a key of another range changed in the target comes back
    sqlite_exec(sqlite_url, "UPDATE t SET v = 'changed' WHERE id IN (3, 20)")
    bad = db_verify(pg_url, sqlite_url, "t", chunk_rows=2, raise_on_failure=False)
    assert not bad.ok and len(bad.ranges_mismatched) == 2
    assert_clean(db_migrate(pg_url, sqlite_url, "t", mode="replace", chunk_rows=2), ranges)
    assert lite(sqlite_url, "SELECT count(*), sum(v = 'changed') FROM t") == [(len(ROWS), 0)]
    back = db_migrate(sqlite_url, pg_target, "t", mode="upsert", chunk_rows=3)  # SQLite as the source
    assert_clean(back, -(-len(ROWS) // 3))
    q = "SELECT id, v, amount::text FROM t ORDER BY id"
    assert pg_exec(pg_target, q) == pg_exec(pg_url, q)


def test_unsigned_key_mariadb_sqlite_mariadb(mysql_url: str, sqlite_url: str, mariadb_server: Any) -> None:
    my_exec(mysql_url, "CREATE TABLE t (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(20))")
    ids = [1, 2, 3, 10, 11, 20, 2**63 - 1]
    my_exec(mysql_url, "INSERT INTO t VALUES (%s, %s)", [(i, f"v{i}") for i in ids])
    for mode in ("upsert", "replace"):
        assert_clean(db_migrate(mysql_url, sqlite_url, "t", mode=mode, chunk_rows=2), 4)  # type: ignore[arg-type]
        assert lite(sqlite_url, "SELECT id, typeof(id) FROM t ORDER BY id") == [(i, "integer") for i in ids]
    other = mariadb_server.url(mariadb_server.create_database())
    assert_clean(db_migrate(sqlite_url, other, "t", mode="upsert", chunk_rows=2), 4)
    assert my_exec(other, "SELECT id, v FROM t ORDER BY id") == my_exec(mysql_url, "SELECT id, v FROM t ORDER BY id")
    # past SQLite's 64-bit integers: that row's range fails naming it, the other ranges are exact
    my_exec(mysql_url, "INSERT INTO t VALUES (%s, 'top'), (%s, 'past')", (2**64 - 1, 2**63))
    failed = db_migrate(mysql_url, sqlite_url, "t", mode="upsert", chunk_rows=2, chunk_retries=0,
                        raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [3, 4], failed.render_text()
    dead = sorted(d["message"] for d in failed.dead_letters())
    assert len(dead) == 2 and all("column 'id'" in m and "past the 64-bit integers" in m for m in dead), dead
    assert f"row with key {{'id': Decimal('{2**63}')}}" in dead[0]
    assert lite(sqlite_url, "SELECT id, typeof(id) FROM t ORDER BY id") == [(i, "integer") for i in ids]


def test_decimal_keys_sqlite_cannot_order_are_refused_up_front(pg_url: str, sqlite_url: str, pg_target: str) -> None:
    pg_exec(pg_url, "CREATE TABLE p (price numeric(10,2) PRIMARY KEY, v text)")
    pg_exec(pg_url, "INSERT INTO p VALUES (9.50, 'a'), (10.25, 'b')")
    with pytest.raises(ConfigError, match=r"key column 'price'.*numeric\(10,2\).*orders '10' before '9'"):
        db_migrate(pg_url, sqlite_url, "p", chunk_rows=1)
    with pytest.raises(ConfigError, match=r"key column 'price'"):
        db_migrate(pg_url, sqlite_url, "p", dry_run=True)
    assert lite(sqlite_url, "SELECT count(*) FROM sqlite_master WHERE name = 'p'") == [(0,)]
    # a table an earlier version created keeps its numeric key as text: refused, saying what to do
    sqlite_exec(sqlite_url, "CREATE TABLE old (id DECIMAL_TEXT(20,0) PRIMARY KEY, v TEXT)")
    sqlite_exec(sqlite_url, "INSERT INTO old VALUES ('2', 'a'), ('10', 'b')")
    with pytest.raises(ConfigError, match=r"key column 'id'.*DECIMAL_TEXT\(20,0\) \(TEXT affinity\).*CAST"):
        db_migrate(sqlite_url, pg_target, "old", chunk_rows=1)
    pg_exec(pg_url, "CREATE TABLE old (id numeric(20,0) PRIMARY KEY, v text)")
    with pytest.raises(ConfigError, match=r"key column 'id'.*TEXT affinity"):
        db_migrate(pg_url, sqlite_url, "old", chunk_rows=1)
    summary = db_migrate(sqlite_url, pg_target, query='SELECT CAST(id AS INTEGER) AS id, v FROM old', key="id",
                         target_table="old", chunk_rows=1)
    assert_clean(summary, 2)


def test_floats_to_sqlite_nan_fails_its_row_negative_zero_and_infinities_arrive(
        pg_url: str, sqlite_url: str, pg_target: str) -> None:
    pg_exec(pg_url, "CREATE TABLE f (id int PRIMARY KEY, d float8, r float4)")
    values = [(1, "-0", "-0"), (2, "Infinity", "-Infinity"), (3, "1.5", None), (4, "0", "0"),
              (5, "-2.25e-308", "3.4e38"), (6, "NaN", "1"), (7, "1", "NaN")]
    for row in values:
        pg_exec(pg_url, "INSERT INTO f VALUES (%s, %s, %s)", row)
    failed = db_migrate(pg_url, sqlite_url, "f", chunk_rows=2, chunk_retries=0, verify=False, raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [2, 3], failed.render_text()
    dead = sorted(d["message"] for d in failed.dead_letters())
    assert len(dead) == 2, dead
    assert "row with key {'id': 6} cannot be written: column 'd': NaN cannot be stored in SQLite" in dead[0]
    assert "row with key {'id': 7} cannot be written: column 'r': NaN cannot be stored in SQLite" in dead[1]
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        got = conn.execute("SELECT id, d, r, typeof(d) FROM f ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in got] == [1, 2, 3, 4]  # the failed ranges wrote nothing
    assert [math.copysign(1, r[1]) for r in got] == [-1, 1, 1, 1] and math.copysign(1, got[0][2]) == -1
    assert got[1][1:3] == (math.inf, -math.inf) and {r[3] for r in got} == {"real"}
    pg_exec(pg_url, "DELETE FROM f WHERE id IN (6, 7)")  # without the NaNs every range verifies
    assert_clean(db_migrate(pg_url, sqlite_url, "f", chunk_rows=2), 3)
    assert_clean(db_migrate(sqlite_url, pg_target, "f", chunk_rows=2), 3)
    q = "SELECT id, d::text, r::text FROM f ORDER BY id"
    assert pg_exec(pg_target, q) == pg_exec(pg_url, q) and pg_exec(pg_target, q)[0] == (1, "-0", "-0")
