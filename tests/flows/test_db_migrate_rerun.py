"""db_migrate reruns decided by the target's ledger, not by the state dir (real PostgreSQL, SQLite files, Prefect).

A run key's state dir records every range it finished; the target's ledger (``_batchflows_ranges``) records every
range committed there. A rerun of the key into a target recreated since (a database dropped and created again, a
SQLite file deleted, a target restored from a backup older than some ranges) copies again every range the ledger
lacks, says so, and ends with exactly the source's rows; a range the ledger holds is never copied twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.db_migrate import MigrationSummary, db_migrate
from tests.tasks.db.test_migration import db_exec, key_values, pg_exec, sqlite_exec

CHUNK = 400
N = len(key_values())
RANGES = -(-N // CHUNK)
ORDERED = "SELECT * FROM items ORDER BY id"
LEDGER = "_batchflows_ranges"


def count(url: str, table: str = "items") -> int:
    return db_exec(url, f"SELECT count(*) FROM {table}")[0][0]


def assert_clean(summary: MigrationSummary) -> None:
    assert summary.ok, summary.render_text()
    assert summary.ranges_total == RANGES == summary.ranges_verified == summary.ranges_matching
    assert summary.ranges_mismatched == [] and summary.ranges_failed == []


def recreate(pg_cluster: Any, url: str) -> None:
    """Drop the target database (or delete the SQLite file) and create it again, empty, under the same URL."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink()
        return
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    pg_cluster.create_database(name)


@pytest.mark.parametrize("mode", ["upsert", "append"])
@pytest.mark.parametrize("target", ["pg_target", "sqlite_url"])
def test_rerun_into_a_recreated_target_copies_every_range_again(
        target: str, mode: str, pg_cluster: Any, pg_items: str, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    tgt = request.getfixturevalue(target)
    first = db_migrate(pg_items, tgt, "items", mode=mode, chunk_rows=CHUNK, run_key="recreated")  # type: ignore[arg-type]
    assert_clean(first)
    assert count(tgt) == N and count(tgt, LEDGER) == RANGES

    recreate(pg_cluster, tgt)
    caplog.set_level("INFO")
    rerun = db_migrate(pg_items, tgt, "items", mode=mode, chunk_rows=CHUNK, run_key="recreated")  # type: ignore[arg-type]
    assert_clean(rerun)
    assert rerun.ranges_not_in_ledger == list(range(RANGES))
    assert (rerun.ranges_copied, rerun.ranges_resumed, rerun.chunks_resumed) == (RANGES, 0, 0)
    assert rerun.rows_copied == N == count(tgt) and count(tgt, LEDGER) == RANGES
    if tgt.startswith("postgresql"):
        assert pg_exec(pg_items, ORDERED) == pg_exec(tgt, ORDERED)
    out, errs = capfd.readouterr()
    assert f"the target's ledger does not hold ranges 0-{RANGES - 1}: copying them again" in caplog.text + out + errs

    # the ledger holds every range now: the next rerun of the key copies nothing, whatever the mode
    again = db_migrate(pg_items, tgt, "items", mode=mode, chunk_rows=CHUNK, run_key="recreated")  # type: ignore[arg-type]
    assert_clean(again)
    assert again.ranges_not_in_ledger == [] and again.ranges_resumed == RANGES and again.ranges_copied == 0
    assert count(tgt) == N and count(tgt, LEDGER) == RANGES


@pytest.mark.parametrize("target", ["pg_target", "sqlite_url"])
def test_rerun_copies_only_the_ranges_the_ledger_lost(target: str, pg_items: str, request: pytest.FixtureRequest,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """A target restored from a backup taken before range 2 committed: range 2 alone is copied again (an append,
    so a range copied twice would collide with the target's key), the others are taken from the state dir."""
    tgt = request.getfixturevalue(target)
    assert_clean(db_migrate(pg_items, tgt, "items", mode="append", chunk_rows=CHUNK, run_key="restored"))
    ph, lost = ("?" if tgt.startswith("sqlite") else "%s"), 2
    run = sqlite_exec if tgt.startswith("sqlite") else pg_exec
    run(tgt, f"DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT {CHUNK} OFFSET {lost * CHUNK})")
    run(tgt, f"DELETE FROM {LEDGER} WHERE range_index = {ph}", (lost,))
    assert count(tgt) == N - CHUNK

    caplog.set_level("INFO")
    rerun = db_migrate(pg_items, tgt, "items", mode="append", chunk_rows=CHUNK, run_key="restored")
    assert_clean(rerun)
    assert rerun.ranges_not_in_ledger == [lost] and rerun.ranges_copied == 1 and rerun.ranges_resumed == RANGES - 1
    assert db_exec(tgt, "SELECT count(*), count(DISTINCT id) FROM items") == [(N, N)]
    assert count(tgt, LEDGER) == RANGES
    out, errs = capfd.readouterr()
    assert f"the target's ledger does not hold range {lost}: copying it again" in caplog.text + out + errs
