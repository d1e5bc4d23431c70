"""Idempotent Prefect setup for the deployments: work pool, concurrency limits, Secret blocks.

Run by ``make up`` before ``prefect deploy --all``; running it again changes nothing. Values:

* work pool ``batchflows-process`` (process type);
* global concurrency limits ``batchflows-chunks`` (8 slots) and ``demo-api`` (rate budget 50/s);
* tag concurrency limit ``batchflows-db`` (2 task runs);
* Secret blocks ``demo-api-token`` and ``demo-db-url`` holding the demo's (non-secret) values, created only
  if missing so real values set later are never overwritten;
* demo inputs the deployments' default parameters point at: ``.batchflows/demo/input/orders.csv`` (with a
  few bad rows for the rejects file) and ``.batchflows/demo/shop.db`` (an ``orders`` table to migrate).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK_POOL = "batchflows-process"
GLOBAL_LIMITS = {"batchflows-chunks": (8, None), "demo-api": (50, 50.0)}
TAG_LIMITS = {"batchflows-db": 2}
SECRETS = {
    "demo-api-token": "demo-token-not-a-secret",
    "demo-db-url": f"sqlite:///{ROOT / '.batchflows' / 'demo' / 'warehouse.db'}",
}


async def _setup() -> list[str]:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    done: list[str] = []
    async with get_client() as client:
        try:
            await client.read_work_pool(WORK_POOL)
            done.append(f"work pool {WORK_POOL}: exists")
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            done.append(f"work pool {WORK_POOL}: created")
        for name, (limit, decay) in GLOBAL_LIMITS.items():
            try:
                await client.read_global_concurrency_limit_by_name(name)
                done.append(f"global concurrency limit {name}: exists")
            except ObjectNotFound:
                extra = {} if decay is None else {"slot_decay_per_second": decay}
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit, **extra))
                done.append(f"global concurrency limit {name}: created ({limit})")
        for tag, limit in TAG_LIMITS.items():
            try:
                await client.read_concurrency_limit_by_tag(tag)
                done.append(f"tag limit {tag}: exists")
            except ObjectNotFound:
                await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
                done.append(f"tag limit {tag}: created ({limit})")
    for name, value in SECRETS.items():
        try:
            await Secret.aload(name)
            done.append(f"secret block {name}: exists")
        except ValueError:
            try:
                await Secret(value=value).asave(name)
                done.append(f"secret block {name}: created")
            except ObjectAlreadyExists:
                done.append(f"secret block {name}: exists")
    return done


DEMO_DIR = ROOT / ".batchflows" / "demo"


def write_demo_inputs(n: int = 20_000) -> list[str]:
    """The files the deployments' defaults read; written once (kept if present)."""
    import sqlite3

    from deployments.demo_api import order

    done: list[str] = []
    csv_path = DEMO_DIR / "input" / "orders.csv"
    if not csv_path.exists():
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = csv_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("id,customer_id,amount,currency,created_at\n")
            for i in range(n):
                o = order(i)
                fh.write(f"{o['id']},{o['customer_id']},{o['amount']},{o['currency']},{o['created_at']}\n")
        tmp.replace(csv_path)
        done.append(f"demo input {csv_path.relative_to(ROOT)}: created ({n} rows)")
    else:
        done.append(f"demo input {csv_path.relative_to(ROOT)}: exists")
    db_path = DEMO_DIR / "shop.db"
    if not db_path.exists():
        tmp_db = db_path.with_suffix(".tmp")
        tmp_db.unlink(missing_ok=True)
        con = sqlite3.connect(tmp_db)
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount TEXT, currency TEXT, created_at TEXT)")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", [tuple(order(i).values()) for i in range(n)])
        con.commit()
        con.close()
        tmp_db.replace(db_path)
        done.append(f"demo database {db_path.relative_to(ROOT)}: created ({n} orders)")
    else:
        done.append(f"demo database {db_path.relative_to(ROOT)}: exists")
    return done


def main() -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("PREFECT_API_URL is not set: start a server first (make up does)", file=sys.stderr)
        return 2
    for line in [*asyncio.run(_setup()), *write_demo_inputs()]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
