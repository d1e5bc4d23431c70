"""db migration building blocks against real PostgreSQL 15 and real SQLite files (no mocks).

Data: one awkward table (nulls, unicode with tabs/newlines/backslashes, numeric beyond float precision,
timestamptz in a non-UTC zone, json and jsonb, bytea, uuid, text[] and int[], gaps and skewed keys),
migrated PG->PG, PG->SQLite and SQLite->PG in every mode, then verified range by range.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg.types.json import Json, Jsonb
from pydantic import SecretStr

from tasks.core.errors import ConfigError, ItemError
from tasks.db import (
    KeyRange,
    LedgerEntry,
    SourceSchema,
    copy_range,
    create_target,
    ensure_ledger,
    parse_table_name,
    plan_migration,
    plan_ranges,
    read_range,
    reflect,
    verify_range,
    verify_ranges,
)

PG_DDL = """
CREATE TABLE {name} (
  id bigint PRIMARY KEY,
  name text,
  label varchar(40),
  price numeric(12,4),
  big numeric(30,10),
  flag boolean,
  born date,
  seen timestamp,
  at timestamptz,
  doc jsonb,
  raw json,
  blob bytea,
  uid uuid,
  tags text[],
  nums integer[],
  score double precision
)"""

SQLITE_DDL = """
CREATE TABLE {name} (
  id INTEGER PRIMARY KEY, name TEXT, label VARCHAR(40), price DECIMAL_TEXT(12,4), big DECIMAL_TEXT(30,10),
  flag BOOLEAN, born DATE, seen TIMESTAMP, at TIMESTAMPTZ, doc JSONB, raw JSON, blob BLOB, uid UUID,
  tags TEXT_ARRAY, nums INTEGER_ARRAY, score DOUBLE PRECISION
)"""

COLUMNS = ["id", "name", "label", "price", "big", "flag", "born", "seen", "at", "doc", "raw", "blob", "uid",
           "tags", "nums", "score"]

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


def key_values() -> list[int]:
    """Dense, then gappy, then hugely skewed keys: ranges must still hold about chunk_rows rows each."""
    return list(range(1, 1201)) + list(range(5000, 5000 + 7 * 300, 7)) + [10**12 + i * 1000 for i in range(50)]


def row(i: int, key: int) -> tuple[Any, ...]:
    """Canonical Python values of one row; every 11th/5th/... row has NULLs."""
    return (
        key,
        None if i % 11 == 0 else f"naïve 名前 {i}\ttab\nnewline \\ back 'q\" 🍕",
        f"L{i}",
        None if i % 13 == 0 else (Decimal(i * (-1) ** i) / 7).quantize(Decimal("0.0001")),
        Decimal(f"{12345678901234567890 + i}.0123456789"),
        None if i % 5 == 0 else i % 2 == 0,
        dt.date(2000, 1, 1) + dt.timedelta(days=i),
        dt.datetime(2024, 1, 1, 12, 0, 0, 123456) + dt.timedelta(seconds=37 * i),
        None if i % 17 == 0 else dt.datetime(2024, 3, 1, 8, 30, 0, 5, tzinfo=IST) + dt.timedelta(minutes=i),
        None if i % 7 == 0 else {"i": i, "nested": {"ü": [1, 2.5, None, True]}, "s": 'x"y'},
        {"b": 1, "a": [i, "ß"]},
        None if i % 3 == 0 else bytes([i % 256, 0, 255, 10, 92]) * 3,
        uuid.uuid5(uuid.NAMESPACE_URL, f"row-{i}"),
        None if i % 9 == 0 else ["a", f"t{i}", None, "é\t"],
        [i, -i, 0],
        None if i % 19 == 0 else (i / 3 if i % 4 else 1e-300 * i),
    )


def rows() -> list[tuple[Any, ...]]:
    return [row(i, k) for i, k in enumerate(key_values())]


def create_pg(url: str, name: str = "items", data: list[tuple[Any, ...]] | None = None) -> None:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute(PG_DDL.format(name=name))
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {name} VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                [(*r[:9], None if r[9] is None else Jsonb(r[9]), Json(r[10]), *r[11:]) for r in (rows() if data is None else data)],
            )


def _sqlite_value(col: str, v: Any) -> Any:
    """How a hand-written SQLite database might store things (ISO 'T' timestamps, 1/0 booleans...)."""
    if v is None:
        return None
    if col in ("price", "big", "uid"):
        return str(v)
    if col in ("born", "seen", "at"):
        return v.isoformat()
    if col == "flag":
        return int(v)
    if col in ("doc", "raw", "tags", "nums"):
        return json.dumps(v, ensure_ascii=False)
    return v


def create_sqlite(url: str, name: str = "items", data: list[tuple[Any, ...]] | None = None) -> None:
    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(SQLITE_DDL.format(name=name))
        conn.executemany(
            f"INSERT INTO {name} VALUES ({', '.join(['?'] * len(COLUMNS))})",
            [tuple(_sqlite_value(c, v) for c, v in zip(COLUMNS, r, strict=True)) for r in (rows() if data is None else data)],
        )
    conn.close()


def pg_exec(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def sqlite_exec(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_exec(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run SQL on either dialect (placeholders: %s for PostgreSQL, ? for SQLite)."""
    return sqlite_exec(url, sql, params) if url.startswith("sqlite") else pg_exec(url, sql, params)


# ---------------------------------------------------------------- fixtures and helpers

CHUNK = 400


def migrate(src: str, tgt: str, *, mode: str = "upsert", table: str = "items", chunk_rows: int = CHUNK,
            **kw: Any) -> list[Any]:
    create_target(src, tgt, table, target_table=kw.get("target_table"), key=kw.get("key"))
    ranges = plan_ranges(src, table, key=kw.get("key"), chunk_rows=chunk_rows)
    return [copy_range(src, tgt, table, r, mode=mode, **kw) for r in ranges]  # type: ignore[arg-type]


def count(url: str, table: str = "items") -> int:
    return db_exec(url, f"SELECT count(*) FROM {table}")[0][0]


def all_ok(src: str, tgt: str, table: str = "items", **kw: Any) -> list[Any]:
    checks = verify_ranges(src, tgt, table, chunk_rows=CHUNK, **kw)
    bad = [c for c in checks if not c.ok]
    assert not bad, bad
    return checks


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize("side", ["pg", "sqlite"])
def test_plan_ranges_even_with_gaps_and_skew(side: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_items" if side == "pg" else "sqlite_items")
    ranges = plan_ranges(url, "items", chunk_rows=CHUNK)
    total = len(key_values())
    assert [r.index for r in ranges] == list(range(len(ranges)))
    assert len(ranges) == -(-total // CHUNK)
    assert ranges[0].lower is None and ranges[-1].upper is None
    assert all(a.upper == b.lower for a, b in itertools.pairwise(ranges))
    seen: list[int] = []
    for r in ranges:
        ids = read_range(url, "items", r)["id"].to_list()
        assert len(ids) == r.estimated_rows
        seen += ids
    assert seen == sorted(key_values())
    assert KeyRange.model_validate_json(ranges[1].model_dump_json()) == ranges[1]


def test_plan_exact_multiple_and_empty(pg_url: str) -> None:
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
    ranges = plan_ranges(pg_url, "t", chunk_rows=5)
    assert [(r.lower, r.upper, r.estimated_rows) for r in ranges] == [(None, [5], 5), ([5], None, 5)]
    pg_exec(pg_url, "CREATE TABLE e (id int PRIMARY KEY)")
    assert [(r.lower, r.upper, r.estimated_rows) for r in plan_ranges(pg_url, "e")] == [(None, None, 0)]


@pytest.mark.parametrize("side", ["pg", "sqlite"])
def test_composite_text_uuid_and_timestamptz_keys(side: str, pg_url: str, sqlite_url: str, pg_target: str) -> None:
    src = pg_url if side == "pg" else sqlite_url
    tgt = sqlite_url if side == "pg" else pg_target
    if side == "pg":
        pg_exec(src, "CREATE TABLE c (region text, n int, u uuid NOT NULL UNIQUE, ts timestamptz NOT NULL, v text, "
                     "PRIMARY KEY (region, n))")
    else:
        sqlite_exec(src, "CREATE TABLE c (region TEXT, n INTEGER, u UUID NOT NULL UNIQUE, ts TIMESTAMPTZ NOT NULL, "
                         "v TEXT, PRIMARY KEY (region, n))")
    regions = ["Zürich", "alpha", "Beta", "béta", "日本", "a b"]
    data = [(r, n, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{r}{n}")), f"2024-01-0{1 + n % 5} 0{n % 10}:00:00+00:00",
             f"v{n}") for r in regions for n in range(0, 50, 1 + regions.index(r))]
    db_exec(src, "INSERT INTO c VALUES " + ", ".join(["(%s, %s, %s, %s, %s)" if side == "pg" else "(?, ?, ?, ?, ?)"]
                                                    * len(data)), tuple(v for row in data for v in row))
    for key in (None, "u", "ts,region,n"):
        ranges = plan_ranges(src, "c", key=key, chunk_rows=17)
        assert sum(r.estimated_rows for r in ranges) == len(data)
        got = [tuple(x) for r in ranges for x in read_range(src, "c", r, key=key).select("region", "n").rows()]
        assert sorted(got) == sorted((r, n) for r, n, *_ in data)
    migrate(src, tgt, table="c", chunk_rows=17)
    assert count(tgt, "c") == len(data)
    all_ok(src, tgt, "c")


# ---------------------------------------------------------------- migrations in every direction and mode

DIRECTIONS = {"pg-pg": ("pg_items", "pg_target"), "pg-sqlite": ("pg_items", "sqlite_url"),
              "sqlite-pg": ("sqlite_items", "pg_target")}


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_migrate_verify_and_a_committed_range_is_never_written_twice(direction: str, mode: str,
                                                                    request: pytest.FixtureRequest) -> None:
    src, tgt = (request.getfixturevalue(n) for n in DIRECTIONS[direction])
    ledger = ensure_ledger(tgt, parse_table_name("items"))
    entries = {}

    def entry(index: int) -> LedgerEntry:
        return entries.setdefault(index, LedgerEntry(table=ledger, key=f"range-{index}", run_key="k",
                                                     target_table="items"))

    create_target(src, tgt, "items")
    ranges = plan_ranges(src, "items", chunk_rows=CHUNK)
    results = [copy_range(src, tgt, "items", r, mode=mode, ledger=entry(r.index)) for r in ranges]  # type: ignore[arg-type]
    assert sum(r.rows_written for r in results) == len(key_values()) and not any(r.recovered for r in results)
    if direction == "pg-pg":
        assert {r.path for r in results} == {"copy-binary"}
    assert count(tgt) == len(key_values())
    checks = all_ok(src, tgt)
    assert all(c.count_src == c.count_tgt > 0 for c in checks)
    assert count(tgt, ledger.sql("sqlite" if tgt.startswith("sqlite") else "postgresql")) == len(ranges)

    # the rerun of committed ranges (a crash after COMMIT, before the run recorded them): nothing is written
    again = [copy_range(src, tgt, "items", r, mode=mode, ledger=entry(r.index)) for r in ranges[:2]]  # type: ignore[arg-type]
    assert all(r.recovered and r.path == "ledger" for r in again)
    assert [r.rows_read for r in again] == [r.rows_read for r in results[:2]]
    assert count(tgt) == len(key_values())
    all_ok(src, tgt)
    if mode == "append":  # without a ledger, append really appends: the key refuses the duplicates, naming the range
        with pytest.raises(ItemError, match="range 0"):
            copy_range(src, tgt, "items", ranges[0], mode="append")
        assert count(tgt) == len(key_values())


def test_values_survive_exactly(pg_items: str, sqlite_url: str, pg_target: str) -> None:
    """PG -> SQLite -> PG keeps every value, including 30-digit numerics and non-UTC timestamptz."""
    migrate(pg_items, sqlite_url)
    big, at, price = sqlite_exec(sqlite_url, "SELECT big, at, price FROM items WHERE id = 2")[0]
    assert big == "12345678901234567891.0123456789"
    assert at == "2024-03-01 03:01:00.000005+00:00"
    assert price == "-0.1429"
    migrate(sqlite_url, pg_target)
    all_ok(pg_items, pg_target)
    query = "SELECT * FROM items ORDER BY id"
    assert pg_exec(pg_items, query) == pg_exec(pg_target, query)


def test_upsert_updates_and_replace_deletes(pg_items: str, sqlite_url: str) -> None:
    migrate(pg_items, sqlite_url, mode="upsert")
    pg_exec(pg_items, "UPDATE items SET name = 'changed', price = 1.5 WHERE id = 3")
    pg_exec(pg_items, "DELETE FROM items WHERE id = 4")
    first = plan_ranges(pg_items, "items", chunk_rows=CHUNK)[0]
    copy_range(pg_items, sqlite_url, "items", first, mode="upsert")
    assert sqlite_exec(sqlite_url, "SELECT name, price FROM items WHERE id = 3") == [("changed", "1.5000")]
    assert sqlite_exec(sqlite_url, "SELECT count(*) FROM items WHERE id = 4") == [(1,)]  # upsert keeps it
    copy_range(pg_items, sqlite_url, "items", first, mode="replace")
    assert sqlite_exec(sqlite_url, "SELECT count(*) FROM items WHERE id = 4") == [(0,)]
    all_ok(pg_items, sqlite_url)


def test_copy_text_format_and_rows_path_match_binary(pg_items: str, pg_cluster: Any) -> None:
    rng = KeyRange(index=0)
    for fmt in ("binary", "text", "rows"):
        tgt = pg_cluster.url(pg_cluster.create_database())
        create_target(pg_items, tgt, "items")
        schema = SourceSchema.model_validate_json(reflect(pg_items, "items").model_dump_json())
        res = copy_range(pg_items, tgt, "items", rng, mode="append", copy_format=fmt,  # type: ignore[arg-type]
                         source_schema=schema)
        assert res.rows_written == len(key_values())
        assert res.path == ("rows" if fmt == "rows" else f"copy-{fmt}")
        all_ok(pg_items, tgt)


def test_query_source_and_transform(pg_items: str, sqlite_url: str) -> None:
    query = "SELECT id, name, price, doc FROM items WHERE id < 5000"

    def shout(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(pl.col("name").str.to_uppercase())

    create_target(pg_items, sqlite_url, query=query, key="id", target_table="small")
    for r in plan_ranges(pg_items, query=query, key="id", chunk_rows=CHUNK):
        copy_range(pg_items, sqlite_url, None, r, query=query, key="id", target_table="small", transform=shout)
    assert count(sqlite_url, "small") == 1200
    name, doc = sqlite_exec(sqlite_url, "SELECT name, doc FROM small WHERE id = 2")[0]
    assert name == "NAÏVE 名前 1\tTAB\nNEWLINE \\ BACK 'Q\" 🍕"
    assert json.loads(doc)["nested"] == {"ü": [1, 2.5, None, True]}
    checks = verify_ranges(pg_items, sqlite_url, query=query, key="id", target_table="small", chunk_rows=CHUNK)
    assert all(c.count_src == c.count_tgt for c in checks)
    assert not all(c.ok for c in checks)  # names were upper-cased on purpose


def test_verify_catches_changes_behind_its_back(pg_items: str, sqlite_url: str, pg_target: str) -> None:
    for tgt in (sqlite_url, pg_target):
        migrate(pg_items, tgt)
        ph = "?" if tgt.startswith("sqlite") else "%s"
        db_exec(tgt, f"UPDATE items SET big = big + 0.0000000001 WHERE id = {ph}", (5007,))
        db_exec(tgt, f"DELETE FROM items WHERE id = {ph}", (10**12 + 3000,))
        checks = {c.index: c for c in verify_ranges(pg_items, tgt, "items", chunk_rows=CHUNK)}
        assert [i for i, c in checks.items() if not c.ok] == [3]
        bad = checks[3]
        assert bad.count_src == bad.count_tgt + 1 and bad.checksum_src != bad.checksum_tgt
        assert bad.first_difference == [5007]
    pg_exec(pg_target, "UPDATE items SET at = at + interval '1 microsecond' WHERE id = 7")
    check = verify_range(pg_items, pg_target, "items", plan_ranges(pg_items, "items", chunk_rows=CHUNK)[0])
    assert not check.ok and check.first_difference == [7] and check.count_src == check.count_tgt
    assert {c.method for c in checks.values() if c.ok} == {"binary"}  # PostgreSQL both sides: equal COPY images


def test_postgresql_ranges_with_equal_values_in_other_bytes_are_equal(pg_url: str, pg_target: str) -> None:
    """A numeric's scale (1.0 / 1.00), a float's zero sign and json spacing differ in the binary COPY image but
    not in value: the byte comparison passes them to the servers' canonical aggregates, which find them equal."""
    for url in (pg_url, pg_target):
        pg_exec(url, "CREATE TABLE eq (id int PRIMARY KEY, n numeric, f float8, j json)")
    pg_exec(pg_url, "INSERT INTO eq VALUES (1, 1.0, 0.0, '{\"a\": 1}'), (2, 2, 1.5, '[]')")
    pg_exec(pg_target, "INSERT INTO eq VALUES (1, 1.00, -0.0, '{\"a\":1}'), (2, 2, 1.5, '[]')")
    check = verify_range(pg_url, pg_target, "eq", plan_ranges(pg_url, "eq")[0])
    assert check.ok and check.method == "sql"
    pg_exec(pg_target, "UPDATE eq SET n = 1.0, f = 0.0, j = '{\"a\": 1}' WHERE id = 1")
    assert verify_range(pg_url, pg_target, "eq", plan_ranges(pg_url, "eq")[0]).method == "binary"


def test_secret_urls_and_dry_run_writes_nothing(pg_items: str, sqlite_url: str, pg_cluster: Any) -> None:
    plan = plan_migration(SecretStr(pg_items), SecretStr(sqlite_url), "items", chunk_rows=CHUNK, mode="replace")
    assert plan.estimated_rows == len(key_values()) and len(plan.ranges) == 4
    assert plan.ddl is not None and plan.ddl.startswith('CREATE TABLE "items"') and "DECIMAL_TEXT(30,10)" in plan.ddl
    assert pg_cluster.password not in plan.model_dump_json() + plan.describe()
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    migrate(pg_items, sqlite_url)
    assert plan_migration(pg_items, sqlite_url, "items").ddl is None


def test_existing_incompatible_target_lists_columns(pg_items: str, pg_target: str) -> None:
    pg_exec(pg_target, "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(6,2), uid text, "
                       "born timestamp)")
    with pytest.raises(ConfigError) as err:
        create_target(pg_items, pg_target, "items")
    msg = str(err.value)
    for part in ("id: bigint -> integer (narrower)", "price: numeric(12,4) -> numeric(6,2)", "big: missing in target",
                 "born: date -> timestamp"):
        assert part in msg
    assert "uid" not in msg  # uuid fits in text


def test_conversion_failure_names_key_and_column(pg_items: str, pg_target: str, sqlite_items: str) -> None:
    pg_exec(pg_target, "CREATE TABLE items (id bigint PRIMARY KEY, label varchar(3))")
    rng = KeyRange(index=0)
    with pytest.raises(ItemError) as err:
        copy_range(pg_items, pg_target, None, rng, query="SELECT id, label FROM items", key="id",
                   target_table="items", mode="append")
    assert "{'id': 101}" in str(err.value) and "'label'" in str(err.value)
    assert count(pg_target) == 0

    sqlite_exec(sqlite_items, "UPDATE items SET price = 'n/a' WHERE id = 42")
    create_target(sqlite_items, pg_target, "items", target_table="items_b")
    with pytest.raises(ItemError) as err2:
        copy_range(sqlite_items, pg_target, "items", rng, target_table="items_b")
    assert "{'id': 42}" in str(err2.value) and "'price'" in str(err2.value) and "'n/a'" in str(err2.value)
    assert count(pg_target, "items_b") == 0
