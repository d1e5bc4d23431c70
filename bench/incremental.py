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
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, prefect_server, print_table, timed, wait_server_idle
from bench.db_migrate import make_source, pg_cluster, pg_run


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
            pg_run(src, "UPDATE items SET name = name || ' (changed)', created = now() WHERE id %% %s = 0", (step,))
            pg_run(src, "VACUUM ANALYZE items")
            moved = n // step
            inc_s, inc_mb, inc = migrate()
            assert inc.ok and inc.rows_copied == moved, inc.render_text()  # type: ignore[attr-defined]
            none_s, none_mb, none = migrate()  # nothing changed: the fixed cost of a run (flow run, plan, verify)
            assert none.ok and none.rows_copied == 0, none.render_text()  # type: ignore[attr-defined]
            pg_run(src, "UPDATE items SET created = now() WHERE id %% %s = 1", (step,))
            del_s, del_mb, dele = migrate(deletes="compare_keys")
            assert dele.ok, dele.render_text()  # type: ignore[attr-defined]
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
            ]
            print_table(f"incremental PG -> PG, {n:,} rows x 8 columns, watermark on an indexed timestamptz", rows)
            print(f"\nincremental run after {args.changed:.0%} changed: {inc_s / full_s:.3f} of the full copy "
                  f"(target <= 0.05); of which {none_s:.2f}s is the fixed cost of any run (nothing changed: "
                  f"{none_s / full_s:.3f}); the rows moved cost {max(inc_s - none_s, 0) / full_s:.3f} of the full copy")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"benchmark wall time: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
