"""``make demo``: run the main pipelines on embedded defaults and print their run summaries.

Starts a local Prefect server (state under ``.batchflows/``) unless PREFECT_API_URL is set, then runs
batch_map over a generated 100k-item source with a handler that fails for a few items, and shows
where the dead letters went. Later stages (API extraction, file transforms, DB load) join as they land.
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
    from tasks.errors import ItemError, SkipItem

    if order["order_id"] % 9973 == 4321:
        raise ItemError(f"order {order['order_id']} has no customer; fix it upstream", category="bad_order")
    if order["amount_cents"] == 0:
        raise SkipItem("zero amount")
    rate = 1.0 if order["currency"] == "EUR" else 0.92
    return {"order_id": order["order_id"], "amount_eur": round(order["amount_cents"] * rate / 100, 2)}


def main() -> int:
    state_dir = Path(os.environ.setdefault("BATCHFLOWS_STATE_DIR", str(ROOT / ".batchflows")))
    # one line per chunk task is noise on a terminal; progress lines and summaries remain
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    print(f"batchflows demo: state under {state_dir}")
    started = time.perf_counter()
    server = ensure_server(state_dir / "prefect-home")
    if server:
        print(f"local Prefect server at {server.api_url.removesuffix('/api')} ({time.perf_counter() - started:.0f} s to start)")
    try:
        from flows.batch_map import batch_map

        run_key = "demo-" + time.strftime("%Y%m%d-%H%M%S")
        summary = batch_map(
            demo_items(), enrich_order, chunk_size=2_000, max_concurrency=4, retries=2, retry_backoff_s=0.01,
            run_key=run_key, output=str(state_dir / "demo" / run_key / "enriched"), min_success_ratio=0.99,
        )
        print("\n=== batch-map: 100k generated orders ===")
        print(summary.render_text())
        if summary.dead_letter_path:
            print(f"\nfailed items are in {summary.dead_letter_path}; reprocess them with")
            print(f"  python -c \"from flows.replay import replay_dead_letters; print(replay_dead_letters('{summary.dead_letter_path}', handler='deployments.demo:enrich_order').render_text())\"")
        return 0 if summary.ok else 1
    finally:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
