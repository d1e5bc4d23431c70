"""``make demo``: run the main pipelines on embedded defaults and print their run summaries.

Starts a local Prefect server (state under ``.batchflows/``) unless PREFECT_API_URL is set and the
local demo API (a thread on 127.0.0.1), then runs:

1. batch-map over a generated 100k-item source with a handler that fails for a few items, then the
   same orders through a batch handler (one call per 250 orders, an outcome per order);
2. etl-demo: api-extract -> file-transform (schema, rejects) -> load into SQLite -> verify;
3. api-bulk: 400 customer look-ups (404s dead-lettered, one-off 503s retried);
4. db-migrate: the warehouse table into a reporting database, verified range by range;

and prints each run summary with where the outputs and dead letters are.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.local_server import ensure_server  # noqa: E402


def demo_items(n: int = 100_000) -> Iterator[dict[str, Any]]:
    """A generated source: order records streamed one by one (never materialized)."""
    for i in range(n):
        yield {"order_id": i, "amount_cents": (i * 7919) % 100_000, "currency": "EUR" if i % 3 else "USD"}


def enrich_order(order: dict[str, Any]) -> dict[str, Any]:
    """The demo handler: fails for a few malformed orders, skips zero amounts, converts the rest."""
    from tasks.core import ItemError, SkipItem

    if order["order_id"] % 9973 == 4321:
        raise ItemError(f"order {order['order_id']} has no customer; fix it upstream", category="bad_order")
    if order["amount_cents"] == 0:
        raise SkipItem("zero amount")
    rate = 1.0 if order["currency"] == "EUR" else 0.92
    return {"order_id": order["order_id"], "amount_eur": round(order["amount_cents"] * rate / 100, 2)}


def enrich_orders(orders: list[dict[str, Any]]) -> list[Any]:
    """The demo batch handler (per="batch"): one call for many orders, as a bulk API or executemany would
    take them; one entry per order, an exception instance for an order that failed or is skipped."""
    out: list[Any] = []
    for order in orders:
        try:
            out.append(enrich_order(order))
        except Exception as exc:  # ItemError / SkipItem: that order's outcome
            out.append(exc)
    return out


def _show(title: str, summary: Any) -> bool:
    print(f"\n=== {title} ===")
    print(summary.render_text())
    return bool(summary.ok)


def main() -> int:
    state_dir = Path(os.environ.setdefault("BATCHFLOWS_STATE_DIR", str(ROOT / ".batchflows")))
    # one line per chunk task is noise on a terminal; progress lines and summaries remain
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    print(f"batchflows demo: state under {state_dir}")
    started = time.perf_counter()
    server = ensure_server(state_dir / "prefect-home")
    if server:
        print(f"local Prefect server at {server.api_url.removesuffix('/api')} ({time.perf_counter() - started:.0f} s to start)")
    from deployments.demo_api import TOKEN, running

    os.environ.setdefault("BATCHFLOWS_HTTP_TOKEN", TOKEN)  # the demo API's published token
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = state_dir / "demo" / stamp
    results: list[bool] = []
    from flows.api_bulk import api_bulk
    from flows.batch_map import batch_map
    from flows.db_migrate import db_migrate
    from flows.etl_demo import etl_demo

    summary = batch_map(
        demo_items(), enrich_order, chunk_size=2_000, max_concurrency=4, retries=2, retry_backoff_s=0.01,
        run_key=f"demo-{stamp}", output=str(work / "enriched"), min_success_ratio=0.99, raise_on_failure=False,
    )
    results.append(_show("batch-map: 100k generated orders through a handler", summary))
    if summary.dead_letter_path:
        print(f"  reprocess the failed items: python -c \"from flows.replay import replay_dead_letters; "
              f"print(replay_dead_letters('{summary.dead_letter_path}', handler='deployments.demo:enrich_order').render_text())\"")
    batched = batch_map(
        demo_items(), enrich_orders, per="batch", max_batch_items=250, item_concurrency=2, chunk_size=5_000,
        max_concurrency=4, run_key=f"demo-batch-{stamp}", output=str(work / "enriched-batch"),
        min_success_ratio=0.99, raise_on_failure=False,
    )
    results.append(_show("batch-map per='batch': the same orders, 250 per handler call", batched))
    first = next(batched.results())
    print(f"  first result row (summary.results()): {first}")
    with running(orders=20_000) as api:
        print(f"\nlocal demo API at {api.url}")
        warehouse = f"sqlite:///{work / 'warehouse.db'}"
        etl = etl_demo(api_url=api.url, work_dir=str(work / "etl"), database_url=warehouse, run_key=f"etl-{stamp}",
                       raise_on_failure=False)
        results.append(_show("etl-demo: API -> files -> SQLite -> verify", etl))
        lookups = api_bulk(
            [{"id": i} for i in range(1, 401)], base_url=api.url, path_template="/customers/{id}",
            item_concurrency=16, max_concurrency=2, chunk_size=100, retries=3, retry_backoff_s=0.05,
            rate_limit_per_second=500, output=str(work / "customers"), run_key=f"customers-{stamp}",
            min_success_ratio=0.98, raise_on_failure=False,
        )
        results.append(_show("api-bulk: 400 customer look-ups (a few 404s, one-off 503s retried)", lookups))
    migrated = db_migrate(
        warehouse, f"sqlite:///{work / 'reporting.db'}", "orders", chunk_rows=5_000, mode="upsert",
        run_key=f"migrate-{stamp}", raise_on_failure=False,
    )
    results.append(_show("db-migrate: warehouse.orders -> reporting.orders, verified per range", migrated))
    print(f"\n{sum(results)}/{len(results)} pipelines completed; total {time.perf_counter() - started:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
