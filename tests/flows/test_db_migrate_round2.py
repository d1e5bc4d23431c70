"""db_migrate as a user runs it, on real PostgreSQL, MariaDB and SQLite files: incremental windows below a
millisecond with SQLite on either side, an incremental rerun into a recreated target, transforms that return
duplicate keys, values a target cannot hold (numeric NaN, PostgreSQL's infinite and out-of-range dates) and
array lower bounds: each fails naming the row and column, or arrives exactly, and verify sees what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.db_migrate import MigrationSummary, db_migrate
from tests.tasks.db.test_migration import db_exec
from tests.tasks.db.test_mysql import my_exec

INCREMENTAL: dict[str, Any] = {"incremental": "updated_at", "verify": True, "chunk_retries": 0}


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in (my_exec(url, sql) if url.startswith("mysql") else db_exec(url, sql))]


def run(src: str, tgt: str, table: str, **kwargs: Any) -> MigrationSummary:
    return db_migrate(src, tgt, table, raise_on_failure=False, **kwargs)


def dead_letters(state_dir: Path, run_key: str) -> list[dict[str, Any]]:
    path = state_dir / "runs" / "db-migrate" / run_key / "dead_letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------- incremental: SQLite below a millisecond


def test_pg_to_sqlite_rows_within_a_millisecond_below_the_watermark_verify_and_move_it(
        pg_url: str, sqlite_url: str) -> None:
    db_exec(pg_url, "CREATE TABLE o (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)")
    db_exec(pg_url, "INSERT INTO o SELECT i, 'v' || i, '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 s' "
                    "FROM generate_series(1, 100) i")
    for i, us in ((97, 999100), (98, 999300), (99, 999700)):  # a batch update just below the newest row
        db_exec(pg_url, "UPDATE o SET updated_at = %s WHERE id = %s", (f"2024-01-01 00:01:39.{us:06d}+00", i))
    first = run(pg_url, sqlite_url, "o", run_key="ms-1", **INCREMENTAL)
    assert first.ok, first.render_text()
    db_exec(pg_url, "UPDATE o SET v = 'changed', updated_at = '2024-01-01 00:01:41+00' WHERE id = 5")
    second = run(pg_url, sqlite_url, "o", run_key="ms-2", **INCREMENTAL)
    # id 5, and id 100 at the stored watermark (the lower bound is inclusive); verify compared the same slice
    assert second.ok and second.rows_copied == 2, second.render_text()
    assert second.watermark_after == "2024-01-01T00:01:41+00:00"
    assert rows(pg_url, "SELECT id, v FROM o ORDER BY id") == rows(sqlite_url, "SELECT id, v FROM o ORDER BY id")


def test_sqlite_to_pg_rows_within_a_millisecond_below_the_watermark_verify_and_move_it(
        tmp_path: Path, pg_target: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.sqlite3'}"
    db_exec(src, "CREATE TABLE o (id INTEGER PRIMARY KEY, v TEXT, updated_at TIMESTAMPTZ NOT NULL)")
    for i in range(1, 51):
        db_exec(src, "INSERT INTO o VALUES (?, ?, ?)", (i, f"v{i}", f"2024-01-01 00:00:{i:02d}.000000+00:00"))
    db_exec(src, "UPDATE o SET updated_at = '2024-01-01 00:00:49.999100+00:00' WHERE id = 48")
    assert run(src, pg_target, "o", run_key="ms-1", **INCREMENTAL).ok
    db_exec(src, "UPDATE o SET v = 'changed', updated_at = '2024-01-01T00:00:51+00:00' WHERE id = 3")
    for key in ("ms-2", "ms-3"):
        s = run(src, pg_target, "o", run_key=key, **INCREMENTAL)
        assert s.ok, s.render_text()
    # nothing changed: only id 3, at the stored watermark (the lower bound is inclusive), is read again
    assert s.watermark_before == s.watermark_after == "2024-01-01T00:00:51+00:00" and s.rows_copied == 1
    assert rows(src, "SELECT id, v FROM o ORDER BY id") == rows(pg_target, "SELECT id, v FROM o ORDER BY id")


# ---------------------------------------------------------------- incremental rerun into a recreated target


@pytest.mark.parametrize("target", ["pg_target", "sqlite_url"])
def test_incremental_rerun_of_a_run_key_into_a_recreated_target_stores_the_watermark(
        target: str, pg_url: str, pg_cluster: Any, request: pytest.FixtureRequest) -> None:
    from tests.flows.test_db_migrate_rerun import recreate

    tgt = request.getfixturevalue(target)
    db_exec(pg_url, "CREATE TABLE o (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)")
    db_exec(pg_url, "INSERT INTO o SELECT i, 'v' || i, '2024-01-01'::timestamptz + i * interval '1 s' "
                    "FROM generate_series(1, 100) i")
    assert run(pg_url, tgt, "o", run_key="recreated", **INCREMENTAL).ok
    recreate(pg_cluster, tgt)
    rerun = run(pg_url, tgt, "o", run_key="recreated", **INCREMENTAL)
    assert rerun.ok and rerun.rows_copied == 100, rerun.render_text()
    assert rerun.watermark_after == "2024-01-01T00:01:40+00:00"
    assert rows(tgt, "SELECT count(*) FROM o") == [(100,)]
    assert json.loads(rows(tgt, "SELECT watermark FROM _batchflows_watermarks")[0][0]) == rerun.watermark_after


# ---------------------------------------------------------------- a transform returning duplicate keys


def twice(df: Any) -> Any:
    """A transform that returns every row twice (a bad join, say)."""
    import polars as pl

    return pl.concat([df, df])


@pytest.mark.parametrize("mode", ["upsert", "append"])
@pytest.mark.parametrize("target", ["pg_target", "mysql_url", "sqlite_url"])
def test_a_transform_returning_duplicate_keys_fails_its_range_naming_the_key(
        target: str, mode: str, pg_url: str, state_dir: Path, request: pytest.FixtureRequest) -> None:
    tgt = request.getfixturevalue(target)
    db_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    db_exec(pg_url, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    s = run(pg_url, tgt, "t", run_key="dup", mode=mode, transform=f"{__name__}:twice", verify=False)
    assert not s.ok and s.rows_copied == 0
    (letter,) = dead_letters(state_dir, "dup")
    assert letter["attempts"] == 1 and letter["category"] == "transform"  # not retried: it cannot succeed
    assert "transform 'twice' returned more than one row with key {'id': 1}" in letter["message"]
    assert rows(tgt, "SELECT count(*) FROM t") == [(0,)]


# ---------------------------------------------------------------- values a target cannot hold, named


def test_a_numeric_nan_into_a_mariadb_decimal_fails_naming_the_row_and_column(
        pg_url: str, mysql_url: str, state_dir: Path) -> None:
    db_exec(pg_url, "CREATE TABLE p (id int PRIMARY KEY, price numeric(10,2), qty numeric(10,2), free numeric)")
    db_exec(pg_url, "INSERT INTO p VALUES (1, 1.5, 2, 'NaN'), (2, 2.25, 'NaN', 'Infinity'), (3, 3.5, 4, 5)")
    s = run(pg_url, mysql_url, "p", run_key="nan", chunk_retries=0)
    assert not s.ok
    (letter,) = dead_letters(state_dir, "nan")
    assert letter["attempts"] == 1
    assert "row with key {'id': 2} cannot be written: column 'qty': NaN cannot be stored in a MySQL/MariaDB " \
           "DECIMAL" in letter["message"], letter["message"]
    db_exec(pg_url, "UPDATE p SET qty = 3 WHERE id = 2")  # fixed in the source
    again = run(pg_url, mysql_url, "p", run_key="nan-2", chunk_retries=0, verify=True)
    assert again.ok, again.render_text()
    # an unconstrained numeric is LONGTEXT in MySQL: it keeps NaN and infinities
    assert rows(mysql_url, "SELECT free FROM p ORDER BY id") == [("NaN",), ("Infinity",), ("5",)]


@pytest.mark.parametrize(("value", "text"), [("'infinity'", "infinity"), ("'-infinity'", "-infinity"),
                                             ("'0044-03-15 BC'", "0044-03-15 BC"), ("'12000-01-01'", "12000-01-01")])
@pytest.mark.parametrize("target", ["sqlite_url", "mysql_url", "pg_target+transform"])
def test_a_date_python_cannot_hold_fails_naming_the_row_and_column_without_retries(
        target: str, value: str, text: str, pg_url: str, state_dir: Path, request: pytest.FixtureRequest) -> None:
    tgt = request.getfixturevalue(target.removesuffix("+transform"))
    extra = {"transform": f"{__name__}:same"} if target.endswith("+transform") else {}
    db_exec(pg_url, "CREATE TABLE ev (id int PRIMARY KEY, name text, valid_until date, seen timestamptz)")
    db_exec(pg_url, f"INSERT INTO ev VALUES (1, 'a', '2030-01-01', now()), (2, 'b', '2031-01-01', now()), "
                    f"(3, 'c', {value}, now())")
    s = run(pg_url, tgt, "ev", run_key="inf", chunk_retries=2, **extra)
    assert not s.ok
    (letter,) = dead_letters(state_dir, "inf")
    assert letter["attempts"] == 1, letter
    assert f"row with key {{'id': 3}} cannot be copied: column 'valid_until': date {text!r} has no Python value" \
           in letter["message"], letter["message"]


def same(df: Any) -> Any:
    return df


# ---------------------------------------------------------------- array lower bounds


@pytest.mark.parametrize("target", ["sqlite_url", "mysql_url"])
def test_array_lower_bounds_are_refused_where_they_cannot_be_kept_and_verify_sees_them(
        target: str, pg_url: str, state_dir: Path, request: pytest.FixtureRequest) -> None:
    from flows.db_migrate import db_verify

    tgt = request.getfixturevalue(target)
    db_exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v int[])")
    db_exec(pg_url, "INSERT INTO a VALUES (1, '{5,6,7}'), (2, '{1,2}')")
    assert run(pg_url, tgt, "a", run_key="bounds-1", verify=True).ok
    db_exec(pg_url, "UPDATE a SET v = '[0:2]={5,6,7}' WHERE id = 1")  # the same list, numbered from 0
    check = db_verify(pg_url, tgt, "a", raise_on_failure=False)
    assert not check.ok and check.ranges_mismatched, check.message
    assert "first differing key [1]" in check.message
    s = run(pg_url, tgt, "a", run_key="bounds-2", chunk_retries=0)
    assert not s.ok
    (letter,) = dead_letters(state_dir, "bounds-2")
    assert "row with key {'id': 1} cannot be copied: column 'v': array '[0:2]={5,6,7}' has lower bounds other " \
           "than 1" in letter["message"], letter["message"]


# ---------------------------------------------------------------- MariaDB ENUM/SET members beyond utf8mb3


def test_mariadb_enum_and_set_members_with_emoji_are_recreated_exactly(mysql_url: str, mariadb_server: Any) -> None:
    tgt = str(mariadb_server.url(mariadb_server.create_database()))
    my_exec(mysql_url, "CREATE TABLE r (id INT PRIMARY KEY, mood ENUM('ok', 'great \U0001f600', 'it''s'), "
                       "tags SET('a', '\U0001f525')) DEFAULT CHARSET=utf8mb4")
    my_exec(mysql_url, "INSERT INTO r VALUES (1, 'ok', 'a'), (2, 'great \U0001f600', 'a,\U0001f525'), (3, 'it''s', '')")
    s = run(mysql_url, tgt, "r", run_key="emoji", chunk_retries=0, verify=True)
    assert s.ok, s.render_text()
    assert rows(tgt, "SELECT * FROM r ORDER BY id") == rows(mysql_url, "SELECT * FROM r ORDER BY id") == [
        (1, "ok", "a"), (2, "great \U0001f600", "a,\U0001f525"), (3, "it's", "")]
    my_exec(tgt, "INSERT INTO r VALUES (4, 'great \U0001f600', '\U0001f525')")  # the target's type has the members
