"""batch_map's engine run: source -> chunks -> window of chunk tasks -> summary, dead letters, state.

Shared by the batch-map and replay-dead-letters flows. Parameters are validated up front by
:class:`BatchOptions` (pydantic), so a bad value fails before any work with a message naming it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.chunking import Adaptive, Chunk, ChunkingName, PlanLog, cut_chunks, make_strategy
from tasks.engine import (
    ChunkJob,
    ItemOptions,
    TaskRunnerName,
    chunk_cache_key,
    configure_chunk_task,
    open_task_runner,
    run_chunk,
    run_window,
    state_report,
)
from tasks.errors import ConfigError, FatalError
from tasks.loader import callable_identity, load_callable
from tasks.outcomes import ChunkReport, DeadLetterWriter, FailedItem, RunSummary, SummaryBuilder
from tasks.progress import Progress, publish_summary
from tasks.redact import redact_text
from tasks.settings import EngineSettings
from tasks.sources import open_source
from tasks.state import RunDir, new_run_key, validate_run_key, write_text_atomic

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

    @field_validator("run_key")
    @classmethod
    def _run_key(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_key(value)

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
        parts.append(f"{name}: {err['msg']}{shown}")
    return "invalid parameters: " + "; ".join(parts)


def current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def default_run_key() -> str:
    """The flow run's id inside a flow run (a retried flow run resumes), otherwise a new key."""
    return current_flow_run_id() or new_run_key()


class _BatchRun:
    """The mutable state of one run: folds chunk outcomes, decides when to stop."""

    def __init__(self, flow: str, run_key: str, opts: BatchOptions, run_dir: RunDir, handler_id: str, total: int | None):
        settings = EngineSettings()
        self.opts = opts
        self.builder = SummaryBuilder(flow, run_key)
        self.dead = DeadLetterWriter(run_dir.dead_letter, flow=flow, run_key=run_key, handler=handler_id)
        self.progress = Progress(flow, total, interval_s=settings.progress_interval_s)
        self.fatal: str | None = None
        self.failed_seen = False

    def should_stop(self) -> bool:
        return self.fatal is not None or (self.opts.on_error == "fail_fast" and self.failed_seen)

    def on_done(self, chunk: Chunk, outcome: ChunkReport | BaseException, observe: Callable[[int, float], None]) -> None:
        if isinstance(outcome, ChunkReport):
            report = outcome
            if not report.resumed:
                observe(report.size, report.duration_s)
        else:
            if isinstance(outcome, FatalError):
                self.fatal = redact_text(str(outcome))
            failures = [
                FailedItem.from_exception(item, outcome, chunk=chunk.index, position=i, attempts=1)
                for i, item in enumerate(chunk.items)
            ]
            report = ChunkReport(index=chunk.index, size=len(chunk.items), failed=len(chunk.items), failures=failures)
            self.builder.summary.chunks_failed += 1
        self.builder.add(report)
        self.dead.write(report.failures)
        self.failed_seen = self.failed_seen or report.failed > 0
        self.progress.advance(report.size, report.failed)


def decide_state(summary: RunSummary, opts: BatchOptions, fatal: str | None) -> RunSummary:
    """Set the final state and a message stating the counts, following on_error and min_success_ratio."""
    counts = summary.counts_line()
    if fatal is not None:
        summary.state, summary.message = "Failed", f"stopped by a fatal error: {fatal}. {counts}"
    elif opts.on_error == "fail_fast" and summary.failed:
        summary.state, summary.message = "Failed", f"fail_fast: stopped at the first failed item. {counts}"
    elif summary.success_ratio < opts.min_success_ratio:
        summary.state = "Failed"
        summary.message = (
            f"success ratio {summary.success_ratio:.4f} is below min_success_ratio {opts.min_success_ratio}. {counts}"
        )
    else:
        summary.state, summary.message = "Completed", counts
    return summary


def run_batch(flow: str, source: Any, handler: Any, opts: BatchOptions) -> RunSummary:
    """Run a whole batch inside the current flow run and return its summary (state decided)."""
    settings = EngineSettings()
    run_key = opts.run_key or default_run_key()
    src = open_source(source, input_format=opts.input_format)
    fn = load_callable(handler, what="handler")
    handler_id = callable_identity(handler if isinstance(handler, str) and not handler.startswith("mem:") else fn)
    weight_fn = load_callable(opts.weight_fn, what="weight_fn") if opts.weight_fn else None
    strategy = make_strategy(
        opts.chunking, chunk_size=opts.chunk_size, target_chunk_seconds=opts.target_chunk_seconds,
        chunk_bytes=opts.chunk_bytes, weight_fn=weight_fn,
    )
    if opts.concurrency_limit:
        from tasks.concurrency import ensure_concurrency_limit

        ensure_concurrency_limit(opts.concurrency_limit, slots=opts.max_concurrency)
    run_dir = RunDir.for_run(flow, run_key, settings.state_dir)
    chunk_task = configure_chunk_task(run_chunk, results_dir=run_dir.chunks, chunk_retries=opts.chunk_retries, tags=opts.tags)
    job = ChunkJob(
        handler=fn,
        options=ItemOptions(
            retries=opts.retries, retry_backoff_s=opts.retry_backoff_s, item_concurrency=opts.item_concurrency,
            rate_limit_per_second=opts.rate_limit_per_second, rate_limit_name=opts.rate_limit_name,
        ),
        output_dir=opts.output,
        concurrency_limit=opts.concurrency_limit,
    )
    identity = (flow, run_key, opts.cache_version, handler_id, str(opts.output or ""))
    plan = PlanLog(run_dir.plan)
    state = _BatchRun(flow, run_key, opts, run_dir, handler_id, src.total)
    observe = strategy.observe if isinstance(strategy, Adaptive) else (lambda _s, _d: None)

    def submit(chunk: Chunk) -> Any:
        key = chunk_cache_key(*identity, chunk.content_hash())
        return runner.submit(chunk_task, parameters={"chunk": chunk, "cache_key": key, "job": job})

    started = time.perf_counter()
    chunks: Iterator[Chunk] = cut_chunks(src, strategy, plan)
    try:
        with open_task_runner(opts.task_runner, opts.max_concurrency, opts.dask_address) as runner:
            run_window(
                chunks,
                submit,
                lambda chunk, st: state.on_done(chunk, state_report(st), observe),
                max_in_flight=opts.max_concurrency,
                should_stop=state.should_stop,
                memory_limit_mb=settings.memory_limit_mb,
                logger=state.progress._logger,
            )
    finally:
        plan.close()
        state.dead.close()
    state.progress.finish()
    summary = state.builder.finish(time.perf_counter() - started)
    if state.should_stop():
        summary.remaining = None if src.total is None else max(src.total - summary.total, 0)
    summary.dead_letter_path = str(run_dir.dead_letter) if summary.failed else None
    summary.output_path = opts.output
    summary.flow_run_id = current_flow_run_id()
    decide_state(summary, opts, state.fatal)
    write_text_atomic(run_dir.summary, summary.model_dump_json(indent=2))
    publish_summary(summary)
    return summary


__all__ = ["BatchOptions", "OnError", "current_flow_run_id", "decide_state", "default_run_key", "describe_validation_error", "run_batch"]
