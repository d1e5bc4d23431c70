"""db_migrate end to end: real PostgreSQL (throwaway cluster), real SQLite files, a real Prefect server.

The awkward table of tests/tasks/db/test_migration.py (nulls, unicode, numeric precision, timestamptz, json, bytea,
uuid, arrays, gaps and skewed keys) goes PG->PG, PG->SQLite and SQLite->PG through the flow in every
mode; verification catches a changed row; a SIGKILLed run resumes; a dry run writes nothing; the
password never shows up in logs, the state dir, the summary or the flow run's stored parameters.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import LogSort

from flows.db_migrate import MigrationSummary, db_migrate, db_migrate_flow, db_verify
from tasks.core.state import RunDir
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.fixtures.postgres import PG_PASSWORD
from tests.run_flow import start_flow, summary_in
from tests.tasks.db.test_dburl import stored_for_run
from tests.tasks.db.test_migration import db_exec, key_values, pg_exec, sqlite_exec
from tests.tasks.db.test_mysql import my_exec

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 800
N = len(key_values())
RANGES = -(-N // CHUNK)
ORDERED = "SELECT * FROM items ORDER BY id"


def count(url: str, table: str = "items") -> int:
    return db_exec(url, f"SELECT count(*) FROM {table}")[0][0]


def assert_clean(summary: MigrationSummary, *, ranges: int = RANGES) -> None:
    assert summary.ok, summary.render_text()
    assert summary.ranges_total == ranges and summary.ranges_verified == ranges == summary.ranges_matching
    assert summary.ranges_mismatched == [] and summary.ranges_failed == []


DIRECTIONS = {"pg-pg": ("pg_items", "pg_target"), "pg-sqlite": ("pg_items", "sqlite_url"),
              "sqlite-pg": ("sqlite_items", "pg_target")}


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_migrate_every_direction_and_mode(direction: str, mode: str, request: pytest.FixtureRequest) -> None:
    src, tgt = (request.getfixturevalue(n) for n in DIRECTIONS[direction])
    summary = db_migrate(src, tgt, "items", mode=mode, chunk_rows=CHUNK)  # type: ignore[arg-type]
    assert_clean(summary)
    assert summary.target_created and summary.ddl and summary.verify == "checksums"
    assert (summary.total, summary.succeeded, summary.rows_copied, summary.rows_estimated) == (N, N, N, N)
    assert summary.ranges_copied == RANGES and count(tgt) == N
    # a PostgreSQL table created for an append gets its key after the load (tasks.db.deferred_key)
    assert (summary.key_build_seconds is not None) == (mode == "append" and direction != "pg-sqlite")
    if direction == "pg-pg":
        assert pg_exec(src, ORDERED) == pg_exec(tgt, ORDERED)

    resumed = db_migrate(src, tgt, "items", mode=mode, chunk_rows=CHUNK, run_key=summary.run_key)  # type: ignore[arg-type]
    assert_clean(resumed)
    assert resumed.ranges_resumed == RANGES and resumed.ranges_copied == 0 and count(tgt) == N  # nothing twice
    again = db_migrate(src, tgt, "items", mode=mode, chunk_rows=CHUNK, chunk_retries=0, raise_on_failure=False)  # type: ignore[arg-type]
    assert not again.target_created
    if mode == "append":  # a new run appends again: the target's key refuses every range, naming it
        assert not again.ok and again.ranges_failed == list(range(RANGES)) and count(tgt) == N
        assert "range 0" in again.top_errors[0].example or "constraint" in again.top_errors[0].example
    else:
        assert_clean(again)
        assert again.rows_copied == N and count(tgt) == N
        if direction == "pg-pg" and mode == "upsert":  # the target holds every range: none is written again
            assert again.ranges_by_path == {"unchanged": RANGES}


def test_verify_catches_a_row_changed_behind_its_back(pg_items: str, pg_target: str, sqlite_url: str) -> None:
    for tgt in (pg_target, sqlite_url):
        assert_clean(db_migrate(pg_items, tgt, "items", chunk_rows=CHUNK, mode="append"))
        ph = "?" if tgt.startswith("sqlite") else "%s"
        db_exec(tgt, f"UPDATE items SET big = big + 0.0000000001 WHERE id = {ph}", (5007,))
        bad = db_verify(pg_items, tgt, "items", chunk_rows=CHUNK, raise_on_failure=False)
        assert not bad.ok and bad.verify_only
        assert [m.index for m in bad.ranges_mismatched] == [1]
        assert bad.ranges_mismatched[0].first_difference == [5007]
        assert "range 1 " in bad.message and "first differing key [5007]" in bad.message
        assert bad.ranges_matching == RANGES - 1

    # through the migration itself: a row deleted in the target after the load is caught by the resumed run's
    # verify (its ranges are all recorded as done, so nothing repairs the damage behind its back)
    first = db_migrate(pg_items, pg_target, "items", chunk_rows=CHUNK, mode="upsert", run_key="damaged")
    assert first.ok
    pg_exec(pg_target, "DELETE FROM items WHERE id = %s", (7,))
    summary = db_migrate(pg_items, pg_target, "items", chunk_rows=CHUNK, mode="upsert", run_key="damaged", raise_on_failure=False)
    assert not summary.ok and summary.state == "Failed"
    assert summary.ranges_resumed == RANGES
    assert [m.index for m in summary.ranges_mismatched] == [0]  # the first loop's change to 5007 was upserted away
    assert "range 0 " in summary.message and "source 800 rows, target 799 rows" in summary.message


def test_failing_range_fails_alone_then_resumes(sqlite_items: str, pg_target: str, state_dir: Path) -> None:
    sqlite_exec(sqlite_items, "UPDATE items SET price = 'n/a' WHERE id = 42")
    summary = db_migrate(sqlite_items, pg_target, "items", chunk_rows=CHUNK, run_key="bad-row", chunk_retries=0, raise_on_failure=False)
    assert not summary.ok and summary.ranges_failed == [0]
    assert summary.ranges_copied == RANGES - 1 and summary.failed == CHUNK
    assert summary.ranges_verified == RANGES - 1 == summary.ranges_matching
    example = summary.top_errors[0].example
    assert "{'id': 42}" in example and "'price'" in example and "'n/a'" in example
    dead = [json.loads(line) for line in Path(summary.dead_letter_path or "").read_text().splitlines()]
    assert [d["item"]["range"] for d in dead] == [0]
    assert count(pg_target) == N - CHUNK

    sqlite_exec(sqlite_items, "UPDATE items SET price = '1.5' WHERE id = 42")
    rerun = db_migrate(sqlite_items, pg_target, "items", chunk_rows=CHUNK, run_key="bad-row")
    assert_clean(rerun)
    assert rerun.ranges_resumed == RANGES - 1 and rerun.chunks_resumed == RANGES - 1
    assert count(pg_target) == N
    assert pg_exec(pg_target, "SELECT price FROM items WHERE id = 42") == [(Decimal("1.5000"),)]


def test_dry_run_writes_nothing(pg_items: str, sqlite_url: str, pg_target: str, state_dir: Path) -> None:
    for tgt in (sqlite_url, pg_target):
        summary = db_migrate(pg_items, tgt, "items", chunk_rows=CHUNK, dry_run=True)
        assert summary.ok and summary.dry_run and summary.ranges_total == RANGES and summary.rows_estimated == N
        assert summary.ddl and summary.ddl.startswith('CREATE TABLE "items"') and summary.plan
        assert "range 0: (None, [" in summary.plan and PG_PASSWORD not in summary.model_dump_json()
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    assert pg_exec(pg_target, "SELECT to_regclass('items') IS NULL") == [(True,)]
    assert not (state_dir / "runs").exists()


def _start(params: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return start_flow("flows.db_migrate:db_migrate", params, env)


def _summary_of(output: str) -> MigrationSummary:
    return summary_in(output, MigrationSummary)


@pytest.mark.slow
def test_sigkill_mid_migration_then_rerun_equals_source(pg_items: str, pg_target: str, state_dir: Path,
                                                         tmp_path: Path) -> None:
    """PG -> PG through the row path (a gated identity transform), killed after exactly two committed ranges.

    The gate (tests/faults/helpers.py) lets the first two ranges through and holds every later one, so
    the kill lands after the second range's result record whatever the machine's load.
    """
    chunk, done = 400, 2
    ranges = -(-N // chunk)
    gate = tmp_path / "gate"
    gate.mkdir()
    params = {"source_url": pg_items, "target_url": pg_target, "table": "items", "chunk_rows": chunk,
              "mode": "append", "run_key": "killed-migration", "transform": "tests.faults.helpers:gated_frame",
              "max_concurrency": 2}
    proc = _start(params, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(done)})
    records = RunDir.for_run("db-migrate", "killed-migration", state_dir).chunks
    wait_until(lambda: records.exists() and len(list(records.iterdir())) >= done and passed(gate) > done, proc,
               what=f"{done} committed ranges")
    kill(proc)
    assert len(list(records.iterdir())) == done
    killed_at = count(pg_target)
    assert 0 < killed_at < N, "the run was not killed mid-migration; the test proves nothing"
    has_key = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'p'"
    assert pg_exec(pg_target, has_key) == [(0,)]  # an append's key is built after its load: not yet
    assert str(pg_exec(pg_target, "SELECT obj_description('items'::regclass)")[0][0]).startswith(
        "batchflows: primary key pending")

    rerun = _start(params, {})
    out = finish(rerun)
    assert rerun.returncode == 0, out
    summary = _summary_of(out)
    assert summary.ok and summary.ranges_total == ranges and summary.verify == "counts"
    assert summary.ranges_matching == ranges and not summary.ranges_mismatched
    assert summary.ranges_resumed == done and summary.ranges_copied == ranges - done
    assert summary.ranges_resumed + summary.ranges_copied == ranges
    assert pg_exec(pg_target, "SELECT count(*), count(DISTINCT id) FROM items") == [(N, N)]
    assert pg_exec(pg_items, ORDERED) == pg_exec(pg_target, ORDERED)  # exactly the source
    assert pg_exec(pg_target, has_key) == [(1,)] and summary.key_build_seconds is not None  # the rerun built it
    assert pg_exec(pg_target, "SELECT obj_description('items'::regclass)") == [(None,)]
    assert PG_PASSWORD not in out


def test_password_never_leaks_and_secret_blocks(pg_cluster: Any, pg_items: str, sqlite_items: str, pg_target: str,
                                                state_dir: Path, caplog: pytest.LogCaptureFixture,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    Secret(value=pg_items).save("bf-test-db-source", overwrite=True)
    Secret(value=pg_target).save("bf-test-db-target", overwrite=True)
    caplog.set_level("DEBUG")
    summary = db_migrate(table="items", source_secret="bf-test-db-source", target_url="secret:bf-test-db-target",
                         chunk_rows=CHUNK, mode="upsert", run_key="secret-run")
    assert_clean(summary)
    assert summary.source.endswith(pg_items.rsplit("/", 1)[1]) and "***" in summary.source

    # a failing run with the password in play: conversion error, dead letters, top errors
    sqlite_exec(sqlite_items, "UPDATE items SET price = 'n/a' WHERE id = 42")
    failed = db_migrate(sqlite_items, pg_target, "items", target_table="other", chunk_rows=CHUNK, chunk_retries=0, raise_on_failure=False)
    assert not failed.ok
    bad_host = pg_items.replace(f":{pg_cluster.port}/", ":1/")
    with pytest.raises(Exception) as err:
        db_migrate(bad_host, pg_target, "items")
    assert "127.0.0.1:1" in str(err.value)

    out, errs = capfd.readouterr()
    assert "range 0: row with key {'id': 42}" in caplog.text + out + errs  # the run's log lines were captured
    texts = [summary.model_dump_json(), failed.model_dump_json(), str(err.value), caplog.text, out, errs]
    texts += [p.read_text(errors="replace") for p in state_dir.rglob("*") if p.is_file()]
    with get_client(sync_client=True) as client:
        texts += [json.dumps(run.parameters, default=str) for run in client.read_flow_runs(limit=50)]
        for page in range(3):  # the newest logs: this test's runs, including the failing ones
            texts += [log.message for log in client.read_logs(limit=200, offset=200 * page,
                                                              sort=LogSort.TIMESTAMP_DESC)]
    leaks = [t[:200] for t in texts if PG_PASSWORD in t]
    assert not leaks, leaks


def test_a_refused_password_url_is_masked_in_what_prefect_stored_for_the_run() -> None:
    """Prefect stores a run's parameters before the run refuses a plain URL holding a password: the refusal
    overwrites them with the password masked (the rest of the URL kept, so the user sees which one it was), and
    the password shows nowhere else Prefect keeps for the run (name, state messages, logs)."""
    source, target = "postgresql://bob:Src-pw-1Zk@127.0.0.1:1/shop?sslmode=disable", "mysql+pymysql://amy:Tgt-pw-2Wq@h/wh"
    state = db_migrate_flow(source_url=source, target_url=target, table="items", chunk_rows=7, return_state=True)
    assert state.is_failed()
    assert "source_url: the URL holds a database password" in (state.message or "")
    assert "target_url: the URL holds a database password" in (state.message or "")
    stored = stored_for_run(state.state_details.flow_run_id)
    assert stored["parameters"]["source_url"] == "postgresql://bob:***@127.0.0.1:1/shop?sslmode=disable"
    assert stored["parameters"]["target_url"] == "mysql+pymysql://amy:***@h/wh"
    assert (stored["parameters"]["table"], stored["parameters"]["chunk_rows"]) == ("items", 7)  # the rest as given
    assert any("Finished in state Failed" in log for log in stored["logs"])
    dumped = json.dumps(stored)
    assert "Src-pw-1Zk" not in dumped and "Tgt-pw-2Wq" not in dumped, dumped


def test_json_jsonb_cannot_hold_verifies_after_an_exact_copy(pg_url: str, pg_target: str) -> None:
    """A json document with ``\\u0000`` (valid json, refused by jsonb) beside an interval (text in the target, so
    the servers compare record texts): the copy is exact and verify says so; a changed document is still found."""
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, j json, iv interval)")
    pg_exec(pg_url, r"""INSERT INTO t VALUES (1, '{"a": "\u0000"}', '1 day'), (2, '["\ud800"]', NULL),
                        (3, '{"b":  [1, 2.50]}', '2 hours')""")
    summary = db_migrate(pg_url, pg_target, "t", run_key="json-nul")
    assert summary.ok and summary.ranges_matching == 1, summary.render_text()
    assert pg_exec(pg_target, "SELECT j::text FROM t ORDER BY id") == pg_exec(pg_url, "SELECT j::text FROM t ORDER BY id")

    pg_exec(pg_target, r"""UPDATE t SET j = '{"a": "\u0001"}' WHERE id = 1""")
    bad = db_verify(pg_url, pg_target, "t", raise_on_failure=False)
    assert not bad.ok and bad.ranges_mismatched[0].first_difference == [1] and not bad.ranges_mismatched[0].error


def test_numbers_sqlite_affinity_would_change_are_kept_or_refused(pg_url: str, sqlite_url: str, pg_target: str,
                                                                  tmp_path: Path) -> None:
    """A json document that is a number (`1.10`, 23 digits) into a SQLite table db_migrate creates keeps its text
    (JSON_TEXT: TEXT affinity), and comes back into PostgreSQL exact; into a table someone declared with NUMERIC
    affinity (NUMERIC, JSON, REAL), a value SQLite would turn into another number fails its range naming the row
    and the column, and the values it keeps go in."""
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, j json, jb jsonb, n numeric, d float8)")
    pg_exec(pg_url, """INSERT INTO t VALUES (1, '12345678901234567890123', '1.10', 2.50, 1.5),
                       (2, '"x"', '{"a": 1.10}', 7, 0), (3, '5', '0.12345678901234567891', 0.12345678901234567891, -0.0),
                       (11, '1.5', '7', 3.25, 2.5), (12, '[1.10]', 'null', 1e30, -1)""")
    created = db_migrate(pg_url, sqlite_url, "t", chunk_rows=2, run_key="affinity-created")
    assert created.ok and created.ranges_matching == created.ranges_total, created.render_text()
    assert sqlite_exec(sqlite_url, "SELECT j, typeof(j), jb FROM t WHERE id = 1") == [
        ("12345678901234567890123", "text", "1.10")]
    back = db_migrate(sqlite_url, pg_target, "t", run_key="affinity-back")
    assert back.ok, back.render_text()
    q = "SELECT id, j::text, jb::text, n::text, d::text FROM t ORDER BY id"
    assert pg_exec(pg_target, q) == pg_exec(pg_url, q)

    theirs = f"sqlite:///{tmp_path / 'theirs.sqlite3'}"
    sqlite_exec(theirs, "CREATE TABLE t (id INTEGER PRIMARY KEY, j JSON, jb JSONB, n NUMERIC, d REAL)")
    refused = db_migrate(pg_url, theirs, "t", chunk_rows=1, chunk_retries=0, raise_on_failure=False,
                         run_key="affinity-theirs")
    assert refused.ranges_failed == [0, 2], refused.render_text()  # rows 1 and 3; 2, 11 and 12 keep their values
    errors = [json.dumps(d) for d in refused.dead_letters()]
    assert any("row with key {'id': 1} cannot be written: column 'j'" in e and "(JSON_TEXT)" in e for e in errors)
    assert any("row with key {'id': 3} cannot be written: column 'jb'" in e and "(JSONB_TEXT)" in e for e in errors)
    assert sqlite_exec(theirs, "SELECT id, j, jb, n, d FROM t ORDER BY id") == [
        (2, '"x"', '{"a": 1.10}', 7, 0.0), (11, 1.5, 7, 3.25, 2.5), (12, "[1.10]", "null", 1e30, -1.0)]


@pytest.mark.parametrize("with_array", [False, True])  # an array: verified row by row instead of through Arrow
def test_time_at_the_end_of_a_day_copies_exactly(with_array: bool, pg_url: str, sqlite_url: str, pg_target: str,
                                                 pg_cluster: Any) -> None:
    """PostgreSQL's time '24:00:00' (valid: a day's end) has no Python time: it travels as its text, into SQLite
    (whose time columns hold text), back into PostgreSQL, and PG -> PG on the row path; a transform, which gets
    polars values, refuses its range naming the row and the column."""
    extra, value = (", arr int[]", ", '{1,2}'") if with_array else ("", "")
    pg_exec(pg_url, f"CREATE TABLE t (id int PRIMARY KEY, tm time{extra})")
    pg_exec(pg_url, f"INSERT INTO t VALUES (1, '12:00'{value}), (2, '24:00:00'{value}), (3, '23:59:59.5'{value}), "
                    f"(4, NULL{value})")
    times = "SELECT id, tm::text FROM t ORDER BY id"
    summary = db_migrate(pg_url, sqlite_url, "t", run_key="end-of-day")
    assert summary.ok and summary.ranges_matching == 1 and summary.rows_copied == 4, summary.render_text()
    assert sqlite_exec(sqlite_url, "SELECT id, tm, typeof(tm) FROM t ORDER BY id") == [
        (1, "12:00:00", "text"), (2, "24:00:00", "text"), (3, "23:59:59.500000", "text"), (4, None, "null")]

    back = db_migrate(sqlite_url, pg_target, "t", run_key="end-of-day-back")
    assert back.ok and back.ranges_matching == 1, back.render_text()
    assert pg_exec(pg_target, times) == pg_exec(pg_url, times)
    other = pg_cluster.url(pg_cluster.create_database())
    rows = db_migrate(pg_url, other, "t", copy_format="rows", run_key="end-of-day-rows")
    assert rows.ok and rows.ranges_by_path == {"rows": 1} and pg_exec(other, times) == pg_exec(pg_url, times)

    sqlite_exec(sqlite_url, "UPDATE t SET tm = '00:00:00' WHERE id = 2")
    bad = db_verify(pg_url, sqlite_url, "t", raise_on_failure=False)
    assert not bad.ok and bad.ranges_mismatched[0].first_difference == [2]

    refused = db_migrate(pg_url, pg_cluster.url(pg_cluster.create_database()), "t", transform=lambda f: f,
                         chunk_retries=0, raise_on_failure=False)
    assert not refused.ok and refused.ranges_failed == [0]
    example = refused.top_errors[0].example
    assert "{'id': 2}" in example and "'tm'" in example and "'24:00:00'" in example


def test_time_at_the_end_of_a_day_into_mysql(pg_url: str, mysql_url: str) -> None:
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, tm time)")
    pg_exec(pg_url, "INSERT INTO t VALUES (1, '24:00:00'), (2, '08:15:00.25')")
    summary = db_migrate(pg_url, mysql_url, "t", run_key="end-of-day-mysql")
    assert summary.ok and summary.ranges_matching == 1, summary.render_text()
    assert [str(v) for _, v in my_exec(mysql_url, "SELECT id, tm FROM t ORDER BY id")] == ["1 day, 0:00:00",
                                                                                          "8:15:00.250000"]
