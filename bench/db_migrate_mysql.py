"""db_migrate MySQL/MariaDB -> PostgreSQL against pgloader (issue 15), one throwaway server of each.

    .venv/bin/python -m bench.db_migrate_mysql [--rows 1000000] [--chunk-rows 100000]

Source: ``--rows`` rows x 9 mixed columns in MariaDB (BIGINT key, utf8mb4 VARCHAR, INT UNSIGNED,
DECIMAL(12,2), TINYINT(1), TIMESTAMP(6), DOUBLE, ENUM, JSON), generated server-side from MariaDB's sequence
engine. Variants, each into a fresh PostgreSQL database: Debian's ``pgloader mysql://... postgresql://...``
(installed with apt-get as root when missing; skipped with a note otherwise), db_migrate append with verify
off (the columnar path, then the row path with ``BATCHFLOWS_DB_COLUMNAR=false``) and on. Prints seconds, rows/s, peak RSS (this process and its children) and the ratio to pgloader;
target: db_migrate >= 2x pgloader. Also run by ``bench/db_migrate.py`` unless ``--skip-mysql``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import ROOT, prefect_server, print_table, row_path, timed, wait_server_idle

MY_DDL = """CREATE TABLE items (
  id BIGINT PRIMARY KEY, name VARCHAR(100), qty INT UNSIGNED, price DECIMAL(12,2), flag TINYINT(1),
  created TIMESTAMP(6) NULL DEFAULT NULL, score DOUBLE, status ENUM('new','paid','shipped'), doc JSON
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
MY_FILL = """INSERT INTO items
SELECT seq, CONCAT('customer ', seq, ' ünïcode 🍕'), (seq * 7) % 1000, ((seq * 13) % 100000) / 100.0, seq % 3 = 0,
       TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL (seq % 1000) MICROSECOND, seq / 7.0,
       ELT(1 + seq % 3, 'new', 'paid', 'shipped'), JSON_OBJECT('n', seq, 'tags', JSON_ARRAY('a', seq % 5))
FROM seq_1_to_{rows}"""


@contextmanager
def servers() -> Iterator[tuple[Any, Any]]:
    """The test suite's throwaway MariaDB server and PostgreSQL cluster, started and removed here (same code)."""
    from tests.fixtures import mariadb, postgres

    my_gen = mariadb.mariadb_server.__wrapped__()
    pg_gen = postgres.pg_cluster.__wrapped__()
    try:
        my = next(my_gen)
        pg = next(pg_gen)
        yield my, pg
    finally:
        pg_gen.close()
        my_gen.close()


def ensure_pgloader() -> str | None:
    """pgloader's path, installing Debian's package as root when it is missing; None when it cannot be had."""
    exe = shutil.which("pgloader")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgloader"], env=env,
                       capture_output=True, check=False, timeout=600)
        exe = shutil.which("pgloader")
    return exe


def run_pgloader(exe: str, my_url: str, pg_url: str) -> str:
    src = my_url.replace("mysql+pymysql://", "mysql://")
    dst = pg_url.replace("postgresql+psycopg://", "postgresql://")
    proc = subprocess.run([exe, "--quiet", src, dst], capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        return f"pgloader failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}"
    return ""


def pg_count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def run_mysql(my: Any, pg: Any, rows: int, chunk_rows: int, max_concurrency: int) -> list[dict[str, str]]:
    """Generate the MariaDB source, then time pgloader and db_migrate into fresh PostgreSQL databases."""
    from flows.db_migrate import db_migrate

    src_db = my.create_database("bench_my_src")
    src = my.url(src_db)
    conn = my.connect(src_db)
    started = time.perf_counter()
    try:
        with conn.cursor() as cur:
            cur.execute(MY_DDL)
            cur.execute(MY_FILL.format(rows=int(rows)))
    finally:
        conn.close()
    print(f"MariaDB source: {rows:,} rows x 9 columns generated in {time.perf_counter() - started:.1f}s")
    table: list[dict[str, str]] = []
    exe = ensure_pgloader()
    secs_pl: float | None = None
    if exe is None:
        print("  pgloader not installed and cannot be (apt-get install -y pgloader as root); skipped")
    else:
        dst = pg.url(pg.create_database("bench_pgloader_my"))
        wait_server_idle()
        secs, mb, note = timed(lambda: run_pgloader(exe, src, dst))
        if note:
            print(f"  {note}")
        else:
            got = pg_count(dst, f'"{src_db}".items')  # pgloader puts the tables in a schema named like the database
            assert got == rows, f"pgloader loaded {got} rows"
            secs_pl = secs
            print(f"  pgloader: {secs:.2f}s, peak RSS {mb:.0f} MB", flush=True)
            table.append({"variant": "pgloader", "seconds": f"{secs:.2f}", "rows/s": f"{rows / secs:,.0f}",
                          "peak RSS MB": f"{mb:.0f}", "vs pgloader": "1.00x"})
    for verify, rows_path in ((False, False), (False, True), (True, False)):
        label = f"db_migrate MySQL->PG append, verify {'on' if verify else 'off'}" + (", row path" if rows_path else "")
        dst = pg.url(pg.create_database(f"bench_my_{int(verify)}{int(rows_path)}"))
        wait_server_idle()
        with row_path() if rows_path else contextlib.nullcontext():
            secs, mb, summary = timed(lambda dst=dst, verify=verify: db_migrate(
                src, dst, "items", mode="append", verify=verify, chunk_rows=chunk_rows,
                max_concurrency=max_concurrency))
        assert summary.ok, summary.render_text()
        assert pg_count(dst, "items") == rows
        print(f"  {label}: {secs:.2f}s, peak RSS {mb:.0f} MB", flush=True)
        table.append({"variant": label, "seconds": f"{secs:.2f}", "rows/s": f"{rows / secs:,.0f}",
                      "peak RSS MB": f"{mb:.0f}", "vs pgloader": f"{secs_pl / secs:.2f}x" if secs_pl else "-"})
    print_table(f"MySQL/MariaDB -> PG, {rows:,} rows x 9 columns (chunk_rows={chunk_rows}, "
                f"max_concurrency={max_concurrency})", table)
    if secs_pl:
        ours = float(table[1]["seconds"])
        print(f"\nMySQL->PG db_migrate vs pgloader: {secs_pl / ours:.2f}x (target >= 2.0x)")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--max-concurrency", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-db-my-"))
    os.environ["BATCHFLOWS_STATE_DIR"] = str(work / "state")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    started = time.monotonic()
    try:
        with prefect_server(), servers() as (my, pg):
            from flows.db_migrate import db_migrate

            warm = my.url(my.create_database("bench_my_warm"))
            conn = my.connect(warm.rsplit("/", 1)[1])
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE items (id INT PRIMARY KEY)")
            conn.close()
            secs, _, _ = timed(lambda: db_migrate(warm, pg.url(pg.create_database("bench_warm")), "items",
                                                  dry_run=True))
            print(f"warm-up (first flow run of the process, a dry run): {secs:.2f}s")
            run_mysql(my, pg, args.rows, args.chunk_rows, args.max_concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbenchmark wall time: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
