"""batch_map's engine run: source -> chunks -> window of chunk tasks -> summary, dead letters, state.

Shared by the batch-map and replay-dead-letters flows. Parameters are validated up front by
:class:`BatchOptions` (pydantic), so a bad value fails before any work with a message naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.chunked_run import ChunkedRun
from tasks.chunking import Chunk, ChunkingName, PlanLog, cut_chunks, make_strategy
from tasks.engine import ChunkJob, ItemOptions, TaskRunnerName, run_chunk, validate_dask_address
from tasks.errors import ConfigError
from tasks.identity import chunk_hash, handler_identity
from tasks.loader import is_handle, load_callable
from tasks.outcomes import ChunkReport, RunSummary
from tasks.sources import open_source
from tasks.state import validate_run_key

OnError = Literal["continue", "fail_fast"]


class BatchOptions(BaseModel):
    """Every tuning knob of batch_map, validated before any work."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    chunk_size: int = Field(500, gt=0, description="Items per chunk (max weight per chunk for 'weighted').")
    chunking: ChunkingName = Field("fixed", description="fixed | bytes | weighted | adaptive")
    target_chunk_seconds: float = Field(5.0, gt=0, description="Adaptive chunking aims at this chunk duration.")
    chunk_bytes: int = Field(1 << 20, gt=0, description="Serialized bytes per chunk for chunking='bytes'.")
    weight_fn: str | None = Field(None, description="'pkg.mod:fn' giving an item's weight (chunking='weighted').")
    max_concurrency: int = Field(4, ge=1, le=1024, description="Chunk tasks in flight at once.")
    item_concurrency: int = Field(1, ge=1, le=10_000, description="Items in flight inside one chunk.")
    concurrency_limit: str | None = Field(None, description="Prefect global concurrency limit held per chunk.")
    tags: list[str] = Field(default_factory=list, description="Tags of the chunk tasks (tag concurrency limits).")
    rate_limit_per_second: float | None = Field(None, gt=0, description="Handler calls per second.")
    rate_limit_name: str | None = Field(None, description="Share the rate budget with every run using this name.")
    retries: int = Field(3, ge=0, le=100, description="Extra attempts per failing item.")
    retry_backoff_s: float = Field(1.0, ge=0, description="Base of the exponential backoff between item attempts.")
    chunk_retries: int = Field(1, ge=0, le=20, description="Prefect retries of a chunk task (infrastructure errors).")
    on_error: OnError = Field("continue", description="continue: dead-letter failures; fail_fast: stop at the first.")
    min_success_ratio: float = Field(1.0, ge=0.0, le=1.0, description="Below this succeeded/attempted the run fails.")
    run_key: str | None = Field(None, description="Same key after a crash = resume. Default: the flow run's id.")
    cache_version: str = Field("1", min_length=1, description="Change it to force a rerun of cached chunks.")
    output: str | None = Field(None, description="Directory for handler results (part-NNNNNN.jsonl per chunk).")
    task_runner: TaskRunnerName = Field("threads", description="threads | processes | dask")
    dask_address: str | None = Field(None, description="tcp://host:8786 of an existing Dask cluster.")
    input_format: str | None = Field(None, description="Force jsonl | csv | tsv | parquet for a file source.")
    item_key: str | None = Field(None, description="'pkg.mod:fn' giving a JSON-like key per item (resume identity).")

    @field_validator("run_key")
    @classmethod
    def _run_key(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_key(value)

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_dask_address(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return [str(t) for t in value]

    @classmethod
    def parse(cls, **kwargs: Any) -> BatchOptions:
        """Validate, turning pydantic's errors into one ConfigError that names every bad parameter."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "parameters"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        message = str(err["msg"]).removeprefix("Value error, ")  # our own validators already explain
        parts.append(f"{name}: {message}{shown}")
    return "invalid parameters: " + "; ".join(parts)


def run_batch(flow: str, source: Any, handler: Any, opts: BatchOptions) -> RunSummary:
    """Run a whole batch inside the current flow run and return its summary (state decided)."""
    src = open_source(source, input_format=opts.input_format)
    fn = load_callable(handler, what="handler")
    identity = handler_identity(handler if isinstance(handler, str) and not is_handle(handler) else fn)
    weight_fn = load_callable(opts.weight_fn, what="weight_fn") if opts.weight_fn else None
    item_key = load_callable(opts.item_key, what="item_key") if opts.item_key else None
    strategy = make_strategy(
        opts.chunking, chunk_size=opts.chunk_size, target_chunk_seconds=opts.target_chunk_seconds,
        chunk_bytes=opts.chunk_bytes, weight_fn=weight_fn,
    )
    if opts.concurrency_limit:
        from tasks.concurrency import ensure_concurrency_limit

        ensure_concurrency_limit(opts.concurrency_limit, slots=opts.max_concurrency)
    # the run's identity: what the handler is and where its results go; a chunk adds its position
    parts = (opts.cache_version, identity.text, str(opts.output or ""))
    with ChunkedRun(flow, run_key=opts.run_key, total=src.total, identity=parts, handler_id=identity.name,
                    on_error=opts.on_error) as run:
        if identity.note():
            run.progress.logger.warning(identity.note())
        rate_name = opts.rate_limit_name
        if opts.rate_limit_per_second and not rate_name and opts.task_runner != "threads":
            rate_name = internal_rate_limit_name(run.scope)  # one budget across this run's worker processes
        chunk_task = run.configure(run_chunk, chunk_retries=opts.chunk_retries, tags=opts.tags)
        job = ChunkJob(
            handler=fn,
            options=ItemOptions(
                retries=opts.retries, retry_backoff_s=opts.retry_backoff_s, item_concurrency=opts.item_concurrency,
                rate_limit_per_second=opts.rate_limit_per_second, rate_limit_name=rate_name,
            ),
            output_dir=opts.output,
            concurrency_limit=opts.concurrency_limit,
            item_key=item_key,
            run_scope=run.scope,
        )

        def parameters(chunk: Chunk) -> dict[str, Any]:
            return {"chunk": chunk, "ref": run.ref(chunk.index), "job": job}

        def observe(_chunk: Chunk, report: ChunkReport) -> None:
            if not report.resumed:
                strategy.observe(report.size, report.duration_s)

        plan = PlanLog(run.run_dir.plan)
        try:
            summary = run.execute(
                cut_chunks(src, strategy, plan), parameters, chunk_task,
                chunk=lambda c: (c.index, len(c.items), c.items), max_concurrency=opts.max_concurrency,
                content=lambda c: chunk_hash(c.items, index=c.index, item_key=item_key),
                describe=lambda c: c.describe(),
                task_runner=opts.task_runner, dask_address=opts.dask_address, on_report=observe,
            )
        finally:
            plan.close()
            if rate_name and rate_name != opts.rate_limit_name:
                drop_rate_limit(rate_name)
        return run.finish(summary, min_success_ratio=opts.min_success_ratio, output_path=opts.output)


def internal_rate_limit_name(scope: str) -> str:
    """The name of the shared budget that holds an unnamed rate limit across a run's worker processes."""
    import hashlib

    return "batchflows-run-" + hashlib.blake2b(scope.encode(), digest_size=8).hexdigest()


def drop_rate_limit(name: str) -> None:
    """Delete a run's internal rate limit when the run ends (best effort: it is only a server object)."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)
    except Exception:  # pragma: no cover - the server is gone; the limit is harmless
        pass


__all__ = ["BatchOptions", "OnError", "describe_validation_error", "drop_rate_limit", "internal_rate_limit_name", "run_batch"]
