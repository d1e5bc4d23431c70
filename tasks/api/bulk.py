"""One api_bulk chunk: many requests in flight on one pooled client, every one through the retry policy.

:func:`process_api_chunk` is plain (tests call it directly): it opens one ``httpx.AsyncClient``
(aiohttp transport, keep-alive pool of ``item_concurrency`` connections), runs ``item_concurrency``
workers that pull the items still to do in order, builds each request (:func:`tasks.api.client.build_request`),
sends it through ``RetryPolicy.acall(send)`` (the one retry loop: Retry-After, backoff, 4xx not retried)
and records the outcome in the chunk's journal as soon as it is known (tasks.core.items.ChunkOutcomes), so a
rerun after a crash re-sends only the requests that were in flight. A fatal answer (401/403) stops
every worker before its next request: what succeeded stays succeeded (with its output row), the item
that got the answer is failed, the rest are not reached, and the chunk is left incomplete for the
rerun. The successful responses are written as one part file, atomically; response bodies and items
are written exactly as they are (they are data), only messages about them are redacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlencode

import httpx
from prefect import task

from tasks.api.client import _ABSOLUTE, Expect, TransportName, build_request, make_client, send
from tasks.api.lean import LeanClient, use_lean
from tasks.api.multi import send_batches
from tasks.api.outputs import ApiPartFormat, process_limiter, resolve_secrets, resolve_token, write_part
from tasks.api.paginators import with_query
from tasks.api.request_spec import RequestSpec, RequestTemplate, query_params
from tasks.core import (
    Chunk,
    ChunkOutcomes,
    ChunkRef,
    ChunkReport,
    ConfigError,
    FailedItem,
    HttpSettings,
    ItemError,
    RetryPolicy,
    attempts_made,
    credentials_in,
    failpoint,
    mask_values,
    recorded_safely,
    run_coroutine,
    stop_signal,
)
from tasks.core.exactjson import loads_exact
from tasks.core.timeouts import Deadline

BULK_COLUMNS = ("chunk", "position", "item", "method", "url", "status", "elapsed_ms", "body")


@dataclass(frozen=True)
class ApiJob:
    """What every chunk of one api_bulk run needs besides its items (no secrets: only the block name)."""

    base_url: str
    template: RequestTemplate
    auth_secret: str | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None  # header -> Secret block name (or in-process handle)
    secret_params: dict[str, str] | None = None  # query parameter -> Secret block name (or in-process handle)
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
    output_format: ApiPartFormat = "jsonl"
    run_scope: str = ""
    chunk_timeout_s: float | None = None  # one chunk attempt (tasks.core.timeouts)
    batch_size: int | None = None  # multi-item requests (tasks.api.multi)
    results_path: str | None = None
    result_key: str | None = None
    lean: bool = True  # plain requests through tasks.api.lean where the transport allows (False: the httpx client)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.retry_backoff_s, max_retry_after_s=self.settings().max_retry_after_s)

    def settings(self) -> HttpSettings:
        return HttpSettings(timeout_s=self.timeout_s)

    @property
    def root(self) -> str:
        """base_url without its query: what an item's path is joined to."""
        return split_base_url(self.base_url)[0]


def split_base_url(base_url: str) -> tuple[str, str]:
    """(base_url without its query, the query as written). The path of a request joins the first and its query
    gets the second: ``https://api.example.com/v1?version=2`` + ``/items/1`` is ``.../v1/items/1?version=2``."""
    root, _, query = base_url.partition("?")
    return root, query.partition("#")[0]


def shown_target(base_url: str, path: str) -> str:
    """``base_url`` joined to ``path`` (a template) as the requests are, for logs and messages (redact it)."""
    root, query = split_base_url(base_url)
    return root + path + (("&" if "?" in path else "?") + query if query else "")


@dataclass(frozen=True)
class RunQuery:
    """What a run adds to the query of its requests: ``base`` (base_url's own query, as written) on those joined to
    base_url, an item's own parameters winning; ``secret`` (credential parameters, resolved) on every request,
    winning. Neither is in the item, its Idempotency-Key or the journal: only on the wire."""

    base: str = ""
    secret: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, base_url: str, secret: Mapping[str, str] | None) -> RunQuery:
        secret = dict(secret or {})
        base = "&".join(_pairs_without(split_base_url(base_url)[1], secret))
        return cls(base, secret)

    def spec(self, spec: RequestSpec) -> RequestSpec:
        """``spec`` with the run's query parameters (see the class docstring)."""
        if self.base and not _ABSOLUTE.match(spec.url):
            if spec.params is not None:
                spec = dataclasses.replace(spec, params={**query_params(self.base), **spec.params})
            else:
                head, hash_, fragment = spec.url.partition("#")
                path, _, own = head.partition("?")
                query = "&".join([*_pairs_without(self.base, query_params(own)), *([own] if own else [])])
                spec = dataclasses.replace(spec, url=f"{path}?{query}{hash_}{fragment}")
        return with_query(spec, dict(self.secret))

    def templated(self, url_for: Callable[[Any], str | None] | None,
                  path_template: str) -> Callable[[Any], str | None] | None:
        """The lean client's ``item -> URL`` (:meth:`LeanClient.templated`) with the run's query appended; None (every
        request built by :meth:`spec`) when the template has a query or fragment of its own to merge with."""
        if url_for is None or not (self.base or self.secret):
            return url_for
        if "?" in path_template or "#" in path_template:
            return None
        suffix = "?" + "&".join(part for part in (self.base, urlencode(self.secret)) if part)

        def with_suffix(item: Any) -> str | None:
            url = url_for(item)
            return None if url is None else url + suffix

        return with_suffix


def _pairs_without(query: str, names: Mapping[str, Any]) -> list[str]:
    """The ``name=value`` pairs of ``query``, as written, but those named in ``names``."""
    return [pair for pair in query.split("&") if pair and unquote_plus(pair.partition("=")[0]) not in names]


def process_api_chunk(chunk: Chunk, job: ApiJob, ref: ChunkRef | None = None) -> ChunkReport:
    """Send the requests of one chunk that have no outcome yet; return its report (see the module docstring)."""
    started = time.perf_counter()
    token = resolve_token(job.auth_secret)
    headers = {**(job.headers or {}), **resolve_secrets(job.secret_headers)}
    secret_params = resolve_secrets(job.secret_params, what="secret_params")
    limiter = process_limiter(job.rate_limit_per_second, job.rate_limit_name, scope=job.limiter_scope)
    outcomes = ChunkOutcomes(chunk, ref, keep_rows=bool(job.output_dir),
                             stop=stop_signal(job.run_scope) if job.run_scope else threading.Event())
    deadline = Deadline(item_timeout_s=None, chunk_timeout_s=job.chunk_timeout_s, chunk=chunk.index)
    try:
        with outcomes:  # past chunk_timeout_s the requests in flight are cancelled (not recorded: the retry resends)
            requests = run_coroutine(lambda: deadline.acall(
                lambda: send_items(outcomes, job, token=token, limiter=limiter, headers=headers,
                                   secret_params=secret_params)))
    except BaseException:  # the chunk fails as a whole: the requests it finished keep their rows (a rerun adds the rest)
        if job.output_dir and outcomes.rows:
            _write_rows(job, chunk.index, outcomes.ordered_rows())
        raise
    report = outcomes.report(started=started, extra={"http_requests": requests})
    if job.output_dir and (outcomes.rows or report.complete):
        report.output_path = str(_write_rows(job, chunk.index, outcomes.ordered_rows()))
    failpoint("chunk.after_output")
    report.duration_s = round(time.perf_counter() - started, 6)
    return report


def _write_rows(job: ApiJob, index: int, rows: list[str]) -> Any:
    if job.output_format == "parquet":
        return write_part(job.output_dir, index, [loads_exact(r) for r in rows], "parquet",  # type: ignore[arg-type]
                          json_columns=("item", "body"), schema=_parquet_schema())
    return write_part(job.output_dir, index, rows, "jsonl", encoded=True)  # type: ignore[arg-type]


def open_client(job: ApiJob, *, token: str | None, limiter: Any,
                headers: dict[str, str] | None = None) -> LeanClient | httpx.AsyncClient:
    """The chunk's client: the lean path (:mod:`tasks.api.lean`) for the default aiohttp transport, the httpx
    client for ``transport="httpx"`` or ``job.lean=False``; same pool size, timeouts, credentials and limiter."""
    kwargs: dict[str, Any] = {"settings": job.settings(), "token": token, "limiter": limiter,
                              "headers": job.headers if headers is None else headers,
                              "max_connections": job.item_concurrency}
    if job.lean and use_lean(job.transport):
        return LeanClient(job.root, **kwargs)
    return make_client(job.root, transport=job.transport, **kwargs)


async def send_items(
    outcomes: ChunkOutcomes, job: ApiJob, *, token: str | None, limiter: Any, headers: dict[str, str] | None = None,
    secret_params: Mapping[str, str] | None = None,
) -> int:
    """Send the request of every item still to do with ``job.item_concurrency`` in flight, recording each
    outcome in ``outcomes`` as it comes; returns the number of requests sent (retries included).

    A fatal answer (401/403) stops every worker before its next item; requests in flight finish.
    ``headers`` (default ``job.headers``) are sent on every request, resolved secret headers included, and so
    are ``secret_params`` (resolved credential query parameters) and base_url's own query (:class:`RunQuery`).
    """
    policy = job.policy()
    settings = job.settings()
    items = outcomes.chunk.items
    todo = outcomes.todo()
    sent = 0
    cursor = 0

    def masked(item: Any) -> Any:
        def mask(failure: FailedItem) -> FailedItem:  # an API may echo the item's credentials in its error
            failure.message = mask_values(failure.message, credentials_in(item))
            return failure
        return mask

    query = RunQuery.of(job.base_url, secret_params)
    async with open_client(job, token=token, limiter=limiter, headers=headers) as client:
        retry_after_cap = settings.max_retry_after_s
        keep = bool(job.output_dir)
        lean = isinstance(client, LeanClient)
        if lean:
            one = functools.partial(client.send, expect=job.expect, max_retry_after_s=retry_after_cap, keep=keep)
        else:
            one = functools.partial(send, client, expect=job.expect, max_retry_after_s=retry_after_cap)

        if job.batch_size:
            send_spec = client.send if lean else functools.partial(send, client)
            return await send_batches(outcomes, job, send_one=lambda spec, **kw: send_spec(query.spec(spec), **kw),
                                      policy=policy, masked=masked, max_retry_after_s=retry_after_cap)

        # the common case, GET /users/{id}: the URL straight from the item (LeanClient.templated), one header
        # set for every request, the first attempt made here (the retry policy takes over only after a failure)
        url_for = query.templated(client.templated(job.template), job.template.path_template) if lean else None
        method = job.template.method.upper()
        fetch = functools.partial(client.exchange, method, headers=client.wire_headers, expect=job.expect,
                                  max_retry_after_s=retry_after_cap, keep=keep) if url_for is not None else None

        def request_of(item: Any) -> Callable[[], Awaitable[Any]]:
            if url_for is not None:
                url = url_for(item)
                if url is not None:
                    return functools.partial(fetch, url)  # type: ignore[arg-type]
            return functools.partial(one, query.spec(build_request(item, job.template)))

        async def worker() -> None:
            nonlocal cursor, sent
            while cursor < len(todo) and not outcomes.stopped():
                position = todo[cursor]
                cursor += 1
                item = items[position]
                try:
                    call = request_of(item)
                except Exception as exc:  # no request can be made of this item: it fails alone, the chunk goes on
                    outcomes.failed(position, _bad_item(exc), attempts=0, transform=masked(item))
                    continue
                try:
                    try:
                        record, attempts = await call(), 1
                    except Exception as exc:
                        record, attempts = await policy.acall(_replaying(exc, call))
                except Exception as exc:
                    sent += attempts_made(exc)
                    outcomes.failed(position, exc, transform=masked(item))
                    continue
                sent += attempts
                outcomes.succeeded(position, {
                    "chunk": outcomes.chunk.index, "position": position, "item": item, "method": record.method,
                    "url": record.url, "status": record.status, "elapsed_ms": record.elapsed_ms, "body": record.body,
                } if keep else None)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(job.item_concurrency, len(todo))):
                group.create_task(worker())
    return sent


def _bad_item(exc: Exception) -> ItemError:
    if isinstance(exc, ItemError):
        return exc
    text = str(exc) if isinstance(exc, ConfigError) else f"the item's request cannot be built: {type(exc).__name__}: {exc}"
    return ItemError(text, category="bad_item")


def _replaying(first: Exception, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``call`` for ``RetryPolicy.acall`` after its first attempt, made by the caller, failed with ``first``: the
    policy's first attempt raises ``first`` again (so it decides, waits and counts attempts as if it had made
    it), the next ones call ``call``."""
    pending: list[Exception] = [first]

    async def again() -> Any:
        if pending:
            raise pending.pop()
        return await call()

    return again


def _parquet_schema() -> dict[str, Any]:
    import polars as pl

    return {"chunk": pl.Int64, "position": pl.Int64, "item": pl.String, "method": pl.String, "url": pl.String,
            "status": pl.Int64, "elapsed_ms": pl.Float64, "body": pl.String}


@task(name="api-chunk", task_run_name="chunk-{chunk.index}", persist_result=True, log_prints=False)
def api_chunk_task(chunk: Chunk, ref: ChunkRef, job: ApiJob) -> ChunkReport:
    """Prefect face of :func:`process_api_chunk` (``ref.key`` is read by the run's cache policy)."""
    with recorded_safely(f"chunk {chunk.index}"):
        return process_api_chunk(chunk, job, ref)


__all__ = ["BULK_COLUMNS", "ApiJob", "RunQuery", "api_chunk_task", "open_client", "process_api_chunk", "run_coroutine",
           "send_items", "shown_target", "split_base_url"]
