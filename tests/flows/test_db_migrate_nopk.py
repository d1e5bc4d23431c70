"""db_migrate of tables without a primary key (issue 15): real PostgreSQL, SQLite files and MariaDB.

An event table with identical duplicate rows goes PG->PG (ctid page ranges), SQLite->PG (rowid ranges),
PG->SQLite, MySQL->PG (one range) and PG->MySQL append-only: every copy of every row arrives (the multiset of rows
is the source's), the target gets no invented key, verify compares the whole table order-independently and
catches a changed row, a rerun with the run key writes nothing twice, and a SIGKILLed run rerun ends with
exactly the source's rows. upsert, replace, incremental and a keyless query are refused up front, naming
the table and what to pass; a user-given key= still cuts keyset ranges.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import Counter
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.db_migrate import MigrationSummary, db_migrate, db_verify
from tasks.core import ConfigError
from tasks.core.state import RunDir
from tasks.db import plan_ranges
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.run_flow import start_flow, summary_in
from tests.tasks.db.test_migration import db_exec, pg_exec, sqlite_exec
from tests.tasks.db.test_mysql import my_exec

CHUNK = 400
UTC = dt.UTC


def event_rows() -> list[tuple[Any, ...]]:
    """2,400 distinct rows, every 5th twice and every 7th three times: identical rows that must all arrive."""
    base = [(i % 50, f"kind-{i % 7}" + ("-é漢" if i % 11 == 0 else ""), None if i % 13 == 0 else f"note {i}",
             Decimal(i) / 4, dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=i)) for i in range(2400)]
    return [row for i, row in enumerate(base) for _ in range(3 if i % 7 == 0 else 2 if i % 5 == 0 else 1)]


ROWS = event_rows()
N = len(ROWS)
COLS = "n, kind, note, amount, at"


def create_events(url: str, name: str = "events") -> None:
    if url.startswith("sqlite"):
        sqlite_exec(url, f"CREATE TABLE {name} (n INTEGER NOT NULL, kind TEXT, note TEXT, amount NUMERIC(12,2), "
                         "at TIMESTAMPTZ)")
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            conn.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?, ?)",
                             [(*r[:3], str(r[3]), r[4].isoformat()) for r in ROWS])
    elif url.startswith("mysql"):
        my_exec(url, f"CREATE TABLE {name} (n INT NOT NULL, kind VARCHAR(40), note TEXT, amount DECIMAL(12,2), "
                     "at DATETIME(6))")
        my_exec(url, f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s)",
                [(*r[:4], r[4].replace(tzinfo=None)) for r in ROWS])
    else:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute(f"CREATE TABLE {name} (n integer NOT NULL, kind text, note text, amount numeric(12,2), "
                         "at timestamptz)")
            with conn.cursor().copy(f"COPY {name} ({COLS}) FROM STDIN") as copy:
                for row in ROWS:
                    copy.write_row(row)


def multiset(url: str, table: str = "events") -> Counter[tuple[Any, ...]]:
    """The table's rows as a multiset, values normalized across dialects (numeric as Decimal, time as UTC)."""
    out: Counter[tuple[Any, ...]] = Counter()
    run = my_exec if url.startswith("mysql") else db_exec
    for n, kind, note, amount, at in run(url, f"SELECT {COLS} FROM {table}"):
        when = dt.datetime.fromisoformat(at) if isinstance(at, str) else at
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        out[(int(n), kind, note, Decimal(str(amount)), when)] += 1
    return out


def has_primary_key(url: str, table: str = "events") -> bool:
    if url.startswith("sqlite"):
        return any(r[5] for r in sqlite_exec(url, f"PRAGMA table_info({table})"))
    return bool(pg_exec(url, "SELECT 1 FROM pg_index WHERE indrelid = %s::regclass AND indisprimary", (table,)))


def assert_copied(summary: MigrationSummary, source: str, target: str) -> None:
    assert summary.ok, summary.render_text()
    assert summary.key == [] and summary.rows_copied == N and summary.ranges_failed == []
    assert summary.verify == "checksums" and summary.ranges_verified == summary.ranges_matching == 1
    assert summary.resume_note and "exact only if the source is not modified" in summary.resume_note
    assert multiset(target) == multiset(source) == Counter(ROWS)  # every duplicate arrived, nothing else
    assert not has_primary_key(target)


DIRECTIONS = {"pg-pg": ("pg_url", "pg_target", "ctid"), "sqlite-pg": ("sqlite_source", "pg_target", "rowid"),
              "pg-sqlite": ("pg_url", "sqlite_url", "ctid")}


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.sqlite3'}"


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_keyless_table_copies_every_duplicate_resumes_and_verifies(direction: str,
                                                                   request: pytest.FixtureRequest) -> None:
    src_fx, tgt_fx, scan = DIRECTIONS[direction]
    src, tgt = request.getfixturevalue(src_fx), request.getfixturevalue(tgt_fx)
    create_events(src)
    plan = db_migrate(src, tgt, "events", mode="append", chunk_rows=CHUNK, dry_run=True)
    assert plan.plan and "key none: append-only in" in plan.plan and plan.ranges_total > 2
    assert ("pages [" if scan == "ctid" else "rowids (") in plan.plan and "PRIMARY KEY" not in (plan.ddl or "")

    summary = db_migrate(src, tgt, "events", mode="append", chunk_rows=CHUNK)
    assert_copied(summary, src, tgt)
    assert summary.ranges_total == summary.ranges_copied > 2 and scan in (summary.resume_note or "")

    again = db_migrate(src, tgt, "events", mode="append", chunk_rows=CHUNK, run_key=summary.run_key)
    assert again.ok and again.ranges_resumed == summary.ranges_total and again.ranges_copied == 0
    assert multiset(tgt) == Counter(ROWS)  # the rerun wrote nothing twice

    assert db_verify(src, tgt, "events", chunk_rows=CHUNK).ok
    ph = "?" if tgt.startswith("sqlite") else "%s"
    db_exec(tgt, f"UPDATE events SET note = 'changed' WHERE n = {ph} AND note = {ph}", (7, "note 7"))
    bad = db_verify(src, tgt, "events", chunk_rows=CHUNK, raise_on_failure=False)
    assert not bad.ok and [m.count_src - m.count_tgt for m in bad.ranges_mismatched] == [0]
    assert "whole table" in bad.ranges_mismatched[0].describe()


def test_mysql_keyless_table_to_pg_and_back(mysql_url: str, pg_target: str, mariadb_server: Any) -> None:
    create_events(mysql_url)
    summary = db_migrate(mysql_url, pg_target, "events", mode="append", chunk_rows=CHUNK)
    assert_copied(summary, mysql_url, pg_target)
    assert summary.ranges_total == 1 and "1 range (the whole table)" in (summary.resume_note or "")
    other = mariadb_server.url(mariadb_server.create_database())  # PG (ctid ranges) -> MySQL, no key created
    back = db_migrate(pg_target, other, "events", mode="append", chunk_rows=CHUNK)
    assert back.ok and back.ranges_total > 2 and multiset(other) == Counter(ROWS)
    assert my_exec(other, "SELECT count(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                          "AND TABLE_NAME = 'events'") == [(0,)]


def test_keyless_refusals_and_a_given_key(pg_url: str, pg_target: str) -> None:
    create_events(pg_url)
    for mode in ("upsert", "replace"):
        with pytest.raises(ConfigError, match=rf"table events has no primary key, so mode='{mode}'.*mode='append'"):
            db_migrate(pg_url, pg_target, "events", mode=mode)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"table events has no primary key: incremental runs.*pass key="):
        db_migrate(pg_url, pg_target, "events", incremental="at", deletes="compare_keys")
    with pytest.raises(ConfigError, match="a query source needs key"):
        db_migrate(pg_url, pg_target, query="SELECT * FROM events", target_table="q", mode="append", dry_run=True)
    with pytest.raises(ConfigError, match="a query has no primary key: pass key="):
        plan_ranges(pg_url, query="SELECT * FROM events")
    assert pg_exec(pg_target, "SELECT count(*) FROM pg_tables WHERE tablename = 'events'") == [(0,)]

    # a key the user names still cuts keyset ranges and becomes the target's primary key
    pg_exec(pg_url, "CREATE TABLE keyed AS SELECT row_number() OVER () AS id, * FROM events")
    summary = db_migrate(pg_url, pg_target, "keyed", key="id", chunk_rows=CHUNK, mode="upsert")
    assert summary.ok and summary.key == ["id"] and summary.resume_note is None
    assert summary.ranges_verified == summary.ranges_total == -(-N // CHUNK)
    assert has_primary_key(pg_target, "keyed")


@pytest.mark.slow
def test_sigkill_mid_keyless_migration_then_rerun_equals_source(pg_url: str, pg_target: str, state_dir: Path,
                                                               tmp_path: Path) -> None:
    """PG -> PG in ctid ranges through the row path (a gated identity transform), killed after exactly two
    committed ranges; the rerun copies the rest once: the target holds exactly the source's multiset."""
    create_events(pg_url)
    done = 2
    gate = tmp_path / "gate"
    gate.mkdir()
    params = {"source_url": pg_url, "target_url": pg_target, "table": "events", "chunk_rows": CHUNK,
              "mode": "append", "run_key": "killed-keyless", "transform": "tests.faults.helpers:gated_frame",
              "max_concurrency": 2}
    proc = start_flow("flows.db_migrate:db_migrate", params, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(done)})
    records = RunDir.for_run("db-migrate", "killed-keyless", state_dir).chunks
    wait_until(lambda: records.exists() and len(list(records.iterdir())) >= done and passed(gate) > done, proc,
               what=f"{done} committed ranges")
    kill(proc)
    killed_at = sum(multiset(pg_target).values())
    assert 0 < killed_at < N, "the run was not killed mid-migration; the test proves nothing"

    out = finish(start_flow("flows.db_migrate:db_migrate", params, {}))
    summary = summary_in(out, MigrationSummary)
    assert summary.ok, out[-3000:]
    assert summary.ranges_resumed == done and summary.ranges_copied == summary.ranges_total - done
    assert summary.verify == "counts" and summary.ranges_matching == 1  # a transform: counts only
    assert multiset(pg_target) == multiset(pg_url) == Counter(ROWS)
    assert db_verify(pg_url, pg_target, "events", chunk_rows=CHUNK).ok  # checksums of the whole table
