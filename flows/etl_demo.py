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
from prefect import flow, task
from pydantic import Field

from flows.api_extract import api_extract_flow
from flows.batch_map import summary_from_state, summary_state
from flows.file_transform import file_transform_flow
from tasks.chunked_run import ChunkedRun, default_run_key
from tasks.engine import recorded_safely
from tasks.errors import BatchflowsError
from tasks.identity import value_hash
from tasks.items import ChunkRef
from tasks.load import count_rows, load_part
from tasks.notify import HOOKS
from tasks.outcomes import ChunkReport, RunSummary
from tasks.state import validate_run_key

FLOW_NAME = "etl-demo"
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


@task(name="load-part", task_run_name="load-{index}", persist_result=True)
def load_part_task(path: str, index: int, database_url: str, table: str, key: str, ref: ChunkRef) -> ChunkReport:
    """One part file -> one transaction (upsert), cached per run key for resume."""
    with recorded_safely(f"part {index}"):
        report = load_part(path, index, database_url, table, key)
        report.content_hash = ref.content or ""
        return report


def load_stage(parts_dir: Path, database_url: str, table: str, run_key: str) -> RunSummary:
    parts = sorted(parts_dir.glob("part-*.parquet"))
    with ChunkedRun(f"{FLOW_NAME}-load", run_key=run_key, total=None, unit="rows", identity=(table,)) as run:
        configured = run.configure(load_part_task, chunk_retries=1)
        summary = run.execute(
            list(enumerate(parts)),
            lambda pair: {"path": str(pair[1]), "index": pair[0], "database_url": database_url, "table": table,
                          "key": "id", "ref": run.ref(pair[0], content=value_hash(
                              [str(pair[1]), pair[1].stat().st_mtime_ns, pair[1].stat().st_size]))},
            configured,
            chunk=lambda pair: (pair[0], 1, [str(pair[1])]),
            max_concurrency=1,  # one writer at a time: SQLite allows no more, and the parts are small
        )
        return run.finish(summary, output_path=table)


def verify_stage(parts_dir: Path, database_url: str, table: str) -> tuple[bool, str]:
    expected = pl.scan_parquet(parts_dir / "part-*.parquet").select(pl.len(), pl.col("id").sum()).collect().row(0)
    rows = count_rows(database_url, table)
    ok = rows == expected[0]
    return ok, f"{table} has {rows} rows; the transform wrote {expected[0]}"


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def etl_demo_flow(
    api_url: Annotated[str, Field(description="Root of the demo API (python -m deployments.demo_api).")] = "http://127.0.0.1:8765",
    auth_secret: Annotated[str | None, Field(description="Secret block with the API token (else BATCHFLOWS_HTTP_TOKEN).")] = None,
    work_dir: Annotated[str, Field(description="Where raw and transformed parts go.")] = ".batchflows/etl",
    database_url: Annotated[str, Field(description="SQLAlchemy URL of the target database.")] = "sqlite:///.batchflows/etl/warehouse.db",
    table: Annotated[str, Field(description="Target table.")] = "orders",
    page_size: Annotated[int, Field(gt=0, le=1000, description="Records per API page.")] = 500,
    min_success_ratio: Annotated[float, Field(ge=0, le=1, description="Minimum good rows / rows extracted.")] = 0.99,
    run_key: Annotated[str | None, Field(description="Reuse to resume the whole pipeline.")] = None,
) -> RunSummary:
    key = validate_run_key(run_key) if run_key else default_run_key()
    base = Path(work_dir).resolve() / key
    stages: dict[str, Any] = {}

    def stage(name: str, outcome: Any) -> RunSummary:
        summary = outcome if isinstance(outcome, RunSummary) else summary_from_state(outcome)
        stages[name] = summary
        print(f"--- {name} ---\n{summary.render_text()}")
        if not summary.ok:
            raise BatchflowsError(f"stage {name} failed: {summary.message} (rerun with run_key={key!r} to resume)")
        return summary

    extract = stage("extract", api_extract_flow(
        url=f"{api_url.rstrip('/')}/orders", output=str(base / "raw"), paginator="offset", page_size=page_size,
        records_path="data", auth_secret=auth_secret, run_key=key, return_state=True,
    ))
    transform = stage("transform", file_transform_flow(
        source=str(base / "raw"), output_dir=str(base / "clean"), transform=ORDERS_SQL, schema=ORDERS_SCHEMA,
        min_success_ratio=min_success_ratio, run_key=key, return_state=True,
    ))
    load = stage("load", load_stage(base / "clean", database_url, table, key))
    ok, verdict = verify_stage(base / "clean", database_url, table)
    print(f"--- verify ---\n{verdict}")
    summary = RunSummary(
        flow=FLOW_NAME, run_key=key, total=extract.total,
        succeeded=int(transform.extra.get("rows_out", 0)) - load.failed,
        failed=int(transform.extra.get("rows_rejected", 0)) + load.failed,
        duration_s=round(sum(s.duration_s for s in stages.values()), 3),
        chunks_total=sum(s.chunks_total for s in stages.values()),
        chunks_resumed=sum(s.chunks_resumed for s in stages.values()),
        output_path=table, flow_run_id=load.flow_run_id,
        extra={name: s.counts_line() for name, s in stages.items()} | {"verify": verdict},
    )
    summary.skipped = summary.total - summary.succeeded - summary.failed  # filtered rows, by difference
    summary.items_per_second = round(summary.total / summary.duration_s, 1) if summary.duration_s else 0.0
    summary.state = "Completed" if ok and summary.success_ratio >= min_success_ratio else "Failed"
    summary.message = ("" if ok else "verify failed: ") + f"{verdict}. {summary.counts_line()}"
    return summary_state(summary)  # type: ignore[return-value]


def etl_demo(**params: Any) -> RunSummary:
    """Run the pipeline from Python; parameters as in :func:`etl_demo_flow`."""
    return summary_from_state(etl_demo_flow(**params, return_state=True))


__all__ = ["FLOW_NAME", "etl_demo", "etl_demo_flow"]
