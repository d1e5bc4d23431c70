"""batch-map: the engine's flow face. A chunked, bounded, retried, resumable map of a handler over items.

Three ways to run it:

* Python: ``batch_map(source, handler, chunk_size=..., ...)`` -> RunSummary (any iterable, callables).
* Deployment / UI / CLI: the ``batch_map_flow`` flow with JSON parameters (file paths, lists,
  ``"pkg.mod:fn"`` import paths): ``prefect deployment run 'batch-map/hourly' --param ...``.
* Directly: ``batch_map_flow(source="items.jsonl", handler="pkg.mod:fn")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.states import Completed, Failed, State
from pydantic import Field

from tasks.batch import BatchOptions, OnError, run_batch
from tasks.chunking import ChunkingName
from tasks.engine import TaskRunnerName
from tasks.errors import BatchflowsError
from tasks.loader import is_handle, register_object, release_object
from tasks.notify import HOOKS
from tasks.outcomes import RunSummary
from tasks.progress import api_errors_explained
from tasks.state import check_writable_dir

FLOW_NAME = "batch-map"


def summary_state(summary: RunSummary) -> State:
    """The flow's final state: Completed or Failed with a message stating the counts; data = summary."""
    if summary.state == "Completed":
        return Completed(message=summary.message, data=summary)
    return Failed(message=summary.message, data=summary)


def summary_from_state(state: State) -> RunSummary:
    """Get the RunSummary back from a finished flow run state; re-raise the error of a run that had none."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, BaseException):
        raise result
    msg = f"flow run ended {state.name} without a summary: {state.message}"
    raise BatchflowsError(msg)


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def batch_map_flow(
    source: Annotated[
        str | list[Any],
        Field(description="Items: a list, a .jsonl/.csv/.tsv/.parquet path (optionally .gz), or 'pkg.mod:fn'."),
    ],
    handler: Annotated[str, Field(description="'pkg.mod:fn' called once per item; sync or async.")],
    chunk_size: Annotated[int, Field(gt=0, description="Items per chunk.")] = 500,
    chunking: Annotated[ChunkingName, Field(description="fixed | bytes | weighted | adaptive")] = "fixed",
    target_chunk_seconds: Annotated[float, Field(gt=0, description="Adaptive chunk duration target.")] = 5.0,
    max_concurrency: Annotated[int, Field(ge=1, le=1024, description="Chunk tasks in flight.")] = 4,
    item_concurrency: Annotated[int, Field(ge=1, description="Items in flight inside a chunk.")] = 1,
    concurrency_limit: Annotated[str | None, Field(description="Global concurrency limit name.")] = None,
    tags: Annotated[list[str] | None, Field(description="Chunk task tags (tag limits).")] = None,
    rate_limit_per_second: Annotated[float | None, Field(gt=0, description="Handler calls per second.")] = None,
    rate_limit_name: Annotated[str | None, Field(description="Shared rate budget name.")] = None,
    retries: Annotated[int, Field(ge=0, le=100, description="Extra attempts per failing item.")] = 3,
    retry_backoff_s: Annotated[float, Field(ge=0, description="Backoff base in seconds.")] = 1.0,
    chunk_retries: Annotated[int, Field(ge=0, le=20, description="Retries of a failed chunk task.")] = 1,
    on_error: Annotated[OnError, Field(description="continue | fail_fast")] = "continue",
    min_success_ratio: Annotated[float, Field(ge=0, le=1, description="Minimum succeeded/attempted.")] = 1.0,
    run_key: Annotated[str | None, Field(description="Reuse to resume a crashed run.")] = None,
    cache_version: Annotated[str, Field(description="Change to force a rerun.")] = "1",
    output: Annotated[str | None, Field(description="Directory for results (JSONL parts).")] = None,
    task_runner: Annotated[TaskRunnerName, Field(description="threads | processes | dask")] = "threads",
    dask_address: Annotated[str | None, Field(description="Existing Dask scheduler address.")] = None,
    chunk_bytes: Annotated[int, Field(gt=0, description="Bytes per chunk (chunking='bytes').")] = 1 << 20,
    weight_fn: Annotated[str | None, Field(description="'pkg.mod:fn' item weight (chunking='weighted').")] = None,
    input_format: Annotated[str | None, Field(description="Force jsonl | csv | tsv | parquet.")] = None,
    item_key: Annotated[str | None, Field(description="'pkg.mod:fn' giving a JSON-like key per item.")] = None,
) -> RunSummary:
    opts = BatchOptions.parse(
        chunk_size=chunk_size, chunking=chunking, target_chunk_seconds=target_chunk_seconds,
        max_concurrency=max_concurrency, item_concurrency=item_concurrency, concurrency_limit=concurrency_limit,
        tags=tags or [], rate_limit_per_second=rate_limit_per_second, rate_limit_name=rate_limit_name,
        retries=retries, retry_backoff_s=retry_backoff_s, chunk_retries=chunk_retries, on_error=on_error,
        min_success_ratio=min_success_ratio, run_key=run_key, cache_version=cache_version, output=output,
        task_runner=task_runner, dask_address=dask_address, chunk_bytes=chunk_bytes, weight_fn=weight_fn,
        input_format=input_format, item_key=item_key,
    )
    if opts.output:
        check_writable_dir(opts.output, what="output directory")  # before any item runs (side effects)
    return summary_state(run_batch(FLOW_NAME, source, handler, opts))  # type: ignore[return-value]


def batch_map(
    source: Iterable[Any] | str | Path | Callable[[], Iterable[Any]],
    handler: str | Callable[[Any], Any],
    *,
    chunk_size: int = 500,
    chunking: ChunkingName = "fixed",
    target_chunk_seconds: float = 5.0,
    max_concurrency: int = 4,
    item_concurrency: int = 1,
    concurrency_limit: str | None = None,
    tags: Iterable[str] = (),
    rate_limit_per_second: float | None = None,
    rate_limit_name: str | None = None,
    retries: int = 3,
    retry_backoff_s: float = 1.0,
    chunk_retries: int = 1,
    on_error: OnError = "continue",
    min_success_ratio: float = 1.0,
    run_key: str | None = None,
    cache_version: str = "1",
    output: str | Path | None = None,
    task_runner: TaskRunnerName = "threads",
    dask_address: str | None = None,
    chunk_bytes: int = 1 << 20,
    weight_fn: str | Callable[[Any], float] | None = None,
    input_format: str | None = None,
    item_key: str | Callable[[Any], Any] | None = None,
) -> RunSummary:
    """Run the batch-map flow from Python and return its RunSummary (``summary.ok`` tells the state).

    ``source`` may be anything iterable (a generator included: it is streamed, never materialized),
    a file path, ``"pkg.mod:fn"``, or a zero-argument callable returning an iterable; ``handler`` a
    callable or ``"pkg.mod:fn"``. Bad parameters raise ConfigError before any work; a fatal handler
    error ends the run Failed with the reason in ``summary.message``; a Prefect API that cannot be
    reached raises PrefectApiUnreachable saying how to finish the run (rerun with the same run_key).
    """
    handles: list[str] = []

    def keep(obj: Any) -> Any:
        if isinstance(obj, Path):
            return str(obj)
        if obj is None or isinstance(obj, str):
            return obj
        handle = register_object(obj)
        handles.append(handle)
        return handle

    params = {
        "chunk_size": chunk_size, "chunking": chunking, "target_chunk_seconds": target_chunk_seconds,
        "max_concurrency": max_concurrency, "item_concurrency": item_concurrency,
        "concurrency_limit": concurrency_limit, "tags": list(tags), "rate_limit_per_second": rate_limit_per_second,
        "rate_limit_name": rate_limit_name, "retries": retries, "retry_backoff_s": retry_backoff_s,
        "chunk_retries": chunk_retries, "on_error": on_error, "min_success_ratio": min_success_ratio,
        "run_key": run_key, "cache_version": cache_version, "output": None if output is None else str(output),
        "task_runner": task_runner, "dask_address": dask_address, "chunk_bytes": chunk_bytes,
        "input_format": input_format,
    }
    BatchOptions.parse(**params, weight_fn=None if callable(weight_fn) else weight_fn,
                       item_key=None if callable(item_key) else item_key)
    try:
        with api_errors_explained(FLOW_NAME, run_key):
            state = batch_map_flow(
                source=keep(source), handler=keep(handler), weight_fn=keep(weight_fn), item_key=keep(item_key),
                **params, return_state=True,
            )
        return summary_from_state(state)
    finally:
        for handle in handles:
            if is_handle(handle):
                release_object(handle)


__all__ = ["FLOW_NAME", "batch_map", "batch_map_flow", "summary_from_state", "summary_state"]
