"""MySQL/MariaDB rows through connectorx (tasks/db/arrow_rows.py) are the rows PyMySQL's reader yields, value
for value and type for type, on every MySQL type the suite uses; verify falls back to PyMySQL where the
Arrow read cannot be exact, and still finds differences."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.db import KeyRange, arrow_rows, copy_range, create_target, plan_ranges, reflect, verify_ranges
from tasks.db.conn import connect
from tasks.db.copier import iter_rows
from tests.tasks.db.test_columnar import EDGE_DDL, EDGE_ROWS
from tests.tasks.db.test_migration import pg_exec
from tests.tasks.db.test_mysql import ODD_REF, create_my, my_exec


def _typed(rows: list[tuple[Any, ...]]) -> list[list[tuple[str, Any]]]:
    return [[(type(v).__name__, v) for v in row] for row in rows]


def _both(url: str, table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    schema = reflect(url, table)
    rng = plan_ranges(url, table, chunk_rows=10**6)[0]
    with connect(url, "source") as db:
        assert arrow_rows.readable(db, schema)
        fast = list(arrow_rows.iter_rows(db, schema, rng))
        slow = list(iter_rows(db, schema, rng))
    return fast, slow


def test_every_mysql_type_reads_as_pymysql_reads_it(mysql_url: str) -> None:
    create_my(mysql_url)
    my_exec(mysql_url, EDGE_DDL)
    my_exec(mysql_url, f"INSERT INTO edge VALUES ({', '.join(['%s'] * 17)})", EDGE_ROWS)
    for table in (ODD_REF, "edge"):
        fast, slow = _both(mysql_url, table)
        assert len(fast) == len(slow) > 5
        assert _typed(fast) == _typed(slow)


def test_verify_falls_back_where_arrow_cannot_read_and_still_finds_a_difference(mysql_url: str,
                                                                                pg_target: str) -> None:
    my_exec(mysql_url, "CREATE TABLE bits (id INT PRIMARY KEY, b BIT(3), s VARCHAR(5))")  # BIT: not readable
    my_exec(mysql_url, "INSERT INTO bits VALUES (1, b'101', ''), (2, NULL, NULL), (3, b'000', 'x')")
    my_exec(mysql_url, "CREATE TABLE ts (id INT PRIMARY KEY, t TIMESTAMP(6) NULL DEFAULT NULL, n DECIMAL(30,10))")
    my_exec(mysql_url, "INSERT INTO ts VALUES (%s, %s, %s)",
            [(i, f"2024-03-31 0{i % 4}:30:00.{i:06d}", f"{i}.0000000001") for i in range(1, 9)])
    for table in ("bits", "ts"):
        create_target(mysql_url, pg_target, table)
        for rng in plan_ranges(mysql_url, table, chunk_rows=4):
            copy_range(mysql_url, pg_target, table, rng)
        assert all(c.ok for c in verify_ranges(mysql_url, pg_target, table, chunk_rows=4))
    pg_exec(pg_target, "UPDATE ts SET n = n + 0.0000000001 WHERE id = 6")
    bad = [c for c in verify_ranges(mysql_url, pg_target, "ts", chunk_rows=4) if not c.ok]
    assert [c.first_difference for c in bad] == [[6]]
    # a server whose zone is not UTC: the Arrow select refuses TIMESTAMP text, PyMySQL reads it
    my_exec(mysql_url, "SET GLOBAL time_zone = '+02:00'")
    try:
        checks = verify_ranges(mysql_url, pg_target, "ts", chunk_rows=4)
    finally:
        my_exec(mysql_url, "SET GLOBAL time_zone = SYSTEM")
    assert [c.index for c in checks if not c.ok] == [bad[0].index]


@pytest.mark.parametrize("kind", ["json", "decimal"])
def test_a_value_changed_in_the_target_is_found(kind: str, mysql_url: str, pg_target: str) -> None:
    ddl, value = {"json": ("j JSON", '{"a": 12.50}'), "decimal": ("j DECIMAL(12,2)", "12.50")}[kind]
    my_exec(mysql_url, f"CREATE TABLE d (id INT PRIMARY KEY, {ddl})")
    my_exec(mysql_url, "INSERT INTO d VALUES (%s, %s)", [(i, value) for i in range(1, 11)])
    create_target(mysql_url, pg_target, "d")
    copy_range(mysql_url, pg_target, "d", plan_ranges(mysql_url, "d")[0])
    assert all(c.ok for c in verify_ranges(mysql_url, pg_target, "d"))
    changed = '\'{"a": 12.51}\'' if kind == "json" else "12.51"
    pg_exec(pg_target, f"UPDATE d SET j = {changed} WHERE id = 7")
    assert [c.first_difference for c in verify_ranges(mysql_url, pg_target, "d") if not c.ok] == [[7]]


def test_every_postgresql_kind_reads_as_psycopg_reads_it(pg_items: str) -> None:
    """PostgreSQL through connectorx: integers, floats (float4 too), text, char(n) and booleans as connectorx
    reads them, numerics, dates, times, timestamps, uuid, bytea and json as their text decoded here, in a
    session set to UTC and ISO dates whatever the database's own settings; arrays are left to psycopg."""
    pg_exec(pg_items, "CREATE TABLE noarr AS SELECT id, name, label, price, big, flag, born, seen, at, doc, raw, blob, "
                      "uid, score, (id / 7.0)::real AS r, label::char(6) AS c, seen::time AS t, 'NaN'::numeric AS nan "
                      "FROM items; ALTER TABLE noarr ADD PRIMARY KEY (id); "
                      "INSERT INTO noarr (id, score, r, big, born, at, blob) VALUES (-1, '-0', '-0', -0.5, "
                      "'0001-01-01', '2000-02-29 23:59:59.999999+14', '\\x00ff')")
    pg_exec(pg_items, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET DateStyle = ''SQL, DMY''', current_database()); "
                      "EXECUTE format('ALTER DATABASE %%I SET TimeZone = ''Asia/Kolkata''', current_database()); END $$")
    fast, slow = _both(pg_items, "noarr")
    assert len(fast) == len(slow) > 1000
    nan = len(fast[0]) - 1  # Decimal('NaN') equals nothing, not even itself: compared by its text
    assert {str(r[nan]) for r in fast} == {str(r[nan]) for r in slow} == {"NaN", "None"}
    assert _typed([r[:nan] for r in fast]) == _typed([r[:nan] for r in slow])
    with connect(pg_items, "source") as db:
        assert not arrow_rows.readable(db, reflect(pg_items, "items"))  # text[], integer[]: psycopg


def test_postgresql_values_arrow_cannot_read_fall_back_and_json_texts_compare_as_values(pg_url: str,
                                                                                      mysql_url: str) -> None:
    """A timestamp of 'infinity' (no Python datetime) sends the range to psycopg; json documents spelled
    differently on both sides are compared as documents after their texts differ (the fast first pass)."""
    pg_exec(pg_url, "CREATE TABLE inf (id int PRIMARY KEY, t timestamp, j json); INSERT INTO inf VALUES "
                    "(1, 'infinity', '{\"a\": 1}'), (2, '2024-01-01', '[1, 2.50]')")
    my_exec(mysql_url, "CREATE TABLE inf (id INT PRIMARY KEY, t DATETIME(6), j JSON)")
    create_target(pg_url, mysql_url, "inf")
    my_exec(mysql_url, "INSERT INTO inf VALUES (2, '2024-01-01', '[1,   2.50]')")
    checks = verify_ranges(pg_url, mysql_url, "inf", key="id", ranges=[KeyRange(index=0, lower=[1])])
    assert [c.ok for c in checks] == [True]
    my_exec(mysql_url, "UPDATE inf SET j = '[1, 2.5]' WHERE id = 2")  # equal as numbers: 2.50 = 2.5
    assert verify_ranges(pg_url, mysql_url, "inf", ranges=[KeyRange(index=0, lower=[1])])[0].ok
    my_exec(mysql_url, "UPDATE inf SET j = '[1, 2.51]' WHERE id = 2")
    bad = verify_ranges(pg_url, mysql_url, "inf", ranges=[KeyRange(index=0, lower=[1])])[0]
    assert not bad.ok and bad.first_difference == [2]
    with pytest.raises(Exception), connect(pg_url, "source") as db:  # noqa: B017 - whatever the decoder raises
        list(arrow_rows.iter_rows(db, reflect(pg_url, "inf"), KeyRange(index=0)))
