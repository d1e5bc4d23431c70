"""Tables without a primary key, the building blocks: physical ranges cover every row once, the DDL invents
no key, and the whole-table checksum is a multiset's (order-free, duplicates counted)."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.core import ConfigError
from tasks.db import KeyRange, copy_range, create_target, plan_ranges, reflect
from tasks.db.conn import connect
from tasks.db.schema import create_table_sql, range_predicate
from tasks.db.verify import verify_range, verify_ranges
from tests.tasks.db.test_migration import db_exec, pg_exec

ROWS = 5000


def fill(url: str, table: str = "log", order: str = "") -> None:
    if url.startswith("sqlite"):
        db_exec(url, f"CREATE TABLE {table} (n INTEGER, msg TEXT)")
        db_exec(url, f"INSERT INTO {table} WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g "
                     f"WHERE i < {ROWS}) SELECT i % 100, 'message ' || (i % 100) FROM g {order}")
    else:
        pg_exec(url, f"CREATE TABLE {table} (n integer, msg text)")
        pg_exec(url, f"INSERT INTO {table} SELECT i %% 100, 'message ' || (i %% 100) FROM generate_series(1, {ROWS}) "
                     f"AS i {order}")


def range_counts(url: str, ranges: list[KeyRange]) -> list[int]:
    with connect(url, "source") as db:
        out = []
        for r in ranges:
            where, params = range_predicate(db, [], r)
            out.append(int(db.all(f"SELECT count(*) FROM log WHERE {where}", params)[0][0]))
        if db.dialect == "postgresql":
            db.raw.rollback()
    return out


@pytest.mark.parametrize(("side", "scan"), [("pg", "ctid"), ("sqlite", "rowid")])
def test_physical_ranges_cover_every_row_once(side: str, scan: str, pg_url: str, sqlite_url: str) -> None:
    url = pg_url if side == "pg" else sqlite_url
    fill(url)
    ranges = plan_ranges(url, "log", chunk_rows=700)
    assert {r.scan for r in ranges} == {scan} and len(ranges) >= 5
    assert ranges[0].lower is None and ranges[-1].upper is None  # open at both ends: appended rows are covered
    counts = range_counts(url, ranges)
    assert sum(counts) == ROWS and all(counts) and max(counts) < 2 * 700
    assert abs(sum(r.estimated_rows for r in ranges) - ROWS) <= len(ranges)
    db_exec(url, "INSERT INTO log VALUES (1, 'late')")
    assert sum(range_counts(url, ranges)) == ROWS + 1


def test_create_table_invents_no_key(pg_url: str) -> None:
    fill(pg_url)
    schema = reflect(pg_url, "log")
    assert schema.key == [] and schema.primary_key == []
    for dialect in ("postgresql", "sqlite", "mysql"):
        assert "PRIMARY KEY" not in create_table_sql(schema, dialect, "log")  # type: ignore[arg-type]
    assert "PRIMARY KEY" in create_table_sql(reflect(pg_url, "log", key="n"), "postgresql", "log")


def test_whole_table_checksum_is_order_free_and_counts_duplicates(pg_url: str, pg_cluster: Any,
                                                                   sqlite_url: str) -> None:
    fill(pg_url)
    other = pg_cluster.url(pg_cluster.create_database())
    fill(other, order="ORDER BY random()")  # the same multiset, stored in another order
    for tgt in (other, sqlite_url):
        if tgt == sqlite_url:
            fill(sqlite_url, order="ORDER BY random()")
        (check,) = verify_ranges(pg_url, tgt, "log", chunk_rows=700)  # one whole-table check, not 8 ranges
        assert check.ok and check.count_src == check.count_tgt == ROWS and check.first_difference is None
        ph = "?" if tgt.startswith("sqlite") else "%s"
        # every row is there 50 times: turn the 50 copies of one row into copies of another (counts equal;
        # a checksum that XORs row digests would cancel the even copies and see no difference)
        db_exec(tgt, f"UPDATE log SET n = 1, msg = {ph} WHERE n = 2", ("message 1",))
        bad = verify_range(pg_url, tgt, "log", KeyRange(index=0, scan="all"))
        assert bad.count_src == bad.count_tgt == ROWS and not bad.ok
    with pytest.raises(ConfigError, match="no key: verify compares the whole table"):
        verify_range(pg_url, other, "log", plan_ranges(pg_url, "log", chunk_rows=700)[1])


def test_a_column_named_rowid_makes_one_range(sqlite_url: str) -> None:
    db_exec(sqlite_url, "CREATE TABLE shadow (RowId TEXT, v INTEGER)")  # the column hides SQLite's rowid
    db_exec(sqlite_url, "INSERT INTO shadow VALUES ('a', 1), ('a', 1), ('b', 2)")
    assert [(r.scan, r.estimated_rows) for r in plan_ranges(sqlite_url, "shadow")] == [("all", 3)]


def test_a_partitioned_table_is_cut_per_leaf_partition(pg_url: str, pg_target: str) -> None:
    """A partitioned table has no heap of its own: each leaf partition (an empty one too, and one of a
    sub-partitioned branch) gets its own page ranges, read from the partition; every row once."""
    pg_exec(pg_url, 'CREATE TABLE events (day date, n integer, msg text) PARTITION BY RANGE (day)')
    pg_exec(pg_url, "CREATE TABLE events_jan PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')")
    pg_exec(pg_url, "CREATE TABLE \"Events Feb\" PARTITION OF events FOR VALUES FROM ('2024-02-01') TO ('2024-03-01') "
                    "PARTITION BY LIST (n)")
    pg_exec(pg_url, 'CREATE TABLE feb_low PARTITION OF "Events Feb" FOR VALUES IN (0, 1, 2)')
    pg_exec(pg_url, 'CREATE TABLE feb_rest PARTITION OF "Events Feb" DEFAULT')
    pg_exec(pg_url, "CREATE TABLE events_empty PARTITION OF events FOR VALUES FROM ('2024-03-01') TO ('2024-04-01')")
    pg_exec(pg_url, "INSERT INTO events SELECT date '2024-01-01' + (i %% 59), i %% 7, 'm' || i "
                    f"FROM generate_series(1, {ROWS}) AS i")
    ranges = plan_ranges(pg_url, "events", chunk_rows=700)
    parts = [r.part for r in ranges]
    assert {r.scan for r in ranges} == {"ctid"} and [r.index for r in ranges] == list(range(len(ranges)))
    assert set(parts) == {"events_jan", "feb_low", "feb_rest", "events_empty"} and len(ranges) >= 7
    assert "partition events_jan: pages [0, " in ranges[parts.index("events_jan")].describe()
    with connect(pg_url, "source") as db:
        counts = []
        for r in ranges:
            where, params = range_predicate(db, [], r)
            counts.append(int(db.all(f"SELECT count(*) FROM {r.part} WHERE {where}", params)[0][0]))
        db.raw.rollback()
    assert sum(counts) == ROWS
    create_target(pg_url, pg_target, "events")
    assert sum(copy_range(pg_url, pg_target, "events", r, mode="append").rows_written for r in ranges) == ROWS
    (check,) = verify_ranges(pg_url, pg_target, "events", chunk_rows=700)
    assert check.ok and check.count_tgt == ROWS
