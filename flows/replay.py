"""replay-dead-letters: run the failed items of an earlier run again (after fixing the cause).

The items come from a dead-letter file (``<state_dir>/runs/<flow>/<run_key>/dead_letter.jsonl``); the
handler defaults to the one recorded in the file when it is an import path. The replay is a batch-map
run of its own (own run key, own dead-letter file for what still fails), so it resumes the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows.batch_map import summary_from_state, summary_state
from tasks.batch import BatchOptions, OnError, run_batch
from tasks.engine import TaskRunnerName
from tasks.errors import ConfigError
from tasks.loader import is_import_path, register_object, release_object
from tasks.notify import HOOKS
from tasks.outcomes import RunSummary, read_dead_letters
from tasks.sources import Source

FLOW_NAME = "replay-dead-letters"


def dead_letter_source(path: str | Path) -> tuple[Source, str | None]:
    """The failed items of a dead-letter file as a source, and the handler recorded in it (if any)."""
    records = read_dead_letters(path)  # validates the file up front: existence and every line
    total = 0
    handler: str | None = None
    for total, record in enumerate(records, start=1):  # noqa: B007
        handler = handler or record.get("handler")
    return Source(label=str(path), total=total, iterate=lambda: (r["item"] for r in read_dead_letters(path))), handler


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def replay_dead_letters_flow(
    dead_letter_path: Annotated[str, Field(description="A dead_letter.jsonl written by an earlier run.")],
    handler: Annotated[str | None, Field(description="'pkg.mod:fn'; default: the handler recorded in the file.")] = None,
    chunk_size: Annotated[int, Field(gt=0, description="Items per chunk.")] = 100,
    max_concurrency: Annotated[int, Field(ge=1, description="Chunk tasks in flight.")] = 4,
    item_concurrency: Annotated[int, Field(ge=1, description="Items in flight inside a chunk.")] = 1,
    retries: Annotated[int, Field(ge=0, description="Extra attempts per failing item.")] = 3,
    retry_backoff_s: Annotated[float, Field(ge=0, description="Backoff base in seconds.")] = 1.0,
    on_error: Annotated[OnError, Field(description="continue | fail_fast")] = "continue",
    min_success_ratio: Annotated[float, Field(ge=0, le=1, description="Minimum succeeded/attempted.")] = 1.0,
    run_key: Annotated[str | None, Field(description="Reuse to resume an interrupted replay.")] = None,
    output: Annotated[str | None, Field(description="Directory for results (JSONL parts).")] = None,
    task_runner: Annotated[TaskRunnerName, Field(description="threads | processes | dask")] = "threads",
) -> RunSummary:
    source, recorded = dead_letter_source(dead_letter_path)
    chosen = handler or recorded
    if chosen is None or (not chosen.startswith("mem:") and not is_import_path(chosen)):
        msg = (
            f"the dead letters in {dead_letter_path!r} were written by handler {recorded!r}, which cannot be imported; "
            "pass handler='pkg.mod:fn'"
        )
        raise ConfigError(msg)
    opts = BatchOptions.parse(
        chunk_size=chunk_size, max_concurrency=max_concurrency, item_concurrency=item_concurrency, retries=retries,
        retry_backoff_s=retry_backoff_s, on_error=on_error, min_success_ratio=min_success_ratio, run_key=run_key,
        output=output, task_runner=task_runner,
    )
    return summary_state(run_batch(FLOW_NAME, source, chosen, opts))  # type: ignore[return-value]


def replay_dead_letters(
    dead_letter_path: str | Path, handler: str | Callable[[Any], Any] | None = None, **options: Any
) -> RunSummary:
    """Replay a dead-letter file from Python; ``options`` are those of :func:`replay_dead_letters_flow`."""
    handle = register_object(handler) if callable(handler) else None
    try:
        state = replay_dead_letters_flow(
            dead_letter_path=str(dead_letter_path), handler=handle or handler, return_state=True, **options
        )
        return summary_from_state(state)
    finally:
        if handle:
            release_object(handle)


__all__ = ["FLOW_NAME", "dead_letter_source", "replay_dead_letters", "replay_dead_letters_flow"]
