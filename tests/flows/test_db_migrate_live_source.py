"""db_migrate incremental runs against a source that keeps changing, through the real flow: rows updated
right after their range committed (the failpoint ``db.after_commit`` runs the application's UPDATE), rows
deleted under ``deletes="ignore"`` that lie in later windows, and rows committed later with a timestamp
equal to the watermark. Each run must pass verify and move the watermark, and the target stay exact;
a real difference is still found.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest

from flows.db_migrate import MigrationSummary, db_migrate
from tasks.core import failpoints
from tests.flows.test_db_migrate_incremental import BASE, CHUNK, NOW, Source, equal, migrate, run_sql
from tests.tasks.db.test_migration import db_exec


def touch_source(name: str) -> None:
    """The failpoint hook: after a range's COMMIT the application runs ``$BF_LIVE_SQL`` on the source."""
    sql = os.environ.get("BF_LIVE_SQL")
    if name == "db.after_commit" and sql:
        run_sql(os.environ["BF_LIVE_URL"], sql)


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``live(url, sql)``: from now on, every range's COMMIT is followed by ``sql`` on the source ``url``."""
    def arm(url: str, sql: str | None) -> None:
        monkeypatch.setenv("BF_LIVE_URL", url)
        if sql is None:
            monkeypatch.delenv("BF_LIVE_SQL", raising=False)
        else:
            monkeypatch.setenv("BF_LIVE_SQL", sql)

    monkeypatch.setenv(failpoints.ENV, f"{__name__}:touch_source")
    failpoints._hook.cache_clear()  # the hook is read once per process
    yield arm
    monkeypatch.delenv(failpoints.ENV)
    failpoints._hook.cache_clear()


def later(src: Source, at: dt.datetime) -> str:
    if src.sqlite:
        return f"'{at.isoformat()}'"
    return f"'{at.isoformat()}'::timestamptz"


@pytest.mark.parametrize("target", ["pg_target", "sqlite_url"])
def test_rows_updated_after_their_range_committed_pass_verify_and_move_the_watermark(
        target: str, pg_url: str, live: Any, request: pytest.FixtureRequest) -> None:
    tgt = request.getfixturevalue(target)
    src = Source(pg_url).create()
    first = migrate(pg_url, tgt)
    src.update([1, 2, 3, 4, 5, 600], at=NOW)
    # the application keeps writing: rows 1-3 change again (stamped past the run's upper bound) right after
    # the range holding them committed; the target keeps their older version, inside the run's window
    live(pg_url, f"UPDATE orders SET name = 'live ' || id, updated_at = {later(src, NOW + dt.timedelta(seconds=60))} "
                 "WHERE id IN (1, 2, 3)")
    s = migrate(pg_url, tgt)
    assert s.ranges_mismatched == [] and s.rows_copied == 7  # and row 1000, at the stored watermark
    assert s.watermark_before == first.watermark_after and s.watermark_after == NOW.isoformat()
    live(pg_url, None)
    nxt = migrate(pg_url, tgt)  # carries rows 1-3 (and the 3 rows at the watermark again: inclusive)
    assert nxt.rows_copied == 6 and nxt.watermark_after == (NOW + dt.timedelta(seconds=60)).isoformat()
    equal(pg_url, tgt)


@pytest.mark.parametrize("target", ["pg_target", "sqlite_url"])
def test_a_real_difference_in_the_window_is_still_found(target: str, pg_url: str, live: Any,
                                                        request: pytest.FixtureRequest) -> None:
    tgt = request.getfixturevalue(target)
    src = Source(pg_url).create()
    migrate(pg_url, tgt)
    src.update([7, 8], at=NOW)
    # row 7 goes back below the window after its copy: the target's row is in the window, the source's row
    # is neither gone nor past the upper bound, so it differs
    live(pg_url, f"UPDATE orders SET name = 'back', updated_at = {later(src, BASE)} WHERE id = 7")
    s = db_migrate(pg_url, tgt, "orders", incremental="updated_at", chunk_rows=CHUNK, raise_on_failure=False)
    assert not s.ok and len(s.ranges_mismatched) == 1
    bad = s.ranges_mismatched[0]
    assert (bad.count_src, bad.count_tgt, bad.first_difference) == (2, 3, [7])  # 8 and 1000 (at the watermark)
    assert s.watermark_after == s.watermark_before  # not moved


def wm_table(url: str, *, nulls: bool = True) -> None:
    db_exec(url, "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz)")
    db_exec(url, "INSERT INTO t SELECT g, 'v' || g, '2026-01-01'::timestamptz + g * interval '1 second' "
                 "FROM generate_series(1, 1000) g")
    if nulls:
        db_exec(url, "UPDATE t SET updated_at = NULL WHERE id IN (500, 501)")


def run_t(src: str, tgt: str, **kwargs: Any) -> MigrationSummary:
    s = db_migrate(src, tgt, "t", incremental="updated_at", chunk_rows=CHUNK, raise_on_failure=False, **kwargs)
    assert s.ok and s.ranges_mismatched == [], s.render_text()
    return s


@pytest.mark.parametrize("lookback", [0, 60])
def test_deletes_ignore_keeps_deleted_rows_in_the_window_without_failing_verify(
        lookback: int, pg_url: str, pg_target: str) -> None:
    wm_table(pg_url)
    run_t(pg_url, pg_target, lookback=lookback)
    # a NULL-watermark row (in every window) and, within the lookback, a recent row are deleted in the source
    db_exec(pg_url, "DELETE FROM t WHERE id IN (500, 995)")
    for day in (2, 3):
        db_exec(pg_url, "INSERT INTO t VALUES (%s, 'new', %s)", (2000 + day, dt.datetime(2026, 1, day, tzinfo=dt.UTC)))
        s = run_t(pg_url, pg_target, lookback=lookback)
        assert s.watermark_after == dt.datetime(2026, 1, day, tzinfo=dt.UTC).isoformat()
    reset = run_t(pg_url, pg_target, lookback=lookback, reset_incremental=True)
    assert reset.rows_copied == 1000 and reset.watermark_before is None
    kept = db_exec(pg_target, "SELECT id FROM t WHERE id IN (500, 995) ORDER BY id")
    assert kept == [(500,), (995,)]  # ignore: the target keeps what the source deleted


EQUAL_TYPES = {"pg_url": "timestamp(0)", "sqlite_source": "TIMESTAMP", "mysql_url": "DATETIME"}


@pytest.fixture
def sqlite_source(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'source.sqlite3'}"


@pytest.mark.parametrize("source", list(EQUAL_TYPES))
def test_rows_committed_later_at_the_watermark_itself_are_not_lost(source: str, pg_target: str,
                                                                   request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(source)
    ph = "?" if url.startswith("sqlite") else "%s"
    run_sql(url, f"CREATE TABLE t (id int PRIMARY KEY, v text, updated_at {EQUAL_TYPES[source]})")
    for i in range(1, 21):  # one second's writes
        run_sql(url, f"INSERT INTO t VALUES ({ph}, {ph}, '2026-01-01 10:00:00')", (i, f"v{i}"))
    first = run_t(url, pg_target)
    # another writer commits in that same second (a second-precision column: the same value)
    run_sql(url, f"INSERT INTO t VALUES ({ph}, 'same second', '2026-01-01 10:00:00')", (21,))
    run_sql(url, "UPDATE t SET v = 'updated in the same second' WHERE id = 5")
    second = run_t(url, pg_target)
    assert second.watermark_before == first.watermark_after == second.watermark_after
    assert second.rows_copied == 21  # the watermark's own second again, upserted
    assert db_exec(pg_target, "SELECT v FROM t WHERE id IN (5, 21) ORDER BY id") == [
        ("updated in the same second",), ("same second",)]
    check = db_migrate(url, pg_target, "t", verify_only=True, chunk_rows=CHUNK, raise_on_failure=False)
    assert check.ok, check.message
