"""Parameters both API flows have (api_bulk, api_extract), each declared once."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from tasks.api.client import TransportName
from tasks.api.outputs import ApiPartFormat
from tasks.api.request_spec import refuse_sensitive_headers
from tasks.core import SETTING, FromSetting, HttpSettings, ItemRetryGroup, Retries

TimeoutS = Annotated[float, Field(gt=0, le=3600, description="Total timeout of one request, in seconds."),
                     FromSetting(HttpSettings, "timeout_s")]
AuthSecret = Annotated[str | None, Field(min_length=1, max_length=200, description=(
    "Prefect Secret block holding the bearer token (default: BATCHFLOWS_HTTP_TOKEN, else no auth)."))]
PageSize = Annotated[int, Field(ge=1, le=100_000, description="Records per page asked for.")]
ApiOutputFormat = Annotated[ApiPartFormat, Field(description="Format of the part files: jsonl or parquet.")]


class HttpGroup(ItemRetryGroup):
    """How requests are sent: credentials, extra headers, timeout, retries, transport."""

    auth_secret: AuthSecret = None
    headers: Annotated[dict[str, str] | None, Field(description=(
        "Extra headers on every request; no credentials (use secret_headers)."))] = None
    secret_headers: Annotated[dict[str, str] | None, Field(description=(
        "Credential headers from Prefect Secret blocks: {'X-Api-Key': 'block-name'}."))] = None
    secret_params: Annotated[dict[str, str] | None, Field(description=(
        "Credential query parameters from Prefect Secret blocks, sent on every request: {'api_key': 'block-name'}."
    ))] = None
    timeout_s: TimeoutS = SETTING
    retries: Retries = 5
    transport: Annotated[TransportName, Field(description="aiohttp (fast) or httpx (native transport).")] = "aiohttp"

    @model_validator(mode="after")
    def _no_credentials_in_headers(self) -> Any:
        refuse_sensitive_headers(self.headers, flow=getattr(self, "FLOW_NAME", "this flow"))
        return self


__all__ = ["ApiOutputFormat", "AuthSecret", "HttpGroup", "PageSize", "TimeoutS"]
