"""JSON documents travel between databases as the text their database stored (tasks/db/values.py JsonText).

User data is exact: a number beyond a double's precision keeps every digit, ``12.50`` stays ``12.50``, a
PostgreSQL ``json`` column keeps spacing, key order and non-ASCII characters byte for byte. Each test copies
real tables between real servers (SQLite files, a throwaway PostgreSQL cluster, MariaDB) on every path that
reads or writes JSON (the row path, the columnar path, PostgreSQL's binary COPY), then verifies.
"""

from __future__ import annotations

import math
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.errors import ItemError
from tasks.db import copy_range, create_target, plan_ranges, verify_ranges
from tasks.db.typemap import ColumnInfo
from tasks.db.values import (
    JsonText,
    canonical_json,
    canonical_row,
    coerce,
    parse_pg_array_literal,
    pg_array_literal,
    pg_encoder,
    row_canonicalizer,
    sqlite_affinity_value,
    sqlite_bound,
    sqlite_decoder,
    sqlite_encoder,
    unstorable,
)
from tests.tasks.db.test_migration import pg_exec, sqlite_exec
from tests.tasks.db.test_mysql import my_exec

# documents a parse + re-serialize would alter (digits, scale, spacing, key order, escapes, non-ASCII)
DOCS = [
    '{"n": 12345678901234567890.12345678901234567890, "p": 12.50, "i": 123456789012345678901234567890}',
    '{ "b":1,"a" : [1.10, "ü🍕", null, true, 1E+2] }',
    '"just a string"',
    '{"esc": "\\u00e9\\n\\"", "z": 0.000000000000000000000000000001}',
    "[]",
    "[-0.0, 1.0e-7]",
]
JSON = ColumnInfo(name="j", kind="json")


def test_coerce_keeps_json_text_and_checks_it() -> None:
    for doc in DOCS:
        out = coerce(JSON, doc)
        assert type(out) is JsonText and out == doc
    assert coerce(JSON, {"a": [1, "ü"]}) == '{"a":[1,"ü"]}'  # a Python value is serialized
    assert sqlite_decoder(JSON)(b'{"a": 1.50}') == '{"a": 1.50}'
    with pytest.raises(ValueError, match="not valid JSON"):
        coerce(JSON, "{'a': 1}")


def test_canonical_json_compares_documents_by_value() -> None:
    same = ['{"a": 12.50, "b": [1, "x"]}', '{"b":[1.0,"x"],"a":1.25E1}', '{"b": [1e0, "\\u0078"], "a": 12.5}']
    assert len({canonical_json(d) for d in same}) == 1
    differ = ['{"a": "12.5"}', '{"a": 12.5}', '{"a": 12.500000000000000000001}', '{"a": [12.5]}', '{"a": null}']
    assert len({canonical_json(d) for d in differ}) == len(differ)  # a number never equals a string
    big = canonical_json("12345678901234567890.12345678901234567890")
    assert big == "12345678901234567890.1234567890123456789"  # every digit, trailing zero dropped
    # integers only (one C call) and with fractions (the exact walk) agree
    assert canonical_json('{"a": 100, "b": [true, null]}') == canonical_json('{"b":[true,null],"a":1E2}')
    assert canonical_json('{"a": 1, "b": 1.0}') == canonical_json('{"b": 1, "a": 1.00}') == '{"a":1,"b":1}'
    assert canonical_json("[NaN, 1.5]") == "[NaN,1.5]" and canonical_json("[NaN]") == "[NaN]"
    canon = row_canonicalizer([ColumnInfo(name="id", kind="integer"), JSON])
    assert canon((1, JsonText('{"b": 2, "a": 1}'))) == canon((1, JsonText('{"a":1,"b":2}')))


def test_row_canonicalizer_matches_canonical_row_for_every_kind() -> None:
    import datetime as dt
    import uuid
    from decimal import Decimal

    cols = [ColumnInfo(name=k, kind=k) for k in ("bigint", "numeric", "double", "timestamp", "timestamptz", "json",
                                                 "text", "boolean", "date", "bytes", "uuid")]
    row = (7, Decimal("1.500"), 0.1, dt.datetime(2024, 1, 1, 1, 2, 3), dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
           JsonText('{"x": [1.50, "y"]}'), "t", True, dt.date(2024, 2, 29), b"\x00", uuid.UUID(int=5))
    assert row_canonicalizer(cols)(row) == canonical_row(row)
    assert row_canonicalizer(cols)((None,) * len(cols)) == canonical_row((None,) * len(cols))
    assert row_canonicalizer(cols[1:2])((3,)) == canonical_row((3,))  # an unexpected type: the generic rule


def test_pg_encoder_sends_the_documents_own_text() -> None:
    from psycopg.types.json import Json

    enc = pg_encoder(ColumnInfo(name="j", kind="jsonb"))
    assert enc is not None and enc(None) is None
    wrapped = enc(JsonText(DOCS[0]))
    assert isinstance(wrapped, Json) and wrapped.dumps is not None and wrapped.dumps(wrapped.obj) == DOCS[0]
    items = pg_encoder(ColumnInfo(name="a", kind="array", element="json"))
    assert items is not None and [w.dumps(w.obj) for w in items([JsonText("1.50"), JsonText("{}")])] == ["1.50", "{}"]


def _sqlite_docs(tmp_path: Path, name: str = "docs") -> str:
    url = f"sqlite:///{tmp_path / f'{name}.sqlite3'}"
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    with conn:
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, j JSON, b JSONB)")
        conn.executemany("INSERT INTO docs VALUES (?, ?, ?)", [(i, d, d) for i, d in enumerate(DOCS)] + [(99, None, None)])
    conn.close()
    return url


def _copy(src: str, tgt: str, table: str, *, copy_format: str = "auto", chunk_rows: int = 2) -> set[str]:
    create_target(src, tgt, table)
    paths = {copy_range(src, tgt, table, rng, copy_format=copy_format).path  # type: ignore[arg-type]
             for rng in plan_ranges(src, table, chunk_rows=chunk_rows)}
    checks = verify_ranges(src, tgt, table, chunk_rows=chunk_rows)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    return paths


def _as_jsonb(pg_url: str, doc: str) -> str:
    return pg_exec(pg_url, "SELECT %s::jsonb::text", (doc,))[0][0]


def test_sqlite_to_postgresql_and_back_keeps_every_byte(tmp_path: Path, pg_cluster: Any) -> None:
    src = _sqlite_docs(tmp_path)
    pg = pg_cluster.url(pg_cluster.create_database())
    _copy(src, pg, "docs")
    got = pg_exec(pg, "SELECT j::text, b::text, pg_typeof(j)::text, pg_typeof(b)::text FROM docs ORDER BY id")
    assert got[0][2:] == ("json", "jsonb")
    assert [r[0] for r in got] == [*DOCS, None]  # json: the text as written
    assert [r[1] for r in got] == [*(_as_jsonb(pg, d) for d in DOCS), None]  # jsonb: PostgreSQL's own parse
    assert "12345678901234567890.12345678901234567890" in got[0][1] and '"p": 12.50' in got[0][1]

    back = f"sqlite:///{tmp_path / 'back.sqlite3'}"
    _copy(pg, back, "docs")
    assert sqlite_exec(back, "SELECT j FROM docs ORDER BY id") == [(d,) for d in [*DOCS, None]]

    again = pg_cluster.url(pg_cluster.create_database())  # PostgreSQL -> PostgreSQL through Python rows
    _copy(pg, again, "docs", copy_format="rows")
    assert pg_exec(again, "SELECT j::text, b::text FROM docs ORDER BY id") == [(r[0], r[1]) for r in got]


@pytest.mark.parametrize("copy_format", ["rows", "auto"])
def test_mariadb_json_to_postgresql_keeps_every_digit(copy_format: str, mysql_url: str, pg_cluster: Any) -> None:
    my_exec(mysql_url, "CREATE TABLE docs (id INT PRIMARY KEY, j JSON)")
    my_exec(mysql_url, "INSERT INTO docs VALUES (%s, %s)", [(i, d) for i, d in enumerate(DOCS)] + [(99, None)])
    stored = [r[0] for r in my_exec(mysql_url, "SELECT j FROM docs ORDER BY id")]
    assert stored == [*DOCS, None]  # MariaDB's JSON is text as written (MySQL 8 would store its own form)
    pg = pg_cluster.url(pg_cluster.create_database())
    paths = _copy(mysql_url, pg, "docs", copy_format=copy_format)
    assert paths == ({"rows"} if copy_format == "rows" else {"columnar-csv"})
    got = pg_exec(pg, "SELECT j::text, pg_typeof(j)::text FROM docs ORDER BY id")
    expect = DOCS if got[0][1] == "json" else [_as_jsonb(pg, d) for d in DOCS]
    assert [r[0] for r in got] == [*expect, None]
    assert "12345678901234567890.12345678901234567890" in got[0][0]


def test_a_sqlite_value_that_is_not_json_fails_its_range_naming_row_and_column(tmp_path: Path,
                                                                              pg_target: str) -> None:
    url = f"sqlite:///{tmp_path / 'bad.sqlite3'}"
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    with conn:
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, j JSON)")
        conn.executemany("INSERT INTO docs VALUES (?, ?)", [(1, '{"a": 1}'), (2, "{'a': 1}")])
    conn.close()
    create_target(url, pg_target, "docs")
    with pytest.raises(ItemError) as err:
        copy_range(url, pg_target, "docs", plan_ranges(url, "docs")[0])
    assert "{'id': 2}" in str(err.value) and "'j'" in str(err.value) and "not valid JSON" in str(err.value)
    assert pg_exec(pg_target, "SELECT count(*) FROM docs")[0][0] == 0


def test_arrays_of_json_numeric_and_text_go_through_sqlite_as_written(tmp_path: Path, pg_cluster: Any) -> None:
    """PostgreSQL -> SQLite (arrays as JSON text) -> PostgreSQL: a json[] element's 12.50 and 1e5, a numeric[]
    element's scale, a number inside a text[] element's text: all as written (json.loads made them 12.5,
    100000.0 and a double)."""
    src, back = (pg_cluster.url(pg_cluster.create_database()) for _ in range(2))
    pg_exec(src, "CREATE TABLE arr (id int PRIMARY KEY, j json[], n numeric[], t text[])")
    pg_exec(src, "INSERT INTO arr VALUES (1, ARRAY['{\"p\": 12.50}', '1e5', '[1.10, -0]']::json[], "
                 "ARRAY[12.50, 1.100, 0.12345678901234567891]::numeric[], ARRAY['12.50', 'Basic monthly']), "
                 "(2, NULL, ARRAY[NULL, 2.0]::numeric[], '{}')")
    lite = f"sqlite:///{tmp_path / 'arr.sqlite3'}"
    _copy(src, lite, "arr")
    stored = sqlite_exec(lite, "SELECT j, n, t FROM arr WHERE id = 1")[0]
    assert "12.50" in stored[0] and "1e5" in stored[0] and "0.12345678901234567891" in stored[1]
    _copy(lite, back, "arr")
    q = "SELECT id, j::text, n::text, t::text FROM arr ORDER BY id"
    assert pg_exec(back, q) == pg_exec(src, q)


def test_sqlite_array_text_goes_to_postgresql_arrays_as_written(tmp_path: Path, pg_cluster: Any) -> None:
    """SQLite arrays (JSON text in columns declared NUMERIC_ARRAY, TEXT_ARRAY, as batchflows writes them) written
    by another program with numbers in them: each element reaches PostgreSQL as written (json.loads made the
    numeric 1.100 -> 1.1 and the text "12.50" -> "12.5"), and a json element's document keeps its numbers."""
    lite = f"sqlite:///{tmp_path / 'arr.sqlite3'}"
    sqlite_exec(lite, "CREATE TABLE arr (id INTEGER PRIMARY KEY, n NUMERIC_ARRAY, t TEXT_ARRAY)")
    sqlite_exec(lite, "INSERT INTO arr VALUES (1, '[12.50, 1.100, 7, 0.12345678901234567891]', '[\"a\", 12.50]')")
    pg = pg_cluster.url(pg_cluster.create_database())
    _copy(lite, pg, "arr")
    assert pg_exec(pg, "SELECT n::text, t::text FROM arr") == [("{12.50,1.100,7,0.12345678901234567891}", "{a,12.50}")]
    docs = coerce(ColumnInfo(name="j", kind="array", element="json"), '[{"p": 12.50}, 1e5]')
    assert docs == ['{"p":12.50}', "1e5"]


def test_sqlite_json_arrays_go_to_postgresql_json_arrays_new_or_existing(tmp_path: Path, pg_cluster: Any) -> None:
    """A SQLite JSON_ARRAY column (each element a JSON value: an object, a number, a string, an array) into a new
    PostgreSQL table and into an existing json[] column: every element one document, numbers as written, and
    verify compares the target's json[] text with the source (it failed with 'malformed array literal')."""
    lite = f"sqlite:///{tmp_path / 'arr.sqlite3'}"
    sqlite_exec(lite, "CREATE TABLE arr (id INTEGER PRIMARY KEY, j JSON_ARRAY)")
    sqlite_exec(lite, """INSERT INTO arr VALUES (1, '[{"p": 12.50}, 1e5, "x", [1, 2], null, "a\\"b"]'), """
                      "(2, NULL), (3, '[]')")
    expected = [(1, '{"{\\"p\\":12.50}",1e5,"\\"x\\"","[1,2]",NULL,"\\"a\\\\\\"b\\""}'), (2, None), (3, "{}")]
    new = pg_cluster.url(pg_cluster.create_database())
    _copy(lite, new, "arr")
    existing = pg_cluster.url(pg_cluster.create_database())
    pg_exec(existing, "CREATE TABLE arr (id bigint PRIMARY KEY, j json[])")
    _copy(lite, existing, "arr")
    q = "SELECT id, j::text FROM arr ORDER BY id"
    assert pg_exec(new, q) == pg_exec(existing, q) == expected
    assert pg_exec(existing, "SELECT j[1]->>'p', j[2]::text, j[3]->>0, j[6]::text FROM arr WHERE id = 1") == [
        ("12.50", "1e5", None, '"a\\"b"')]


@given(st.recursive(st.none() | st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                                  blacklist_characters="\x00")),
                    lambda inner: st.lists(inner, min_size=1, max_size=3), max_leaves=8).filter(
    lambda v: isinstance(v, list)))
@settings(max_examples=300, deadline=None)
def test_array_literals_round_trip(values: list[Any]) -> None:
    assert parse_pg_array_literal(pg_array_literal(values)) == values


def test_array_literals_as_postgresql_writes_them(pg_cluster: Any) -> None:
    url = pg_cluster.url(pg_cluster.create_database())
    values = [["a,b", None], ['q"uo\\te', " sp "], ["NULL", ""]]
    (text,) = pg_exec(url, f"SELECT '{pg_array_literal(values)}'::text[]::text")[0]
    assert parse_pg_array_literal(text) == values
    assert parse_pg_array_literal("[0:1]={a,b}") == ["a", "b"] and parse_pg_array_literal("{}") == []
    for not_one in ('{"a": 1}', "{a,,b}", '{"a"', "{a", "{a} x", "[1, 2]"):  # strict: never half-read as one
        with pytest.raises(ValueError):
            parse_pg_array_literal(not_one)
    with pytest.raises(ValueError, match="not an array literal"):  # a JSON object in a SQLite JSON_ARRAY column
        coerce(ColumnInfo(name="j", kind="array", element="json"), '{"a": 1}')


# ---------------------------------------------------------------- SQLite integer keys and floats


def _lite(tmp_path: Path, ddl: str) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "v.sqlite")
    conn.execute(ddl)
    return conn


def test_a_decimal_int_key_stores_integers_and_refuses_what_sqlite_would_round(tmp_path: Path) -> None:
    col = ColumnInfo(name="id", kind="numeric", precision=20, scale=0, declared="DECIMAL_INT(20,0)")
    enc = sqlite_encoder(col)
    conn = _lite(tmp_path, "CREATE TABLE t (id DECIMAL_INT(20,0) PRIMARY KEY)")
    keys = [Decimal(-(2**63)), Decimal(2), Decimal(10), Decimal("7.00"), 2**63 - 1]
    conn.executemany("INSERT INTO t VALUES (?)", [(enc(k),) for k in keys])
    assert conn.execute("SELECT id, typeof(id) FROM t ORDER BY id").fetchall() == [
        (-(2**63), "integer"), (2, "integer"), (7, "integer"), (10, "integer"), (2**63 - 1, "integer")]
    for bad, says in ((Decimal(2**63), "64-bit"), (Decimal(2**64 - 1), "64-bit"), (Decimal("2.5"), "whole number"),
                      (Decimal("NaN"), "whole number")):
        with pytest.raises(ValueError, match=says):
            enc(bad)
    # bounds compare exactly: a fraction as its floor, past 64 bits as an infinity (no stored key is there)
    for lo, hi, expected in ((Decimal(2), Decimal(10), [7, 10]), (Decimal("2.5"), Decimal("9.9"), [7]),
                             (Decimal(2**64), None, []), (None, Decimal(-(2**64)), []),
                             (Decimal(-(2**64)), Decimal(2**64), [-(2**63), 2, 7, 10, 2**63 - 1])):
        where = " AND ".join(w for w, b in (("id > ?", lo), ("id <= ?", hi)) if b is not None)
        params = [sqlite_bound(col, b) for b in (lo, hi) if b is not None]
        assert [r[0] for r in conn.execute(f"SELECT id FROM t WHERE {where} ORDER BY id", params)] == expected
    conn.close()
    text = ColumnInfo(name="n", kind="numeric", precision=20, scale=0, declared="DECIMAL_TEXT(20,0)")
    assert sqlite_encoder(text)(Decimal(2**64 - 1)) == str(2**64 - 1)  # a value column keeps its digits as text


def test_unstorable_finds_a_nan_or_infinite_decimal_for_a_mysql_decimal_only() -> None:
    cols = [ColumnInfo(name="id", kind="integer"), ColumnInfo(name="p", kind="numeric", precision=10, scale=2),
            ColumnInfo(name="free", kind="numeric")]  # unconstrained: LONGTEXT in MySQL, which keeps 'NaN'
    rows = [(1, Decimal("1.50"), Decimal("NaN")), (2, None, Decimal("Infinity")), (3, Decimal(0), Decimal(2))]
    assert unstorable("mysql", cols, rows) is None
    bad = [*rows, (4, Decimal("-Infinity"), None), (5, Decimal("NaN"), None)]
    assert unstorable("mysql", cols, bad) == (3, 1, "-Infinity cannot be stored in a MySQL/MariaDB DECIMAL (no NaN "
                                                    "or infinities)")
    both = [(1, Decimal("Infinity"), None), (2, Decimal("-Infinity"), None)]  # their sum raises: scanned
    assert unstorable("mysql", cols, both)[:2] == (0, 1)  # type: ignore[index]
    assert unstorable("mysql", cols, [(1, Decimal("sNaN"), None)])[:2] == (0, 1)  # type: ignore[index]
    assert unstorable("sqlite", cols, bad) is None and unstorable("postgresql", cols, bad) is None


def test_unstorable_finds_a_nan_for_sqlite_and_a_nan_infinity_or_minus_zero_for_mysql(tmp_path: Path) -> None:
    cols = [ColumnInfo(name="id", kind="integer"), ColumnInfo(name="d", kind="double"),
            ColumnInfo(name="r", kind="real")]
    rows = [(1, -0.0, None), (2, math.inf, -math.inf), (3, 1.5, 0.0), (4, None, math.inf)]
    assert unstorable("sqlite", cols, rows) is None  # inf + -inf sums to NaN: scanned, nothing found
    assert unstorable("sqlite", cols, [*rows, (5, 2.0, math.nan)]) == (4, 2, "NaN cannot be stored in SQLite "
                                                                      "(it would be stored as NULL)")
    assert unstorable("sqlite", cols, [(9, math.nan, None), *rows])[:2] == (0, 1)  # type: ignore[index]
    assert unstorable("postgresql", cols, [(9, math.nan, None)]) is None
    assert unstorable("mysql", cols, rows) == (0, 1, "-0.0 cannot be stored in MySQL/MariaDB (it would be stored "
                                                     "as 0)")
    assert unstorable("mysql", cols, [(3, 1.5, 0.0), (2, 0.0, -math.inf)]) == (
        1, 2, "-inf cannot be stored in MySQL/MariaDB (no infinities)")
    assert unstorable("mysql", cols, [(3, 1.5, 0.0), (5, 2.0, math.nan)])[:2] == (1, 2)  # type: ignore[index]
    assert unstorable("mysql", cols, [(3, 0.0, 0.0), (4, None, 2.5), (5, 1e308, -1e308)]) is None
    theirs = [ColumnInfo(name="id", kind="integer"), ColumnInfo(name="d", kind="double", declared="DOUBLE")]
    assert unstorable("sqlite", theirs, [(1, 0.0), (2, -0.0)]) == (1, 1, (
        "-0.0 cannot be stored in a SQLite column of REAL or NUMERIC affinity (it would be stored as 0; batchflows "
        "creates FLOAT8_BLOB columns, which keep it)"))
    assert unstorable("sqlite", theirs, [(1, 0.0), (2, math.inf)]) is None
    conn = _lite(tmp_path, "CREATE TABLE f (id INTEGER PRIMARY KEY, d FLOAT8_BLOB, r FLOAT4_BLOB)")
    conn.executemany("INSERT INTO f VALUES (?, ?, ?)", rows)
    got = conn.execute("SELECT d, r FROM f ORDER BY id").fetchall()
    conn.close()
    dec = sqlite_decoder(cols[1])
    assert [math.copysign(1, dec(got[0][0])), got[1], got[2][0]] == [-1, (math.inf, -math.inf), 1.5]


TEXTS = ["5", " 5 ", "+5", "5.", "5.0", ".5", "1e3", "3.0e+5", "1.10", "-0", "-0.0", "0.12345678901234567891",
         "12345678901234567890123", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "1e400",
         "0x10", "5 x", "", "1_000", "NaN", "Infinity", "-inf", "\t7\n", "1E2", "00012", "1.5e-3",
         "9007199254740993.0", "1.0e19", '"5"', "[1]", "true"]


def test_sqlite_affinity_value_is_what_sqlite_stores(tmp_path: Path) -> None:
    conn = _lite(tmp_path, "CREATE TABLE t (n NUMERIC)")
    for text in TEXTS:
        stored = conn.execute("SELECT ?", (text,)).fetchone()  # the text as bound
        conn.execute("DELETE FROM t")
        conn.execute("INSERT INTO t VALUES (?)", stored)
        got = conn.execute("SELECT n FROM t").fetchone()[0]
        mine = sqlite_affinity_value(text)
        assert (text if mine is None else mine) == got and type(got) is (str if mine is None else type(mine)), text


def test_numbers_into_numeric_affinity_columns_are_refused_only_when_they_would_change(tmp_path: Path) -> None:
    numeric = sqlite_encoder(ColumnInfo(name="n", kind="numeric", declared="NUMERIC"))
    doc = sqlite_encoder(ColumnInfo(name="j", kind="json", declared="JSON"))
    kept = [Decimal("2.50"), Decimal("7"), Decimal("1E+30"), Decimal("NaN"), Decimal("-0.125")]
    assert [numeric(v) for v in kept] == ["2.50", "7", "1E+30", "NaN", "-0.125"]
    assert [doc(v) for v in [5, 1.5, "x", {"a": 1.1}, None]] == ["5", "1.5", '"x"', '{"a":1.1}', None]
    for enc, value in ((numeric, Decimal("0.12345678901234567891")), (numeric, Decimal(2**70)),
                       (doc, 12345678901234567890123), (doc, JsonText("1.10")), (doc, JsonText(" 5 "))):
        with pytest.raises(ValueError, match=r"NUMERIC affinity.*TEXT affinity"):
            enc(value)
    text = sqlite_encoder(ColumnInfo(name="n", kind="numeric", declared="DECIMAL_TEXT(30,20)"))
    assert text(Decimal("0.12345678901234567891")) == "0.12345678901234567891"  # TEXT affinity: as it is
