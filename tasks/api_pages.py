"""One api_extract part: fetch up to N pages from a checkpointed paginator state and write them as a part.

Pages are sequential by nature (page n+1 needs page n's cursor), so a part is N consecutive pages
fetched on one client; the flow runs parts one after another and checkpoints the paginator state
after each written part. A page that fails for good (retries exhausted, records_path missing, a
body that is not JSON, a 4xx) ends the part early: the records of the pages before it are written,
the state after the last good page comes back, and the error names the page, so a rerun with the
same run_key starts again at that page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.api_output import OutputFormat, process_limiter, resolve_secrets, resolve_token, write_part
from tasks.engine import recorded_safely
from tasks.errors import ConfigError, FatalError
from tasks.http import TransportName, make_client, validate_base_url
from tasks.items import run_coroutine
from tasks.pagination import PaginatorKind, iter_pages, make_paginator
from tasks.redact import redact_text
from tasks.retry import RetryPolicy, attempts_made
from tasks.settings import HttpSettings


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``https://h/v1/items?a=1`` -> (``https://h``, ``/v1/items``, ``{"a": "1"}``), validating it."""
    validate_base_url(url)
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin, parts.path or "/", dict(parse_qsl(parts.query, keep_blank_values=True))


@dataclass(frozen=True)
class ExtractJob:
    """Everything a part needs (no secrets: only the Secret block's name)."""

    origin: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    paginator: PaginatorKind = "offset"
    page_size: int = 100
    cursor_path: str | None = None
    records_path: str = "data"
    max_pages: int | None = None
    pages_per_part: int = 10
    auth_secret: str | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None  # header -> Secret block name (or in-process handle)
    secret_params: dict[str, str] | None = None  # query parameter -> Secret block name (or handle)
    paginator_options: dict[str, Any] | None = None
    retries: int = 5
    retry_backoff_s: float = 1.0
    timeout_s: float = 30.0
    transport: TransportName = "aiohttp"
    rate_limit_per_second: float | None = None
    rate_limit_name: str | None = None
    limiter_scope: str = ""
    output_dir: str = ""
    output_format: OutputFormat = "jsonl"

    @property
    def shown_url(self) -> str:
        return redact_text(self.origin + self.path)


class PageFailure(BaseModel):
    page: int
    error_type: str
    category: str
    message: str
    attempts: int = 1
    status: int | None = None


class PartResult(BaseModel):
    """What one part did: records written, pages read, the state to checkpoint, and a page failure if any."""

    index: int
    records: int = 0
    pages: int = 0
    requests: int = 0
    next_state: dict[str, Any]
    done: bool = False
    output_path: str | None = None
    failure: PageFailure | None = None
    duration_s: float = 0.0


def extract_part(job: ExtractJob, index: int, state: dict[str, Any] | None) -> PartResult:
    """Fetch up to ``job.pages_per_part`` pages from ``state``, write them as part ``index``, report."""
    started = time.perf_counter()
    token = resolve_token(job.auth_secret)
    limiter = process_limiter(job.rate_limit_per_second, job.rate_limit_name, scope=job.limiter_scope)
    headers = {**(job.headers or {}), **resolve_secrets(job.secret_headers)}
    secret_params = resolve_secrets(job.secret_params, what="secret_params")
    if secret_params:
        job = replace(job, params={**job.params, **secret_params})
    records, result = run_coroutine(lambda: _fetch(job, index, state, token, limiter, headers))
    if records:
        result.output_path = str(write_part(job.output_dir, index, records, job.output_format))
    result.records = len(records)
    result.duration_s = round(time.perf_counter() - started, 6)
    return result


async def _fetch(
    job: ExtractJob, index: int, state: dict[str, Any] | None, token: str | None, limiter: Any, headers: dict[str, str]
) -> tuple[list[Any], PartResult]:
    paginator = make_paginator(job.paginator, page_size=job.page_size, cursor_path=job.cursor_path,
                               **(job.paginator_options or {}))
    current = dict(state) if state else paginator.initial_state()
    policy = RetryPolicy(retries=job.retries, backoff_s=job.retry_backoff_s)
    settings = HttpSettings(timeout_s=job.timeout_s)
    records: list[Any] = []
    result = PartResult(index=index, next_state=current)
    async with make_client(job.origin, settings=settings, token=token, headers=headers, transport=job.transport,
                           max_connections=2, limiter=limiter) as client:
        pages = iter_pages(client, job.path, paginator, records_path=job.records_path, params=job.params or None,
                           state=current, max_pages=job.max_pages, retry=_Counting(policy, result))
        try:
            finished = True
            async for page in pages:
                records.extend(page.records)
                result.pages += 1
                result.next_state = page.next_state
                if result.pages >= job.pages_per_part:
                    reached = job.max_pages is not None and int(page.next_state.get("pages", 0)) >= job.max_pages
                    finished = bool(page.next_state.get("done")) or reached
                    break
            result.done = finished
        except (FatalError, ConfigError):
            raise
        except Exception as exc:
            number = int(result.next_state.get("pages", 0)) + 1
            result.failure = PageFailure(
                page=number, error_type=type(exc).__name__, category=str(getattr(exc, "category", "exception")),
                attempts=attempts_made(exc), status=getattr(exc, "status", None),
                message=redact_text(f"page {number} of {job.shown_url} failed: {exc}"
                                    if f"page {number}" not in str(exc) else str(exc)),
            )
        finally:
            await pages.aclose()
    if result.done:
        result.next_state = {**result.next_state, "done": True}
    return records, result


class _Counting:
    """The run's RetryPolicy, counting the requests it makes (for the summary)."""

    def __init__(self, policy: RetryPolicy, result: PartResult) -> None:
        self._policy, self._result = policy, result

    async def acall(self, fn: Any) -> Any:
        try:
            value, attempts = await self._policy.acall(fn)
        except Exception as exc:
            self._result.requests += attempts_made(exc)
            raise
        self._result.requests += attempts
        return value, attempts


@task(name="extract-part", task_run_name="part-{index}", persist_result=False, cache_policy=NO_CACHE, log_prints=False)
def extract_part_task(job: ExtractJob, index: int, state: dict[str, Any] | None) -> PartResult:
    """Prefect face of :func:`extract_part` (not cached: the flow's checkpoint is the resume state)."""
    with recorded_safely(f"part {index}"):
        return extract_part(job, index, state)


__all__ = ["ExtractJob", "PageFailure", "PartResult", "extract_part", "extract_part_task", "split_url"]
