"""etl-demo: extract (API) -> transform (files) -> load (database) -> verify, as one resumable pipeline.

Composed of the other flows as subflows, with one ``run_key`` flowing through every stage, so a
rerun after a crash resumes each stage where it stopped (finished pages, parts and loads are reused):

1. extract: api-extract pages ``{api_url}/orders`` (offset paginator) into JSONL parts;
2. transform: file-transform casts them to a schema (bad amounts go to rejects) and adds ``amount_eur``;
3. load: every Parquet part is upserted into ``orders`` in one transaction (a chunk task per part);
4. verify: the table holds exactly the transformed rows (count and sum of ids).

Defaults work against the local demo API (``python -m deployments.demo_api``) and a SQLite file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
from pydantic import BeforeValidator, Field, SecretStr

from flows.api_extract import api_extract_flow
from flows.file_transform import file_transform_flow
from tasks.api import AuthSecret, PageSize, refuse_url_password
from tasks.core import (
    BatchflowsError,
    FlowParams,
    MinSuccessRatio,
    RunKey,
    RunSummary,
    batchflow,
    default_run_key,
    python_entry,
    summary_from_state,
)
from tasks.db import count_rows, load_parts, parse_db_url, resolve_url
from tasks.db.dburl import refuse_plain_password

FLOW_NAME = "etl-demo"
DEFAULT_DATABASE = "sqlite:///.batchflows/etl/warehouse.db"
ORDERS_SCHEMA = {
    "columns": {"id": "int64", "customer_id": "int64", "amount": "float64", "currency": "str",
                "created_at": "datetime[UTC]"},
    "not_null": ["id", "amount"],
    "unique_key": ["id"],
}
ORDERS_SQL = (
    "SELECT id, customer_id, amount, currency, created_at, "
    "CASE WHEN currency = 'USD' THEN amount * 0.92 ELSE amount END AS amount_eur FROM df"
)


def _no_plain_password(value: Any) -> Any:
    return refuse_plain_password(value, "database_url", "pass database_url='secret:<block name>', or call etl_demo() "
                                 "from Python (it passes the URL masked)")


def _no_url_password(value: Any) -> Any:
    if isinstance(value, str):
        refuse_url_password(value, what="api_url", flow=FLOW_NAME, advice=(
            "drop user:password@ from it and pass auth_secret='<Secret block holding the bearer token>'"))
    return value


class EtlDemoParams(FlowParams):
    """Extract orders from an API, transform them into typed parts, load them into a table and verify it."""

    api_url: Annotated[str, BeforeValidator(_no_url_password), Field(description=(
        "Root of the demo API (python -m deployments.demo_api); no credentials in it (see auth_secret)."))] = (
        "http://127.0.0.1:8765")
    auth_secret: AuthSecret = None
    work_dir: Annotated[str, Field(min_length=1, description="Where the raw and transformed parts go.")] = (
        ".batchflows/etl")
    database_url: Annotated[SecretStr | None, BeforeValidator(_no_plain_password), Field(description=(
        f"SQLAlchemy URL of the target database (default: {DEFAULT_DATABASE}), or 'secret:BLOCK_NAME' (a URL with "
        "a password: a Secret block)."))] = None
    table: Annotated[str, Field(min_length=1, description="Target table.")] = "orders"
    page_size: PageSize = 500
    min_success_ratio: MinSuccessRatio = 0.99
    run_key: RunKey = None


def verify_stage(parts_dir: Path, database_url: str, table: str) -> tuple[bool, str]:
    expected = pl.scan_parquet(parts_dir / "part-*.parquet").select(pl.len(), pl.col("id").sum()).collect().row(0)
    rows = count_rows(database_url, table)
    ok = rows == expected[0]
    return ok, f"{table} has {rows} rows; the transform wrote {expected[0]}"


@batchflow(FLOW_NAME, EtlDemoParams)
def etl_demo_flow(p: EtlDemoParams) -> RunSummary:
    """Extract orders from an API, transform them into typed parts, load them into a table and verify it."""
    key = p.run_key or default_run_key()
    base = Path(p.work_dir).resolve() / key
    database_url = resolve_url(p.database_url or DEFAULT_DATABASE, None, what="target_url").get_secret_value()
    stages: dict[str, Any] = {}

    def stage(name: str, outcome: Any) -> RunSummary:
        summary = outcome if isinstance(outcome, RunSummary) else summary_from_state(outcome)
        stages[name] = summary
        print(f"--- {name} ---\n{summary.render_text()}")
        if not summary.ok:
            raise BatchflowsError(f"stage {name} failed: {summary.message} (rerun with run_key={key!r} to resume)")
        return summary

    extract = stage("extract", api_extract_flow(
        url=f"{p.api_url.rstrip('/')}/orders", output=str(base / "raw"), paginator="offset", page_size=p.page_size,
        records_path="data", auth_secret=p.auth_secret, run_key=key, return_state=True,
    ))
    transform = stage("transform", file_transform_flow(
        source=str(base / "raw"), output_dir=str(base / "clean"), transform=ORDERS_SQL, schema=ORDERS_SCHEMA,
        min_success_ratio=p.min_success_ratio, run_key=key, return_state=True,
    ))
    load = stage("load", load_parts(base / "clean", database_url, p.table, flow=f"{FLOW_NAME}-load", run_key=key))
    ok, verdict = verify_stage(base / "clean", database_url, p.table)
    print(f"--- verify ---\n{verdict}")
    summary = RunSummary(
        flow=FLOW_NAME, run_key=key, total=extract.total,
        succeeded=int(transform.extra.get("rows_out", 0)) - load.failed,
        failed=int(transform.extra.get("rows_rejected", 0)) + load.failed,
        duration_s=round(sum(s.duration_s for s in stages.values()), 3),
        chunks_total=sum(s.chunks_total for s in stages.values()),
        chunks_resumed=sum(s.chunks_resumed for s in stages.values()),
        output_path=p.table, flow_run_id=load.flow_run_id,
        extra={name: s.counts_line() for name, s in stages.items()} | {"verify": verdict},
    )
    summary.skipped = summary.total - summary.succeeded - summary.failed  # filtered rows, by difference
    summary.items_per_second = round(summary.total / summary.duration_s, 1) if summary.duration_s else 0.0
    summary.state = "Completed" if ok and summary.success_ratio >= p.min_success_ratio else "Failed"
    summary.message = ("" if ok else "verify failed: ") + f"{verdict}. {summary.counts_line()}"
    return summary


def _url_as_secret(values: dict[str, Any], handles: list[str]) -> None:
    """A URL given in Python goes to the flow as SecretStr (Prefect stores it masked), its password registered for
    redaction first."""
    url = values.get("database_url")
    if isinstance(url, str):
        if not url.startswith("secret:"):
            parse_db_url(url)
        values["database_url"] = SecretStr(url)


etl_demo = python_entry(etl_demo_flow, prepare=_url_as_secret, types={"database_url": str | SecretStr | None})

__all__ = ["FLOW_NAME", "EtlDemoParams", "etl_demo", "etl_demo_flow"]
