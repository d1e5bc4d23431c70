"""HTTP APIs: bulk calls (api_bulk) and paginated extraction (api_extract); what the flows may use.

Modules: client (httpx clients over the aiohttp transport, send and classify), lean (api_bulk's requests straight
through one aiohttp session, classified by client), request_spec (request specs,
templates, credential refusals), paginators, outputs (part files, credentials, limiters), bulk (api_bulk's
chunk task), extract (api_extract's part task and checkpointed walk), params (the parameters both flows have).
"""

from tasks.api.bulk import ApiJob, api_chunk_task, process_api_chunk
from tasks.api.client import Expect, TransportName, make_client, send, validate_base_url
from tasks.api.extract import ExtractJob, split_url, walk_pages
from tasks.api.incremental import ApiIncremental, ExtractWatermark
from tasks.api.multi import has_items_placeholder
from tasks.api.outputs import (
    ApiPartFormat,
    keep_credentials_in_process,
    process_limiter,
    resolve_secrets,
    resolve_token,
    split_credential_headers,
    split_credential_params,
)
from tasks.api.paginators import PaginatorKind, make_paginator
from tasks.api.params import ApiOutputFormat, AuthSecret, HttpGroup, PageSize, TimeoutS
from tasks.api.request_spec import (
    RequestSpec,
    RequestTemplate,
    check_template,
    refuse_sensitive_params,
    refuse_url_password,
    template_names,
)

__all__ = [
    "ApiIncremental",
    "ApiJob",
    "ApiOutputFormat",
    "ApiPartFormat",
    "AuthSecret",
    "Expect",
    "ExtractJob",
    "ExtractWatermark",
    "HttpGroup",
    "PageSize",
    "PaginatorKind",
    "RequestSpec",
    "RequestTemplate",
    "TimeoutS",
    "TransportName",
    "api_chunk_task",
    "check_template",
    "has_items_placeholder",
    "keep_credentials_in_process",
    "make_client",
    "make_paginator",
    "process_api_chunk",
    "process_limiter",
    "refuse_sensitive_params",
    "refuse_url_password",
    "resolve_secrets",
    "resolve_token",
    "send",
    "split_credential_headers",
    "split_credential_params",
    "split_url",
    "template_names",
    "validate_base_url",
    "walk_pages",
]
