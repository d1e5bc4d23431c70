"""db_migrate's errors about the target, end to end on the real servers and a real Prefect server: a password
holding an unescaped '@' (its tail was shown as the host), a target schema or MySQL database that does not
exist, a user without the right to create tables, a MySQL key that cannot fit InnoDB's key limit. Each is a
clear error naming what is wrong, never a bare driver traceback, and no fragment of a password shows anywhere.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import LogSort

from flows.db_migrate import db_migrate
from tasks.core import ConfigError, SourceError
from tests.tasks.db.test_migration import pg_exec, sqlite_exec
from tests.tasks.db.test_mysql import my_exec


def _name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _pg_role(pg_cluster: Any, password: str, *grants: str, db: str) -> str:
    role = _name("bf_role")
    admin = pg_cluster.url(db)
    pg_exec(pg_cluster.url(), f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    for grant in grants:
        pg_exec(admin, grant.format(role=role))
    return f"postgresql+psycopg://{role}:{password}@{pg_cluster.host}:{pg_cluster.port}/{db}"  # '@' unescaped


def _my_user(mariadb_server: Any, password: str, grant: str, db: str) -> str:
    user = _name("bf_user")
    admin = mariadb_server.url(db)
    my_exec(admin, f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
    my_exec(admin, f"GRANT {grant} ON `{db}`.* TO '{user}'@'127.0.0.1'")
    return f"mysql+pymysql://{user}:{password}@{mariadb_server.host}:{mariadb_server.port}/{db}"


def _everything_written(state_dir: Path, *texts: str) -> list[str]:
    out = list(texts)
    out += [p.read_text(errors="replace") for p in state_dir.rglob("*") if p.is_file()]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=50)
        out += [json.dumps(run.parameters, default=str) + str(run.state and run.state.message) for run in runs]
        out += [log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)]
    return out


def test_a_password_with_an_unescaped_at_connects_and_no_fragment_of_it_leaks(
        pg_cluster: Any, mariadb_server: Any, pg_url: str, state_dir: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """``user:s3cret@Pa55word-xyz@host`` was parsed with host ``Pa55word-xyz@host``: the connection failed and
    the error, the Prefect logs and the flow run's state showed ``PostgreSQL at Pa55word-xyz@127.0.0.1``."""
    caplog.set_level("DEBUG")
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_exec(pg_url, "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 50) i")
    db = pg_url.rsplit("/", 1)[1]
    src = _pg_role(pg_cluster, "Fr0nt@T4il-pg", "GRANT SELECT ON t TO {role}", db=db)
    tgt = _my_user(mariadb_server, "My@Fr0nt@T4il-my", "ALL", mariadb_server.create_database())
    summary = db_migrate(src, tgt, "t", chunk_rows=20)
    assert summary.ok and summary.rows_copied == 50, summary.render_text()
    assert my_exec(mariadb_server.url(tgt.rsplit("/", 1)[1]), "SELECT count(*) FROM t")[0][0] == 50

    wrong = src.replace("Fr0nt@T4il-pg", "Wr0ng@T4il-zz")
    with pytest.raises(SourceError, match=r"PostgreSQL at 127\.0\.0\.1:\d+ \(database .*password authentication "
                                          "failed") as err:
        db_migrate(wrong, tgt, "t")
    out, errs = capfd.readouterr()
    texts = _everything_written(state_dir, summary.model_dump_json(), str(err.value), caplog.text, out, errs)
    leaks = [t[:300] for t in texts if any(f in t for f in ("Fr0nt", "T4il", "Wr0ng"))]
    assert not leaks, leaks


def test_a_missing_target_schema_or_database_is_a_config_error_naming_it(pg_url: str, pg_target: str,
                                                                         mysql_url: str, sqlite_url: str) -> None:
    pg_exec(pg_url, 'CREATE SCHEMA "My Schema"')
    pg_exec(pg_url, 'CREATE TABLE "My Schema".t (id int PRIMARY KEY)')
    pg_exec(pg_url, 'INSERT INTO "My Schema".t SELECT generate_series(1, 10)')
    table = '"My Schema".t'
    for dry_run in (True, False):  # the dry run says it too
        with pytest.raises(ConfigError, match=r"""target table "My Schema".t: schema 'My Schema' does not exist in """
                                              r"""PostgreSQL at .*Create it first \(CREATE SCHEMA "My Schema"\)"""):
            db_migrate(pg_url, pg_target, table, dry_run=dry_run)
    # into MySQL/SQLite a schema-qualified source lands under its name; a target_table naming a schema is checked
    with pytest.raises(ConfigError, match=r"database 'My Schema' does not exist in MySQL/MariaDB at .*pass "
                                          r"target_table='t'"):
        db_migrate(pg_url, mysql_url, table, target_table=table)
    with pytest.raises(ConfigError, match=r"a SQLite file has no schema 'My Schema'.*pass target_table='t'"):
        db_migrate(pg_url, sqlite_url, table, target_table=table)

    assert db_migrate(pg_url, sqlite_url, table, target_table="t").rows_copied == 10  # as the message says
    assert sqlite_exec(sqlite_url, "SELECT count(*) FROM t") == [(10,)]
    pg_exec(pg_target, 'CREATE SCHEMA "My Schema"')
    assert db_migrate(pg_url, pg_target, table).rows_copied == 10


def test_no_right_to_create_tables_is_a_config_error_naming_the_table(pg_cluster: Any, mariadb_server: Any,
                                                                      pg_url: str, pg_target: str) -> None:
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_exec(pg_url, "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 10) i")
    db = pg_target.rsplit("/", 1)[1]
    tgt = _pg_role(pg_cluster, "N0-create-pw", db=db)  # PostgreSQL 15: no CREATE on public for other users
    with pytest.raises(ConfigError, match=r"cannot create table t in PostgreSQL at .*permission denied for schema "
                                          r'public.*GRANT CREATE ON SCHEMA "public"'):
        db_migrate(pg_url, tgt, "t")
    # the table made by someone else: db_migrate still keeps its ledger beside it
    role = tgt.split("://", 1)[1].split(":", 1)[0]
    pg_exec(pg_target, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_exec(pg_target, f"GRANT SELECT, INSERT, UPDATE, DELETE ON t TO {role}")
    with pytest.raises(ConfigError, match=r"cannot create table _batchflows_ranges in PostgreSQL.*permission denied"):
        db_migrate(pg_url, tgt, "t")
    # once the ledger exists too (made by an owner), the user with row rights only runs: nothing is created
    pg_exec(pg_target, "CREATE TABLE _batchflows_ranges (range_key VARCHAR(64) PRIMARY KEY, run_key VARCHAR(128) "
                       "NOT NULL, target_table VARCHAR(512) NOT NULL, range_index INTEGER NOT NULL, rows_read BIGINT "
                       "NOT NULL, rows_written BIGINT NOT NULL, committed_at VARCHAR(40) NOT NULL)")
    pg_exec(pg_target, f"GRANT SELECT, INSERT, UPDATE, DELETE ON _batchflows_ranges TO {role}")
    s = db_migrate(pg_url, tgt, "t", mode="upsert", verify=True)
    assert s.ok and s.rows_copied == 10 and pg_exec(pg_target, "SELECT count(*) FROM t") == [(10,)]

    my_db = mariadb_server.create_database()
    my_tgt = _my_user(mariadb_server, "N0-create-my", "SELECT, INSERT, UPDATE, DELETE", my_db)
    with pytest.raises(ConfigError, match=r"cannot create table t in MySQL/MariaDB at .*CREATE command denied.*"
                                          rf"GRANT CREATE ON `{my_db}`\.\*"):
        db_migrate(pg_url, my_tgt, "t")


def test_a_mysql_key_that_cannot_fit_is_refused_up_front(pg_url: str, mysql_url: str) -> None:
    cols = [f"u{i}" for i in range(22)]  # 22 uuids: 22 x CHAR(36) x 4 bytes = 3168, over InnoDB's 3072
    pg_exec(pg_url, f"CREATE TABLE wide ({', '.join(f'{c} uuid' for c in cols)}, v int, "
                    f"PRIMARY KEY ({', '.join(cols)}))")
    pg_exec(pg_url, f"INSERT INTO wide SELECT {', '.join('gen_random_uuid()' for _ in cols)}, 1")
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=r"the key \('u0', .*'u21'\) of wide cannot be a MySQL/MariaDB primary "
                                              r"key.*3072 bytes.*Create the target table yourself"):
            db_migrate(pg_url, mysql_url, "wide", dry_run=dry_run)
    assert my_exec(mysql_url, "SHOW TABLES") == []


def test_a_schema_qualified_source_goes_to_sqlite_and_mysql_under_its_name(pg_url: str, sqlite_url: str,
                                                                          mysql_url: str) -> None:
    """The README's first example: 'public.orders' into SQLite (no schemas) and MySQL (the schema is the URL's
    database) lands in 'orders' (it failed: SQLite has no schema 'public'); into PostgreSQL it keeps its schema."""
    pg_exec(pg_url, "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)")
    pg_exec(pg_url, "INSERT INTO public.orders SELECT g, 'Basic monthly ' || g FROM generate_series(1, 50) g")
    for target in (sqlite_url, mysql_url):
        s = db_migrate(pg_url, target, "public.orders", mode="upsert", chunk_rows=20, verify=True)
        assert s.ok and s.rows_copied == 50 and s.target_table == "orders", s.render_text()
    assert sqlite_exec(sqlite_url, "SELECT count(*), max(note) FROM orders") == [(50, "Basic monthly 9")]
    assert my_exec(mysql_url, "SELECT count(*) FROM orders") == [(50,)]
