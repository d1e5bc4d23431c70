"""MySQL/MariaDB rows through connectorx (tasks/db/arrow_rows.py) are the rows PyMySQL's reader yields, value
for value and type for type, on every MySQL type the suite uses; verify falls back to PyMySQL where the
Arrow read cannot be exact, and still finds differences."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.db import arrow_rows, copy_range, create_target, plan_ranges, reflect, verify_ranges
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
