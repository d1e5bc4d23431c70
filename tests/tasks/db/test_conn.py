"""Names as users have them (ORMs create "Odd Items" with "Order ID"): quoted, mixed case, spaces, unicode,
reserved words, through db_migrate PG -> SQLite -> PG with verify, and the name syntax itself."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from flows.db_migrate import db_migrate
from tasks.core.errors import ConfigError
from tasks.db.conn import parse_key, parse_table_name, quote
from tests.tasks.db.test_migration import pg_exec

ODD_DDL = '''CREATE TABLE public."Odd Items" ("Order ID" bigint PRIMARY KEY, "Customer Name" text, "select" integer,
                                            "ñandú" text, "MixedCase" numeric(8, 2), "quote""d" text)'''


@pytest.mark.parametrize(("text", "schema", "name"), [
    ('public."Odd Items"', "public", "Odd Items"), ('"Odd Items"', None, "Odd Items"), ("Orders", None, "Orders"),
    ('"sales.eu"."T"', "sales.eu", "T"), ('"quote""d"', None, 'quote"d'), ("ñandú", None, "ñandú"),
    ('"select"', None, "select"),
])
def test_table_name_syntax(text: str, schema: str | None, name: str) -> None:
    t = parse_table_name(text)
    assert (t.schema_name, t.name) == (schema, name)
    assert parse_table_name(t.sql("postgresql")) == t == parse_table_name(str(t))  # both forms parse back


def test_key_syntax() -> None:
    assert parse_key('"Order ID", b') == ["Order ID", "b"]
    assert parse_key(["Order ID", "b"]) == ["Order ID", "b"]
    with pytest.raises(ConfigError, match="not a plain name"):
        parse_key("Order ID")
    with pytest.raises(ConfigError, match="unclosed"):
        parse_key('"Order ID')


@pytest.fixture
def odd_table(pg_target: str) -> str:
    pg_exec(pg_target, ODD_DDL)
    pg_exec(pg_target, '''INSERT INTO public."Odd Items" SELECT i, 'Customer ' || i, i * 2, 'ñ' || i, i / 4.0,
                          'q"' || i FROM generate_series(1, 250) AS i''')
    return pg_target


def rows(url: str) -> list[tuple[Any, ...]]:
    return pg_exec(url, 'SELECT * FROM public."Odd Items" ORDER BY "Order ID"')


def test_odd_names_migrate_pg_to_sqlite_and_back_verified(odd_table: str, sqlite_url: str, pg_cluster: Any) -> None:
    out = db_migrate(odd_table, sqlite_url, 'public."Odd Items"', target_table='"Odd Items"', chunk_rows=60)
    assert out.ok and out.succeeded == 250 and out.ranges_matching == out.ranges_total, out.render_text()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute('PRAGMA table_info("Odd Items")')]
    assert cols == ["Order ID", "Customer Name", "select", "ñandú", "MixedCase", 'quote"d']
    back = str(pg_cluster.url(pg_cluster.create_database()))
    again = db_migrate(sqlite_url, back, '"Odd Items"', target_table='public."Odd Items"', key='"Order ID"',
                       chunk_rows=60, mode="upsert")
    assert again.ok and again.succeeded == 250 and again.ranges_matching == again.ranges_total, again.render_text()
    assert rows(back) == rows(odd_table)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite", "mysql"])
def test_quote_matches_sqlalchemy_quote_identifier(dialect: str) -> None:
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    preparer = {"postgresql": postgresql, "sqlite": sqlite, "mysql": mysql}[dialect].dialect().identifier_preparer
    names = ["id", "Order ID", 'we"ird', "back`tick", "select", "Ünïcødé 名前", " lead", "a.b", "x''y", "\\", "-1"]
    for name in names:
        assert quote(name, dialect) == preparer.quote_identifier(name), name  # type: ignore[arg-type]
