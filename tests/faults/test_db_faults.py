"""db_migrate under database faults: the target connection killed mid-range, a constraint violated by one range.

(a) ``pg_terminate_backend`` of the target's writing backend while a range's transaction is open,
made exact by a hold in the range's own code path: either a transform that waits (then the range's
first target statement waits on a table lock the test holds, and is killed there), or a row trigger
that blocks in the middle of the range's COPY (rows of the range already written in the transaction).
The range must be retried (chunk_retries) and the run end equal to the source, nothing duplicated.

(b) a CHECK constraint or a unique index in a pre-created target that the rows of exactly one range
violate: that range fails with a message naming it and the constraint, every other range is
committed, nothing of the failed range is in the target, and the summary adds up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.db_migrate import MigrationSummary, db_migrate
from tasks.core.outcomes import read_dead_letters
from tests.faults.db_fault_helpers import MARKER, calls
from tests.fixtures.postgres import PG_PASSWORD
from tests.tasks.db.test_migration import pg_exec

ROWS, CHUNK = 1000, 100
RANGES = ROWS // CHUNK
ORDERED = "SELECT * FROM items ORDER BY id"
TABLE_DDL = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2) NOT NULL)"
ADVISORY_KEY = 4242
HELD_ID = 350  # the mid-copy hold: the 50th row of the range (300, 400]


def conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def source(pg_url: str) -> str:
    """A plain source table: ids 1..1000, so ranges of 100 rows are (0, 100], (100, 200], ..."""
    pg_exec(pg_url, TABLE_DDL)
    pg_exec(pg_url, "INSERT INTO items SELECT g, 'name-' || g, g * 1.25 FROM generate_series(1, %s) g", (ROWS,))
    return pg_url


@pytest.fixture
def runner() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="db-fault-run") as pool:
        yield pool


def wait_for(predicate: Callable[[], Any], run: Future[MigrationSummary], *, what: str, timeout: float = 90) -> Any:
    """Poll until ``predicate()`` is truthy (its value is returned); fail early if the run ended first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if run.done():
            raise AssertionError(f"the run ended before {what}: {run.result().render_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def terminate_backend(conn: psycopg.Connection[Any], pid: int) -> None:
    """Kill one backend (the range's writer, found blocked inside its transaction). Only that one: another
    connection to the target (an idle pooled one, the ledger's, a previous test's closing) is not the fault."""
    assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall() == [(True,)]


def assert_equal_to_source(source: str, target: str) -> None:
    assert pg_exec(target, "SELECT count(*), count(DISTINCT id) FROM items") == [(ROWS, ROWS)]  # nothing duplicated
    assert pg_exec(source, ORDERED) == pg_exec(target, ORDERED)


def assert_adds_up(summary: MigrationSummary) -> None:
    assert summary.succeeded + summary.failed + summary.skipped == summary.total, summary.render_text()
    assert summary.ranges_total == RANGES
    assert summary.ranges_copied + summary.ranges_resumed + len(summary.ranges_failed) \
        == summary.ranges_total


# --------------------------------------------------------------------------- (a) the target connection killed


@pytest.mark.parametrize(("moment", "chunk_retries"), [("first-statement", 1), ("mid-copy", 1), ("mid-copy", 0)])
def test_target_connection_killed_mid_range(moment: str, chunk_retries: int, source: str, pg_target: str,
                                            tmp_path: Path, runner: ThreadPoolExecutor,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target_db = dbname(pg_target)
    pg_exec(pg_target, TABLE_DDL)
    kwargs: dict[str, Any] = {"chunk_rows": CHUNK, "mode": "append", "max_concurrency": 1,
                              "run_key": f"kill-conn-{moment}-{chunk_retries}", "chunk_retries": chunk_retries}
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    if moment == "first-statement":
        # the 4th range's transform waits (source rows read, target connection open); then its first
        # target statement waits on the test's table lock, inside the range's transaction, and is killed there
        monkeypatch.setenv("BF_DBFAULT_DIR", str(hold_dir))
        monkeypatch.setenv("BF_DBFAULT_CALL", "3")
        kwargs["transform"] = "tests.faults.db_fault_helpers:hold_nth"
        waiting = """SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()
                     AND wait_event_type = 'Lock' AND xact_start IS NOT NULL"""
    else:
        # the binary COPY fast path (no transform); a row trigger blocks at row 350, the 50th of range 3,
        # on an advisory lock the test holds: 49 rows of the range are written, uncommitted, when it dies
        pg_exec(pg_target, f"""
            CREATE FUNCTION hold_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id = {HELD_ID} THEN PERFORM pg_advisory_xact_lock_shared({ADVISORY_KEY}); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER hold_row BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION hold_row();
        """)
        waiting = """SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                     WHERE a.datname = %s AND l.locktype = 'advisory' AND NOT l.granted
                     AND a.xact_start IS NOT NULL"""

    def blocked() -> list[tuple[Any, ...]]:
        with psycopg.connect(conninfo(pg_target), autocommit=True) as probe:
            return probe.execute(waiting, (target_db,)).fetchall()

    with psycopg.connect(conninfo(pg_target)) as test_conn:
        if moment == "mid-copy":
            test_conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
            test_conn.commit()  # a session lock: held until unlocked
        run = runner.submit(db_migrate, source, pg_target, "items", **kwargs, raise_on_failure=False)
        if moment == "first-statement":
            marker = hold_dir / MARKER
            held = json.loads(wait_for(lambda: marker.exists() and marker.read_text(), run, what="the held range"))
            assert (held["first"], held["last"], held["rows"]) == (301, 400, CHUNK)
            test_conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  # held until rollback below
            marker.unlink()
        [(writer,)] = wait_for(blocked, run, what="the range's writer blocked inside its transaction")
        # nothing of range 3 is committed (asked on the lock holder's own connection: a new one would wait)
        assert test_conn.execute("SELECT count(*) FROM items WHERE id > 300").fetchall() == [(0,)]
        terminate_backend(test_conn, writer)
        test_conn.rollback()  # releases the table lock (first-statement)
        if moment == "mid-copy":
            test_conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
            test_conn.commit()
        summary = run.result(timeout=120)

    assert_adds_up(summary)
    if chunk_retries:  # what the code does: the killed range is retried on a new connection
        assert summary.ok, summary.render_text()
        assert summary.ranges_failed == [] and summary.ranges_copied == RANGES
        assert (summary.total, summary.succeeded, summary.failed) == (ROWS, ROWS, 0)
        assert summary.ranges_matching == RANGES and not summary.ranges_mismatched
        if moment == "first-statement":
            assert calls(hold_dir) == RANGES + 1  # range 3 ran twice, every other range once
    else:  # no retry left: the range fails, named, the others are committed; a rerun finishes it
        assert not summary.ok and summary.ranges_failed == [3], summary.render_text()
        assert (summary.succeeded, summary.failed) == (ROWS - CHUNK, CHUNK)
        dead = list(read_dead_letters(summary.dead_letter_path or ""))
        assert [(d["item"]["range"], d["item"]["lower"], d["item"]["upper"]) for d in dead] == [(3, [300], [400])]
        # the termination itself is what the dead letter says, not a rollback error on the dead connection
        assert dead[0]["category"] == "connection_lost" and "range 3" in dead[0]["message"], dead[0]
        assert "terminating connection" in dead[0]["message"] or "closed" in dead[0]["message"], dead[0]
        assert pg_exec(pg_target, "SELECT count(*) FROM items WHERE id > 300 AND id <= 400") == [(0,)]
        rerun = db_migrate(source, pg_target, "items", **kwargs)
        assert rerun.ok, rerun.render_text()
        assert rerun.ranges_resumed == RANGES - 1 and rerun.ranges_copied == 1
        assert (rerun.total, rerun.succeeded, rerun.failed) == (ROWS, ROWS, 0)
    assert_equal_to_source(source, pg_target)


# --------------------------------------------------------------------------- (b) a constraint violated by one range

CONSTRAINTS = {
    "check": ("ALTER TABLE items ADD CONSTRAINT amount_below_2000 CHECK (amount < 2000)", "amount_below_2000",
              "UPDATE items SET amount = 5000 WHERE id = 550"),
    "unique": ("CREATE UNIQUE INDEX items_name_unique ON items (name)", "items_name_unique",
               "UPDATE items SET name = 'name-549' WHERE id = 550"),
}


@pytest.mark.parametrize("path", ["copy", "rows"])
@pytest.mark.parametrize("constraint", list(CONSTRAINTS))
def test_constraint_violation_fails_one_range_only(constraint: str, path: str, source: str, pg_target: str) -> None:
    ddl, name, breaking = CONSTRAINTS[constraint]
    pg_exec(source, breaking)  # only id 550, in the range (500, 600], breaks the target's constraint
    pg_exec(pg_target, TABLE_DDL)
    pg_exec(pg_target, ddl)
    summary = db_migrate(source, pg_target, "items", chunk_rows=CHUNK, mode="append", create_target=False,
                         copy_format="auto" if path == "copy" else "rows", run_key=f"constraint-{constraint}-{path}",
                         chunk_retries=1, raise_on_failure=False)
    assert not summary.ok
    assert_adds_up(summary)
    assert summary.ranges_failed == [5] and summary.ranges_copied == RANGES - 1
    assert (summary.total, summary.succeeded, summary.failed, summary.skipped) == (ROWS, ROWS - CHUNK, CHUNK, 0)
    dead = list(read_dead_letters(summary.dead_letter_path or ""))
    assert [d["item"]["range"] for d in dead] == [5]
    assert dead[0]["item"]["lower"] == [500] and dead[0]["item"]["upper"] == [600]
    message = dead[0]["message"]
    assert "range 5" in message and name in message, message
    assert dead[0]["category"] == "constraint" and "constraint" in message and "column '?'" not in message, message
    assert "at the row with key {'id': 550}" in message or path == "copy", message
    assert dead[0]["attempts"] == 1  # bad data is not retried
    assert any("range 5" in e.example and name in e.example for e in summary.top_errors), summary.top_errors
    # one transaction per range: nothing of range 5, every other range whole
    assert pg_exec(pg_target, "SELECT count(*) FROM items WHERE id > 500 AND id <= 600") == [(0,)]
    expected = pg_exec(source, "SELECT * FROM items WHERE id <= 500 OR id > 600 ORDER BY id")
    assert pg_exec(pg_target, ORDERED) == expected
    assert summary.ranges_verified == RANGES - 1 == summary.ranges_matching
    assert PG_PASSWORD not in message and PG_PASSWORD not in summary.model_dump_json()
