"""db_migrate's incremental pieces on real SQLite files: the window predicate across stored time formats,
lookback arithmetic, the watermark store in the target."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from tasks.core import ConfigError
from tasks.core.watermarks import lag_seconds
from tasks.db.conn import connect, parse_table_name
from tasks.db.incremental import (
    IncrementalState,
    plan_window,
    read_watermark,
    save_watermark,
    shifted,
    stream_key,
    watermark_column,
)
from tasks.db.schema import KeyRange, SourceSchema, Window, range_predicate, reflect
from tasks.db.typemap import ColumnInfo


@pytest.fixture
def mixed(tmp_path: Path) -> str:
    path = tmp_path / "src.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, at TIMESTAMPTZ)")
    rows = [(1, "a", "2026-01-01 10:00:00"), (2, "b", "2026-01-01T11:00:00+00:00"),  # both ISO forms
            (3, "c", "2026-01-01T13:30:00+02:00"), (4, "d", None), (5, "e", "2026-01-01 12:00:00.000001+00:00")]
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def selected(url: str, low: str | None) -> list[int]:
    schema = reflect(url, "t")
    window = Window(column=watermark_column(schema, "at"), low=low, high="2026-01-01T12:00:00.000001+00:00")
    with connect(url, "source") as db:
        where, params = range_predicate(db, schema.key_columns(), KeyRange(index=0, window=window))
        return [r[0] for r in db.all(f"SELECT id FROM t WHERE {where} ORDER BY id", params)]


def test_the_window_compares_instants_whatever_the_stored_form(mixed: str, tmp_path: Path) -> None:
    schema = reflect(mixed, "t")
    col = watermark_column(schema, "at")
    window = plan_window(mixed, f"sqlite:///{tmp_path / 'tgt.sqlite3'}", parse_table_name("t"), schema, col, "s",
                         lookback=0, reset=False)
    assert dt.datetime.fromisoformat(window.high) == dt.datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=dt.UTC)
    assert selected(mixed, None) == [1, 2, 3, 4, 5]  # first run: everything (NULL included)
    assert selected(mixed, "2026-01-01T10:30:00+00:00") == [2, 3, 4, 5]  # 13:30+02:00 is 11:30Z
    assert selected(mixed, "2026-01-01T11:30:00+00:00") == [3, 4, 5]  # the low bound is inclusive; NULL rows every time


def test_the_window_is_exact_below_a_millisecond(tmp_path: Path) -> None:
    """julianday() rounds to whole milliseconds; PostgreSQL and MySQL compare microseconds: SQLite's side of a
    window must select the same rows, or verify compares different slices (and the watermark never moves)."""
    path = tmp_path / "ms.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, at TIMESTAMPTZ)")
    rows = [(1, "a", "2026-01-01 00:00:09.999000+00:00"), (2, "b", "2026-01-01 00:00:09.999100+00:00"),
            (3, "c", "2026-01-01T00:00:09.9997Z"), (4, "d", "2026-01-01 02:00:10.000000+02:00"),
            (5, "e", "2026-01-01T00:00:10.0004"), (6, "f", "2026-01-01 00:00:10.000500+00:00"),
            (7, "g", "2026-01-01 00:00:10")]
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    url = f"sqlite:///{path}"
    schema = reflect(url, "t")
    col = watermark_column(schema, "at")

    def window(low: str, high: str) -> list[int]:
        w = Window(column=col, low=low, high=high)
        with connect(url, "source") as db:
            where, params = range_predicate(db, schema.key_columns(), KeyRange(index=0, window=w))
            return [r[0] for r in db.all(f"SELECT id FROM t WHERE {where} ORDER BY id", params)]

    # the low bound is inclusive: a row committed later at the watermark itself is not lost
    assert window("2026-01-01T00:00:09.999000+00:00", "2026-01-01T00:00:10.000400+00:00") == [1, 2, 3, 4, 5, 7]
    assert window("2026-01-01T00:00:09.999100+00:00", "2026-01-01T00:00:09.999700+00:00") == [2, 3]
    assert window("2026-01-01T00:00:09.999101+00:00", "2026-01-01T00:00:09.999700+00:00") == [3]
    assert window("2026-01-01T00:00:10+00:00", "2026-01-01T00:00:10.000499+00:00") == [4, 5, 7]
    assert window("2026-01-01T00:00:10.000001+00:00", "2026-01-01T00:00:10.000499+00:00") == [5]
    high = plan_window(url, f"sqlite:///{tmp_path / 'tgt.sqlite3'}", parse_table_name("t"), schema, col, "s",
                       lookback=0, reset=False).high
    assert dt.datetime.fromisoformat(high) == dt.datetime(2026, 1, 1, 0, 0, 10, 500, tzinfo=dt.UTC)


def test_lookback_and_lag() -> None:
    ts = watermark_column(reflect_stub(), "at")
    assert shifted(ts, "2026-01-01T00:00:10+00:00", 10) == "2026-01-01T00:00:00+00:00"
    assert shifted(ts, "2026-01-01T00:00:10+00:00", 0) == "2026-01-01T00:00:10+00:00"  # exact everywhere
    assert shifted(ts, None, 10) is None
    n = watermark_column(reflect_stub(), "id")
    assert shifted(n, 100, 5) == 95 and lag_seconds(100) is None  # the summary's lag: times only
    assert lag_seconds("2000-01-01T00:00:00+00:00") > 0


def reflect_stub() -> SourceSchema:
    return SourceSchema(dialect="postgresql", table=parse_table_name("t"), columns=[ColumnInfo(name="id", kind="bigint"), ColumnInfo(name="at",
                        kind="timestamptz"), ColumnInfo(name="name", kind="text")], key=["id"], primary_key=["id"])


def test_bad_columns_are_named(mixed: str) -> None:
    schema = reflect(mixed, "t")
    with pytest.raises(ConfigError, match="must be a date/time"):
        watermark_column(schema, "name")
    with pytest.raises(ConfigError, match="not a column"):
        watermark_column(schema, "nope")


def test_the_store_in_the_target(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tgt.sqlite3'}"
    table = parse_table_name('"Odd Items"')
    stream = stream_key("sqlite:///src", "t", None, str(table), "at")
    assert read_watermark(url, table, stream) is None
    state = IncrementalState(column="at", stream=stream)
    col = watermark_column(reflect_stub(), "at")
    save_watermark(url, table, state, "2026-01-01T00:00:00+00:00", "r1", column=col)
    assert save_watermark(url, table, state, "2026-01-02T00:00:00+00:00", "r2", column=col) == (
        "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00")
    assert read_watermark(url, table, stream) == "2026-01-02T00:00:00+00:00"
    # never back: a resumed run's window may end below what a later run stored (an instant compares as one)
    assert save_watermark(url, table, state, "2026-01-02T01:00:00+02:00", "r0", column=col) == (
        "2026-01-02T00:00:00+00:00", "2026-01-02T00:00:00+00:00")
    assert read_watermark(url, table, stream) == "2026-01-02T00:00:00+00:00"
    reset = IncrementalState(column="at", stream=stream, reset=True)  # reset_incremental: back to what it copied
    save_watermark(url, table, reset, "2026-01-01T12:00:00+00:00", "r3", column=col)
    assert read_watermark(url, table, stream) == "2026-01-01T12:00:00+00:00"
