"""db_migrate on the narrow pgbench_accounts shape (issue 15): PG -> PG vs the binary COPY pipe, SQLite -> PG
vs pgloader, each with startup excluded (in this process, after a warm-up) and included (a fresh process).

    .venv/bin/python -m bench.db_migrate --shape pgbench [--scale 10] [--chunk-rows 100000]

Source: ``pgbench -i -s <scale>`` (100,000 rows per scale: aid int primary key, bid int, abalance int,
filler char(84)); equivalent SQL when pgbench is missing. Variants, each into a fresh database:

- PG -> PG: the ``psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN`` pipe; db_migrate append and
  upsert, verify off (and append of the same rows in a table without a primary key, ctid ranges). In process: the call after a warm-up flow run (what a long-lived worker pays). Fresh
  process: ``python -m tests.run_flow flows.db_migrate:db_migrate '<json>'``, the interpreter, imports,
  Prefect client and flow run included, as a scheduled run starts (the pipe starts two psql processes too).
- SQLite -> PG: Debian's pgloader on a SQLite copy of the table vs db_migrate append, in process and fresh.

Each variant is timed once (best of ``--repeat`` for the pipe and PG -> PG in process); peak RSS is this
process plus its children, not the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, print_table, row_path, timed, wait_server_idle

TABLE = "pgbench_accounts"
PG_DDL = f"CREATE TABLE {TABLE} (aid integer PRIMARY KEY, bid integer, abalance integer, filler char(84))"
SQLITE_DDL = f"CREATE TABLE {TABLE} (aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler CHARACTER(84))"
KEYLESS = "pgbench_accounts_nopk"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def make_pgbench_source(cluster: Any, db: str, scale: int) -> str:
    """``pgbench -i -s scale`` into ``db``; the same rows by SQL when pgbench is not installed. Returns how."""
    from bench.db_migrate import pg_run

    exe = PGBENCH if Path(PGBENCH).exists() else shutil.which("pgbench")
    if exe:
        env = {**os.environ, "PGPASSWORD": cluster.password}
        subprocess.run([exe, "-i", "-q", "-s", str(scale), "-h", cluster.host, "-p", str(cluster.port),
                        "-U", cluster.user, db], env=env, check=True, capture_output=True)
        return f"pgbench -i -s {scale}"
    url = cluster.url(db)
    pg_run(url, PG_DDL)
    pg_run(url, f"INSERT INTO {TABLE} SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, %s) AS g",
           (scale * 100_000,))
    pg_run(url, f"VACUUM ANALYZE {TABLE}")
    return "SQL (pgbench not found)"


def make_sqlite(path: Path, pg_url: str) -> None:
    import psycopg

    from bench.db_migrate import pg_conninfo

    conn = sqlite3.connect(path)
    conn.execute(SQLITE_DDL)
    with psycopg.connect(pg_conninfo(pg_url)) as pg, pg.cursor(name="bench") as cur:
        cur.execute(f"SELECT aid, bid, abalance, filler FROM {TABLE} ORDER BY aid")
        while batch := cur.fetchmany(50_000):
            conn.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", batch)
    conn.commit()
    conn.close()


def fresh_process(params: dict[str, Any]) -> Any:
    """db_migrate in a new ``python -m`` process, as a scheduled run starts it; its summary."""
    from flows.db_migrate import MigrationSummary
    from tests.run_flow import summary_in

    proc = subprocess.run([sys.executable, "-m", "tests.run_flow", "flows.db_migrate:db_migrate", json.dumps(params)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    summary = summary_in(proc.stdout, MigrationSummary)
    assert proc.returncode == 0 and summary.ok, proc.stdout[-3000:]
    return summary


def run_pgbench(cluster: Any, args: argparse.Namespace, work: Path) -> None:
    from bench.db_migrate import fmt_ratio, pg_run, psql_pipe, run_pgloader
    from flows.db_migrate import db_migrate

    src_db = cluster.create_database("bench_pgbench")
    src = cluster.url(src_db)
    secs, _, how = timed(lambda: make_pgbench_source(cluster, src_db, args.scale))
    n = pg_run(src, f"SELECT count(*) FROM {TABLE}")[0][0]
    size = pg_run(src, "SELECT pg_size_pretty(pg_total_relation_size(%s))", (TABLE,))[0][0]
    print(f"\npgbench_accounts shape: {n:,} rows x 4 columns by {how} in {secs:.1f}s ({size})")
    secs, _, _ = timed(lambda: db_migrate(src, cluster.url(cluster.create_database("bench_pgb_warm")), TABLE,
                                          dry_run=True, chunk_rows=args.chunk_rows))
    print(f"warm-up (first flow run of the process, a dry run; kept out of the in-process times): {secs:.2f}s")
    counter = iter(range(1_000_000))
    results: dict[str, tuple[float, float]] = {}

    def record(label: str, make: Any, *, table: bool = False, repeat: int = 1, name: str = TABLE,
               prepare: Any = None) -> None:
        best: tuple[float, float] | None = None
        for _ in range(repeat):
            url = cluster.url(cluster.create_database(f"bench_pgb_{next(counter)}"))
            if table:
                pg_run(url, PG_DDL)
            if prepare is not None:  # untimed: e.g. the copy an upsert then runs over
                prepare(url)
            wait_server_idle()
            secs, mb, _ = timed(lambda url=url: make(url))
            got = pg_run(url, f"SELECT count(*) FROM {name}")[0][0]
            assert got == n, f"{label}: {got} rows in the target, expected {n}"
            print(f"  {label}: {secs:.2f}s, peak RSS {mb:.0f} MB", flush=True)
            best = (secs, mb) if best is None or secs < best[0] else best
            pg_run(cluster.url(), f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        results[label] = best  # type: ignore[assignment]

    def ours(source: str, mode: str, table: str = TABLE) -> dict[str, Any]:
        return {"source_url": source, "table": table, "mode": mode, "verify": False, "chunk_rows": args.chunk_rows,
                "max_concurrency": args.max_concurrency}

    print("PG -> PG")
    record("psql COPY binary pipe", lambda url: psql_pipe(cluster, src_db, url.rsplit("/", 1)[1], TABLE),
           table=True, repeat=args.repeat)
    for mode in ("append", "upsert"):
        record(f"db_migrate {mode}, in process", lambda url, mode=mode: db_migrate(
            target_url=url, **ours(src, mode)), repeat=args.repeat)
        record(f"db_migrate {mode}, fresh process", lambda url, mode=mode: fresh_process(
            {"target_url": url, **ours(src, mode)}))
    # a repeated load: an upsert into a target that already holds every row (ranges found unchanged by their
    # digests on both servers, tasks/db/unchanged.py)
    record("db_migrate upsert over an existing copy, in process", lambda url: db_migrate(
        target_url=url, **ours(src, "upsert")), repeat=args.repeat,
        prepare=lambda url: db_migrate(target_url=url, **ours(src, "append")))
    # the same rows in a table without a primary key: append in ctid page ranges (tasks/db/physical.py)
    pg_run(src, f"CREATE TABLE {KEYLESS} AS SELECT * FROM {TABLE}")
    pg_run(src, f"VACUUM ANALYZE {KEYLESS}")
    record("db_migrate append, no primary key (ctid ranges), in process", lambda url: db_migrate(
        target_url=url, **ours(src, "append", KEYLESS)), name=KEYLESS)
    pipe = results["psql COPY binary pipe"][0]
    print_table(f"PG -> PG, pgbench_accounts, {n:,} rows (chunk_rows={args.chunk_rows}, "
                f"max_concurrency={args.max_concurrency})",
                [{"variant": label, "seconds": f"{s:.2f}", "rows/s": f"{n / s:,.0f}", "peak RSS MB": f"{mb:.0f}",
                  "vs pipe": fmt_ratio(pipe, s)} for label, (s, mb) in results.items()])

    print("\nSQLite -> PG (pgbench_accounts)")
    path = work / "pgbench.sqlite3"
    make_sqlite(path, src)
    lite = f"sqlite:///{path}"
    pg_results: dict[str, tuple[float, float]] = {}
    url = cluster.url(cluster.create_database("bench_pgb_pgloader"))
    wait_server_idle()
    secs_pl, mb_pl, note = timed(lambda: run_pgloader(path, url))
    if note:
        print(f"  {note}")
    else:
        assert pg_run(url, f"SELECT count(*) FROM {TABLE}")[0][0] == n
        print(f"  pgloader: {secs_pl:.2f}s, peak RSS {mb_pl:.0f} MB")
        pg_results["pgloader"] = (secs_pl, mb_pl)
    results.clear()
    record("db_migrate append, in process", lambda url: db_migrate(target_url=url, **ours(lite, "append")))
    with row_path():
        record("db_migrate append, in process, row path",
               lambda url: db_migrate(target_url=url, **ours(lite, "append")))
    record("db_migrate append, fresh process", lambda url: fresh_process({"target_url": url, **ours(lite, "append")}))
    pg_results.update(results)
    print_table(f"SQLite -> PG, pgbench_accounts, {n:,} rows",
                [{"variant": label, "seconds": f"{s:.2f}", "rows/s": f"{n / s:,.0f}", "peak RSS MB": f"{mb:.0f}",
                  "vs pgloader": fmt_ratio(secs_pl, s) if not note else "-"} for label, (s, mb) in pg_results.items()])


__all__ = ["run_pgbench"]
