"""replay-dead-letters: run the failed items of an earlier run again (after fixing the cause).

The items come from a dead-letter file (``<state_dir>/runs/<flow>/<run_key>/dead_letter.jsonl``), exactly
as the earlier run read them; the handler defaults to the one recorded in the file when it is an import
path. The replay is a batch-map run of its own (own run key, own dead-letter file for what still fails,
under this flow's name, batch_map's defaults: ``BATCHFLOWS_CHUNK_SIZE``, ``BATCHFLOWS_MAX_CONCURRENCY``), so it
resumes the same way. Items of a type JSON has none for (a ``Decimal`` from a database query, a date, a tuple)
come back as they were: the dead letters keep their typed form (``item_typed``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from flows.batch_map import ImportPath, batch_map_flow
from tasks.core import (
    SETTING,
    ChunkSize,
    ChunkTaskGroup,
    ConfigError,
    FlowParams,
    ItemConcurrency,
    ItemRetryGroup,
    OutcomeGroup,
    PerGroup,
    RetryOnField,
    RunGroup,
    RunSummary,
    Source,
    TaskRunner,
    TimeoutGroup,
    batchflow,
    is_import_path,
    python_entry,
    read_dead_letters,
    register_object,
    release_object,
)

FLOW_NAME = "replay-dead-letters"


class ReplayParams(FlowParams, RunGroup, OutcomeGroup, ChunkTaskGroup, ItemRetryGroup, PerGroup, TimeoutGroup):
    """Run the failed items of an earlier run's dead-letter file again."""

    dead_letter_path: Annotated[str, Field(min_length=1, description="A dead_letter.jsonl written by an earlier run.")]
    handler: Annotated[ImportPath | None, Field(description=(
        "'pkg.mod:fn' to run each item; default: the handler recorded in the file."))] = None
    chunk_size: ChunkSize = SETTING
    item_concurrency: ItemConcurrency = 1
    retry_on: RetryOnField = "transient"
    output: Annotated[str | None, Field(description="Directory for the results (JSONL parts).")] = None
    task_runner: TaskRunner = "threads"


def dead_letter_source(path: str | Path) -> tuple[Source, str | None]:
    """The failed items of a dead-letter file as a source, and the handler recorded in it (if any)."""
    records = read_dead_letters(path)  # validates the file up front: existence and every line
    total = 0
    handler: str | None = None
    for total, record in enumerate(records, start=1):  # noqa: B007
        handler = handler or record.get("handler")
    return Source(label=str(path), total=total, iterate=lambda: (r["item"] for r in read_dead_letters(path))), handler


def content_run_key(path: str | Path) -> str:
    """The default run_key of a replay: ``replay-`` and a hash of the file's bytes, so replaying the same dead
    letters again (a schedule, a second click) resumes the first replay instead of running every item again; a
    file with other contents (a later run's dead letters) is a new replay."""
    digest = hashlib.blake2b(digest_size=10)
    with Path(path).expanduser().open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"replay-{digest.hexdigest()}"


@batchflow(FLOW_NAME, ReplayParams, positional=("dead_letter_path", "handler"))
def replay_dead_letters_flow(p: ReplayParams) -> RunSummary:
    """Run the failed items of an earlier run's dead-letter file again."""
    source, recorded = dead_letter_source(p.dead_letter_path)
    chosen = p.handler or recorded
    if chosen is None or (not chosen.startswith("mem:") and not is_import_path(chosen)):
        msg = (f"the dead letters in {p.dead_letter_path!r} were written by handler {recorded!r}, which cannot be "
               "imported; pass handler='pkg.mod:fn'")
        raise ConfigError(msg)
    handle = register_object(source)
    try:
        values = p.model_dump(exclude={"dead_letter_path", "handler"})
        values["run_key"] = p.run_key or content_run_key(p.dead_letter_path)
        return batch_map_flow.spec.run({**values, "source": handle, "handler": chosen})
    finally:
        release_object(handle)


_replay_entry = python_entry(replay_dead_letters_flow, objects={
    "dead_letter_path": str | Path, "handler": str | Callable[[Any], Any] | None})


@functools.wraps(_replay_entry)
def replay_dead_letters(*args: Any, **kwargs: Any) -> Any:
    """The Python face of the flow; ``collect=True`` without a run_key keeps the content key too: its parts go
    to that key's state folder, chosen before the run, so a second replay of the same file resumes."""
    path = kwargs.get("dead_letter_path", args[0] if args else None)
    if kwargs.get("collect") and kwargs.get("run_key") is None and isinstance(path, str | Path) \
            and Path(path).expanduser().is_file():
        kwargs["run_key"] = content_run_key(path)
    return _replay_entry(*args, **kwargs)


__all__ = ["FLOW_NAME", "ReplayParams", "content_run_key", "dead_letter_source", "replay_dead_letters", "replay_dead_letters_flow"]
