"""HTTP client factory and response classification for api_bulk / api_extract.

This module never waits and retries: :func:`send` *classifies* every outcome by raising
``RetryableError`` (with ``retry_after`` from ``Retry-After``), ``ItemError`` or ``FatalError``, and the
caller wraps it in :class:`tasks.core.retry.RetryPolicy` (the one retry loop). Request building from items
lives in :mod:`tasks.api.request_spec`; this module re-exports it.

Transport choice, measured on this machine (2 cores, loopback uvicorn/h11 JSON API in another
process, GETs behind one semaphore, warm pool, 3 rounds each in one run, medians with the range):

=====================================  ============================  ===========================
transport (client from make_client)    c=64, 4,000 GETs, req/s       c=8, 3,000 GETs, req/s
=====================================  ============================  ===========================
httpx native (httpcore)                412 (252-460)                 908 (847-1,003)
  ... through send()                   359 (299-407)                 809 (739-840)
httpx + httpx-aiohttp AiohttpTransport 1,666 (1,596-1,785)           2,216 (1,364-2,822)
  ... through send()  ** default **    1,857 (1,232-1,943)           1,891 (1,333-1,959)
plain aiohttp (no httpx), reference    5,550 (4,085-6,945)           4,647 (3,756-4,932)
=====================================  ============================  ===========================

So the aiohttp transport is ~4x httpcore at c=64 and ~2x at c=8; httpx's own request/response
objects cost the rest of the gap to plain aiohttp. ``send()``'s classification is within noise.

AiohttpTransport keeps what we rely on: connect timeout (``sock_connect``), read timeout
(``sock_read``), pool wait (aiohttp ``connect``), ``max_connections`` (connector ``limit``) and
keep-alive expiry. It does not enforce ``max_keepalive_connections`` or httpx's write timeout, and
it maps some aiohttp errors to misleading httpx classes (a reset mid-response surfaces as
``ConnectTimeout``); :func:`send` reads ``__cause__`` so categories and messages stay right, and
enforces a total deadline per request (``timeout_s + connect_timeout_s`` unless given) that neither
transport has.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr

from tasks.api.request_spec import (
    RequestSpec,
    RequestTemplate,
    build_request,
    idempotency_key,
    validate_base_url,
)
from tasks.core import FatalError, HttpSettings, ItemError, RetryableError, redact_text, register_secret
from tasks.core.exactjson import json_body, loads_exact
from tasks.core.redact import RedactingFilter, redact_logs

TransportName = Literal["aiohttp", "httpx"]
Expect = Literal["auto", "json", "text"]

DEFAULT_TRANSPORT: TransportName = "aiohttp"
DEFAULT_MAX_CONNECTIONS = 100  # a client made without a pool size (the flows always give one)
MAX_REDIRECTS = 5  # redirects are followed (Authorization is dropped when one leaves the API's origin)
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")  # a URL with a scheme; others join base_url
BODY_EXCERPT_CHARS = 300


class ThrottleListener(Protocol):
    """What a rate limiter implements to hear about throttling (see :func:`limiter_hooks`)."""

    async def acquire(self, tokens: float = 1.0) -> float: ...

    def on_throttle(self, retry_after: float | None = None) -> None: ...


@dataclass(frozen=True)
class ResponseRecord:
    """What one successful request produced: small, JSON-able, secrets redacted."""

    method: str
    url: str
    status: int
    body: Any
    elapsed_ms: float
    headers: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def install_log_redaction(names: tuple[str, ...] = ("httpx", "httpcore", "aiohttp.client")) -> None:
    """Attach one :class:`RedactingFilter` to the HTTP libraries' loggers (idempotent): httpx logs every request
    URL (query strings included) at INFO."""
    redact_logs(names)


def default_headers(settings: HttpSettings, token: str | SecretStr | None,
                    headers: dict[str, str] | None) -> dict[str, str]:
    """Every request's headers: User-Agent, Accept, the bearer token (registered for redaction), then ``headers``."""
    out = {"User-Agent": settings.user_agent, "Accept": "application/json"}
    secret = token if token is not None else settings.token
    raw_token = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if raw_token:
        register_secret(raw_token)
        out["Authorization"] = f"Bearer {raw_token}"
    out.update(headers or {})
    return out


def make_client(
    base_url: str | None = None,
    *,
    settings: HttpSettings | None = None,
    token: str | SecretStr | None = None,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | TransportName = DEFAULT_TRANSPORT,
    max_connections: int | None = None,
    limiter: ThrottleListener | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for many requests to one API: pooled, keep-alive, HTTP/1.1.

    ``transport`` is ``"aiohttp"`` (default, measured fastest), ``"httpx"`` (httpcore), or any
    ``httpx.AsyncBaseTransport`` (``httpx.MockTransport`` in tests). ``token`` (else
    ``settings.token``) is sent as a bearer token and registered for redaction. With ``limiter``
    every request (retries and pages included) first takes a token and every 429 is reported to it.
    Close the client (``async with`` or ``aclose()``): it owns sockets.
    """
    settings = settings or HttpSettings()
    install_log_redaction()
    limits = httpx.Limits(
        max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
        max_keepalive_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry=5.0,
    )
    timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    all_headers = default_headers(settings, token, headers)
    url, auth = _split_userinfo(validate_base_url(base_url)) if base_url else ("", None)
    return httpx.AsyncClient(
        base_url=url,
        auth=auth,
        headers=all_headers,
        timeout=timeout,
        limits=limits,
        http1=True,
        http2=False,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        transport=_transport(transport, limits),
        event_hooks=limiter_hooks(limiter) if limiter is not None else None,
    )


def _split_userinfo(base_url: str) -> tuple[str, httpx.BasicAuth | None]:
    """Move ``user:password@`` out of the URL into basic auth (aiohttp refuses both at once)."""
    url = httpx.URL(base_url)
    if not (url.username or url.password):
        return base_url, None
    register_secret(url.password)
    return str(url.copy_with(username=None, password=None)), httpx.BasicAuth(url.username, url.password)


def _transport(choice: httpx.AsyncBaseTransport | TransportName, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    if isinstance(choice, httpx.AsyncBaseTransport):
        return choice
    if choice == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False, retries=0)
    if choice == "aiohttp":
        return _aiohttp_transport(limits)
    msg = f"transport {choice!r} is unknown; use 'aiohttp', 'httpx' or an httpx.AsyncBaseTransport"
    raise ValueError(msg)


@functools.cache
def _ssl_context() -> Any:
    """One verifying SSL context per process (loading the CA bundle costs 35-100 ms, and every chunk makes a
    client); contexts are safe to share between connections and threads."""
    return httpx.create_ssl_context()


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """AiohttpTransport over a session we build, because aiohttp's defaults break two of our rules.

    A redirected request's body is read before it is handed to aiohttp (see ``Transport``).
    aiohttp silently re-sends an idempotent request once when a reused keep-alive connection is
    reset (``ClientSession._retry_connection``): a second, hidden retry layer that also breaks exact
    request counts, so it is turned off. Cookies are left to httpx (``DummyCookieJar``).
    """
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def session() -> aiohttp.ClientSession:  # called once, lazily, inside the running loop
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry or 5.0,
            ssl=_ssl_context(),
        )
        client = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        client._retry_connection = False
        return client

    class Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                request.content  # noqa: B018  # the body of a redirected request is a stream not read yet:
            except httpx.RequestNotRead:  # read it, or aiohttp would send it chunked (an empty GET body as "0")
                await request.aread()
            return await super().handle_async_request(request)

    return Transport(limits=limits, http1=True, http2=False, client=session)


def limiter_hooks(limiter: ThrottleListener) -> dict[str, list[Callable[..., Awaitable[None]]]]:
    """httpx event hooks: take a limiter token before each request, report each 429 with Retry-After."""

    async def before(request: httpx.Request) -> None:
        await limiter.acquire(1.0)

    async def after(response: httpx.Response) -> None:
        if response.status_code == 429:
            limiter.on_throttle(parse_retry_after(response.headers.get("Retry-After")))

    return {"request": [before], "response": [after]}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 10.2.3).

    Returns None when absent or unparseable (the retry policy then uses its own backoff); a date in
    the past gives 0.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


async def send(
    client: httpx.AsyncClient,
    request: RequestSpec,
    *,
    expect: Expect = "auto",
    max_retry_after_s: float = 300.0,
    total_timeout_s: float | None = None,
) -> ResponseRecord:
    """Send one request and classify the outcome; one attempt, no waiting.

    Raises ``RetryableError`` (connect errors, timeouts, resets, 408/409/425/429/5xx, with
    ``retry_after`` from ``Retry-After``), ``FatalError`` (401/403: the credentials were refused, so
    every other item would fail too), ``ItemError`` (other 4xx with status and a redacted body
    excerpt; a body that is not the JSON ``expect`` asked for). Wrap it in
    ``RetryPolicy.acall(lambda: send(client, spec))``.
    """
    deadline = total_timeout_s if total_timeout_s is not None else _read_timeout(client)
    shown = _shown_url(client, request)
    headers, body = request.headers or None, None
    if request.json is not None:  # httpx's own encoding, but an items file's 12.50 is sent as 12.50
        body = request_body(request.json)
        if not has_content_type(client.headers, headers or {}):
            headers = {**(headers or {}), "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            response = await client.request(
                request.method,
                request.url,
                params=request.params or None,
                content=body,
                headers=headers,
            )
    except TimeoutError as exc:
        msg = f"{request.method} {shown} took longer than {deadline}s in total (transient: retried while attempts remain)"
        raise RetryableError(msg, category="http_timeout") from exc
    except httpx.TooManyRedirects as exc:
        where = redact_text(str(exc.request.url)) if exc.request is not None else shown
        msg = (f"{request.method} {shown} was redirected more than {MAX_REDIRECTS} times (last to {where}); "
               "point the item or base_url at the final address")
        raise ItemError(msg, category="http_redirect") from None
    except (httpx.TransportError, _aiohttp_error()) as exc:
        category, what = _transport_category(exc)
        msg = f"{request.method} {shown} failed: {what} ({redact_text(str(exc)) or type(exc).__name__}) (transient: retried while attempts remain)"
        raise RetryableError(msg, category=category) from exc
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return _classify(response, request.method, shown, elapsed_ms, expect, max_retry_after_s)


def _classify(
    response: httpx.Response, method: str, shown: str, elapsed_ms: float, expect: Expect, max_retry_after_s: float
) -> ResponseRecord:
    status = response.status_code
    if 300 <= status < 400 and status != 304:  # a redirect that could not be followed (no Location, 300)
        location = redact_text(response.headers.get("Location") or "no Location header")
        msg = f"{method} {shown} answered {status} {response.reason_phrase} ({location}) and was not followed"
        exc = ItemError(msg, category="http_redirect")
        exc.status = status  # type: ignore[attr-defined]
        raise exc
    if status < 400:
        return ResponseRecord(
            method=method,
            url=shown,
            status=status,
            body=_body(response, method, shown, expect),  # data: exactly as the API sent it
            elapsed_ms=elapsed_ms,
            headers=_kept_headers(response),
        )
    try:
        _raise_for_status(response, status, method, shown, max_retry_after_s)
    except (FatalError, ItemError, RetryableError) as exc:
        exc.status = status  # type: ignore[attr-defined]  # the dead letter's `status`
        raise
    raise AssertionError(f"unclassified status {status}")  # pragma: no cover


def _raise_for_status(response: httpx.Response, status: int, method: str, shown: str, max_retry_after_s: float) -> None:
    excerpt = redact_text(response.text[:BODY_EXCERPT_CHARS])
    where = f"{method} {shown} answered {status} {response.reason_phrase}"
    if status in (401, 403):
        msg = (
            f"{where}: the credentials were refused ({excerpt!r}). Check the token (auth_secret block or "
            "BATCHFLOWS_HTTP_TOKEN) and its permissions; stopping the run because every item would fail."
        )
        raise FatalError(msg)
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > max_retry_after_s:
            msg = (
                f"{where} with Retry-After {retry_after:.0f}s, longer than the {max_retry_after_s:.0f}s we "
                "wait (BATCHFLOWS_HTTP_MAX_RETRY_AFTER_S); replay the dead letters later"
            )
            raise ItemError(msg, category="http_retry_after_too_long")
        msg = f"{where}: {excerpt!r} (transient: retried while attempts remain" + (
            f", after {retry_after:.2f}s)" if retry_after is not None else ")")
        raise RetryableError(msg, retry_after=retry_after, category=f"http_{status}")
    msg = f"{where}: {excerpt!r}; not retried (client error): fix the item, template or endpoint"
    raise ItemError(msg, category="http_4xx")


def _body(response: httpx.Response, method: str, shown: str, expect: Expect) -> Any:
    if not response.content:
        return None
    ctype = response.headers.get("Content-Type", "")
    if expect == "text" or (expect == "auto" and "json" not in ctype.lower()):
        return response.text
    try:
        return loads_exact(response.content, charset=declared_charset(ctype))
    except ValueError as exc:
        excerpt = redact_text(response.text[:BODY_EXCERPT_CHARS])
        advice = ("use expect='text' if the endpoint returns text" if expect == "auto" else
                  "the endpoint must answer JSON: check the URL (does it answer a login, error or HTML page?); a "
                  "body cut short is fetched again by a rerun with the same run_key")
        msg = (
            f"{method} {shown} answered {response.status_code} with a body that is not JSON "
            f"(Content-Type {ctype or 'missing'!r}): {excerpt!r}; {advice}"
        )
        err = ItemError(msg, category="http_bad_json")
        err.status = response.status_code  # type: ignore[attr-defined]
        raise err from exc


def request_body(value: Any) -> bytes:
    """A request's JSON body; an item JSON cannot carry (NaN, a date) fails as ``bad_item``, not retried."""
    try:
        return json_body(value)
    except (ValueError, TypeError) as exc:
        msg = f"the item's request cannot be built: {type(exc).__name__}: {exc}"
        raise ItemError(msg, category="bad_item") from None


def declared_charset(content_type: str | None) -> str | None:
    """The ``charset=`` of a Content-Type value (``application/json; charset=iso-8859-1``), or None."""
    low = (content_type or "").lower()
    if "charset=" not in low:
        return None
    return low[low.index("charset=") + 8:].split(";", 1)[0].strip().strip("'\"") or None


_KEPT_HEADERS = ("content-type", "link", "etag", "x-request-id", "x-total-count")


def has_content_type(*headers: Mapping[str, str]) -> bool:
    """Whether any of the header sets names a Content-Type (any case): a JSON body gets one only when none
    does, as httpx does (the client's or the request's own wins)."""
    return any(name.lower() == "content-type" for names in headers for name in names)


def _kept_headers(response: httpx.Response) -> dict[str, str]:
    """Repeated headers joined with ", " (httpx's ``Headers``; aiohttp's multidict has ``getall``)."""
    headers = response.headers
    values = getattr(headers, "getall", None) or headers.get_list
    return {k: ", ".join(values(k)) for k in _KEPT_HEADERS if k in headers}


def _shown_url(client: httpx.AsyncClient, request: RequestSpec) -> str:
    """The request's full URL for outputs and messages, redacted; plain string work (httpx's URL
    building cost ~17 % of a request's CPU here, and this runs once per request)."""
    url = request.url
    if not _ABSOLUTE.match(url):  # not `"://" in url`: a query may hold a URL (?to=http://...)
        base = str(client.base_url)  # httpx keeps base_url's path with a trailing slash, but not a bare host's
        url = base + ("" if base.endswith("/") else "/") + url.lstrip("/")
    if request.params:
        pairs = [(k, _query_value(v)) for k, v in request.params.items()
                 for v in (v if isinstance(v, list | tuple) else [v])]
        url = url.split("?", 1)[0] + "?" + urlencode(pairs)  # httpx: params replace the URL's own query
    return redact_text(url)


def _query_value(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"  # as httpx sends them
    return "" if value is None else str(value)


def _read_timeout(client: httpx.AsyncClient) -> float | None:
    read = client.timeout.read
    connect = client.timeout.connect or 0.0
    return None if read is None else read + connect


def _aiohttp_error() -> type[BaseException]:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return httpx.TransportError
    return aiohttp.ClientError


def _transport_category(exc: BaseException) -> tuple[str, str]:
    """(category, human words) for a transport failure, looking through the exception chain.

    httpx-aiohttp maps aiohttp errors coarsely (a reset becomes ``ConnectTimeout``) and httpx wraps
    httpcore's, so the original cause decides.
    """
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and len(chain) < 5:
        chain.append(node)
        node = node.__cause__ or node.__context__
    names = {type(e).__name__ for e in chain}
    if names & {"ClientConnectorError", "ConnectError", "ConnectionRefusedError"}:
        return "http_connect", "could not connect"
    timed_out = any(isinstance(e, TimeoutError | httpx.TimeoutException) for e in chain)
    real_timeout = "ConnectTimeout" not in names or names & {"ServerTimeoutError", "SocketTimeoutError"}
    if timed_out and real_timeout:  # httpx-aiohttp also labels resets ConnectTimeout: not a timeout
        return "http_timeout", "timed out"
    if names & {"ServerDisconnectedError", "ClientOSError", "ReadError", "RemoteProtocolError", "ConnectionResetError",
                "ClientPayloadError", "WriteError"}:
        return "http_connection_reset", "the connection was reset or closed by the server"
    if "ConnectTimeout" in names:
        return "http_timeout", "timed out while connecting"
    return "http_transport", f"transport error {type(chain[-1]).__name__}"


__all__ = [
    "BODY_EXCERPT_CHARS",
    "DEFAULT_TRANSPORT",
    "RETRYABLE_STATUSES",
    "Expect",
    "RedactingFilter",
    "RequestSpec",
    "RequestTemplate",
    "ResponseRecord",
    "ThrottleListener",
    "TransportName",
    "build_request",
    "declared_charset",
    "has_content_type",
    "idempotency_key",
    "install_log_redaction",
    "limiter_hooks",
    "make_client",
    "parse_retry_after",
    "request_body",
    "send",
    "validate_base_url",
]
