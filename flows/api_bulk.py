"""api-bulk: many HTTP calls, chunked, throttled, retried, resumable, with outputs and dead letters.

Items are full request specs (``{"method", "path" or "url", "params", "json", "headers"}``) or data
rendered into ``path_template`` / ``json_template``. One Prefect task per chunk of items; inside a
chunk ``item_concurrency`` requests are in flight on one pooled client, each through the one retry
policy (Retry-After aware; 4xx other than 408/409/425/429 not retried; 401/403 stop the run).
Responses (status, body, elapsed) go to ``output`` as one part file per chunk (JSONL or Parquet,
written atomically); failed items go to the run's dead-letter file with the status and a redacted
body excerpt. Rerun with the same ``run_key`` to resume: finished chunks are not sent again.

    summary = api_bulk([{"id": 1}, {"id": 2}], base_url="https://api.example.com/v1",
                       path_template="/users/{id}", auth_secret="example-api-token", output="out/users")
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.batch_map import summary_from_state, summary_state
from tasks.api_chunk import ApiJob, api_chunk_task
from tasks.api_output import (
    OutputFormat,
    process_limiter,
    resolve_secrets,
    resolve_token,
    split_credential_headers,
)
from tasks.batch import describe_validation_error
from tasks.chunked_run import ChunkedRun
from tasks.chunking import Chunk, Fixed, PlanLog, cut_chunks
from tasks.errors import ConfigError
from tasks.http import Expect, TransportName, validate_base_url
from tasks.http_request import RequestTemplate, refuse_sensitive_headers
from tasks.identity import chunk_hash
from tasks.loader import is_handle, register_object, release_object
from tasks.notify import HOOKS
from tasks.outcomes import RunSummary
from tasks.progress import api_errors_explained
from tasks.redact import redact_text
from tasks.sources import open_source
from tasks.state import check_writable_dir, validate_run_key

FLOW_NAME = "api-bulk"
OnError = Literal["continue", "fail_fast"]


class ApiBulkOptions(BaseModel):
    """Every knob of api_bulk, validated before any work (errors name the parameter)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    method: str = "GET"
    path_template: str = "/{id}"
    json_template: Any = None
    auth_secret: str | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None
    rate_limit_per_second: float | None = Field(None, gt=0)
    rate_limit_name: str | None = None
    max_concurrency: int = Field(8, ge=1, le=256)
    item_concurrency: int = Field(8, ge=1, le=1024)
    chunk_size: int = Field(500, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(5, ge=0, le=100)
    retry_backoff_s: float = Field(1.0, ge=0)
    idempotency_keys: bool = True
    expect: Expect = "auto"
    output: str | None = None
    output_format: OutputFormat = "jsonl"
    run_key: str | None = None
    cache_version: str = Field("1", min_length=1)
    chunk_retries: int = Field(1, ge=0, le=20)
    on_error: OnError = "continue"
    min_success_ratio: float = Field(1.0, ge=0, le=1)
    tags: list[str] = Field(default_factory=list)
    transport: TransportName = "aiohttp"
    input_format: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return validate_base_url(value)

    @field_validator("run_key")
    @classmethod
    def _run_key(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_key(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}:
            msg = f"method {value!r} is not an HTTP method; use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"
            raise ValueError(msg)
        return method

    @classmethod
    def parse(cls, **kwargs: Any) -> ApiBulkOptions:
        try:
            opts = cls(**kwargs)
        except ValidationError as exc:
            raise ConfigError(redact_text(describe_validation_error(exc))) from None
        if opts.rate_limit_name and opts.rate_limit_per_second is None:
            msg = f"rate_limit_name={opts.rate_limit_name!r} needs rate_limit_per_second too (the shared budget)"
            raise ConfigError(msg)
        check_template(opts.path_template, "path_template")
        check_template(opts.json_template, "json_template")
        refuse_sensitive_headers(opts.headers, flow=FLOW_NAME)
        if opts.output:
            check_writable_dir(opts.output)  # before any request: an unwritable output would waste them all
        return opts

    def template(self) -> RequestTemplate:
        return RequestTemplate(
            method=self.method, path_template=self.path_template, json_template=self.json_template,
            idempotency_keys=self.idempotency_keys,
        )


def check_template(node: Any, where: str) -> None:
    """Malformed templates are a ConfigError before any request (missing item keys are per-item errors)."""
    if isinstance(node, str):
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(node) if name is not None]
        except ValueError as exc:
            msg = f"{where} {node!r} is malformed ({exc}); use {{name}} placeholders and {{{{ }}}} for literal braces"
            raise ConfigError(msg) from None
        if "" in names:
            msg = f"{where} {node!r} has an empty {{}} placeholder; name it after an item key, e.g. {{id}}"
            raise ConfigError(msg)
    elif isinstance(node, dict):
        for value in node.values():
            check_template(value, where)
    elif isinstance(node, list | tuple):
        for value in node:
            check_template(value, where)


def run_api_bulk(items: Any, opts: ApiBulkOptions) -> RunSummary:
    """The whole run inside the current flow run: chunks of requests -> summary (state decided)."""
    resolve_token(opts.auth_secret)  # fail now when a Secret block is missing; registers values for redaction
    resolve_secrets(opts.secret_headers)
    src = open_source(items, input_format=opts.input_format)
    shown = redact_text(opts.base_url)
    template = opts.template()
    # the run's identity: where and how requests go and where responses land; a chunk adds its position
    identity = (opts.cache_version, opts.base_url, template.model_dump_json(), str(opts.output or ""),
                opts.output_format, opts.expect, repr(sorted((opts.headers or {}).items())),
                repr(sorted(opts.secret_headers or {})))
    with ChunkedRun(FLOW_NAME, run_key=opts.run_key, total=src.total, on_error=opts.on_error, identity=identity,
                    handler_id=f"{opts.method} {shown}{opts.path_template}") as run:
        limiter = process_limiter(opts.rate_limit_per_second, opts.rate_limit_name, scope=run.run_key)
        if hasattr(limiter, "ensure_limit"):
            limiter.ensure_limit()
        job = ApiJob(
            base_url=opts.base_url, template=template, auth_secret=opts.auth_secret, headers=opts.headers,
            secret_headers=opts.secret_headers,
            item_concurrency=opts.item_concurrency, retries=opts.retries, retry_backoff_s=opts.retry_backoff_s,
            timeout_s=opts.timeout_s, expect=opts.expect, transport=opts.transport,
            rate_limit_per_second=opts.rate_limit_per_second, rate_limit_name=opts.rate_limit_name,
            limiter_scope=run.run_key, output_dir=opts.output, output_format=opts.output_format,
            run_scope=run.scope,
        )
        task = run.configure(api_chunk_task, chunk_retries=opts.chunk_retries, tags=opts.tags)
        run.progress.logger.info(
            "api-bulk run %r: %s items -> %s %s%s, %d chunk(s) x %d request(s) in flight%s",
            run.run_key, src.total if src.total is not None else "?", opts.method, shown, opts.path_template,
            opts.max_concurrency, opts.item_concurrency,
            f", {opts.rate_limit_per_second}/s" + (f" shared as {opts.rate_limit_name!r}" if opts.rate_limit_name else "")
            if opts.rate_limit_per_second else "",
        )

        def parameters(chunk: Chunk) -> dict[str, Any]:
            return {"chunk": chunk, "ref": run.ref(chunk.index), "job": job}

        plan = PlanLog(run.run_dir.plan)
        try:
            summary = run.execute(
                cut_chunks(src, Fixed(opts.chunk_size), plan), parameters, task,
                chunk=lambda c: (c.index, len(c.items), c.items), max_concurrency=opts.max_concurrency,
                content=lambda c: chunk_hash(c.items, index=c.index), describe=lambda c: c.describe(),
            )
        finally:
            plan.close()
        return run.finish(summary, min_success_ratio=opts.min_success_ratio, output_path=opts.output)


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def api_bulk_flow(
    items: Annotated[
        str | list[Any],
        Field(description="Items: a list (request specs or data for the templates), a .jsonl/.csv/.parquet path, or 'pkg.mod:fn'."),
    ],
    base_url: Annotated[str, Field(description="API root, e.g. https://api.example.com/v1.")],
    method: Annotated[str, Field(description="HTTP method of templated items.")] = "GET",
    path_template: Annotated[str, Field(description="Path with {placeholders} from each item.")] = "/{id}",
    json_template: Annotated[Any, Field(description="JSON body; string leaves may hold {placeholders}.")] = None,
    auth_secret: Annotated[str | None, Field(description="Prefect Secret block holding the bearer token.")] = None,
    headers: Annotated[dict[str, str] | None, Field(description="Extra headers on every request (no credentials).")] = None,
    secret_headers: Annotated[
        dict[str, str] | None, Field(description="Credential headers from Secret blocks: {'X-Api-Key': 'block-name'}.")
    ] = None,
    rate_limit_per_second: Annotated[float | None, Field(gt=0, description="Requests per second (retries included).")] = None,
    rate_limit_name: Annotated[str | None, Field(description="Share the rate with every run using this name.")] = None,
    max_concurrency: Annotated[int, Field(ge=1, le=256, description="Chunk tasks in flight.")] = 8,
    item_concurrency: Annotated[int, Field(ge=1, le=1024, description="Requests in flight per chunk.")] = 8,
    chunk_size: Annotated[int, Field(gt=0, description="Items per chunk (one part file each).")] = 500,
    timeout_s: Annotated[float, Field(gt=0, description="Timeout of one request.")] = 30.0,
    retries: Annotated[int, Field(ge=0, le=100, description="Extra attempts per failing request.")] = 5,
    retry_backoff_s: Annotated[float, Field(ge=0, description="Backoff base in seconds.")] = 1.0,
    idempotency_keys: Annotated[bool, Field(description="Idempotency-Key on non-GET requests.")] = True,
    expect: Annotated[Expect, Field(description="auto | json | text response bodies.")] = "auto",
    output: Annotated[str | None, Field(description="Directory for responses (one part per chunk).")] = None,
    output_format: Annotated[OutputFormat, Field(description="jsonl | parquet")] = "jsonl",
    run_key: Annotated[str | None, Field(description="Reuse to resume a crashed run.")] = None,
    cache_version: Annotated[str, Field(description="Change to force a rerun.")] = "1",
    chunk_retries: Annotated[int, Field(ge=0, le=20, description="Retries of a failed chunk task.")] = 1,
    on_error: Annotated[OnError, Field(description="continue | fail_fast")] = "continue",
    min_success_ratio: Annotated[float, Field(ge=0, le=1, description="Minimum succeeded/attempted.")] = 1.0,
    tags: Annotated[list[str] | None, Field(description="Chunk task tags (tag limits).")] = None,
    transport: Annotated[TransportName, Field(description="aiohttp (fast) | httpx")] = "aiohttp",
    input_format: Annotated[str | None, Field(description="Force jsonl | csv | tsv | parquet.")] = None,
) -> RunSummary:
    opts = ApiBulkOptions.parse(
        base_url=base_url, method=method, path_template=path_template, json_template=json_template,
        auth_secret=auth_secret, headers=headers, secret_headers=secret_headers,
        rate_limit_per_second=rate_limit_per_second, rate_limit_name=rate_limit_name,
        max_concurrency=max_concurrency, item_concurrency=item_concurrency,
        chunk_size=chunk_size, timeout_s=timeout_s, retries=retries, retry_backoff_s=retry_backoff_s,
        idempotency_keys=idempotency_keys, expect=expect, output=output, output_format=output_format,
        run_key=run_key, cache_version=cache_version, chunk_retries=chunk_retries, on_error=on_error,
        min_success_ratio=min_success_ratio, tags=tags or [], transport=transport, input_format=input_format,
    )
    return summary_state(run_api_bulk(items, opts))  # type: ignore[return-value]


def api_bulk(
    items: Iterable[Any] | str | Path | Callable[[], Iterable[Any]],
    *,
    base_url: str,
    method: str = "GET",
    path_template: str = "/{id}",
    json_template: Any = None,
    auth_secret: str | None = None,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
    rate_limit_per_second: float | None = None,
    rate_limit_name: str | None = None,
    max_concurrency: int = 8,
    item_concurrency: int = 8,
    chunk_size: int = 500,
    timeout_s: float = 30.0,
    retries: int = 5,
    retry_backoff_s: float = 1.0,
    idempotency_keys: bool = True,
    expect: Expect = "auto",
    output: str | Path | None = None,
    output_format: OutputFormat = "jsonl",
    run_key: str | None = None,
    cache_version: str = "1",
    chunk_retries: int = 1,
    on_error: OnError = "continue",
    min_success_ratio: float = 1.0,
    tags: Iterable[str] = (),
    transport: TransportName = "aiohttp",
    input_format: str | None = None,
) -> RunSummary:
    """Run the api-bulk flow from Python and return its RunSummary (``summary.ok`` tells the state).

    ``items`` may be any iterable (streamed, never materialized; kept in this process, so request
    bodies never travel to the Prefect API as parameters), a file path, or ``"pkg.mod:fn"``. Bad
    parameters raise ConfigError before any request; refused credentials end the run Failed with
    the reason in ``summary.message``. Credential ``headers`` (Authorization, X-Api-Key, Cookie, ...)
    are kept in this process and never become flow-run parameters; deployments use ``secret_headers``.
    """
    plain_headers, secret_handles = split_credential_headers(headers)
    params = {
        "base_url": base_url, "method": method, "path_template": path_template, "json_template": json_template,
        "auth_secret": auth_secret, "headers": plain_headers,
        "secret_headers": {**(secret_headers or {}), **secret_handles} or None,
        "rate_limit_per_second": rate_limit_per_second,
        "rate_limit_name": rate_limit_name, "max_concurrency": max_concurrency, "item_concurrency": item_concurrency,
        "chunk_size": chunk_size, "timeout_s": timeout_s, "retries": retries, "retry_backoff_s": retry_backoff_s,
        "idempotency_keys": idempotency_keys, "expect": expect, "output": None if output is None else str(output),
        "output_format": output_format, "run_key": run_key, "cache_version": cache_version,
        "chunk_retries": chunk_retries, "on_error": on_error, "min_success_ratio": min_success_ratio,
        "tags": list(tags), "transport": transport, "input_format": input_format,
    }
    handles = list(secret_handles.values())
    try:
        ApiBulkOptions.parse(**params)
        source: Any = items
        if isinstance(items, Path):
            source = str(items)
        elif not isinstance(items, str):
            source = register_object(items)
            handles.append(source)
        with api_errors_explained(FLOW_NAME, run_key):
            state = api_bulk_flow(items=source, **params, return_state=True)
        return summary_from_state(state)
    finally:
        for handle in handles:
            if is_handle(handle):
                release_object(handle)


__all__ = ["FLOW_NAME", "ApiBulkOptions", "api_bulk", "api_bulk_flow", "check_template", "run_api_bulk"]
