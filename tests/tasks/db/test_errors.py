"""Bad input to the db building blocks: every error says what was wrong and what to do, and no message
ever contains a password. Real PostgreSQL and SQLite; type-map checks need no database."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from tasks.core.errors import ConfigError, SourceError
from tasks.db import copy_range, create_target, parse_db_url, parse_table_name, plan_ranges, reflect
from tasks.db.conn import parse_key, quote, validate_identifier, validate_query
from tasks.db.schema import KeyRange
from tasks.db.typemap import ColumnInfo, column_from_sqlite, pg_type, sqlite_type
from tasks.db.values import JsonText, canonical_row, coerce
from tests.tasks.db.test_migration import create_pg, db_exec, pg_exec, sqlite_exec

BAD_NAMES = ["", "a b", "x;drop table t", 'q"uote', "a.b.c", "1abc", "t--", "a" * 64, "s.", ".t", '"open',
             '"a"b', '"100%"', '"' + "é" * 40 + '"']


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_table_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"not a plain name|empty|unclosed|expected|3 parts|'%'|longer than"):
        parse_table_name(name)


def test_good_names_and_quoting() -> None:
    t = parse_table_name("sales.Orders_2024")
    assert (t.schema_name, t.name, str(t)) == ("sales", "Orders_2024", "sales.Orders_2024")
    assert t.sql("postgresql") == '"sales"."Orders_2024"'
    with pytest.raises(ConfigError, match="not a plain name"):  # in name syntax, only quoted names hold spaces
        parse_key("id); DROP TABLE x; --")
    # as one exact name it is just an odd column name, quoted by the dialect (never spliced into SQL)
    assert validate_identifier("id); DROP TABLE x; --") == "id); DROP TABLE x; --"
    assert quote("id); DROP TABLE x; --", "postgresql") == '"id); DROP TABLE x; --"'
    with pytest.raises(ConfigError, match="single SELECT"):
        validate_query("SELECT 1; DELETE FROM t")
    with pytest.raises(ConfigError, match="single SELECT"):
        validate_query("DELETE FROM t")
    assert validate_query(" select 1 ; ") == "select 1"


def test_urls() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        parse_db_url("oracle://u:pw@h/db")
    assert parse_db_url("mysql://u:pw@h/db").describe() == "MySQL/MariaDB at h:3306 (database 'db', user 'u')"
    with pytest.raises(ConfigError, match="file path"):
        parse_db_url("sqlite://")
    with pytest.raises(ConfigError, match="could not be parsed") as err:
        parse_db_url("not a url with hunter22pw")
    ep = parse_db_url(SecretStr("postgresql+psycopg://u:hunter22pw@db.example:6543/app"))
    assert ep.describe() == "PostgreSQL at db.example:6543 (database 'app', user 'u')"
    assert "hunter22pw" not in str(err.value)


def test_unreachable_database_names_host_and_port_not_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://app:Very-Secret-99@127.0.0.1:{port}/appdb"
    with pytest.raises(SourceError) as err:
        reflect(url, "t")
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "appdb" in msg and "Very-Secret-99" not in msg


def test_wrong_password_is_redacted(pg_cluster: Any) -> None:
    url = f"postgresql+psycopg://{pg_cluster.user}:Wrong-Pw-123@127.0.0.1:{pg_cluster.port}/postgres"
    with pytest.raises(SourceError) as err:
        plan_ranges(url, "t")
    msg = str(err.value)
    assert f"127.0.0.1:{pg_cluster.port}" in msg and "password authentication failed" in msg
    assert "Wrong-Pw-123" not in msg and pg_cluster.password not in msg


def test_missing_sqlite_file(tmp_path: Any) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        reflect(f"sqlite:///{tmp_path / 'nope.db'}", "t")


@pytest.mark.parametrize("side", ["pg", "sqlite"])
def test_unknown_table_column_and_key_problems(side: str, pg_url: str, sqlite_url: str) -> None:
    url = pg_url if side == "pg" else sqlite_url
    db_exec(url, "CREATE TABLE t (id integer PRIMARY KEY, grp integer, v text, j " +
            ("jsonb" if side == "pg" else "JSON") + ")")
    db_exec(url, "CREATE TABLE nopk (a integer, b text)")
    db_exec(url, "INSERT INTO t VALUES (1, 1, 'a', NULL), (2, 1, 'b', NULL), (3, 2, NULL, NULL)")
    db_exec(url, "INSERT INTO nopk VALUES (1, 'x'), (NULL, 'y')")
    with pytest.raises(SourceError, match=r"table missing not found .*tables there: .*t"):
        reflect(url, "missing")
    with pytest.raises(ConfigError, match=r"column 'nope' not in table t; columns are \['id', 'grp', 'v', 'j'\]"):
        plan_ranges(url, "t", key="nope")
    with pytest.raises(ConfigError, match=r"not unique: \[1\] appears 2 times"):
        plan_ranges(url, "t", key="grp")
    with pytest.raises(ConfigError, match="NULL in 1 rows"):
        plan_ranges(url, "t", key="v")
    keyless = plan_ranges(url, "nopk")  # no key: physical ranges (tests/flows/test_db_migrate_nopk.py)
    assert [(r.scan, r.estimated_rows) for r in keyless] == [("ctid" if side == "pg" else "rowid", 2)]
    with pytest.raises(ConfigError, match=r"table nopk has no primary key, so mode='upsert'.*mode='append'"):
        copy_range(url, url, "nopk", keyless[0], target_table="other", mode="upsert")
    with pytest.raises(ConfigError, match="ranges need an integer"):
        plan_ranges(url, "t", key="j")
    with pytest.raises(ConfigError, match="no primary key"):
        plan_ranges(url, query="SELECT id, v FROM t")
    with pytest.raises(SourceError, match="source query failed"):
        plan_ranges(url, query="SELECT nope FROM t", key="nope")
    assert [r.estimated_rows for r in plan_ranges(url, query="SELECT id, v FROM t WHERE v LIKE '%'",
                                                  key="id", chunk_rows=1)] == [1, 1]


def test_upsert_without_unique_key_in_target(pg_url: str, pg_cluster: Any, sqlite_url: str) -> None:
    create_pg(pg_url, data=[])
    pg_exec(pg_url, "INSERT INTO items (id, name) VALUES (1, 'x')")
    tgt = pg_cluster.url(pg_cluster.create_database())
    create_target(pg_url, tgt, "items")
    pg_exec(tgt, "ALTER TABLE items DROP CONSTRAINT items_pkey")
    for url in (tgt, sqlite_url):
        if url == sqlite_url:
            sqlite_exec(sqlite_url, "CREATE TABLE items (" + ", ".join(
                f"{c} {sqlite_type(col)}" for c, col in ((c.name, c) for c in reflect(pg_url, "items").columns)) + ")")
        with pytest.raises(ConfigError, match="upsert needs a primary key or unique index"):
            copy_range(pg_url, url, "items", KeyRange(index=0), mode="upsert")
    with pytest.raises(ConfigError, match="mode 'merge' is not one of"):
        copy_range(pg_url, tgt, "items", KeyRange(index=0), mode="merge")  # type: ignore[arg-type]


# ---------------------------------------------------------------- type map and canonical values (no database)


@pytest.mark.parametrize(("declared", "kind", "extra"), [
    ("INTEGER", "bigint", {}), ("DECIMAL_TEXT(12,4)", "numeric", {"precision": 12, "scale": 4}),
    ("NUMERIC", "numeric", {}), ("VARCHAR(40)", "varchar", {"length": 40}), ("TEXT_ARRAY", "array", {"element": "text"}),
    ("TIMESTAMPTZ", "timestamptz", {}), ("DATETIME", "timestamp", {}), ("BLOB", "bytes", {}), ("", "text", {}),
    ("DOUBLE PRECISION", "double", {}), ("BOOLEAN", "boolean", {}), ("UUID", "uuid", {}), ("JSONB", "jsonb", {}),
])
def test_sqlite_declared_types(declared: str, kind: str, extra: dict[str, Any]) -> None:
    col = column_from_sqlite("c", declared, notnull=False)
    assert col.kind == kind
    for k, v in extra.items():
        assert getattr(col, k) == v
    if declared and declared != "NUMERIC":
        again = column_from_sqlite("c", sqlite_type(col), notnull=False)
        assert (again.kind, again.precision, again.element) == (col.kind, col.precision, col.element)


def test_pg_types_and_canonical_equality() -> None:
    assert pg_type(ColumnInfo(name="n", kind="numeric", precision=30, scale=10)) == "numeric(30,10)"
    assert pg_type(ColumnInfo(name="a", kind="array", element="integer")) == "integer[]"
    ts = ColumnInfo(name="t", kind="timestamptz")
    pg_side = (Decimal("1.5000"), dt.datetime(2024, 1, 1, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
               JsonText('{"b": 1, "a": [1.50]}'), b"\x00\xff", uuid.UUID(int=1), [1, None])
    sqlite_side = (coerce(ColumnInfo(name="n", kind="numeric"), "1.5"), coerce(ts, "2024-01-01 00:00:00+00:00"),
                   coerce(ColumnInfo(name="j", kind="json"), '{"a":[1.5],"b":1}'), b"\x00\xff",
                   coerce(ColumnInfo(name="u", kind="uuid"), "00000000-0000-0000-0000-000000000001"),
                   coerce(ColumnInfo(name="a", kind="array", element="integer"), "[1, null]"))
    assert canonical_row(pg_side) == canonical_row(sqlite_side)
    big = Decimal("12345678901234567890123.0123456789")
    assert canonical_row((big,)) != canonical_row((big + Decimal("1e-10"),))
    with pytest.raises(ValueError, match="not a whole number"):
        coerce(ColumnInfo(name="i", kind="integer"), 1.5)
