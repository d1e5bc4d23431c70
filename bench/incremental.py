"""Incremental db_migrate (issue 15): a run after 1 % of the rows changed, as a fraction of the full copy.

    .venv/bin/python -m bench.incremental [--rows 1000000] [--changed 0.01] [--chunk-rows 100000]

The PG -> PG source of bench/db_migrate.py (``--rows`` rows x 8 mixed columns, an index on the
``created`` timestamptz column that serves as the watermark). One run of the same process:
1. the first incremental run (everything, upsert, verify on): the full copy;
2. ``--changed`` of the rows updated (spread over the key range, ``created`` moved forward), then the
   incremental run (deletes ignored), verify on; a run with nothing changed (the fixed cost of any run:
   Prefect flow run, reflection, planning, verify, summary); then 1 % more with ``deletes="compare_keys"``.
Printed: seconds, rows moved and the ratio to the full copy (target <= 0.05 for 1 %). Both runs are in
this process after a warm-up flow run, so the one-time Prefect start is excluded from both sides.

3. The ceiling of an incremental run here: an empty Prefect flow run (median of 5; any flow's floor) plus
   the same work done by hand with psycopg on another 1 % of changed rows (the changed rows' binary COPY
   into a temporary table of the target, one ``INSERT ... ON CONFLICT DO UPDATE``, commit), and the
   incremental run's ratio to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, prefect_server, print_table, timed, wait_server_idle
from bench.db_migrate import make_source, pg_cluster, pg_conninfo, pg_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    os.environ["BATCHFLOWS_STATE_DIR"] = str(work / "state")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    started = time.monotonic()
    try:
        with prefect_server(), pg_cluster() as cluster:
            from flows.db_migrate import db_migrate

            n = args.rows
            src = cluster.url(cluster.create_database("inc_src"))
            make_source(src, n)
            pg_run(src, "CREATE INDEX items_created ON items (created)")
            tgt = cluster.url(cluster.create_database("inc_tgt"))
            timed(lambda: db_migrate(src, cluster.url(cluster.create_database("inc_warm")), "items", dry_run=True))

            def migrate(**kwargs: object) -> tuple[float, float, object]:
                wait_server_idle()
                return timed(lambda: db_migrate(src, tgt, "items", incremental="created", chunk_rows=args.chunk_rows,
                                                **kwargs))  # type: ignore[arg-type]

            full_s, full_mb, full = migrate()
            assert full.ok and full.rows_copied == n, full.render_text()  # type: ignore[attr-defined]
            step = max(1, round(1 / args.changed))
            # clock_timestamp(): each row its own instant, as rows updated one by one have (a run reads its low
            # bound inclusively, so rows sharing the watermark's instant would be read again by the next run)
            pg_run(src, "UPDATE items SET name = name || ' (changed)', created = clock_timestamp() WHERE id %% %s = 0",
                   (step,))
            pg_run(src, "VACUUM ANALYZE items")
            moved = n // step
            inc_s, inc_mb, inc = migrate()
            assert inc.ok and moved <= inc.rows_copied <= moved + 1, inc.render_text()  # type: ignore[attr-defined]
            none_s, none_mb, none = migrate()  # nothing changed: the fixed cost of a run (flow run, plan, verify)
            assert none.ok and none.rows_copied <= 1, none.render_text()  # type: ignore[attr-defined]
            pg_run(src, "UPDATE items SET created = clock_timestamp() WHERE id %% %s = 1", (step,))
            del_s, del_mb, dele = migrate(deletes="compare_keys")
            assert dele.ok, dele.render_text()  # type: ignore[attr-defined]
            bare_s, by_hand_s = ceiling(src, tgt, step)
            rows = [
                {"run": "first incremental run (full copy), verify on", "seconds": f"{full_s:.2f}",
                 "rows moved": f"{n:,}", "vs full": "1.00", "peak RSS MB": f"{full_mb:.0f}"},
                {"run": f"after {args.changed:.0%} changed, deletes ignored", "seconds": f"{inc_s:.2f}",
                 "rows moved": f"{moved:,}", "vs full": f"{inc_s / full_s:.3f}", "peak RSS MB": f"{inc_mb:.0f}"},
                {"run": "nothing changed (the fixed cost of a run)", "seconds": f"{none_s:.2f}", "rows moved": "0",
                 "vs full": f"{none_s / full_s:.3f}", "peak RSS MB": f"{none_mb:.0f}"},
                {"run": f"after {args.changed:.0%} changed, deletes compare_keys", "seconds": f"{del_s:.2f}",
                 "rows moved": f"{dele.rows_copied:,}", "vs full": f"{del_s / full_s:.3f}",  # type: ignore[attr-defined]
                 "peak RSS MB": f"{del_mb:.0f}"},
                {"run": "ceiling: an empty Prefect flow run + the 1 % upsert by hand (psycopg)",
                 "seconds": f"{bare_s:.2f} + {by_hand_s:.2f}", "rows moved": f"{moved:,}",
                 "vs full": f"{(bare_s + by_hand_s) / full_s:.3f}", "peak RSS MB": "-"},
            ]
            print_table(f"incremental PG -> PG, {n:,} rows x 8 columns, watermark on an indexed timestamptz", rows)
            print(f"\nincremental run after {args.changed:.0%} changed: {inc_s / full_s:.3f} of the full copy "
                  f"(target <= 0.05); of which {none_s:.2f}s is the fixed cost of any run (nothing changed: "
                  f"{none_s / full_s:.3f}); the rows moved cost {max(inc_s - none_s, 0) / full_s:.3f} of the full copy"
                  f"; {inc_s / (bare_s + by_hand_s):.2f}x its ceiling ({bare_s + by_hand_s:.2f} s: an empty flow run "
                  f"{bare_s:.2f} s + the upsert by hand {by_hand_s:.2f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"benchmark wall time: {time.monotonic() - started:.0f}s")
    return 0


def ceiling(src: str, tgt: str, step: int) -> tuple[float, float]:
    """(an empty Prefect flow run, median of 5; another 1 % of changed rows upserted by hand into the target)."""
    import psycopg
    from prefect import flow

    @flow(name="bench-empty", persist_result=False)
    def empty() -> int:
        return 1

    runs = []
    for _ in range(5):
        wait_server_idle()
        started = time.perf_counter()
        empty()
        runs.append(time.perf_counter() - started)
    (since,) = pg_run(src, "SELECT now()")[0]
    pg_run(src, "UPDATE items SET name = name || ' (again)', created = now() WHERE id %% %s = 2", (step,))
    pg_run(src, "VACUUM ANALYZE items")
    with psycopg.connect(pg_conninfo(src)) as s, psycopg.connect(pg_conninfo(tgt)) as t:
        cols = [r[0] for r in t.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'items'::regclass "
                                        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum").fetchall()]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
        started = time.perf_counter()
        t.execute("CREATE TEMP TABLE stage (LIKE items) ON COMMIT DROP")
        with s.cursor().copy("COPY (SELECT * FROM items WHERE created > %s) TO STDOUT (FORMAT binary)",
                             (since,)) as out, t.cursor().copy("COPY stage FROM STDIN (FORMAT binary)") as into:
            for block in out:
                into.write(block)
        t.execute(f"INSERT INTO items SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET {sets}")
        t.commit()
        by_hand = time.perf_counter() - started
    return sorted(runs)[2], by_hand


if __name__ == "__main__":
    raise SystemExit(main())
