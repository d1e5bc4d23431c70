"""api-bulk: many HTTP calls, chunked, throttled, retried, resumable, with outputs and dead letters.

Items are full request specs (``{"method", "path" or "url", "params", "json", "headers"}``) or data
rendered into ``path_template`` / ``json_template``. One Prefect task per chunk of items; inside a
chunk ``item_concurrency`` requests are in flight on one pooled client, each through the one retry
policy (Retry-After aware; 4xx other than 408/409/425/429 not retried; 401/403 stop the run).
Responses (status, body, elapsed) go to ``output`` as one part file per chunk (JSONL or Parquet,
written atomically); failed items go to the run's dead-letter file with the status and a redacted
body excerpt. Rerun with the same ``run_key`` to resume: finished requests are not sent again.

    summary = api_bulk([{"id": 1}, {"id": 2}], base_url="https://api.example.com/v1",
                       path_template="/users/{id}", auth_secret="example-api-token", output="out/users")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, model_validator

from tasks.api import (
    ApiJob,
    ApiOutputFormat,
    Expect,
    HttpGroup,
    RequestTemplate,
    api_chunk_task,
    check_template,
    has_items_placeholder,
    keep_credentials_in_process,
    process_limiter,
    refuse_sensitive_params,
    refuse_url_password,
    resolve_secrets,
    resolve_token,
    template_names,
    validate_base_url,
)
from tasks.api.bulk import shown_target
from tasks.core import (
    SETTING,
    ChunkedRun,
    ChunkSize,
    ChunkTaskGroup,
    ChunkTimeoutS,
    ConfigError,
    Fixed,
    FlowParams,
    InputFormatField,
    ItemConcurrency,
    MaxConcurrency,
    OutcomeGroup,
    PlanLog,
    RateGroup,
    RunGroup,
    RunnerGroup,
    RunSummary,
    batchflow,
    check_writable_dir,
    chunk_hash,
    cut_chunks,
    drop_rate_limit,
    is_handle,
    open_source,
    python_entry,
    redact_text,
    run_rate_limit_name,
)

FLOW_NAME = "api-bulk"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _method(value: str) -> str:
    method = value.upper()
    if method not in HTTP_METHODS:
        msg = f"{value!r} is not an HTTP method; use one of {', '.join(HTTP_METHODS)}"
        raise ValueError(msg)
    return method


class ApiBulkParams(FlowParams, HttpGroup, RunGroup, OutcomeGroup, ChunkTaskGroup, RateGroup, RunnerGroup):
    """Send one HTTP request per item: chunked, throttled, retried, resumable, outputs and dead letters."""

    FLOW_NAME: ClassVar[str] = FLOW_NAME
    items: Annotated[str | list[Any], Field(description=(
        "The items: request specs ({'method', 'path' or 'url', 'params', 'json', 'headers'}) or data for the "
        "templates; a list, a .jsonl/.csv/.parquet file, or 'pkg.mod:fn'."))]
    base_url: Annotated[str, AfterValidator(validate_base_url), Field(description=(
        "API root, e.g. https://api.example.com/v1; a query in it (?version=2) goes on every request joined to it "
        "(no credentials in it: see auth_secret, secret_headers and secret_params)."))]
    method: Annotated[str, AfterValidator(_method), Field(description="HTTP method of templated items.")] = "GET"
    path_template: Annotated[str, Field(description="Path with {placeholders} filled from each item.")] = "/{id}"
    json_template: Annotated[Any, Field(description=(
        "JSON body of templated items; string leaves may hold {placeholders}."))] = None
    idempotency_keys: Annotated[bool, Field(description=(
        "Send an Idempotency-Key derived from the item on non-GET requests (stable across retries and resumes)."
    ))] = True
    expect: Annotated[Expect, Field(description="Response bodies: auto, json or text.")] = "auto"
    output: Annotated[str | None, Field(description="Directory for the responses: one part file per chunk.")] = None
    output_format: ApiOutputFormat = "jsonl"
    input_format: InputFormatField = "auto"
    chunk_size: ChunkSize = SETTING
    item_concurrency: ItemConcurrency = 8
    max_concurrency: MaxConcurrency = 8
    chunk_timeout_s: ChunkTimeoutS = None
    batch_size: Annotated[int | None, Field(ge=1, le=10_000, description=(
        "Send up to this many items per request: json_template places the list where it says \"{items}\" "
        "(e.g. {\"records\": \"{items}\"}); None: one request per item."))] = None
    results_path: Annotated[str | None, Field(max_length=200, description=(
        "batch_size: dotted path of the per-record results in the answer (e.g. data.results; default: the "
        "answer itself when it is a list), in the order of the items unless result_key is set."))] = None
    result_key: Annotated[str | None, Field(max_length=100, description=(
        "batch_size: match results to items by this field (both have it) instead of by order."))] = None

    @model_validator(mode="after")
    def _no_credentials_in_base_url(self) -> ApiBulkParams:
        refuse_sensitive_params(self.base_url, None, flow=FLOW_NAME, what="base_url")
        refuse_url_password(self.base_url, what="base_url", flow=FLOW_NAME)
        return self

    @model_validator(mode="after")
    def _templates(self) -> ApiBulkParams:
        check_template(self.path_template, "path_template")
        check_template(self.json_template, "json_template")
        if self.batch_size is None:
            if self.results_path is not None or self.result_key is not None:
                msg = "results_path and result_key are for multi-item requests: set batch_size too"
                raise ValueError(msg)
            return self
        if self.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            msg = f"batch_size sends the items in a request body: use method POST, PUT or PATCH (not {self.method})"
            raise ValueError(msg)
        if not has_items_placeholder(self.json_template) or any(
                n != "items" for n in template_names(self.json_template)):
            msg = ("with batch_size, json_template must place the list of items with the single placeholder \"{items}\" "
                   f"(e.g. {{\"records\": \"{{items}}\"}}) and no per-item placeholders; got {self.json_template!r}")
            raise ValueError(msg)
        if template_names(self.path_template):
            msg = (f"with batch_size, path_template is one path for every request (e.g. '/records/bulk'); "
                   f"{self.path_template!r} has per-item placeholders")
            raise ValueError(msg)
        return self

    def template(self) -> RequestTemplate:
        return RequestTemplate(method=self.method, path_template=self.path_template, json_template=self.json_template,
                               idempotency_keys=self.idempotency_keys)


@batchflow(FLOW_NAME, ApiBulkParams, positional=("items",))
def api_bulk_flow(p: ApiBulkParams) -> RunSummary:
    """Send one HTTP request per item: chunked, throttled, retried, resumable, outputs and dead letters."""
    if p.output:
        check_writable_dir(p.output)  # before any request: an unwritable output would waste them all
    resolve_token(p.auth_secret)  # fail now when a Secret block is missing; registers values for redaction
    resolve_secrets(p.secret_headers)
    resolve_secrets(p.secret_params, what="secret_params")
    if p.task_runner != "threads" and any(
            is_handle(v) for v in [*(p.secret_headers or {}).values(), *(p.secret_params or {}).values()]):
        msg = ("credential headers and query parameters (and a base_url password) given in Python stay in this "
               f"process, and task_runner={p.task_runner!r} sends "
               "chunks to other processes: save them in Prefect Secret blocks and pass secret_headers="
               "{'Header-Name': '<block name>'} / secret_params={'api_key': '<block name>'} (or use "
               "task_runner='threads')")
        raise ConfigError(msg)
    src = open_source(p.items, input_format=p.input_format)
    shown = redact_text(shown_target(p.base_url, p.path_template))
    template = p.template()
    # the run's identity: where and how requests go and where responses land; a chunk adds its position
    identity = (p.cache_version, p.base_url, template.model_dump_json(), p.output or "", p.output_format, p.expect,
                repr(sorted((p.headers or {}).items())), repr(sorted(p.secret_headers or {})),
                *((f"secret_params {sorted(p.secret_params)}",) if p.secret_params else ()),  # names only
                *((f"batch {p.batch_size} {p.results_path} {p.result_key}",) if p.batch_size else ()))
    with ChunkedRun(FLOW_NAME, run_key=p.run_key, total=src.total, on_error=p.on_error, identity=identity,
                    handler_id=f"{p.method} {shown}") as run:
        run.claim_output(p.output)
        rate_name = run_rate_limit_name(p.rate_limit_per_second, p.rate_limit_name, p.task_runner, run.scope)
        limiter = process_limiter(p.rate_limit_per_second, rate_name, scope=run.run_key)
        if hasattr(limiter, "ensure_limit"):
            limiter.ensure_limit()
        job = ApiJob(
            base_url=p.base_url, template=template, auth_secret=p.auth_secret, headers=p.headers,
            secret_headers=p.secret_headers, secret_params=p.secret_params, item_concurrency=p.item_concurrency,
            retries=p.retries, retry_backoff_s=p.retry_backoff_s, timeout_s=p.timeout_s, expect=p.expect,
            transport=p.transport, rate_limit_per_second=p.rate_limit_per_second, rate_limit_name=rate_name,
            limiter_scope=run.run_key, output_dir=p.output, output_format=p.output_format, run_scope=run.scope,
            batch_size=p.batch_size, results_path=p.results_path, result_key=p.result_key,
            chunk_timeout_s=p.chunk_timeout_s,
        )
        rate = (f", {p.rate_limit_per_second}/s" + (f" shared as {p.rate_limit_name!r}" if p.rate_limit_name else "")
                if p.rate_limit_per_second else "")
        run.progress.logger.info(
            "api-bulk run %r: %s items -> %s %s, %d chunk(s) x %d request(s) in flight%s", run.run_key,
            src.total if src.total is not None else "?", p.method, shown, p.max_concurrency,
            p.item_concurrency, rate)
        plan = PlanLog(run.run_dir.plan)
        try:
            summary = run.execute(
                cut_chunks(src, Fixed(p.chunk_size), plan), lambda c: {"chunk": c, "ref": run.ref(c.index), "job": job},
                run.configure(api_chunk_task, chunk_retries=p.chunk_retries, tags=p.tags),
                chunk=lambda c: (c.index, len(c.items), c.items), max_concurrency=p.max_concurrency,
                content=lambda c: chunk_hash(c.items, index=c.index), describe=lambda c: c.describe(),
                task_runner=p.task_runner, dask_address=p.dask_address,
            )
        finally:
            plan.close()
            if rate_name != p.rate_limit_name:  # the run's internal one
                drop_rate_limit(rate_name)
        return run.finish(summary, min_success_ratio=p.min_success_ratio, output_path=p.output)


api_bulk = python_entry(api_bulk_flow, prepare=keep_credentials_in_process, objects={
    "items": Iterable[Any] | str | Path | Callable[[], Iterable[Any]], "output": str | Path | None})

__all__ = ["FLOW_NAME", "ApiBulkParams", "api_bulk", "api_bulk_flow"]
