"""Parameters more than one flow has, each declared once: type, bounds, description, setting.

A flow's parameter model (tasks.core.flowdef) is made of these aliases and groups plus its own fields.
A flow may give a shared parameter its own default (api calls retry 5 times, handlers 3) by naming the
field again with the same alias; type, bounds and description stay the ones declared here.

The groups are plain pydantic models used as mixins; their fields come after the flow's own fields in
the UI form. Cross-field rules of a group live on the group (a model validator), so every flow that has
the group checks them the same way.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, model_validator

from tasks.core.engine import TaskRunnerName
from tasks.core.errors import ConfigError
from tasks.core.flowdef import SETTING, FromSetting
from tasks.core.items import Per
from tasks.core.retry import RetryOn
from tasks.core.run import OnError
from tasks.core.settings import EngineSettings
from tasks.core.sources import InputFormat
from tasks.core.state import validate_run_key


def _run_key(value: str | None) -> str | None:
    try:
        return None if value is None else validate_run_key(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _dask_address(value: str | None) -> str | None:
    from tasks.core.engine import validate_dask_address

    try:
        return None if value is None else validate_dask_address(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- single knobs

RunKey = Annotated[str | None, AfterValidator(_run_key), Field(
    description="Name of this run's state: rerun with the same key after a crash or a cancel to resume where it "
                "stopped (one live run per key). Default: the flow run's id.")]
CacheVersion = Annotated[str, Field(min_length=1, max_length=100, description=(
    "Part of the run's identity: change it to run everything again under the same run_key (for example "
    "after changing the handler's code)."))]
ChunkSize = Annotated[int, Field(ge=1, le=10_000_000, description="Items per chunk (one Prefect task run each)."),
                      FromSetting(EngineSettings, "chunk_size")]
ChunkBytes = Annotated[int, Field(ge=1, le=1 << 40, description=(
    "Target bytes per chunk: of serialized JSON items (batch_map, chunking='bytes') or of input files "
    "(file_transform)."))]
MaxConcurrency = Annotated[int, Field(ge=1, le=1024, description="Chunk tasks in flight at once.")]
ItemConcurrency = Annotated[int, Field(ge=1, le=10_000, description="Items (or requests) in flight inside one chunk.")]
Retries = Annotated[int, Field(ge=0, le=100, description="Extra attempts per failing item, with exponential "
                                                       "backoff and jitter (a Retry-After is honored).")]
RetryBackoff = Annotated[float, Field(ge=0, le=3600, description="Base of the exponential backoff in seconds.")]
ChunkRetries = Annotated[int, Field(ge=0, le=20, description=(
    "Prefect retries of a chunk task that failed as a whole (infrastructure errors; fatal errors are not "
    "retried)."))]
Tags = Annotated[list[str], Field(max_length=50, description="Tags of the chunk tasks (Prefect tag concurrency "
                                                            "limits).")]
OnErrorField = Annotated[OnError, Field(description=(
    "continue: process everything and dead-letter failures; fail_fast: stop submitting at the first failed "
    "item."))]
MinSuccessRatio = Annotated[float, Field(ge=0.0, le=1.0, description=(
    "Below this ratio of succeeded / (succeeded + failed) the run ends Failed."))]
RatePerSecond = Annotated[float | None, Field(gt=0, le=1_000_000, description=(
    "Calls (or requests) per second for the whole run, retries included; smooth, backs off on 429."))]
RateLimitName = Annotated[str | None, Field(min_length=1, max_length=100, description=(
    "Share the rate with every run and worker using this name (a Prefect global concurrency limit)."))]
ConcurrencyLimitName = Annotated[str | None, Field(min_length=1, max_length=100, description=(
    "Name of a Prefect global concurrency limit: every chunk holds one slot of it (created with max_concurrency "
    "slots when missing)."))]
TaskRunner = Annotated[TaskRunnerName, Field(description=(
    "threads (I/O-bound handlers), processes (CPU-bound), dask (prefect-dask; see dask_address)."))]
DaskAddress = Annotated[str | None, AfterValidator(_dask_address), Field(description=(
    "tcp://host:8786 of an existing Dask scheduler (task_runner='dask'); default: a local cluster."))]
InputFormatField = Annotated[InputFormat, Field(description=(
    "Format of input files: auto (from the name and the gzip magic bytes), jsonl, csv, tsv or parquet."))]
RetryOnField = Annotated[RetryOn, Field(description=(
    "transient: retry only what is likely to pass on a retry (RetryableError, timeouts, connection errors, "
    "HTTP 429/5xx); any: retry every exception except ItemError, SkipItem and FatalError."))]
RunTimeoutS = Annotated[float | None, Field(gt=0, le=30 * 86_400, description=(
    "Seconds the whole run may take (for schedules: finish before the next one); past it no chunk starts, "
    "chunks in flight stop before their next item, and the run ends Failed with what is left for a rerun "
    "with the same run_key. None: no limit."))]
FlowRetries = Annotated[int, Field(ge=0, le=10, description=(
    "Run the whole run again (in the same flow run, after BATCHFLOWS_FLOW_RETRY_DELAY_S x the attempt) when it "
    "ends Failed or raises: it resumes from its records, so only what did not finish runs. Bad parameters "
    "are not retried; a killed process is not either (rerun it with the same run_key)."))]
ItemTimeoutS = Annotated[float | None, Field(gt=0, le=86_400, description=(
    "Seconds one handler call may take; past it the item fails with category timeout and is retried like "
    "other transient errors (a sync call is abandoned in its thread, see the README). None: no limit."))]
ChunkTimeoutS = Annotated[float | None, Field(gt=0, le=7 * 86_400, description=(
    "Seconds one chunk attempt may take; past it the chunk task fails and is retried by chunk_retries (finished "
    "items are kept), then its unfinished items are dead-lettered. None: no limit."))]


def validate_select(text: str) -> str:
    """One SELECT (or WITH ... SELECT) statement, a trailing ';' dropped; a ConfigError otherwise."""
    body = text.strip().rstrip(";").strip()
    if not re.match(r"(?is)^(select|with)\b", body) or ";" in body:
        msg = "query must be a single SELECT (or WITH ... SELECT) statement without ';' inside"
        raise ConfigError(msg)
    return body


def _select_field(value: str | None) -> str | None:
    if value is not None:
        validate_select(value)  # the value itself is kept as given (it is part of resume identities)
    return value


SelectQuery = Annotated[Annotated[str, Field(max_length=100_000)] | None, AfterValidator(_select_field)]


# --------------------------------------------------------------------------- groups


class RunGroup(BaseModel):
    """Every resumable flow: its run key and cache version."""

    run_key: RunKey = None
    cache_version: CacheVersion = "1"
    run_timeout_s: RunTimeoutS = None
    flow_retries: FlowRetries = 0


class RunnerGroup(BaseModel):
    """Flows whose chunk tasks may run in threads, worker processes or on Dask."""

    task_runner: TaskRunner = "threads"
    dask_address: DaskAddress = None

    @model_validator(mode="after")
    def _dask_only(self) -> RunnerGroup:
        if self.dask_address and self.task_runner != "dask":
            msg = f"dask_address is for task_runner='dask' (task_runner is {self.task_runner!r})"
            raise ValueError(msg)
        return self


class OutcomeGroup(BaseModel):
    """How failed items decide the run's final state."""

    on_error: OnErrorField = "continue"
    min_success_ratio: MinSuccessRatio = 1.0


class ChunkTaskGroup(BaseModel):
    """The chunk tasks of a run: how many in flight, their retries, their tags."""

    max_concurrency: Annotated[MaxConcurrency, FromSetting(EngineSettings, "max_concurrency")] = SETTING
    chunk_retries: ChunkRetries = 1
    tags: Tags = Field(default_factory=list)


class RateGroup(BaseModel):
    """A rate limit, local to the run or shared by name."""

    rate_limit_per_second: RatePerSecond = None
    rate_limit_name: RateLimitName = None

    @model_validator(mode="after")
    def _name_needs_rate(self) -> RateGroup:
        if self.rate_limit_name and self.rate_limit_per_second is None:
            msg = (f"rate_limit_name={self.rate_limit_name!r} needs rate_limit_per_second too (the budget of the "
                   "shared limit)")
            raise ValueError(msg)
        return self


class TimeoutGroup(BaseModel):
    """Time limits of handler calls and chunk attempts (batch_map and replay)."""

    item_timeout_s: ItemTimeoutS = None
    chunk_timeout_s: ChunkTimeoutS = None


class PerGroup(BaseModel):
    """What one handler call gets: an item, or a list of items (batch handlers)."""

    per: Annotated[Per, Field(description=(
        "item: the handler gets one item per call; batch: it gets a list of items and returns a list with one "
        "entry per item (a result, or an exception instance for a failed or skipped item)."))] = "item"
    max_batch_items: Annotated[int | None, Field(ge=1, le=1_000_000, description=(
        "per='batch': at most this many items per call (default: the whole chunk in one call)."))] = None

    @model_validator(mode="after")
    def _batch_only(self) -> PerGroup:
        if self.max_batch_items is not None and self.per != "batch":
            msg = f"max_batch_items is for per='batch' handlers (per is {self.per!r})"
            raise ValueError(msg)
        return self


class ItemRetryGroup(BaseModel):
    """Retries of one item inside its chunk."""

    retries: Retries = 3
    retry_backoff_s: RetryBackoff = 1.0


__all__ = [
    "CacheVersion",
    "ChunkBytes",
    "ChunkRetries",
    "ChunkSize",
    "ChunkTaskGroup",
    "ChunkTimeoutS",
    "ConcurrencyLimitName",
    "DaskAddress",
    "FlowRetries",
    "InputFormatField",
    "ItemConcurrency",
    "ItemRetryGroup",
    "ItemTimeoutS",
    "MaxConcurrency",
    "MinSuccessRatio",
    "OnErrorField",
    "OutcomeGroup",
    "PerGroup",
    "RateGroup",
    "RateLimitName",
    "RatePerSecond",
    "Retries",
    "RetryBackoff",
    "RetryOnField",
    "RunGroup",
    "RunKey",
    "RunTimeoutS",
    "SelectQuery",
    "Tags",
    "TaskRunner",
    "TimeoutGroup",
    "validate_select",
]
