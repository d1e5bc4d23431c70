"""api_bulk's lean hot path: plain requests straight through one ``aiohttp.ClientSession`` per chunk.

Why: profiled on this machine, the httpx client layer over the aiohttp transport (URL parsing twice per
request, httpx ``Request``/``Response`` models, event hooks, the transport's re-wrapping) cost more CPU per
request than aiohttp itself, so api_bulk reached 0.35x of ``asyncio.gather`` on the same transport.
:class:`LeanClient` sends the same requests (same URL bytes, headers, JSON body bytes, timeouts, pool) and
hands the answer to the same classification as :func:`tasks.api.client.send`, so every outcome, message,
category, retry and output row is what the httpx path gives. What it re-implements from httpx, with httpx's
rules: following redirects (at most 5; ``Authorization`` dropped when one leaves the origin except a plain
http -> https upgrade; 301 POST, 302 and 303 become GET without a body; 307/308 keep method and body), the
cookie store, and text decoding (the Content-Type charset, else UTF-8, undecodable bytes replaced).

Neither path uses proxies from the environment (the httpx client is built with a transport, which turns
httpx's ``trust_env`` proxies off, and its aiohttp session does not trust the environment either).
httpx stays the public API and the path for everything else: api_extract, ``transport="httpx"``, and any
client given an ``httpx`` transport or hooks (see :func:`use_lean`).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr

from tasks.api.client import (
    _ABSOLUTE,
    DEFAULT_MAX_CONNECTIONS,
    MAX_REDIRECTS,
    Expect,
    ResponseRecord,
    ThrottleListener,
    TransportName,
    _classify,
    _query_value,
    _split_userinfo,
    _ssl_context,
    _transport_category,
    default_headers,
    install_log_redaction,
    parse_retry_after,
)
from tasks.api.request_spec import RequestSpec, validate_base_url
from tasks.core import HttpSettings, ItemError, RetryableError, redact_text

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# a URL httpx would send as it is: already percent-encoded, no dot segments (httpx removes those)
_SAFE_URL = re.compile(r"(?:[A-Za-z0-9\-_~/!$&'()*+,;=:@?]|%[0-9A-Fa-f]{2}|\.(?<!/\.))*\Z")
_BODY_HEADERS = frozenset({"content-length", "transfer-encoding"})


def use_lean(transport: httpx.AsyncBaseTransport | TransportName) -> bool:
    """True when requests can go through :class:`LeanClient`: the default aiohttp transport. The httpx native
    transport or a user's ``httpx.AsyncBaseTransport`` (a MockTransport, hooks around it) keep the httpx client."""
    return transport == "aiohttp"


class _Answer:
    """The parts of an answer that classification reads, with httpx ``Response``'s names and meanings."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status: int, reason: str | None, headers: Any, content: bytes) -> None:
        self.status_code = status
        self.reason_phrase = reason or ""
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return decode_text(self.content, self.headers.get("Content-Type"))


def decode_text(content: bytes, content_type: str | None) -> str:
    """Bytes to text as httpx does: the Content-Type charset when Python knows it, else UTF-8; bad bytes replaced."""
    encoding = "utf-8"
    if content_type and "charset=" in content_type.lower():
        low = content_type.lower()
        value = low[low.index("charset=") + 8:].split(";", 1)[0].strip().strip("'\"")
        try:
            codecs.lookup(value)
            encoding = value
        except LookupError:
            pass
    return content.decode(encoding, errors="replace")


class LeanClient:
    """Many requests to one API over one pooled, keep-alive aiohttp session (HTTP/1.1); ``async with`` it.

    Made with :func:`make_client`'s arguments and meanings: ``token`` (else ``settings.token``) is a bearer
    token registered for redaction, ``user:password@`` in ``base_url`` becomes basic auth, ``limiter`` takes a
    token before every request sent (redirect hops and retries included) and hears every 429.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        settings: HttpSettings | None = None,
        token: str | SecretStr | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int | None = None,
        limiter: ThrottleListener | None = None,
    ) -> None:
        settings = settings or HttpSettings()
        install_log_redaction()
        self.settings = settings
        self.limiter = limiter
        self.max_connections = max_connections or DEFAULT_MAX_CONNECTIONS
        default = default_headers(settings, token, headers)
        base = ""
        if base_url:
            base, auth = _split_userinfo(validate_base_url(base_url))
            if auth is not None:  # httpx's auth flow sets it last, over a bearer token or a given header
                default["Authorization"] = auth._auth_header
        self.headers = default
        self._lower = {name.lower(): name for name in default}
        self.base = str(httpx.URL(base)) if base else ""  # httpx keeps a base path's trailing slash
        self._base_slash = self.base if self.base.endswith("/") else self.base + "/"
        self.deadline = settings.timeout_s + (settings.connect_timeout_s or 0.0)
        self._session: Any = None
        self._url: Any = None

    async def __aenter__(self) -> LeanClient:
        import aiohttp
        import yarl

        self._url = yarl.URL

        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=5.0, ssl=_ssl_context())
        timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.timeout_s,
                                        sock_connect=self.settings.connect_timeout_s, sock_read=self.settings.timeout_s)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.CookieJar(unsafe=True), trust_env=False,
        )
        self._session._retry_connection = False  # no hidden second retry layer (see client._aiohttp_transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_of(self, spec: RequestSpec) -> str:
        """The full URL the request goes to, unredacted, byte for byte what httpx sends (the params replace the
        URL's own query, as in httpx; request_spec folds that query into the params first)."""
        url = spec.url
        if not _ABSOLUTE.match(url):
            url = self._base_slash + url.lstrip("/")
        if spec.params:
            pairs = [(k, _query_value(v)) for k, v in spec.params.items()
                     for v in (v if isinstance(v, list | tuple) else [v])]
            url = url.split("?", 1)[0] + "?" + urlencode(pairs)
        return url

    async def send(self, spec: RequestSpec, *, expect: Expect = "auto", max_retry_after_s: float = 300.0,
                   total_timeout_s: float | None = None) -> ResponseRecord:
        """:func:`tasks.api.client.send` on this client: one attempt, classified, no waiting."""
        url = self.url_of(spec)
        shown = redact_text(url)
        deadline = total_timeout_s if total_timeout_s is not None else self.deadline
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline):
                answer = await self._follow(spec, url, shown)
        except (OSError, _client_error()) as exc:  # TimeoutError is an OSError; aiohttp's ServerTimeoutError both
            if isinstance(exc, TimeoutError) and not isinstance(exc, _client_error()):
                msg = (f"{spec.method} {shown} took longer than {deadline}s in total "
                       "(transient: retried while attempts remain)")
                raise RetryableError(msg, category="http_timeout") from exc
            category, what = _transport_category(exc)
            msg = (f"{spec.method} {shown} failed: {what} ({redact_text(str(exc)) or type(exc).__name__}) "
                   "(transient: retried while attempts remain)")
            raise RetryableError(msg, category=category) from exc
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        return _classify(answer, spec.method, shown, elapsed_ms, expect, max_retry_after_s)  # type: ignore[arg-type]

    def _headers(self, spec: RequestSpec, body: bytes | None) -> dict[str, str]:
        """The client's headers updated by the request's, names compared without case (as httpx merges them)."""
        if not spec.headers and body is None:
            return self.headers
        merged = dict(self.headers)
        extra = dict(spec.headers or {})
        if body is not None:
            extra["Content-Type"] = "application/json"
        for name, value in extra.items():
            old = self._lower.get(name.lower())
            if old is not None and old != name:
                merged.pop(old, None)
            merged[name] = value
        return merged

    async def _follow(self, spec: RequestSpec, url: str, shown: str) -> _Answer:
        method = spec.method
        body: bytes | None = None
        if spec.json is not None:
            body = json.dumps(spec.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        headers = self._headers(spec, body)
        for _ in range(MAX_REDIRECTS + 1):
            answer = await self._once(method, url, headers, body)
            if answer.status_code not in REDIRECT_STATUSES or "Location" not in answer.headers:
                return answer
            method, url, headers, body = _redirected(method, url, headers, body, answer)
        msg = (f"{spec.method} {shown} was redirected more than {MAX_REDIRECTS} times (last to {redact_text(url)}); "
               "point the item or base_url at the final address")
        raise ItemError(msg, category="http_redirect")

    async def _once(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> _Answer:
        if self.limiter is not None:
            await self.limiter.acquire(1.0)
        target = self._url(url if _SAFE_URL.match(url, url.find("://") + 3) else str(httpx.URL(url)), encoded=True)
        async with self._session.request(method, target, headers=headers, data=body, allow_redirects=False) as resp:
            content = await resp.read()
            answer = _Answer(resp.status, resp.reason, resp.headers, content)
        if answer.status_code == 429 and self.limiter is not None:
            self.limiter.on_throttle(parse_retry_after(answer.headers.get("Retry-After")))
        return answer


def _redirected(method: str, url: str, headers: dict[str, str], body: bytes | None,
                answer: _Answer) -> tuple[str, str, dict[str, str], bytes | None]:
    """The next hop of a redirect, by httpx's rules (``Client._build_redirect_request``)."""
    before = httpx.URL(url)
    try:
        target = httpx.URL(answer.headers["Location"])
    except httpx.InvalidURL as exc:
        msg = f"{method} {redact_text(url)} answered {answer.status_code} with a Location that is not a URL ({exc})"
        raise ItemError(msg, category="http_redirect") from None
    if target.scheme and not target.host:
        target = target.copy_with(host=before.host)
    if target.is_relative_url:
        target = before.join(target)
    if before.fragment and not target.fragment:
        target = target.copy_with(fragment=before.fragment)
    status = answer.status_code
    new_method = method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        new_method = "GET"
    new_headers = dict(headers)
    if not httpx._client._same_origin(target, before) and not httpx._client._is_https_redirect(before, target):
        for name in [n for n in new_headers if n.lower() == "authorization"]:
            del new_headers[name]
    if new_method != method and new_method == "GET":
        for name in [n for n in new_headers if n.lower() in _BODY_HEADERS]:
            del new_headers[name]
        body = None
    return new_method, str(target), new_headers, body


def _client_error() -> type[BaseException]:
    import aiohttp

    return aiohttp.ClientError


__all__ = ["LeanClient", "decode_text", "use_lean"]
