"""api-extract: paginated GET extraction to part files, checkpointed after every written part.

Pages are sequential by nature, so the flow runs one ``extract-part`` task after another; each
fetches up to ``pages_per_part`` pages (offset/limit, page number, cursor from the body, or RFC 5988
``Link`` header), writes their records as one part file atomically, and the flow then checkpoints
the paginator state (``checkpoint.json`` in the run dir). A rerun with the same ``run_key`` (after a
failure, a cancel or a SIGKILL) deletes parts written after the last checkpoint and continues from
the page after the last checkpointed one: no record is written twice and none is skipped.

    summary = api_extract("https://api.example.com/v1/items", paginator="cursor",
                          cursor_path="meta.next_cursor", records_path="result.items",
                          output="out/items", run_key="items-2024-06-01")
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.batch_map import summary_from_state, summary_state
from tasks.api_output import (
    OutputFormat,
    process_limiter,
    remove_parts_from,
    resolve_secrets,
    resolve_token,
    split_credential_headers,
    split_credential_params,
)
from tasks.api_pages import ExtractJob, PartResult, extract_part_task, split_url
from tasks.batch import describe_validation_error
from tasks.chunked_run import ChunkedRun
from tasks.errors import ConfigError, FatalError
from tasks.http import TransportName
from tasks.http_request import refuse_sensitive_headers, refuse_sensitive_params
from tasks.loader import release_object
from tasks.notify import HOOKS
from tasks.outcomes import ChunkReport, FailedItem, RunSummary
from tasks.pagination import PaginatorKind, make_paginator
from tasks.progress import api_errors_explained
from tasks.redact import redact_text
from tasks.state import check_writable_dir, validate_run_key

FLOW_NAME = "api-extract"
CHECKPOINT_VERSION = 1


class ApiExtractOptions(BaseModel):
    """Every knob of api_extract, validated before any request."""

    model_config = ConfigDict(extra="forbid")

    url: str
    paginator: PaginatorKind = "offset"
    page_size: int = Field(100, ge=1, le=100_000)
    records_path: str = "data"
    cursor_path: str | None = None
    max_pages: int | None = Field(None, ge=1)
    output: str
    output_format: OutputFormat = "jsonl"
    pages_per_part: int = Field(10, ge=1, le=100_000)
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None
    secret_params: dict[str, str] | None = None
    paginator_options: dict[str, str | int] | None = None
    auth_secret: str | None = None
    rate_limit_per_second: float | None = Field(None, gt=0)
    rate_limit_name: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(5, ge=0, le=100)
    retry_backoff_s: float = Field(1.0, ge=0)
    chunk_retries: int = Field(1, ge=0, le=20)
    run_key: str | None = None
    transport: TransportName = "aiohttp"

    @field_validator("run_key")
    @classmethod
    def _run_key(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_key(value)

    @classmethod
    def parse(cls, **kwargs: Any) -> ApiExtractOptions:
        try:
            opts = cls(**kwargs)
        except ValidationError as exc:
            raise ConfigError(redact_text(describe_validation_error(exc))) from None
        split_url(opts.url)  # ConfigError naming the url when invalid
        make_paginator(opts.paginator, page_size=opts.page_size, cursor_path=opts.cursor_path,
                       **(opts.paginator_options or {}))
        if opts.rate_limit_name and opts.rate_limit_per_second is None:
            msg = f"rate_limit_name={opts.rate_limit_name!r} needs rate_limit_per_second too (the shared budget)"
            raise ConfigError(msg)
        refuse_sensitive_headers(opts.headers, flow=FLOW_NAME)
        refuse_sensitive_params(opts.url, opts.params, flow=FLOW_NAME)
        check_writable_dir(opts.output)  # before any request: an unwritable output would waste them all
        return opts

    def identity(self) -> str:
        """What must not change between a run and its resume (else the checkpoint would lie)."""
        keys = ("url", "paginator", "page_size", "records_path", "cursor_path", "output", "output_format", "params",
                "paginator_options", "secret_params")
        payload = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=str)
        return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


def run_api_extract(opts: ApiExtractOptions) -> RunSummary:
    """Walk the pages part by part inside the current flow run; checkpoint after each part."""
    resolve_token(opts.auth_secret)
    resolve_secrets(opts.secret_headers)
    resolve_secrets(opts.secret_params, what="secret_params")
    started = time.perf_counter()
    origin, path, url_params = split_url(opts.url)
    with ChunkedRun(FLOW_NAME, run_key=opts.run_key, total=None, handler_id=f"GET {redact_text(opts.url)}",
                    unit="records") as run:
        return _walk(run, opts, origin, path, url_params, started)


def _walk(run: ChunkedRun, opts: ApiExtractOptions, origin: str, path: str, url_params: dict[str, Any],
          started: float) -> RunSummary:
    limiter = process_limiter(opts.rate_limit_per_second, opts.rate_limit_name, scope=run.run_key)
    if hasattr(limiter, "ensure_limit"):
        limiter.ensure_limit()
    job = ExtractJob(
        origin=origin, path=path, params={**url_params, **(opts.params or {})}, paginator=opts.paginator,
        page_size=opts.page_size, cursor_path=opts.cursor_path, records_path=opts.records_path,
        max_pages=opts.max_pages, pages_per_part=opts.pages_per_part, auth_secret=opts.auth_secret,
        headers=opts.headers, secret_headers=opts.secret_headers, secret_params=opts.secret_params,
        paginator_options=opts.paginator_options,
        retries=opts.retries, retry_backoff_s=opts.retry_backoff_s, timeout_s=opts.timeout_s,
        transport=opts.transport, rate_limit_per_second=opts.rate_limit_per_second,
        rate_limit_name=opts.rate_limit_name, limiter_scope=run.run_key, output_dir=opts.output,
        output_format=opts.output_format,
    )
    checkpoint = _load_checkpoint(run, opts)
    parts, records, pages, state = (checkpoint["parts"], checkpoint["records"], checkpoint["pages"],
                                    checkpoint["state"])
    stale = remove_parts_from(opts.output, parts)
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
    task = extract_part_task.with_options(retries=opts.chunk_retries, retry_delay_seconds=1.0,
                                          retry_condition_fn=_not_fatal)
    failed_reason: str | None = None
    requests = 0
    try:
        while not (state or {}).get("done"):
            outcome = task(job=job, index=parts, state=state, return_state=True)
            result = outcome.result(raise_on_failure=False)
            if not isinstance(result, PartResult):
                if isinstance(result, FatalError):
                    run.fatal = redact_text(str(result))
                    break
                raise result if isinstance(result, BaseException) else RuntimeError(f"part {parts}: {outcome.message}")
            requests += result.requests
            pages += result.pages
            if result.records:
                run.record(ChunkReport(index=parts, size=result.records, succeeded=result.records,
                                       output_path=result.output_path, duration_s=result.duration_s,
                                       extra={"pages": result.pages}))
                parts += 1
                records += result.records
            state = result.next_state
            run.run_dir.write_checkpoint({
                "version": CHECKPOINT_VERSION, "identity": opts.identity(), "parts": parts, "records": records,
                "pages": pages, "state": state,
            })
            if result.failure is not None:
                failure = result.failure
                dead = FailedItem(  # the item is the page to fetch again: its URL (no credentials) and cursor state
                    item={"page": failure.page, "url": redact_text(opts.url), "state": state}, chunk=parts, position=0,
                    attempts=failure.attempts, error_type=failure.error_type, message=failure.message,
                    category=failure.category, status=failure.status,
                )
                run.record(ChunkReport(index=parts, size=1, failed=1, failures=[dead]))
                failed_reason = f"{failure.message}; rerun with run_key={run.run_key!r} to continue from page {failure.page}"
                break
    finally:
        run.dead.close()
    run.progress.finish()
    summary = run.builder.finish(time.perf_counter() - started)
    summary.extra.update({"records": records, "pages": pages, "http_requests_this_run": requests})
    # a failed page ends the walk: its reason (page, error, how to resume) is the message, not the ratio
    return run.finish(summary, output_path=opts.output, failed_reason=failed_reason,
                      min_success_ratio=0.0 if failed_reason else 1.0)


def _not_fatal(task: Any, task_run: Any, state: Any) -> bool:
    return not isinstance(state.result(raise_on_failure=False), FatalError | ConfigError)


def _load_checkpoint(run: ChunkedRun, opts: ApiExtractOptions) -> dict[str, Any]:
    fresh = {"parts": 0, "records": 0, "pages": 0, "state": None}
    data = run.run_dir.read_checkpoint()
    if not data:
        return fresh
    if data.get("identity") != opts.identity():
        msg = (
            f"run_key {run.run_key!r} has a checkpoint of a different extraction (url, paginator, page_size, "
            "records_path, cursor_path, params or output changed); use a new run_key, or the same parameters to resume"
        )
        raise ConfigError(msg)
    return {k: data.get(k, v) for k, v in fresh.items()}


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def api_extract_flow(
    url: Annotated[str, Field(description="Full URL of the collection, e.g. https://api.example.com/v1/items.")],
    output: Annotated[str, Field(description="Directory for part files.")],
    paginator: Annotated[PaginatorKind, Field(description="offset | page | cursor | link_header")] = "offset",
    page_size: Annotated[int, Field(ge=1, description="Records per page asked for.")] = 100,
    records_path: Annotated[str, Field(description="Dotted path of the records list in a page ('' = body).")] = "data",
    cursor_path: Annotated[str | None, Field(description="Dotted path of the next cursor (paginator='cursor').")] = None,
    max_pages: Annotated[int | None, Field(ge=1, description="Stop after this many pages (across resumes).")] = None,
    output_format: Annotated[OutputFormat, Field(description="jsonl | parquet")] = "jsonl",
    pages_per_part: Annotated[int, Field(ge=1, description="Pages per part file (and per checkpoint).")] = 10,
    params: Annotated[dict[str, Any] | None, Field(description="Extra query parameters.")] = None,
    headers: Annotated[dict[str, str] | None, Field(description="Extra headers (no credentials).")] = None,
    secret_headers: Annotated[
        dict[str, str] | None, Field(description="Credential headers from Secret blocks: {'X-Api-Key': 'block-name'}.")
    ] = None,
    secret_params: Annotated[
        dict[str, str] | None, Field(description="Credential query parameters from Secret blocks: {'api_key': 'block'}.")
    ] = None,
    paginator_options: Annotated[
        dict[str, str | int] | None,
        Field(description="Parameter names of the paginator, e.g. {'offset_param': 'skip', 'limit_param': 'take'}."),
    ] = None,
    auth_secret: Annotated[str | None, Field(description="Prefect Secret block holding the bearer token.")] = None,
    rate_limit_per_second: Annotated[float | None, Field(gt=0, description="Requests per second.")] = None,
    rate_limit_name: Annotated[str | None, Field(description="Share the rate with every run using this name.")] = None,
    timeout_s: Annotated[float, Field(gt=0, description="Timeout of one request.")] = 30.0,
    retries: Annotated[int, Field(ge=0, le=100, description="Extra attempts per failing page.")] = 5,
    retry_backoff_s: Annotated[float, Field(ge=0, description="Backoff base in seconds.")] = 1.0,
    chunk_retries: Annotated[int, Field(ge=0, le=20, description="Retries of a failed part task.")] = 1,
    run_key: Annotated[str | None, Field(description="Reuse to resume after a crash.")] = None,
    transport: Annotated[TransportName, Field(description="aiohttp (fast) | httpx")] = "aiohttp",
) -> RunSummary:
    opts = ApiExtractOptions.parse(**_params(locals()))
    return summary_state(run_api_extract(opts))  # type: ignore[return-value]


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in ApiExtractOptions.model_fields}


def api_extract(
    url: str,
    *,
    output: str | Path,
    paginator: PaginatorKind = "offset",
    page_size: int = 100,
    records_path: str = "data",
    cursor_path: str | None = None,
    max_pages: int | None = None,
    output_format: OutputFormat = "jsonl",
    pages_per_part: int = 10,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
    secret_params: dict[str, str] | None = None,
    paginator_options: dict[str, str | int] | None = None,
    auth_secret: str | None = None,
    rate_limit_per_second: float | None = None,
    rate_limit_name: str | None = None,
    timeout_s: float = 30.0,
    retries: int = 5,
    retry_backoff_s: float = 1.0,
    chunk_retries: int = 1,
    run_key: str | None = None,
    transport: TransportName = "aiohttp",
) -> RunSummary:
    """Run the api-extract flow from Python and return its RunSummary (``summary.ok`` tells the state).

    Records (``records_path`` of each page) are written to ``output`` as part files; the summary
    counts records as items, and a page that failed for good as one failed item (dead-lettered with
    the page number and the paginator state). Bad parameters raise ConfigError before any request.
    """
    kwargs = _params(locals())
    kwargs["output"] = str(output)
    kwargs["headers"], header_handles = split_credential_headers(headers)
    kwargs["secret_headers"] = {**(secret_headers or {}), **header_handles} or None
    kwargs["url"], kwargs["params"], param_handles = split_credential_params(url, params)
    kwargs["secret_params"] = {**(secret_params or {}), **param_handles} or None
    try:
        ApiExtractOptions.parse(**kwargs)
        with api_errors_explained(FLOW_NAME, run_key):
            state = api_extract_flow(**kwargs, return_state=True)
        return summary_from_state(state)
    finally:
        for handle in [*header_handles.values(), *param_handles.values()]:
            release_object(handle)

__all__ = ["FLOW_NAME", "ApiExtractOptions", "api_extract", "api_extract_flow", "run_api_extract"]
