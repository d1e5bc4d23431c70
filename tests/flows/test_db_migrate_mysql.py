"""db_migrate end to end with MySQL/MariaDB (throwaway server), PostgreSQL and SQLite, on a real Prefect server.

The MySQL table of every type (tests/tasks/db/test_mysql.py) and the awkward PostgreSQL table go through the
flow in every mode; a rerun resumes every range from the ledger; verification catches a changed row; a zero
date fails its range naming the row; the MySQL password never shows up in summaries, logs or flow runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import LogSort

from flows.db_migrate import MigrationSummary, db_migrate, db_verify
from tests.fixtures.mariadb import MY_PASSWORD
from tests.tasks.db.test_migration import key_values, pg_exec
from tests.tasks.db.test_mysql import N_MY, ODD_REF, create_my, my_exec

CHUNK = 800
N = len(key_values())
RANGES = -(-N // CHUNK)


def assert_clean(summary: MigrationSummary, ranges: int) -> None:
    assert summary.ok, summary.render_text()
    assert summary.ranges_total == ranges == summary.ranges_verified == summary.ranges_matching
    assert summary.ranges_mismatched == [] and summary.ranges_failed == []


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_pg_to_mysql_to_pg_every_mode_and_resume(mode: str, pg_items: str, mysql_url: str, pg_target: str) -> None:
    summary = db_migrate(pg_items, mysql_url, "items", mode=mode, chunk_rows=CHUNK)  # type: ignore[arg-type]
    assert_clean(summary, RANGES)
    assert summary.target_created and "ENGINE=InnoDB" in (summary.ddl or "")
    assert (summary.total, summary.rows_copied) == (N, N)
    resumed = db_migrate(pg_items, mysql_url, "items", mode=mode, chunk_rows=CHUNK, run_key=summary.run_key)  # type: ignore[arg-type]
    assert_clean(resumed, RANGES)
    assert resumed.ranges_resumed == RANGES and resumed.ranges_copied == 0 and resumed.ranges_by_path == {}
    assert my_exec(mysql_url, "SELECT count(*) FROM items")[0][0] == N
    back = db_migrate(mysql_url, pg_target, "items", mode=mode, chunk_rows=CHUNK)  # type: ignore[arg-type]
    assert_clean(back, RANGES)
    assert sum(back.ranges_by_path.values()) == RANGES, back.ranges_by_path  # every range says how it was written
    assert set(back.ranges_by_path) <= {"columnar-csv", "rows"}
    q = "SELECT * FROM items ORDER BY id"
    assert pg_exec(pg_items, q) == pg_exec(pg_target, q)


def test_mysql_types_to_sqlite_and_mysql_verify_catches_a_change(mysql_url: str, sqlite_url: str,
                                                                 mariadb_server: Any) -> None:
    create_my(mysql_url)
    other = mariadb_server.url(mariadb_server.create_database(), scheme="mariadb")  # mariadb:// works too
    for tgt in (sqlite_url, other):
        summary = db_migrate(mysql_url, tgt, ODD_REF, chunk_rows=70, mode="upsert")
        assert_clean(summary, -(-N_MY // 70))
        assert summary.rows_copied == N_MY
    my_exec(other, "UPDATE `Odd Items` SET `名前` = 'changed' WHERE `Order ID` = 28")
    bad = db_verify(mysql_url, other, ODD_REF, chunk_rows=70, raise_on_failure=False)
    assert not bad.ok and len(bad.ranges_mismatched) == 1
    assert "28" in bad.render_text()


def test_zero_date_fails_its_range_and_password_never_leaks(mysql_url: str, pg_target: str, state_dir: Path,
                                                            caplog: pytest.LogCaptureFixture,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    my_exec(mysql_url, "CREATE TABLE z (id INT PRIMARY KEY, d DATE)")
    my_exec(mysql_url, "INSERT INTO z VALUES (%s, %s)",
            [(i, "0000-00-00" if i == 42 else f"2024-01-{1 + i % 28:02d}") for i in range(100)], sql_mode="")
    caplog.set_level("DEBUG")
    failed = db_migrate(mysql_url, pg_target, "z", chunk_rows=30, chunk_retries=0, raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [1]
    assert pg_exec(pg_target, "SELECT count(*) FROM z")[0][0] == 70  # the other ranges are in
    out, errs = capfd.readouterr()
    assert "row with key {'id': 42}" in caplog.text + out + errs + failed.render_text()
    assert "zero date" in caplog.text + out + errs + failed.render_text()
    wrong = mysql_url.replace(MY_PASSWORD, "Wr0ng-pa55-zzq")
    with pytest.raises(Exception) as err:
        db_migrate(wrong, pg_target, "z")
    assert "Access denied" in str(err.value)
    texts = [failed.model_dump_json(), str(err.value), caplog.text, out, errs]
    texts += [p.read_text(errors="replace") for p in state_dir.rglob("*") if p.is_file()]
    with get_client(sync_client=True) as client:
        texts += [json.dumps(run.parameters, default=str) for run in client.read_flow_runs(limit=50)]
        texts += [log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)]
    leaks = [t[:200] for t in texts if MY_PASSWORD in t or "Wr0ng-pa55-zzq" in t]
    assert not leaks, leaks


@pytest.mark.parametrize(("value", "why"), [("-0", "-0.0 cannot be stored in MySQL/MariaDB (it would be stored as 0)"),
                                            ("NaN", "NaN cannot be stored in MySQL/MariaDB"),
                                            ("-Infinity", "-inf cannot be stored in MySQL/MariaDB")])
def test_a_float_mysql_cannot_store_fails_its_range_naming_row_and_column(value: str, why: str, pg_url: str,
                                                                          mysql_url: str) -> None:
    pg_exec(pg_url, "CREATE TABLE fl (id int PRIMARY KEY, d float8, r real)")
    pg_exec(pg_url, f"INSERT INTO fl SELECT i, CASE WHEN i = 7 THEN '{value}'::float8 ELSE i * 0.5 - 2 END, 0 "
                    "FROM generate_series(1, 20) i")
    failed = db_migrate(pg_url, mysql_url, "fl", chunk_rows=10, chunk_retries=0, raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [0], failed.render_text()
    assert "row with key {'id': 7} cannot be written: column 'd': " + why in failed.render_text()
    assert my_exec(mysql_url, "SELECT count(*), min(id) FROM fl")[0] == (10, 11)  # the other range is in, exact
    pg_exec(pg_url, "UPDATE fl SET d = 0 WHERE id = 7")
    fixed = db_migrate(pg_url, mysql_url, "fl", chunk_rows=10, run_key=failed.run_key)
    assert fixed.ok and fixed.ranges_resumed == 1 and fixed.ranges_copied == 1, fixed.render_text()
    assert my_exec(mysql_url, "SELECT count(*), sum(d) FROM fl")[0] == (20, sum(i * 0.5 - 2 for i in range(1, 21)) - 1.5)


def test_text_keys_fit_innodb_and_a_longer_value_fails_its_row_never_cut(pg_url: str, mysql_url: str,
                                                                        mariadb_server: Any) -> None:
    """A (bigint, text) key got VARCHAR(768) for its text column, 8 bytes over InnoDB's 3072-byte key: CREATE
    TABLE failed with a bare pymysql error 1071. The text columns now share the key; a value longer than its
    share fails its range naming the row and column, and nothing is cut."""
    pg_exec(pg_url, "CREATE TABLE comp (a bigint, b text, v int, PRIMARY KEY (a, b))")
    pg_exec(pg_url, "INSERT INTO comp SELECT i, repeat(chr(97 + mod(i, 26)), 1 + mod(i * 7, 765)) || 'é', i "
                    "FROM generate_series(1, 299) i")
    pg_exec(pg_url, "INSERT INTO comp VALUES (300, repeat('z', 765) || 'é', 0)")  # 766 characters: just fits
    pg_exec(pg_url, "CREATE TABLE pair (b text, c varchar(40), v int, PRIMARY KEY (b, c))")
    pg_exec(pg_url, "INSERT INTO pair SELECT repeat('x', i), i::text, i FROM generate_series(1, 200) i")
    for table in ("comp", "pair"):
        summary = db_migrate(pg_url, mysql_url, table, chunk_rows=70)
        assert_clean(summary, -(-(300 if table == "comp" else 200) // 70))
    assert "`b` varchar(766) NOT NULL" in my_exec(mysql_url, "SHOW CREATE TABLE comp")[0][1]
    assert "`b` varchar(728) NOT NULL" in my_exec(mysql_url, "SHOW CREATE TABLE pair")[0][1]  # (3072 - 160) / 4
    assert my_exec(mysql_url, "SELECT max(char_length(b)), count(*) FROM comp")[0] == (766, 300)

    pg_exec(pg_url, "INSERT INTO comp VALUES (1000, repeat('y', 767), 0)")
    failed = db_migrate(pg_url, mysql_url, "comp", chunk_rows=70, chunk_retries=0, raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [failed.ranges_total - 1]  # the range holding a = 1000
    text = Path(str(failed.dead_letter_path)).read_text()  # the summary's example is cut short: the key is long
    assert "row with key {'a': 1000" in text and "column 'b'" in text, text
    assert "longer than the target column holds" in text and "3072-byte key" in text, text
    assert my_exec(mysql_url, "SELECT count(*) FROM comp WHERE a = 1000")[0][0] == 0  # never cut to 766

    # MySQL -> MySQL: a latin1 VARCHAR(1000) key is 4000 bytes in the target's utf8mb4
    my_exec(mysql_url, "CREATE TABLE latin (id INT, code VARCHAR(1000) CHARACTER SET latin1, PRIMARY KEY (id, code))")
    my_exec(mysql_url, "INSERT INTO latin VALUES (%s, %s)", [(i, "u" * (i * 5)) for i in range(1, 120)])
    other = mariadb_server.url(mariadb_server.create_database())
    copied = db_migrate(mysql_url, other, "latin", chunk_rows=50)
    assert_clean(copied, 3)
    assert "`code` varchar(767) NOT NULL" in my_exec(other, "SHOW CREATE TABLE latin")[0][1]


def test_the_next_run_into_a_created_table_with_a_text_key_is_not_refused(pg_url: str, mysql_url: str) -> None:
    """A text key becomes a VARCHAR sized to fit InnoDB's key; the next run's check of the existing table took
    that for a column too short for the source's text (``text -> varchar(768) (shorter)``) and refused it."""
    pg_exec(pg_url, "CREATE TABLE solo (code text PRIMARY KEY, v int)")
    pg_exec(pg_url, "INSERT INTO solo SELECT 'c' || i, i FROM generate_series(1, 100) i")
    assert_clean(db_migrate(pg_url, mysql_url, "solo", chunk_rows=40), 3)
    pg_exec(pg_url, "UPDATE solo SET v = -v WHERE v <= 10")
    again = db_migrate(pg_url, mysql_url, "solo", chunk_rows=40)  # a new run_key: the nightly upsert
    assert_clean(again, 3)
    assert my_exec(mysql_url, "SELECT sum(v) FROM solo")[0][0] == 5050 - 110
