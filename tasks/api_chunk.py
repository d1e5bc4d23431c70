"""One api_bulk chunk: many requests in flight on one pooled client, every one through the retry policy.

:func:`process_api_chunk` is plain (tests call it directly): it opens one ``httpx.AsyncClient``
(aiohttp transport, keep-alive pool of ``item_concurrency`` connections), runs ``item_concurrency``
workers that pull items in order, builds each request (:func:`tasks.http.build_request`), sends it
through ``RetryPolicy.acall(send)`` (the one retry loop: Retry-After, backoff, 4xx not retried) and
classifies the outcome. A ``FatalError`` (401/403) cancels the other workers and propagates: the
run stops and nothing of the chunk is written. Otherwise the successful responses are written as
one part file, atomically, and a ChunkReport comes back with every item accounted for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prefect import task

from tasks.api_output import OutputFormat, process_limiter, resolve_secrets, resolve_token, write_part
from tasks.chunking import Chunk
from tasks.errors import ConfigError, FatalError, ItemError
from tasks.http import Expect, ResponseRecord, TransportName, build_request, make_client, send
from tasks.http_request import RequestTemplate
from tasks.outcomes import ChunkReport, FailedItem
from tasks.redact import credentials_in, mask_values, redact
from tasks.retry import RetryPolicy, attempts_made
from tasks.settings import HttpSettings

BULK_COLUMNS = ("chunk", "position", "item", "method", "url", "status", "elapsed_ms", "body")


@dataclass(frozen=True)
class ApiJob:
    """What every chunk of one api_bulk run needs besides its items (no secrets: only the block name)."""

    base_url: str
    template: RequestTemplate
    auth_secret: str | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None  # header -> Secret block name (or in-process handle)
    item_concurrency: int = 8
    retries: int = 5
    retry_backoff_s: float = 1.0
    timeout_s: float = 30.0
    expect: Expect = "auto"
    transport: TransportName = "aiohttp"
    rate_limit_per_second: float | None = None
    rate_limit_name: str | None = None
    limiter_scope: str = ""
    output_dir: str | None = None
    output_format: OutputFormat = "jsonl"

    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.retry_backoff_s, max_retry_after_s=self.settings().max_retry_after_s)

    def settings(self) -> HttpSettings:
        return HttpSettings(timeout_s=self.timeout_s)


Outcome = ResponseRecord | BaseException


def process_api_chunk(chunk: Chunk, job: ApiJob) -> ChunkReport:
    """Send the requests of one chunk; return its report (see the module docstring)."""
    started = time.perf_counter()
    token = resolve_token(job.auth_secret)
    headers = {**(job.headers or {}), **resolve_secrets(job.secret_headers)}
    limiter = process_limiter(job.rate_limit_per_second, job.rate_limit_name, scope=job.limiter_scope)
    outcomes, requests = run_coroutine(
        lambda: send_items(chunk.items, job, token=token, limiter=limiter, headers=headers)
    )
    report = ChunkReport(index=chunk.index, size=len(chunk.items), extra={"http_requests": requests})
    rows: list[dict[str, Any]] = []
    for position, (item, outcome) in enumerate(zip(chunk.items, outcomes, strict=True)):
        # an API may echo the item's own credentials back (body, error message): they are masked there too
        if isinstance(outcome, ResponseRecord):
            report.succeeded += 1
            if job.output_dir:
                rows.append({
                    "chunk": chunk.index, "position": position, "item": redact(item), "method": outcome.method,
                    "url": outcome.url, "status": outcome.status, "elapsed_ms": outcome.elapsed_ms,
                    "body": mask_values(outcome.body, credentials_in(item)),
                })
        else:
            report.failed += 1
            failure = FailedItem.from_exception(item, outcome, chunk=chunk.index, position=position,
                                                attempts=attempts_made(outcome))
            failure.message = mask_values(failure.message, credentials_in(item))
            report.failures.append(failure)
    if job.output_dir:
        path = write_part(job.output_dir, chunk.index, rows, job.output_format, json_columns=("item", "body"),
                          schema=_parquet_schema() if job.output_format == "parquet" else None)
        report.output_path = str(path)
    report.duration_s = round(time.perf_counter() - started, 6)
    report.check()
    return report


async def send_items(
    items: list[Any], job: ApiJob, *, token: str | None, limiter: Any, headers: dict[str, str] | None = None
) -> tuple[list[Outcome], int]:
    """Send every item's request with ``job.item_concurrency`` in flight; (outcome per item, requests sent).

    ``headers`` (default ``job.headers``) are sent on every request, resolved secret headers included.
    """
    policy = job.policy()
    settings = job.settings()
    outcomes: list[Outcome] = [ItemError("not sent")] * len(items)
    sent = 0
    cursor = 0

    async with make_client(
        job.base_url, settings=settings, token=token, headers=job.headers if headers is None else headers,
        transport=job.transport,
        max_connections=job.item_concurrency, limiter=limiter,
    ) as client:

        async def worker() -> None:
            nonlocal cursor, sent
            while cursor < len(items):
                position = cursor
                cursor += 1
                try:
                    spec = build_request(items[position], job.template)
                except (ItemError, ConfigError) as exc:
                    exc.batchflows_attempts = 0  # type: ignore[attr-defined]
                    outcomes[position] = exc if isinstance(exc, ItemError) else ItemError(str(exc), category="bad_item")
                    continue
                try:
                    record, attempts = await policy.acall(
                        lambda spec=spec: send(client, spec, expect=job.expect, max_retry_after_s=settings.max_retry_after_s)
                    )
                except FatalError:
                    raise
                except Exception as exc:
                    outcomes[position] = exc
                    sent += attempts_made(exc)
                    continue
                outcomes[position] = record
                sent += attempts

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(job.item_concurrency, len(items))):
                    group.create_task(worker())
        except BaseExceptionGroup as errors:
            raise _first_fatal(errors) from None
    return outcomes, sent


def _first_fatal(group: BaseExceptionGroup) -> BaseException:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, FatalError)), leaves[0])


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _parquet_schema() -> dict[str, Any]:
    import polars as pl

    return {"chunk": pl.Int64, "position": pl.Int64, "item": pl.String, "method": pl.String, "url": pl.String,
            "status": pl.Int64, "elapsed_ms": pl.Float64, "body": pl.String}


@task(name="api-chunk", task_run_name="chunk-{chunk.index}", persist_result=True, log_prints=False)
def api_chunk_task(chunk: Chunk, cache_key: str, job: ApiJob) -> ChunkReport:
    """Prefect face of :func:`process_api_chunk` (``cache_key`` is read by the run's cache policy)."""
    return process_api_chunk(chunk, job)


__all__ = ["BULK_COLUMNS", "ApiJob", "api_chunk_task", "process_api_chunk", "run_coroutine", "send_items"]
