"""batch-map: the engine's flow face. A chunked, bounded, retried, resumable map of a handler over items.

Three ways to run it, all from the one declaration below (:class:`BatchMapParams`):

* Python: ``batch_map(source, handler, chunk_size=..., ...)`` -> RunSummary (any iterable, callables).
* Deployment / UI / CLI: the ``batch_map_flow`` flow with JSON parameters (file paths, lists,
  ``"pkg.mod:fn"`` import paths): ``prefect deployment run 'batch-map/hourly' --param chunk_size=200``.
* Directly: ``batch_map_flow(source="items.jsonl", handler="pkg.mod:fn")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from tasks.core import (
    SETTING,
    Chunk,
    ChunkBytes,
    ChunkedRun,
    ChunkingName,
    ChunkJob,
    ChunkReport,
    ChunkSize,
    ChunkTaskGroup,
    ConcurrencyLimitName,
    FlowParams,
    InputFormatField,
    ItemConcurrency,
    ItemOptions,
    ItemRetryGroup,
    OutcomeGroup,
    PerGroup,
    PlanLog,
    RateGroup,
    RetryOnField,
    RunGroup,
    RunnerGroup,
    RunSummary,
    SelectQuery,
    TimeoutGroup,
    batchflow,
    check_writable_dir,
    chunk_hash,
    current_flow_name,
    cut_chunks,
    drop_rate_limit,
    handler_identity,
    is_handle,
    load_callable,
    make_strategy,
    open_source,
    python_entry,
    register_object,
    resolve_handle,
    run_chunk,
    run_rate_limit_name,
)

FLOW_NAME = "batch-map"

Items = Annotated[str | list[Any], Field(description=(
    "The items: a list, a .jsonl/.csv/.tsv/.parquet file (optionally .gz), or 'pkg.mod:fn' returning an iterable."))]
ImportPath = Annotated[str, Field(min_length=3, max_length=300)]


class BatchMapParams(FlowParams, RunGroup, OutcomeGroup, ChunkTaskGroup, ItemRetryGroup, PerGroup, TimeoutGroup, RateGroup,
                     RunnerGroup):
    """Run a handler over every item: chunked, bounded, retried, resumable, exactly once per run_key."""

    source: Items
    handler: Annotated[ImportPath, Field(description=(
        "'pkg.mod:fn' called once per item (sync or async), or once per list of items with per='batch'."))]
    chunk_size: ChunkSize = SETTING
    chunking: Annotated[ChunkingName, Field(description=(
        "fixed (chunk_size items), bytes (chunk_bytes of JSON), weighted (weight_fn per item, chunk_size is the "
        "budget), adaptive (sized toward target_chunk_seconds)."))] = "fixed"
    target_chunk_seconds: Annotated[float, Field(gt=0, le=3600, description=(
        "Adaptive chunking grows or shrinks chunks toward this duration."))] = 5.0
    chunk_bytes: ChunkBytes = 1 << 20
    weight_fn: Annotated[ImportPath | None, Field(description=(
        "'pkg.mod:fn' giving an item's weight (chunking='weighted')."))] = None
    item_key: Annotated[ImportPath | None, Field(description=(
        "'pkg.mod:fn' giving a JSON-like key per item, for items that have no stable encoding of their own."))] = None
    item_concurrency: ItemConcurrency = 1
    retry_on: RetryOnField = "transient"
    concurrency_limit: ConcurrencyLimitName = None
    output: Annotated[str | None, Field(description=(
        "Directory for the results: part-NNNNNN.jsonl per chunk, {'item': ..., 'result': ...} per line."))] = None
    input_format: InputFormatField = "auto"
    query: Annotated[SelectQuery, Field(description=(
        "A SELECT whose rows (dicts) are the items, read in pages by query_key; source is then the database: "
        "'secret:BLOCK_NAME' (a Secret block holding its URL) or a URL without a password."))] = None
    query_key: Annotated[str | None, Field(max_length=63, description=(
        "query: the unique, not-null column the rows are read in order of (keyset pages)."))] = None

    @model_validator(mode="after")
    def _consistent(self) -> BatchMapParams:
        if (self.query is None) != (self.query_key is None):
            msg = "query and query_key go together: a SELECT and the unique column its rows are read in order of"
            raise ValueError(msg)
        if self.query is not None and isinstance(self.source, str) and _has_password(self.source):
            from tasks.core.stored_params import mask_run_parameters, mask_url_password

            mask_run_parameters({self.source: mask_url_password(self.source)}, what="source", secret="database password")
            msg = ("source holds a database password, and flow parameters are stored by Prefect and shown in its UI: "
                   "save the URL in a Prefect Secret block and pass source='secret:<block name>'")
            raise ValueError(msg)
        if self.chunking == "weighted" and not self.weight_fn:
            msg = "chunking='weighted' needs weight_fn ('pkg.mod:fn' returning a number per item)"
            raise ValueError(msg)
        return self


@batchflow(FLOW_NAME, BatchMapParams, positional=("source", "handler"))
def batch_map_flow(p: BatchMapParams) -> RunSummary:
    """Run a handler over every item: chunked, bounded, retried, resumable, exactly once per run_key."""
    if p.output:
        check_writable_dir(p.output, what="output directory")  # before any item runs (side effects)
    flow = current_flow_name(FLOW_NAME)  # replay-dead-letters runs this body under its own name
    src = _query_source(p) if p.query is not None else open_source(p.source, input_format=p.input_format)
    fn = load_callable(p.handler, what="handler")
    identity = handler_identity(fn if is_handle(p.handler) else p.handler)
    weight_fn = load_callable(p.weight_fn, what="weight_fn") if p.weight_fn else None
    item_key = load_callable(p.item_key, what="item_key") if p.item_key else None
    strategy = make_strategy(p.chunking, chunk_size=p.chunk_size, target_chunk_seconds=p.target_chunk_seconds,
                             chunk_bytes=p.chunk_bytes, weight_fn=weight_fn)
    if p.concurrency_limit:
        from tasks.core import ensure_concurrency_limit

        ensure_concurrency_limit(p.concurrency_limit, slots=p.max_concurrency)
    # the run's identity: what the handler is and where its results go; a chunk adds its position
    with ChunkedRun(flow, run_key=p.run_key, total=src.total, identity=(p.cache_version, identity.text, p.output or ""),
                    handler_id=identity.name, on_error=p.on_error) as run:
        run.claim_output(p.output)
        if identity.note():
            run.progress.logger.warning(identity.note())
        rate_name = run_rate_limit_name(p.rate_limit_per_second, p.rate_limit_name, p.task_runner, run.scope)
        job = ChunkJob(
            handler=fn, output_dir=p.output, concurrency_limit=p.concurrency_limit, item_key=item_key,
            run_scope=run.scope,
            options=ItemOptions(retries=p.retries, retry_backoff_s=p.retry_backoff_s, retry_on=p.retry_on,
                                item_concurrency=p.item_concurrency, rate_limit_per_second=p.rate_limit_per_second,
                                rate_limit_name=rate_name, item_timeout_s=p.item_timeout_s,
                                chunk_timeout_s=p.chunk_timeout_s, per=p.per, max_batch_items=p.max_batch_items),
        )
        chunk_task = run.configure(run_chunk, chunk_retries=p.chunk_retries, tags=p.tags)

        def observe(_chunk: Chunk, report: ChunkReport) -> None:
            if not report.resumed:
                strategy.observe(report.size, report.duration_s)

        plan = PlanLog(run.run_dir.plan)
        try:
            summary = run.execute(
                cut_chunks(src, strategy, plan), lambda c: {"chunk": c, "ref": run.ref(c.index), "job": job},
                chunk_task, chunk=lambda c: (c.index, len(c.items), c.items), max_concurrency=p.max_concurrency,
                content=lambda c: chunk_hash(c.items, index=c.index, item_key=item_key),
                describe=lambda c: c.describe(), task_runner=p.task_runner, dask_address=p.dask_address,
                on_report=observe,
            )
        finally:
            plan.close()
            if rate_name != p.rate_limit_name:  # the run's internal one
                drop_rate_limit(rate_name)
        return run.finish(summary, min_success_ratio=p.min_success_ratio, output_path=p.output)


def _has_password(source: str) -> bool:
    from urllib.parse import urlsplit

    return "://" in source and bool(urlsplit(source).password)


def _query_source(p: BatchMapParams) -> Any:
    from tasks.db import query_source  # database drivers only load for query sources

    url = resolve_handle(p.source, what="source") if is_handle(p.source) else p.source
    return query_source(str(url), p.query or "", key=p.query_key or "")


def _url_in_process(values: dict[str, Any], handles: list[str]) -> None:
    """A query source's URL given in Python stays in this process: the flow run gets a ``mem:`` handle."""
    source = values.get("source")
    if values.get("query") is not None and isinstance(source, str) and _has_password(source):
        values["source"] = register_object(source)
        handles.append(values["source"])


SourceLike = Iterable[Any] | AsyncIterable[Any] | str | Path | Callable[[], Iterable[Any] | AsyncIterable[Any]]
HandlerLike = str | Callable[[Any], Any]

batch_map = python_entry(batch_map_flow, prepare=_url_in_process, objects={
    "source": SourceLike, "handler": HandlerLike, "weight_fn": str | Callable[[Any], float] | None,
    "item_key": str | Callable[[Any], Any] | None, "output": str | Path | None,
})


__all__ = ["FLOW_NAME", "BatchMapParams", "batch_map", "batch_map_flow"]
