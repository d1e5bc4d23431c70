"""tasks/db/arrow_verify.py: MySQL/MariaDB <-> PostgreSQL verify compares columns as Arrow arrays and gives the
row-by-row verify's answer: equal copies are equal (also where only the canonical values agree), and a change
of any one value in any column is found at its key."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tasks.db import copy_range, create_target, plan_ranges, reflect, verify_ranges
from tasks.db import verify as verify_mod
from tasks.db.arrow_verify import compare, read_side
from tests.tasks.db.test_migration import pg_exec
from tests.tasks.db.test_mysql import my_exec

DDL = """CREATE TABLE items (
  id BIGINT PRIMARY KEY, name VARCHAR(100), qty INT UNSIGNED, big BIGINT UNSIGNED, price DECIMAL(12,2),
  flag TINYINT(1), created TIMESTAMP(6) NULL DEFAULT NULL, day DATE, at TIME(6), score DOUBLE, r FLOAT,
  status ENUM('new','paid','shipped'), doc JSON, raw VARBINARY(20), code CHAR(4)
) DEFAULT CHARSET=utf8mb4"""
N = 60


def _row(i: int) -> tuple[Any, ...]:
    return (i, f"customer {i} ünïcode 🍕" if i % 9 else None, (i * 7) % 1000, 2**63 + i if i % 5 == 0 else i,
            f"{i}.{i % 100:02d}", i % 3 == 0, f"2024-03-31 0{i % 4}:30:00.{i * 1000:06d}" if i % 7 else None,
            f"2024-01-{1 + i % 28:02d}", f"10:00:0{i % 10}.{i % 2 * 5}00000", i / 7.0 if i % 11 else -0.0,
            i / 3.0, ("new", "paid", "shipped")[i % 3], f'{{"n": {i}, "tags": ["a", {i % 5}], "p": 1.50}}',
            bytes([i % 256, 0, 255]), f"c{i % 10}")


@pytest.fixture
def copied(mysql_url: str, pg_target: str) -> tuple[str, str]:
    my_exec(mysql_url, DDL)
    my_exec(mysql_url, f"INSERT INTO items VALUES ({', '.join(['%s'] * 15)})", [_row(i) for i in range(1, N + 1)])
    create_target(mysql_url, pg_target, "items")
    for rng in plan_ranges(mysql_url, "items", chunk_rows=25):
        copy_range(mysql_url, pg_target, "items", rng)
    return mysql_url, pg_target


def _both_ways(src: str, tgt: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """(Arrow verify's (ok, first difference) per range, the row-by-row verify's)."""
    fast = verify_ranges(src, tgt, "items", chunk_rows=25)
    assert {c.method for c in fast} == {"arrow"}
    with monkeypatch.context() as m:
        m.setattr(verify_mod, "_arrow_check", lambda *a, **k: None)
        slow = verify_ranges(src, tgt, "items", chunk_rows=25)
    assert {c.method for c in slow} == {"python"}
    return [(c.ok, c.first_difference) for c in fast], [(c.ok, c.first_difference) for c in slow]


def test_an_equal_copy_is_equal_column_by_column_as_arrays(copied: tuple[str, str]) -> None:
    src, tgt = copied
    source, target = reflect(src, "items"), reflect(tgt, "items")
    for rng in plan_ranges(src, "items", chunk_rows=25):
        a, b = read_side(src, source, rng, "source"), read_side(tgt, target, rng, "target")
        assert a is not None and b is not None
        n_a, cs_a, n_b, cs_b, ok, slow = compare(source, a, target, b)
        assert ok and n_a == n_b > 0 and cs_a == cs_b
        assert slow == ["r"]  # MySQL FLOAT comes as its shortest text's double, PostgreSQL real as float4


@pytest.mark.parametrize(("column", "expression"), [
    ("name", "name || 'x'"), ("name", "NULL"), ("qty", "qty + 1"), ("big", "big + 1"), ("price", "price + 0.01"),
    ("flag", "NOT flag"), ("created", "created + interval '1 microsecond'"), ("created", "NULL"),
    ("day", "day + 1"), ("at", "at + interval '1 microsecond'"), ("score", "score * (1 + 1e-15)"),
    ("r", "r + 0.001"), ("status", "'new'"), ("doc", "'{\"n\": 0}'"), ("raw", "'\\x00'::bytea"),
    ("code", "'zz'"),
])
def test_one_changed_value_in_any_column_is_found_as_the_row_by_row_verify_finds_it(
        copied: tuple[str, str], monkeypatch: pytest.MonkeyPatch, column: str, expression: str) -> None:
    src, tgt = copied
    pg_exec(tgt, f'UPDATE items SET "{column}" = {expression} WHERE id = 31')  # row 31: every column has a value
    fast, slow = _both_ways(src, tgt, monkeypatch)
    assert fast == slow
    assert [d for ok, d in fast if not ok] == [[31]]


def test_equal_values_in_other_forms_are_equal(copied: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A wider numeric scale (0.13 vs 0.1300), jsonb (its own spacing and key order), a fraction of a second
    without its trailing zeros: the arrays differ or are normalized, the canonical values agree."""
    src, tgt = copied
    pg_exec(tgt, "ALTER TABLE items ALTER price TYPE numeric(14,4), ALTER doc TYPE jsonb")
    fast, slow = _both_ways(src, tgt, monkeypatch)
    assert fast == slow and all(ok for ok, _ in fast)
    pg_exec(tgt, "UPDATE items SET doc = doc || '{\"p\": 1.51}' WHERE id = 40")
    fast, slow = _both_ways(src, tgt, monkeypatch)
    assert fast == slow and [d for ok, d in fast if not ok] == [[40]]


def test_a_missing_row_and_the_other_direction(copied: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = copied
    pg_exec(tgt, "DELETE FROM items WHERE id = 45")
    fast, slow = _both_ways(src, tgt, monkeypatch)
    assert fast == slow and [d for ok, d in fast if not ok] == [[45]]
    checks = verify_ranges(tgt, src, "items", chunk_rows=25)  # PostgreSQL -> MariaDB: the same comparison
    assert {c.method for c in checks} == {"arrow"} and [c.first_difference for c in checks if not c.ok] == [[45]]


SQLITE_DDL = ("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price NUMERIC(12,2), "
              "flag BOOLEAN, day DATE, at TIMESTAMP, score DOUBLE PRECISION, code CHAR(4))")


def _sqlite_row(i: int) -> tuple[Any, ...]:
    return (i, f"name {i} ü" if i % 9 else None, i * 7, i + 0.25, i % 2, f"2024-01-{1 + i % 28:02d}",
            f"2024-03-31 0{i % 4}:30:00" + (f".{i:06d}" if i % 2 else ""), i / 7.0, f"c{i % 10}")


@pytest.fixture
def sqlite_copied(tmp_path: Path, pg_target: str) -> tuple[str, str]:
    path = tmp_path / "src.db"
    with sqlite3.connect(path) as conn:
        conn.execute(SQLITE_DDL)
        conn.executemany(f"INSERT INTO items VALUES ({', '.join(['?'] * 9)})", [_sqlite_row(i) for i in range(1, N + 1)])
    url = f"sqlite:///{path}"
    create_target(url, pg_target, "items")
    for rng in plan_ranges(url, "items", chunk_rows=25):
        copy_range(url, pg_target, "items", rng)
    return url, pg_target


@pytest.mark.parametrize(("column", "expression"), [
    (None, None), ("name", "name || 'x'"), ("qty", "qty + 1"), ("price", "price + 0.01"), ("flag", "NOT flag"),
    ("day", "day + 1"), ("at", "at + interval '1 microsecond'"), ("score", "score * (1 + 1e-15)"), ("code", "'zz'"),
])
def test_sqlite_to_postgresql_as_arrays_with_the_row_by_row_answer(
        sqlite_copied: tuple[str, str], monkeypatch: pytest.MonkeyPatch, column: str | None, expression: str) -> None:
    src, tgt = sqlite_copied
    if column is not None:
        pg_exec(tgt, f'UPDATE items SET "{column}" = {expression} WHERE id = 31')
    fast, slow = _both_ways(src, tgt, monkeypatch)
    assert fast == slow
    assert [d for ok, d in fast if not ok] == ([] if column is None else [[31]])


def test_a_sqlite_range_the_columnar_reader_refuses_is_verified_row_by_row(sqlite_copied: tuple[str, str]) -> None:
    src, tgt = sqlite_copied
    with sqlite3.connect(src.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE items SET day = day || 'T00:00:00' WHERE id = 4")  # the same date, not plain ISO
        conn.execute("UPDATE items SET price = 1152921504606846977 WHERE id = 55")  # past a double's integers
    checks = verify_ranges(src, tgt, "items", chunk_rows=25)
    assert [c.method for c in checks] == ["python", "arrow", "python"]
    assert [(c.ok, c.first_difference) for c in checks] == [(True, None), (True, None), (False, [55])]


def test_sqlite_numeric_doubles_compare_as_doubles_up_to_15_digits(sqlite_copied: tuple[str, str]) -> None:
    """SQLite's NUMERIC(12,2) comes as doubles, PostgreSQL's as text: compared as doubles (no column decoded in
    Python); a target wider than 15 digits (two decimals could share a double) takes the canonical values."""
    src, tgt = sqlite_copied

    def checks() -> list[tuple[bool, list[str]]]:
        source, target = reflect(src, "items"), reflect(tgt, "items")
        out = []
        for rng in plan_ranges(src, "items", chunk_rows=25):
            a, b = read_side(src, source, rng, "source"), read_side(tgt, target, rng, "target")
            assert a is not None and b is not None
            out.append(compare(source, a, target, b)[4:])
        return out

    assert checks() == [(True, [])] * 3
    pg_exec(tgt, "ALTER TABLE items ALTER price TYPE numeric(20,2)")
    assert checks() == [(True, ["price"])] * 3
    pg_exec(tgt, "UPDATE items SET price = price + 0.01 WHERE id = 60")
    assert checks() == [(True, ["price"])] * 2 + [(False, ["price"])]
