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
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.api.client import TransportName, make_client, validate_base_url
from tasks.api.incremental import ExtractWatermark, keys_of, newest_of
from tasks.api.outputs import (
    ApiPartFormat,
    process_limiter,
    remove_parts_from,
    resolve_secrets,
    resolve_token,
    write_part,
)
from tasks.api.paginators import PaginatorKind, iter_pages, make_paginator
from tasks.api.request_spec import query_params
from tasks.core import (
    ChunkedRun,
    ChunkReport,
    ConfigError,
    FailedItem,
    FatalError,
    HttpSettings,
    RetryPolicy,
    RunSummary,
    attempts_made,
    recorded_safely,
    redact_text,
    run_coroutine,
)


def split_url(url: str) -> tuple[str, str, dict[str, str | list[str]]]:
    """``https://h/v1/items?a=1&s=x&s=y`` -> (``https://h``, ``/v1/items``, ``{"a": "1", "s": ["x", "y"]}``),
    validating it; a repeated parameter keeps every value (sent repeated, as httpx sends a list)."""
    validate_base_url(url)
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin, parts.path or "/", query_params(parts.query)


@dataclass(frozen=True)
class ExtractJob:
    """Everything a part needs (no secrets: only the Secret block's name)."""

    origin: str
    path: str
    params: dict[str, Any]
    paginator: PaginatorKind
    page_size: int
    cursor_path: str | None
    records_path: str
    max_pages: int | None
    pages_per_part: int
    auth_secret: str | None
    headers: dict[str, str] | None
    secret_headers: dict[str, str] | None  # header -> Secret block name (or in-process handle)
    secret_params: dict[str, str] | None  # query parameter -> Secret block name (or handle)
    paginator_options: dict[str, Any] | None
    retries: int
    retry_backoff_s: float
    timeout_s: float
    transport: TransportName
    rate_limit_per_second: float | None
    rate_limit_name: str | None
    limiter_scope: str
    output_dir: str
    output_format: ApiPartFormat
    newest_field: str | None = None  # incremental: the record field whose maximum each part reports

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
    newest: Any = None  # incremental: the maximum of the job's newest_field over the part's records
    keys_seen: list[str] | None = None  # incremental: the records' keys when none has newest_field
    most_records: int | None = None  # the most records on one of the part's pages but its last (None: 1 page)
    last_records: int | None = None  # the records of the part's last page


@dataclass
class PageSizes:
    """Records per page the server answers, to name a server that caps ``page_size``.

    Every page of a walk but its last is a full page for the server, so when the most records on any of
    them is below ``page_size`` the server caps its pages at that. The last page is short by nature, and
    which page is last shows only when the next one comes (perhaps in the next part), so the latest page
    waits in ``pending``.
    """

    page_size: int
    most: int | None = None  # the most records on a page known not to be the last
    full_pages: int = 0  # pages known not to be the last
    pending: int | None = None  # the latest page's records

    def saw(self, result: PartResult) -> None:
        if not result.pages:
            return
        for size, pages in ((self.pending, 1), (result.most_records, result.pages - 1)):
            if size is not None:
                self.most = size if self.most is None else max(self.most, size)
                self.full_pages += pages
        self.pending = result.last_records

    def capped(self) -> int | None:
        """The server's page size when it is below ``page_size`` (and not zero), else None."""
        return self.most if self.most is not None and 0 < self.most < self.page_size else None


def extract_part(job: ExtractJob, index: int, state: dict[str, Any] | None) -> PartResult:
    """Fetch up to ``job.pages_per_part`` pages from ``state``, write them as part ``index``, report."""
    started = time.perf_counter()
    token = resolve_token(job.auth_secret)
    limiter = process_limiter(job.rate_limit_per_second, job.rate_limit_name, scope=job.limiter_scope)
    headers = {**(job.headers or {}), **resolve_secrets(job.secret_headers)}
    secret_params = resolve_secrets(job.secret_params, what="secret_params")
    records, result = run_coroutine(lambda: _fetch(job, index, state, token, limiter, headers, secret_params))
    if records:
        result.output_path = str(write_part(job.output_dir, index, records, job.output_format))
        if job.newest_field:
            result.newest = newest_of(records, job.newest_field)
            if result.newest is None:
                result.keys_seen = keys_of(records)
    result.records = len(records)
    result.duration_s = round(time.perf_counter() - started, 6)
    return result


async def _fetch(
    job: ExtractJob, index: int, state: dict[str, Any] | None, token: str | None, limiter: Any, headers: dict[str, str],
    secret_params: dict[str, str],
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
                           secret_params=secret_params, state=current, max_pages=job.max_pages,
                           retry=_Counting(policy, result))
        try:
            finished = True
            async for page in pages:
                records.extend(page.records)
                result.pages += 1
                if result.last_records is not None:
                    result.most_records = max(result.most_records or 0, result.last_records)
                result.last_records = len(page.records)
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


# --------------------------------------------------------------------------- the checkpointed walk

CHECKPOINT_VERSION = 1


def _not_fatal(task: Any, task_run: Any, state: Any) -> bool:
    return not isinstance(state.result(raise_on_failure=False), FatalError | ConfigError)


def load_checkpoint(run: ChunkedRun, identity: str) -> dict[str, Any]:
    """Where an earlier attempt of this run key stopped: parts, records and pages written, paginator state."""
    fresh = {"parts": 0, "records": 0, "pages": 0, "state": None, "incremental": None}
    data = run.run_dir.read_checkpoint()
    if not data:
        return fresh
    if data.get("identity") != identity:
        msg = (
            f"run_key {run.run_key!r} has a checkpoint of a different extraction (url, paginator, page_size, "
            "records_path, cursor_path, params or output changed); use a new run_key, or the same parameters to resume"
        )
        raise ConfigError(msg)
    return {k: data.get(k, v) for k, v in fresh.items()}


def walk_pages(run: ChunkedRun, job: ExtractJob, *, identity: str, shown_url: str, chunk_retries: int,
               watermark: ExtractWatermark | None = None) -> RunSummary:
    """Run parts one after another from the checkpoint until the paginator is done or a page fails for good;
    checkpoint after every written part. Returns the run's summary (state decided). ``watermark``: an
    incremental run (its start value is sent as a query parameter, checkpointed with the paginator state)."""
    started = time.perf_counter()
    limiter = process_limiter(job.rate_limit_per_second, job.rate_limit_name, scope=run.run_key)
    if hasattr(limiter, "ensure_limit"):
        limiter.ensure_limit()
    checkpoint = load_checkpoint(run, identity)
    parts, records, pages, state = (checkpoint["parts"], checkpoint["records"], checkpoint["pages"],
                                    checkpoint["state"])
    if watermark is not None:
        job = replace(job, params={**job.params, **watermark.start(checkpoint["incremental"])},
                      newest_field=watermark.spec.record_field)
    stale = remove_parts_from(job.output_dir, parts)
    if stale:
        run.progress.logger.warning("removed %d part file(s) written after the last checkpoint: %s",
                                    len(stale), ", ".join(p.name for p in stale))
    if parts:
        s = run.builder.summary
        s.total += records
        s.succeeded += records
        s.chunks_total += parts
        s.chunks_resumed += parts
        run.progress.advance(records, 0)
        run.progress.logger.info("resuming run %r after %d part(s), %d record(s), %d page(s)",
                                 run.run_key, parts, records, pages)
    task = extract_part_task.with_options(retries=chunk_retries, retry_delay_seconds=1.0,
                                          retry_condition_fn=_not_fatal)
    failed_reason: str | None = None
    requests = 0
    sizes = PageSizes(job.page_size)
    try:
        while not (state or {}).get("done"):
            if run.timed_out is not None:
                failed_reason = (f"{run.timed_out}; rerun with run_key={run.run_key!r} to continue from page "
                                 f"{pages + 1}")
                break
            outcome = task(job=job, index=parts, state=state, return_state=True)
            result = outcome.result(raise_on_failure=False)
            if not isinstance(result, PartResult):
                if isinstance(result, FatalError):
                    run.fatal = redact_text(str(result))
                    break
                raise result if isinstance(result, BaseException) else RuntimeError(f"part {parts}: {outcome.message}")
            requests += result.requests
            pages += result.pages
            if watermark is not None:
                watermark.saw(result.newest, result.keys_seen)
            if result.records:
                run.record(ChunkReport(index=parts, size=result.records, succeeded=result.records,
                                       output_path=result.output_path, duration_s=result.duration_s,
                                       extra={"pages": result.pages}))
                parts += 1
                records += result.records
            state = result.next_state
            sizes.saw(result)
            run.run_dir.write_checkpoint({
                "version": CHECKPOINT_VERSION, "identity": identity, "parts": parts, "records": records,
                "pages": pages, "state": state,
                "incremental": watermark.checkpoint() if watermark is not None else None,
            })
            if result.failure is not None:
                failure = result.failure
                dead = FailedItem(  # the item is the page to fetch again: its URL (no credentials) and cursor state
                    item={"page": failure.page, "url": shown_url, "state": state}, chunk=parts, position=0,
                    attempts=failure.attempts, error_type=failure.error_type, message=failure.message,
                    category=failure.category, status=failure.status,
                )
                run.record(ChunkReport(index=parts, size=1, failed=1, failures=[dead]))
                failed_reason = f"{failure.message.rstrip('.')}; rerun with run_key={run.run_key!r} to continue from page {failure.page}"
                break
    finally:
        run.dead.close()
    run.progress.finish()
    summary = run.builder.finish(time.perf_counter() - started)
    summary.extra.update({"records": records, "pages": pages, "http_requests_this_run": requests})
    capped = sizes.capped()
    if capped is not None:
        summary.extra["records_per_page_seen"] = capped
        run.progress.logger.warning(
            "the server answers about %d record(s) per page where page_size=%d was asked (at most %d on each of "
            "the %d page(s) before the last): it caps its page size, so this extraction made about %.2gx the "
            "requests planned; set page_size=%d to match (or check the paginator's size parameter)",
            capped, job.page_size, capped, sizes.full_pages, job.page_size / capped, capped)
    if watermark is not None:
        complete = failed_reason is None and run.fatal is None and bool((state or {}).get("done"))
        watermark.finish(summary, complete=complete, run_key=run.run_key, log=run.progress.logger)
    # a failed page ends the walk: its reason (page, error, how to resume) is the message, not the ratio
    return run.finish(summary, output_path=job.output_dir, failed_reason=failed_reason,
                      min_success_ratio=0.0 if failed_reason else 1.0)


__all__ = [
    "CHECKPOINT_VERSION",
    "ExtractJob",
    "PageFailure",
    "PageSizes",
    "PartResult",
    "extract_part",
    "extract_part_task",
    "load_checkpoint",
    "split_url",
    "walk_pages",
]
