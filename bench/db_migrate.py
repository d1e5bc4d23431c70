"""db_migrate benchmarks (issue 6): PG -> PG and SQLite -> PG against plain baselines, one run, one cluster.

    .venv/bin/python -m bench.db_migrate [--shape wide|pgbench|both] [--rows 1000000] [--scale 10]
                                         [--chunk-rows 100000] [--skip-executemany] [--skip-sqlite] [--skip-mysql]

``--shape wide`` (cases 1-3 below), ``pgbench`` (case 4), ``both`` (the default, what ``make bench`` runs).

1. PG -> PG, ``--rows`` rows x 8 mixed columns (bigint, text, integer, numeric, boolean, timestamptz,
   double, uuid), two databases on one throwaway cluster (tests/fixtures/postgres.py's cluster code):
   - the ``psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN (FORMAT binary)`` pipe (ceiling),
   - a naive SQLAlchemy executemany loop of 1,000-row batches,
   - db_migrate append and upsert, verify off and on.
   Targets: append >= 0.6x the pipe and >= 10x executemany.
2. SQLite -> PG on the same data vs pgloader (``apt-get install pgloader``; skipped with a note when
   missing). Target: db_migrate >= 1.0x pgloader.
3. MySQL/MariaDB -> PG, ``--rows`` rows x 9 mixed columns vs ``pgloader mysql://`` (bench/db_migrate_mysql.py;
   a throwaway MariaDB server, pgloader installed as root when missing). Target: db_migrate >= 2x pgloader.
4. The narrow pgbench_accounts shape (``pgbench -i -s --scale``: 1M rows of int, int, int, char(84)), PG -> PG
   append and upsert vs the pipe and SQLite -> PG vs pgloader, each in process (startup excluded) and in a
   fresh ``python -m`` process (startup included, as a scheduled run starts): bench/db_migrate_pgbench.py.

Every variant writes into a fresh database. Times are wall clock of the whole call (db_migrate includes
its Prefect flow run, planning, target creation and, where on, verification), after one warm-up dry run
(the first flow run of a process pays ~5 s of one-time Prefect setup; it is printed, not compared).
The pipe and the PG -> PG db_migrate variants run ``--repeat`` times (default 2) and keep their best time
(the machine is shared; the minimum is the least disturbed run of either side); executemany, pgloader and
SQLite -> PG run once. Peak RSS is this process plus its children (psql, pgloader), not the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import ROOT, prefect_server, print_table, row_path, timed, wait_server_idle

PG_DDL = """CREATE TABLE {name} (
  id bigint PRIMARY KEY, name text, qty integer, price numeric(12,2), flag boolean, created timestamptz,
  score double precision, uid uuid
)"""
PG_FILL = """INSERT INTO items
SELECT g, 'customer ' || g || ' ünïcode', (g * 7) %% 1000, ((g * 13) %% 100000) / 100.0, g %% 3 = 0,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g / 7.0,
       md5(g::text)::uuid
FROM generate_series(1, %s) AS g"""
SQLITE_DDL = """CREATE TABLE items (
  id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price NUMERIC(12,2), flag BOOLEAN, created TIMESTAMP,
  score REAL, uid TEXT
)"""


@contextmanager
def pg_cluster() -> Iterator[Any]:
    """The test suite's throwaway PostgreSQL 15 cluster, started and removed here (same code)."""
    from tests.fixtures import postgres

    gen = postgres.pg_cluster.__wrapped__()
    cluster = next(gen)
    try:
        yield cluster
    finally:
        gen.close()


def pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def pg_run(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def make_source(url: str, rows: int) -> None:
    pg_run(url, PG_DDL.format(name="items"))
    pg_run(url, PG_FILL, (rows,))
    pg_run(url, "VACUUM ANALYZE items")


def make_sqlite(path: Path, pg_url: str, rows: int) -> None:
    """The same rows in a SQLite file, as a hand-made SQLite database stores them."""
    import psycopg

    conn = sqlite3.connect(path)
    conn.execute(SQLITE_DDL)
    with psycopg.connect(pg_conninfo(pg_url)) as pg, pg.cursor(name="bench") as cur:
        cur.execute("SELECT id, name, qty, price::text, flag::int, to_char(created AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD HH24:MI:SS'), score, uid::text FROM items ORDER BY id")
        while batch := cur.fetchmany(50_000):
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
    conn.commit()
    conn.close()
    assert rows == sqlite3.connect(path).execute("SELECT count(*) FROM items").fetchone()[0]


def psql_pipe(cluster: Any, src_db: str, dst_db: str, table: str = "items") -> None:
    env = {**os.environ, "PGPASSWORD": cluster.password}
    base = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cluster.host, "-p", str(cluster.port), "-U", cluster.user]
    out = subprocess.Popen([*base, "-d", src_db, "-c", f"COPY {table} TO STDOUT (FORMAT binary)"],
                           stdout=subprocess.PIPE, env=env)
    into = subprocess.run([*base, "-d", dst_db, "-c", f"COPY {table} FROM STDIN (FORMAT binary)"],
                          stdin=out.stdout, env=env, capture_output=True, check=False)
    if out.stdout is not None:
        out.stdout.close()
    if out.wait() != 0 or into.returncode != 0:
        msg = f"psql pipe failed: {into.stderr.decode(errors='replace')}"
        raise RuntimeError(msg)


def executemany_loop(src_url: str, dst_url: str, batch: int = 1000) -> None:
    """What people write first: stream rows with SQLAlchemy, insert each 1,000-row batch with executemany."""
    from sqlalchemy import create_engine, text

    src, dst = create_engine(src_url), create_engine(dst_url)
    cols = ["id", "name", "qty", "price", "flag", "created", "score", "uid"]
    insert = text(f"INSERT INTO items ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})")
    with src.connect() as sc, dst.begin() as dc:
        result = sc.execution_options(stream_results=True, yield_per=batch).execute(
            text(f"SELECT {', '.join(cols)} FROM items ORDER BY id"))
        for part in result.partitions(batch):
            dc.execute(insert, [dict(r._mapping) for r in part])
    src.dispose()
    dst.dispose()


def run_pgloader(sqlite_path: Path, dst_url: str) -> str:
    exe = shutil.which("pgloader")
    if exe is None:
        return "pgloader not installed (apt-get install -y pgloader); skipped"
    proc = subprocess.run([exe, "--quiet", str(sqlite_path), pg_conninfo(dst_url)], capture_output=True,
                          text=True, check=False, timeout=600)
    if proc.returncode != 0:
        return f"pgloader failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}"
    return ""


def run_mysql_case(cluster: Any, args: argparse.Namespace) -> None:
    """MySQL/MariaDB -> PG on the same row count vs pgloader (bench/db_migrate_mysql.py), skipped with a note
    when the MariaDB server binaries are missing."""
    from bench.db_migrate_mysql import run_mysql
    from tests.fixtures import mariadb

    print("\nMySQL/MariaDB -> PG")
    gen = mariadb.mariadb_server.__wrapped__()
    try:
        my = next(gen)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the fixture skips or fails (pytest's outcomes) when mariadbd is missing or broken
        print(f"  skipped: {exc}")
        return
    try:
        run_mysql(my, cluster, args.rows, args.chunk_rows, args.max_concurrency)
    finally:
        gen.close()


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("wide", "pgbench", "both"), default="both",
                        help="wide: 8 typed columns (cases 1-3); pgbench: pgbench_accounts (case 4)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (100,000 rows each)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--skip-executemany", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true", help="PG -> PG only")
    parser.add_argument("--skip-mysql", action="store_true", help="no MySQL/MariaDB -> PG case (bench/db_migrate_mysql.py)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the pipe and PG->PG db_migrate; best kept")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-db-"))
    os.environ["BATCHFLOWS_STATE_DIR"] = str(work / "state")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    try:
        with prefect_server(), pg_cluster() as cluster:
            code = run(cluster, args, work, started) if args.shape != "pgbench" else 0
            if args.shape != "wide":
                from bench.db_migrate_pgbench import run_pgbench

                run_pgbench(cluster, args, work)
                print(f"\nbenchmark wall time: {time.monotonic() - started:.0f}s")
            return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(cluster: Any, args: argparse.Namespace, work: Path, started: float) -> int:
    from flows.db_migrate import db_migrate

    n = args.rows
    src_db = cluster.create_database("bench_src")
    src = cluster.url(src_db)
    secs, _, _ = timed(lambda: make_source(src, n))
    print(f"source: {n:,} rows x 8 columns generated in {secs:.1f}s "
          f"({pg_run(src, 'SELECT pg_size_pretty(pg_total_relation_size(%s))', ('items',))[0][0]})")

    def fresh(name: str, *, table: bool = True) -> str:
        url = cluster.url(cluster.create_database(name))
        if table:
            pg_run(url, PG_DDL.format(name="items"))
        return url

    results: dict[str, tuple[float, float]] = {}

    counter = iter(range(1_000_000))

    def record(label: str, make: Any, *, table: bool = True, repeat: int = 1) -> Any:
        """Run ``make(url)`` against a fresh target database ``repeat`` times; keep the best time (the
        machine is shared, so the minimum is the least disturbed measurement of either side)."""
        best: tuple[float, float] | None = None
        out = None
        for _ in range(repeat):
            url = fresh(f"bench_{next(counter)}", table=table)
            wait_server_idle()
            secs, mb, out = timed(lambda url=url: make(url))
            got = pg_run(url, "SELECT count(*) FROM items")[0][0]
            assert got == n, f"{label}: {got} rows in the target, expected {n}"
            print(f"  {label}: {secs:.2f}s, peak RSS {mb:.0f} MB", flush=True)
            best = (secs, mb) if best is None or secs < best[0] else best
            pg_run(cluster.url(), f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        results[label] = best  # type: ignore[assignment]
        return out

    # one-time cost of the first flow run in a process (Prefect client, flow registration): a worker
    # pays it once, not per migration, so it is measured here and kept out of the comparisons
    secs, _, _ = timed(lambda: db_migrate(src, cluster.url(cluster.create_database("bench_warm")), "items",
                                          dry_run=True, chunk_rows=args.chunk_rows))
    print(f"warm-up (first flow run of the process, a dry run): {secs:.2f}s")

    print("\nPG -> PG")
    record("psql COPY binary pipe", lambda url: psql_pipe(cluster, src_db, url.rsplit("/", 1)[1]),
           repeat=args.repeat)
    if not args.skip_executemany:
        record("SQLAlchemy executemany, 1,000-row batches", lambda url: executemany_loop(src, url))
    summaries = {}
    for mode in ("append", "upsert"):
        for verify in (False, True):
            label = f"db_migrate {mode}, verify {'on' if verify else 'off'}"
            summary = record(label, lambda url, mode=mode, verify=verify: db_migrate(
                src, url, "items", mode=mode, verify=verify, chunk_rows=args.chunk_rows,
                max_concurrency=args.max_concurrency), table=False, repeat=args.repeat)
            assert summary.ok, summary.render_text()
            summaries[label] = summary
    # upsert into a target that already holds every row (each range merged by ON CONFLICT): a repeated load;
    # the rows above went into empty ranges, which an upsert copies straight in
    full = fresh("bench_upsert_full", table=False)
    db_migrate(src, full, "items", mode="append", verify=False, chunk_rows=args.chunk_rows,
               max_concurrency=args.max_concurrency)
    wait_server_idle()
    secs, mb, summary = timed(lambda: db_migrate(src, full, "items", mode="upsert", verify=False,
                                                 chunk_rows=args.chunk_rows, max_concurrency=args.max_concurrency))
    assert summary.ok, summary.render_text()
    print(f"  db_migrate upsert over an existing copy, verify off: {secs:.2f}s, peak RSS {mb:.0f} MB", flush=True)
    results["db_migrate upsert over an existing copy, verify off"] = (secs, mb)

    pipe = results["psql COPY binary pipe"][0]
    em = results.get("SQLAlchemy executemany, 1,000-row batches", (None, 0))[0]
    rows = []
    for label, (secs, mb) in results.items():
        s = summaries.get(label)
        rows.append({
            "variant": label, "seconds": f"{secs:.2f}", "rows/s": f"{n / secs:,.0f}", "peak RSS MB": f"{mb:.0f}",
            "vs pipe": fmt_ratio(pipe, secs), "vs executemany": fmt_ratio(em, secs) if em else "-",
            "verify s": f"{s.verify_seconds:.2f}" if s and s.verify != "off" else "-",
        })
    print_table(f"PG -> PG, {n:,} rows x 8 columns (chunk_rows={args.chunk_rows}, "
                f"max_concurrency={args.max_concurrency})", rows)
    append = results["db_migrate append, verify off"][0]
    print(f"\nappend vs pipe: {pipe / append:.2f}x (target >= 0.6x)")
    upsert = results["db_migrate upsert, verify off"][0]
    print(f"upsert vs pipe: {pipe / upsert:.2f}x into empty ranges (target >= 0.6x), "
          f"{pipe / results['db_migrate upsert over an existing copy, verify off'][0]:.2f}x over an existing copy")
    if em:
        print(f"append vs executemany: {em / append:.1f}x faster (target >= 10x); executemany is "
              f"{em / pipe:.1f}x slower than the pipe"
              + (" (< 10x: the ratio to the pipe is the binding target)" if em / pipe < 10 / 0.6 else ""))

    if args.skip_sqlite:
        print(f"\nwide shape: benchmark wall time so far {time.monotonic() - started:.0f}s")
        return 0
    print("\nSQLite -> PG")
    sqlite_path = work / "items.sqlite3"
    secs, _, _ = timed(lambda: make_sqlite(sqlite_path, src, n))
    print(f"  SQLite source written in {secs:.1f}s ({sqlite_path.stat().st_size / 1e6:.0f} MB)")
    sqlite_rows = []
    dst = fresh("bench_pgloader", table=False)
    wait_server_idle()
    secs_pl, mb_pl, note = timed(lambda: run_pgloader(sqlite_path, dst))
    if note:
        print(f"  {note}")
    else:
        got = pg_run(dst, "SELECT count(*) FROM items")[0][0]
        assert got == n, f"pgloader loaded {got} rows"
        print(f"  pgloader: {secs_pl:.2f}s, peak RSS {mb_pl:.0f} MB")
        sqlite_rows.append({"variant": "pgloader", "seconds": f"{secs_pl:.2f}", "rows/s": f"{n / secs_pl:,.0f}",
                            "peak RSS MB": f"{mb_pl:.0f}", "vs pgloader": "1.00x"})
    sqlite_url = f"sqlite:///{sqlite_path}"
    for verify, rows_path in ((False, False), (False, True), (True, False)):
        label = f"db_migrate SQLite->PG append, verify {'on' if verify else 'off'}" + (", row path" if rows_path else "")
        with row_path() if rows_path else contextlib.nullcontext():
            summary = record(label, lambda url, verify=verify: db_migrate(
                sqlite_url, url, "items", mode="append", verify=verify, chunk_rows=args.chunk_rows,
                max_concurrency=args.max_concurrency), table=False)
        assert summary.ok, summary.render_text()
        secs, mb = results[label]
        sqlite_rows.append({"variant": label, "seconds": f"{secs:.2f}", "rows/s": f"{n / secs:,.0f}",
                            "peak RSS MB": f"{mb:.0f}",
                            "vs pgloader": fmt_ratio(secs_pl, secs) if not note else "-"})
    print_table(f"SQLite -> PG, {n:,} rows x 8 columns", sqlite_rows)
    if not note:
        ours = results["db_migrate SQLite->PG append, verify off"][0]
        print(f"\nSQLite->PG db_migrate vs pgloader: {secs_pl / ours:.2f}x (target >= 1.0x)")
    if not args.skip_mysql:
        run_mysql_case(cluster, args)
    print(f"\nwide shape: benchmark wall time so far {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
