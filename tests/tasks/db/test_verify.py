"""verify_range between two PostgreSQL databases on the servers' canonical record text (real PostgreSQL 15).

``json`` keeps any valid JSON text, including escapes ``jsonb`` refuses (``\\u0000``, a lone surrogate): such a
document compares as its text (equal on an exact copy, a real difference still found), one jsonb can hold by
value (spacing, key order, json vs jsonb); and the time '24:00:00' (a day's end) verifies against SQLite.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from tasks.db import verify_ranges
from tests.tasks.db.test_migration import pg_exec

NUL = r'{"a": "\u0000", "n": 1}'
SURROGATE = r'["\ud800", "x"]'


def _table(url: str, name: str, json_type: str, docs: list[str | None], *, key: bool = True) -> None:
    pk = " PRIMARY KEY" if key else ""
    pg_exec(url, f"CREATE TABLE {name} (id int{pk}, j {json_type}, iv interval)")
    for i, doc in enumerate(docs, 1):
        pg_exec(url, f"INSERT INTO {name} VALUES (%s, %s::{json_type}, '1 day')", (i, doc))


def _check(src: str, tgt: str, name: str = "t") -> tuple[bool, list[object] | None, str]:
    checks = verify_ranges(src, tgt, name, chunk_rows=1000)
    return all(c.ok for c in checks), next((c.first_difference for c in checks if not c.ok), None), checks[0].method


DOCS = [NUL, SURROGATE, '{"b": [1, 2.50]}', None, r'"\ud83d\ude00"']


def test_json_jsonb_cannot_hold_compares_as_its_text(pg_url: str, pg_target: str) -> None:
    _table(pg_url, "t", "json", DOCS)
    _table(pg_target, "t", "json", DOCS)
    assert _check(pg_url, pg_target)[0]

    # the same values spelled otherwise (spacing, key order): equal as documents where jsonb holds them
    pg_exec(pg_target, """UPDATE t SET j = '{ "b" : [1, 2.50] }' WHERE id = 3""")
    assert _check(pg_url, pg_target)[0]

    # a real difference in a document jsonb cannot hold is found, and named
    pg_exec(pg_target, r"""UPDATE t SET j = '{"a": "\u0001", "n": 1}' WHERE id = 1""")
    ok, first, method = _check(pg_url, pg_target)
    assert (ok, first, method) == (False, [1], "sql")
    pg_exec(pg_target, "UPDATE t SET j = %s::json WHERE id = 1", (NUL,))
    pg_exec(pg_target, r"""UPDATE t SET j = '["\udc00", "x"]' WHERE id = 2""")
    assert _check(pg_url, pg_target)[:2] == (False, [2])


def test_json_against_jsonb_and_tables_without_a_key(pg_url: str, pg_target: str) -> None:
    docs = ['{"b": 1,  "a": [1, 2.50]}', None, '"x"']
    _table(pg_url, "t", "json", docs)
    _table(pg_target, "t", "jsonb", docs)
    assert _check(pg_url, pg_target)[0]

    _table(pg_url, "e", "json", DOCS, key=False)
    _table(pg_target, "e", "json", DOCS, key=False)
    assert _check(pg_url, pg_target, "e")[0]
    pg_exec(pg_target, r"""UPDATE e SET j = '{"a": "\u0001", "n": 1}' WHERE id = 1""")
    assert not _check(pg_url, pg_target, "e")[0]


@pytest.mark.parametrize("with_array", [False, True])  # arrays: the row-by-row comparison (no Arrow there)
def test_time_at_the_end_of_a_day_against_sqlite(with_array: bool, pg_url: str, sqlite_url: str) -> None:
    extra, values = (", arr int[]", ", '{1}'") if with_array else ("", "")
    pg_exec(pg_url, f"CREATE TABLE t (id int PRIMARY KEY, tm time{extra})")
    pg_exec(pg_url, f"INSERT INTO t VALUES (1, '24:00:00'{values}), (2, '12:00:00.5'{values}), (3, NULL{values})")
    path = sqlite_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, tm TIME{', arr INTEGER_ARRAY' if with_array else ''})")
        arr = ", '[1]'" if with_array else ""
        conn.execute(f"INSERT INTO t VALUES (1, '24:00:00'{arr}), (2, '12:00:00.500000'{arr}), (3, NULL{arr})")
    assert _check(pg_url, sqlite_url)[0]
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE t SET tm = '00:00:00' WHERE id = 1")
    assert _check(pg_url, sqlite_url)[:2] == (False, [1])
