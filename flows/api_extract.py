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
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from tasks.api import (
    ApiIncremental,
    ApiOutputFormat,
    ExtractJob,
    ExtractWatermark,
    HttpGroup,
    PageSize,
    PaginatorKind,
    keep_credentials_in_process,
    make_paginator,
    refuse_sensitive_params,
    refuse_url_password,
    resolve_secrets,
    resolve_token,
    split_url,
    walk_pages,
)
from tasks.core import (
    ChunkedRun,
    ChunkRetries,
    FlowParams,
    FlowRetries,
    RateGroup,
    RunKey,
    RunSummary,
    RunTimeoutS,
    batchflow,
    check_writable_dir,
    python_entry,
    redact_text,
)

FLOW_NAME = "api-extract"
# what must not change between a run and its resume (else the checkpoint would lie): an explicit list,
# so a parameter added later does not change the identity of an unchanged run
IDENTITY = ("url", "paginator", "page_size", "records_path", "cursor_path", "output", "output_format", "params",
            "paginator_options", "secret_params")


class ApiExtractParams(FlowParams, HttpGroup, RateGroup):
    """Walk a paginated collection and write its records to part files, checkpointed after every part."""

    FLOW_NAME: ClassVar[str] = FLOW_NAME
    url: Annotated[str, Field(min_length=1, description=(
        "Full URL of the collection, e.g. https://api.example.com/v1/items (no credentials: see secret_params and "
        "secret_headers)."))]
    output: Annotated[str, Field(min_length=1, description="Directory for the part files.")]
    paginator: Annotated[PaginatorKind, Field(description="offset, page, cursor or link_header.")] = "offset"
    page_size: PageSize = 100
    records_path: Annotated[str, Field(max_length=500, description=(
        "Dotted path of the records list in a page ('' = the whole body)."))] = "data"
    cursor_path: Annotated[str | None, Field(description=(
        "Dotted path of the next cursor in a page (paginator='cursor')."))] = None
    max_pages: Annotated[int | None, Field(ge=1, description="Stop after this many pages (across resumes).")] = None
    output_format: ApiOutputFormat = "jsonl"
    pages_per_part: Annotated[int, Field(ge=1, le=100_000, description=(
        "Pages per part file (and per checkpoint)."))] = 10
    params: Annotated[dict[str, Any] | None, Field(description="Extra query parameters (no credentials).")] = None
    paginator_options: Annotated[dict[str, str | int] | None, Field(description=(
        "Parameter names of the paginator, e.g. {'offset_param': 'skip', 'limit_param': 'take'}."))] = None
    incremental: Annotated[ApiIncremental | None, Field(description=(
        "Extract only what changed since the last complete run: {'param': 'updated_since', 'record_field': "
        "'updated_at'} sends the last run's maximum of record_field as that query parameter. Each run writes "
        "to OUTPUT/run-RUN_KEY/."))] = None
    reset_incremental: Annotated[bool, Field(description=(
        "Ignore the stored watermark: extract everything again, then store the new maximum."))] = False
    chunk_retries: ChunkRetries = 1
    run_key: RunKey = None
    run_timeout_s: RunTimeoutS = None
    flow_retries: FlowRetries = 0

    @model_validator(mode="after")
    def _consistent(self) -> ApiExtractParams:
        split_url(self.url)  # ConfigError naming the url when invalid
        make_paginator(self.paginator, page_size=self.page_size, cursor_path=self.cursor_path,
                       **(self.paginator_options or {}))
        refuse_sensitive_params(self.url, self.params, flow=FLOW_NAME)
        refuse_url_password(self.url, what="url", flow=FLOW_NAME)
        if self.incremental is not None and self.max_pages is not None:
            msg = ("max_pages with incremental would store a watermark past records not fetched yet; drop "
                   "max_pages (or extract without incremental)")
            raise ValueError(msg)
        if self.reset_incremental and self.incremental is None:
            msg = "reset_incremental applies to incremental runs: pass incremental={'param': ..., 'record_field': ...}"
            raise ValueError(msg)
        return self

    def identity(self) -> str:
        values = {k: getattr(self, k) for k in IDENTITY}
        # the names only: a value is a Secret block's name or an in-process handle, new on every Python call
        values["secret_params"] = sorted(self.secret_params) if self.secret_params else None
        if self.incremental is not None:  # only then: the identity of other runs stays what it was
            values["incremental"] = self.incremental.model_dump()
        payload = json.dumps(values, sort_keys=True, default=str)
        return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


@batchflow(FLOW_NAME, ApiExtractParams, positional=("url",))
def api_extract_flow(p: ApiExtractParams) -> RunSummary:
    """Walk a paginated collection and write its records to part files, checkpointed after every part."""
    check_writable_dir(p.output)  # before any request: an unwritable output would waste them all
    resolve_token(p.auth_secret)
    resolve_secrets(p.secret_headers)
    resolve_secrets(p.secret_params, what="secret_params")
    origin, path, url_params = split_url(p.url)
    watermark = ExtractWatermark(spec=p.incremental, flow=FLOW_NAME, stream=p.identity(),
                                 reset=p.reset_incremental) if p.incremental is not None else None
    with ChunkedRun(FLOW_NAME, run_key=p.run_key, total=None, handler_id=f"GET {redact_text(p.url)}",
                    unit="records") as run:
        job = ExtractJob(
            origin=origin, path=path, params={**url_params, **(p.params or {})}, paginator=p.paginator,
            page_size=p.page_size, cursor_path=p.cursor_path, records_path=p.records_path, max_pages=p.max_pages,
            pages_per_part=p.pages_per_part, auth_secret=p.auth_secret, headers=p.headers,
            secret_headers=p.secret_headers, secret_params=p.secret_params, paginator_options=p.paginator_options,
            retries=p.retries, retry_backoff_s=p.retry_backoff_s, timeout_s=p.timeout_s, transport=p.transport,
            rate_limit_per_second=p.rate_limit_per_second, rate_limit_name=p.rate_limit_name,
            limiter_scope=run.run_key, output_format=p.output_format,
            output_dir=(f"{p.output.rstrip('/')}/run-{run.run_key}" if "://" in p.output  # an s3:// URL stays one
                        else str(Path(p.output) / f"run-{run.run_key}")) if watermark is not None else p.output,
        )
        run.claim_output(job.output_dir)
        return walk_pages(run, job, identity=p.identity(), shown_url=redact_text(p.url), chunk_retries=p.chunk_retries,
                          watermark=watermark)


api_extract = python_entry(api_extract_flow, prepare=keep_credentials_in_process, objects={"output": str | Path})

__all__ = ["FLOW_NAME", "ApiExtractParams", "api_extract", "api_extract_flow"]
