"""The columnar fast path (tasks/db/columnar.py), MySQL/MariaDB -> PostgreSQL, against real servers.

Every test copies the same source twice, once forced down the row path (``copy_format="rows"``) and once by
default, and compares the targets' rows as PostgreSQL's text output (``row::text``): json text, numeric
scale, microseconds, float digits and bytea bytes all show there, so equal text is equal data.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tasks.core.errors import ItemError
from tasks.db import LedgerEntry, copy_range, create_target, ensure_ledger, parse_table_name, plan_ranges
from tests.tasks.db.test_migration import COLUMNS, _sqlite_value, pg_exec, rows
from tests.tasks.db.test_mysql import ODD_REF, all_ok, create_my, my_exec

EDGE_DDL = """CREATE TABLE edge (
  id INT PRIMARY KEY, v VARCHAR(20), t TEXT, c CHAR(3), d DOUBLE, f FLOAT, n DECIMAL(65,30), b TINYINT(1),
  bl VARBINARY(8), j JSON, tm TIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, dt DATETIME(6), dd DATE,
  u BIGINT UNSIGNED, e ENUM('', 'x'), s SET('a', 'b')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
EDGE_ROWS: list[tuple[Any, ...]] = [
    (1, "", "", "", 0.0, 0.0, "0", 0, b"", "{}", "00:00:00", "1970-01-01 00:00:01", "1000-01-01 00:00:00",
     "1000-01-01", 0, "", ""),
    (2, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None),
    (3, "\\N", "a\nb\r\nc,\"d\"\t\\", "\\", 5e-324, 3.4028234663852886e38, "-99999999999999999999999999999999999."
     + "9" * 30, 1, b"\x00\\\n\r,\"", '{"a":1e2,"b":"ü🍕","c":[1.10,null],"d":12345678901234567890}',
     "23:59:59.999999", "2038-01-19 03:14:07.999999", "9999-12-31 23:59:59.999999", "9999-12-31",
     2**64 - 1, "x", "a,b"),
    (4, "NULL", "   ", "a  ", -0.0, -1.0000001, "0.000000000000000000000000000001", 0, b"\xff" * 8,
     '"just a string"', "12:00:00.5", "2024-02-29 12:00:00.000001", "2024-02-29 00:00:00", "2024-02-29",
     2**63, None, "b"),
    (5, "🍕" * 20, "x" * 60_000, "abc", 1 / 3, 0.1, "1.5", 1, b"\x01", "[]", "00:00:00.000001",
     "2001-01-01 00:00:00", "2001-01-01 00:00:00.000001", "2001-01-01", 1, "x", "a"),
    (6, "0.1", "\"", "\"", 1.7976931348623157e308, 1e-38, "-0.5", None, b"\"", "null", None, None, None,
     None, None, None, None),
]


def _pg_text(url: str, table: str, key: str) -> list[str]:
    return [r[0] for r in pg_exec(url, f'SELECT t::text FROM {table} t ORDER BY t."{key}"')]


def _both(src: str, table: str, pg_cluster: Any, *, chunk_rows: int, **kw: Any) -> tuple[str, str, list[str]]:
    """Copy ``table`` down the row path and by default into two fresh databases; the targets and the paths."""
    rows_db, fast_db = (pg_cluster.url(pg_cluster.create_database()) for _ in range(2))
    paths = []
    for tgt, fmt in ((rows_db, "rows"), (fast_db, "auto")):
        create_target(src, tgt, table)
        for rng in plan_ranges(src, table, chunk_rows=chunk_rows):
            res = copy_range(src, tgt, table, rng, copy_format=fmt, **kw)
            if fmt == "auto":
                paths.append(res.path)
    return rows_db, fast_db, paths


def test_every_mysql_type_writes_what_the_row_path_writes(mysql_url: str, pg_cluster: Any) -> None:
    create_my(mysql_url)
    rows_db, fast_db, paths = _both(mysql_url, ODD_REF, pg_cluster, chunk_rows=70)
    assert set(paths) == {"columnar-csv"}, paths
    assert _pg_text(fast_db, ODD_REF, "Order ID") == _pg_text(rows_db, ODD_REF, "Order ID")
    all_ok(mysql_url, fast_db, ODD_REF)


class PanicException(BaseException):
    """What connectorx raises when its stream's thread panics (pyo3's, a BaseException)."""


def test_a_range_streams_in_blocks_and_a_stream_broken_midway_commits_nothing_of_it(
        mysql_url: str, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The range goes to COPY block by block while connectorx reads on (blocks of 7 rows here): the same rows
    as the row path. A stream that breaks after some blocks were sent (a Rust panic in connectorx's thread, a
    lost connection) rolls the COPY back and the row path writes the range: no row twice, none lost."""
    from tasks.db import columnar

    create_my(mysql_url)
    monkeypatch.setattr(columnar, "_BATCH_ROWS", 7)
    rows_db, fast_db, paths = _both(mysql_url, ODD_REF, pg_cluster, chunk_rows=70)
    assert set(paths) == {"columnar-csv"}, paths
    assert _pg_text(fast_db, ODD_REF, "Order ID") == _pg_text(rows_db, ODD_REF, "Order ID")

    real = columnar.csv_batches
    sent: list[int] = []

    def breaking(*args: Any) -> Any:
        blocks = real(*args)

        def gen() -> Any:
            for i, block in enumerate(blocks):
                if i == 1:
                    raise PanicException("cx writer failed: connection reset")
                sent.append(i)
                yield block
        return gen()

    monkeypatch.setattr(columnar, "csv_batches", breaking)
    broken_db = pg_cluster.url(pg_cluster.create_database())
    ledger = ensure_ledger(broken_db, parse_table_name(ODD_REF))
    create_target(mysql_url, broken_db, ODD_REF)
    for rng in plan_ranges(mysql_url, ODD_REF, chunk_rows=70):
        res = copy_range(mysql_url, broken_db, ODD_REF, rng, mode="append", ledger=LedgerEntry(
            table=ledger, key=f"k{rng.index}", run_key="r", target_table=ODD_REF))
        assert res.path == "rows" and res.rows_read == res.rows_written == rng.estimated_rows
    assert sent and _pg_text(broken_db, ODD_REF, "Order ID") == _pg_text(rows_db, ODD_REF, "Order ID")
    all_ok(mysql_url, broken_db, ODD_REF)


def test_edge_values_null_vs_empty_and_extremes(mysql_url: str, pg_cluster: Any) -> None:
    my_exec(mysql_url, EDGE_DDL)
    my_exec(mysql_url, f"INSERT INTO edge VALUES ({', '.join(['%s'] * 17)})", EDGE_ROWS)
    rows_db, fast_db, paths = _both(mysql_url, "edge", pg_cluster, chunk_rows=2)
    assert set(paths) == {"columnar-csv"}, paths
    fast, rows = _pg_text(fast_db, "edge", "id"), _pg_text(rows_db, "edge", "id")
    assert fast == rows
    got = pg_exec(fast_db, "SELECT v, t, bl, j::text, u FROM edge ORDER BY id")
    assert got[0][:3] == ("", "", b"") and got[1] == (None, None, None, None, None)
    assert got[2][0] == "\\N" and got[2][1] == "a\nb\r\nc,\"d\"\t\\" and got[2][2] == b"\x00\\\n\r,\""
    assert got[3][0] == "NULL" and got[2][4] == 2**64 - 1
    assert json.loads(got[2][3]) == json.loads(EDGE_ROWS[2][9])
    all_ok(mysql_url, fast_db, "edge", 2)


def test_unrepresentable_ranges_fall_back_to_the_row_path_exactly(mysql_url: str, pg_cluster: Any) -> None:
    """A BIT column is not eligible; TIMESTAMP text from a server whose zone is not UTC is refused by the
    target, rolled back and written again by the row path: the same rows either way."""
    my_exec(mysql_url, "CREATE TABLE fb (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL DEFAULT NULL, n INT)")
    my_exec(mysql_url, "INSERT INTO fb VALUES (%s, %s, %s)",
            [(i, f"2024-03-31 0{i % 4}:30:00.{i:06d}", i) for i in range(1, 9)])
    my_exec(mysql_url, "SET GLOBAL time_zone = 'Europe/Berlin'") if my_exec(
        mysql_url, "SELECT count(*) FROM mysql.time_zone_name")[0][0] else my_exec(
        mysql_url, "SET GLOBAL time_zone = '+02:00'")
    try:
        rows_db, fast_db, paths = _both(mysql_url, "fb", pg_cluster, chunk_rows=4)
    finally:
        my_exec(mysql_url, "SET GLOBAL time_zone = SYSTEM")
    assert set(paths) == {"rows"}, paths
    assert _pg_text(fast_db, "fb", "id") == _pg_text(rows_db, "fb", "id")
    all_ok(mysql_url, fast_db, "fb", 4)
    my_exec(mysql_url, "CREATE TABLE bits (id INT PRIMARY KEY, b BIT(3), s VARCHAR(5))")
    my_exec(mysql_url, "INSERT INTO bits VALUES (1, b'101', ''), (2, NULL, NULL), (3, b'000', 'x')")
    rows_db, fast_db, paths = _both(mysql_url, "bits", pg_cluster, chunk_rows=10)
    assert paths == ["rows"]
    assert _pg_text(fast_db, "bits", "id") == _pg_text(rows_db, "bits", "id")


@pytest.mark.parametrize("bad", ["flag", "time", "zero"])
def test_values_the_row_path_refuses_are_refused_naming_row_and_column(bad: str, mysql_url: str,
                                                                       pg_target: str) -> None:
    col, typ, value = {"flag": ("b", "TINYINT(1)", "2"), "time": ("tm", "TIME", "'25:00:00'"),
                       "zero": ("d", "DATE", "'0000-00-00'")}[bad]
    my_exec(mysql_url, f"CREATE TABLE r (id INT PRIMARY KEY, {col} {typ})")
    my_exec(mysql_url, f"INSERT INTO r VALUES (1, NULL), (2, {value})", sql_mode="")
    create_target(mysql_url, pg_target, "r")
    with pytest.raises(ItemError) as err:
        copy_range(mysql_url, pg_target, "r", plan_ranges(mysql_url, "r")[0])
    assert "{'id': 2}" in str(err.value) and repr(col) in str(err.value)
    assert pg_exec(pg_target, "SELECT count(*) FROM r")[0][0] == 0


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_every_mode_commits_each_range_once_with_its_ledger_row(mode: str, mysql_url: str, pg_target: str) -> None:
    create_my(mysql_url)
    create_target(mysql_url, pg_target, ODD_REF)
    ledger = ensure_ledger(pg_target, parse_table_name(ODD_REF))
    entries = {i: LedgerEntry(table=ledger, key=f"r{i}", run_key="k", target_table=ODD_REF) for i in range(20)}
    ranges = plan_ranges(mysql_url, ODD_REF, chunk_rows=70)
    if mode != "append":  # over rows already there: upsert merges through the staging table, replace deletes
        for rng in ranges:
            copy_range(mysql_url, pg_target, ODD_REF, rng, mode="append")
    res = [copy_range(mysql_url, pg_target, ODD_REF, r, mode=mode, ledger=entries[r.index]) for r in ranges]  # type: ignore[arg-type]
    assert {r.path for r in res} == {"columnar-csv"}
    assert sum(r.rows_written for r in res) == sum(r.rows_read for r in res) == 300
    again = [copy_range(mysql_url, pg_target, ODD_REF, r, mode=mode, ledger=entries[r.index]) for r in ranges]  # type: ignore[arg-type]
    assert all(r.recovered and r.path == "ledger" for r in again)
    assert [r.rows_written for r in again] == [r.rows_written for r in res]
    assert pg_exec(pg_target, f"SELECT count(*) FROM {ODD_REF}")[0][0] == 300
    assert pg_exec(pg_target, "SELECT count(*) FROM _batchflows_ranges")[0][0] == len(ranges)
    all_ok(mysql_url, pg_target, ODD_REF)


# ---------------------------------------------------------------- SQLite

SQLITE_DDL = """CREATE TABLE items (
  id INTEGER PRIMARY KEY, name TEXT, label VARCHAR(40), price DECIMAL_TEXT(12,4), flag BOOLEAN, born DATE,
  seen TIMESTAMP, score DOUBLE, n NUMERIC(15,3)
)"""
DYN_DDL = """CREATE TABLE dyn (
  id INTEGER PRIMARY KEY, n INTEGER, t, b BOOLEAN, ts TIMESTAMP, d DATE, x DOUBLE, p NUMERIC(12,4), tx TEXT
)"""
DYN_CLEAN: tuple[Any, ...] = (1, "a", 1, "2024-01-01 10:00:00", "2024-02-29", 2.5, 0.1, "ü")
# one value per row that the row path converts and the columnar path must not write itself (column ``t`` has
# no declared type, so no affinity turns the integer into text)
DYN_ODD = {1: "12x", 2: 5, 3: "t", 4: "2024-01-01T10:00:00+02:00", 5: "2024-01-01 00:00:00", 6: "nan", 8: b"\xff"}
DYN_ERR = {1, 8}  # values the row path refuses too


def _sqlite(url: str, sql: str, params: list[tuple[Any, ...]] | None = None) -> None:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    with conn:
        conn.execute(sql) if params is None else conn.executemany(sql, params)
    conn.close()


def test_sqlite_types_write_what_the_row_path_writes(tmp_path: Path, sqlite_items: str, pg_cluster: Any) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    _sqlite(url, SQLITE_DDL)
    names = ["id", "name", "label", "price", "flag", "born", "seen", "score"]
    data = [tuple(_sqlite_value(c, v) for c, v in zip(COLUMNS, r, strict=True) if c in names) for r in rows()]
    nums = [0.5, None, 0, -1, 0.125, 123456789012.345, -0.001, 0.1, 999999999999.999, 2.5, -7.75]
    _sqlite(url, "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*r, nums[i % len(nums)]) for i, r in enumerate(data)])
    _sqlite(url, "INSERT INTO items (id, name, label) VALUES (10000000000000, '', '')")
    rows_db, fast_db, paths = _both(url, "items", pg_cluster, chunk_rows=400)
    # a range whose first value of a NUMERIC/DECIMAL_TEXT column is NULL: connectorx cannot type it, rows then
    assert paths.count("columnar-csv") >= 3, paths
    assert _pg_text(fast_db, "items", "id") == _pg_text(rows_db, "items", "id")
    all_ok(url, fast_db, "items", 400)
    # json, bytea, uuid, timestamptz, arrays: the row path, the same rows
    rows_db, fast_db, paths = _both(sqlite_items, "items", pg_cluster, chunk_rows=400)
    assert set(paths) == {"rows"}
    assert _pg_text(fast_db, "items", "id") == _pg_text(rows_db, "items", "id")


def test_sqlite_dynamic_typing_falls_back_to_the_row_path_exactly(tmp_path: Path, pg_cluster: Any) -> None:
    """A range holding a value of another storage class (or a text form only Python reads) takes the row
    path; the other ranges take the columnar path; both targets hold the same rows."""
    url = f"sqlite:///{tmp_path / 'd.sqlite3'}"
    _sqlite(url, DYN_DDL)
    data = [(i, *(DYN_ODD[i] if i in DYN_ODD and j == i - 1 else v for j, v in enumerate(DYN_CLEAN)))
            for i in range(10) if i not in DYN_ERR]
    data.append((10, *([None] * 8)))
    _sqlite(url, f"INSERT INTO dyn VALUES ({', '.join(['?'] * 9)})", data)
    rows_db, fast_db, paths = _both(url, "dyn", pg_cluster, chunk_rows=1)
    keys = [r[0] for r in data]
    # and the all-NULL row 10: connectorx cannot type a NUMERIC column from a NULL first value
    assert {keys[i] for i, p in enumerate(paths) if p == "rows"} == set(DYN_ODD) - DYN_ERR | {10}, paths
    assert _pg_text(fast_db, "dyn", "id") == _pg_text(rows_db, "dyn", "id")
    all_ok(url, fast_db, "dyn", 1)
    for i in DYN_ERR:  # refused by the row path after the columnar check: named by row and column
        row = tuple(DYN_ODD[i] if j == i - 1 else v for j, v in enumerate(DYN_CLEAN))
        _sqlite(url, f"INSERT INTO dyn VALUES ({', '.join(['?'] * 9)})", [(100 + i, *row)])
        tgt = pg_cluster.url(pg_cluster.create_database())
        create_target(url, tgt, "dyn")
        last = plan_ranges(url, "dyn", chunk_rows=1)[-1]
        with pytest.raises(ItemError) as err:
            copy_range(url, tgt, "dyn", last)
        assert f"{{'id': {100 + i}}}" in str(err.value)
        _sqlite(url, f"DELETE FROM dyn WHERE id = {100 + i}")


def test_setting_off_forces_the_row_path(tmp_path: Path, pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'o.sqlite3'}"
    _sqlite(url, "CREATE TABLE o (id INTEGER PRIMARY KEY, s TEXT)")
    _sqlite(url, "INSERT INTO o VALUES (?, ?)", [(1, ""), (2, None)])
    create_target(url, pg_target, "o")
    rng = plan_ranges(url, "o")[0]
    monkeypatch.setenv("BATCHFLOWS_DB_COLUMNAR", "false")
    assert copy_range(url, pg_target, "o", rng, mode="upsert").path == "rows"
    monkeypatch.delenv("BATCHFLOWS_DB_COLUMNAR")
    assert copy_range(url, pg_target, "o", rng, mode="upsert").path == "columnar-csv"
    assert pg_exec(pg_target, "SELECT id, s FROM o ORDER BY id") == [(1, ""), (2, None)]
