"""api_bulk's lean hot path: plain requests straight through one ``aiohttp.ClientSession`` per chunk.

Why: profiled on this machine, the httpx client layer over the aiohttp transport (URL parsing twice per
request, httpx ``Request``/``Response`` models, event hooks, the transport's re-wrapping) cost more CPU per
request than aiohttp itself, so api_bulk reached 0.35x of ``asyncio.gather`` on the same transport.
:class:`LeanClient` sends the same requests (same URL bytes, headers, JSON body bytes, pool) and
hands the answer to the same classification as :func:`tasks.api.client.send`, so every outcome, message,
category, retry and output row is what the httpx path gives. What it re-implements from httpx, with httpx's
rules: following redirects (at most 5; ``Authorization`` dropped when one leaves the origin except a plain
http -> https upgrade; 301 POST, 302 and 303 become GET without a body; 307/308 keep method and body), the
cookie store, and text decoding (the Content-Type charset, else UTF-8, undecodable bytes replaced).

Timeouts: aiohttp bounds the wait for a pooled connection (``timeout_s``) and connecting (``connect_timeout_s``);
``timeout_s`` bounds each request from sending to the last byte read (the README's rule: a server that drips its
answer times out too), redirect hops included, the time spent opening connections and waiting for the rate
limiter not counted. One watchdog per client keeps that deadline for every request in flight
(:class:`_Watchdog`), instead of one ``asyncio.timeout`` per request plus aiohttp's ``sock_read``, which re-armed
a timer on every chunk received: those timers cost 15-30 us of CPU per loopback request, a sixth of it
(``python -m bench.profile_api``, 2026-12-07).

Neither path uses proxies from the environment (the httpx client is built with a transport, which turns
httpx's ``trust_env`` proxies off, and its aiohttp session does not trust the environment either).
httpx stays the public API and the path for everything else: api_extract, ``transport="httpx"``, and any
client given an ``httpx`` transport or hooks (see :func:`use_lean`).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import re
import time
from collections.abc import Callable, Mapping
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
    _body,
    _classify,
    _kept_headers,
    _query_value,
    _split_userinfo,
    _ssl_context,
    _transport_category,
    declared_charset,
    default_headers,
    has_content_type,
    install_log_redaction,
    parse_retry_after,
    request_body,
)
from tasks.api.request_spec import RequestSpec, RequestTemplate, path_renderer, validate_base_url
from tasks.core import HttpSettings, ItemError, RetryableError, redact_text
from tasks.core.exactjson import loads_exact

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# a URL httpx would send as it is: already percent-encoded, no dot segments (httpx removes those)
_SAFE_URL = re.compile(r"(?:[A-Za-z0-9\-_~/!$&'()*+,;=:@?]|%[0-9A-Fa-f]{2}|\.(?<!/\.))*\Z")
_BODY_HEADERS = frozenset({"content-length", "transfer-encoding"})
_KEEP_ALIVE = {"Connection": "keep-alive"}  # httpx's default; aiohttp sends none on HTTP/1.1


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
    value = declared_charset(content_type)
    if value:
        try:
            codecs.lookup(value)
            encoding = value
        except LookupError:
            pass
    return content.decode(encoding, errors="replace")


def _tick(deadline: float) -> float:
    """How often the watchdog looks: a twentieth of the deadline, between 5 ms and 1 s."""
    return min(1.0, max(0.005, deadline / 20))


class _Watchdog:
    """The deadline of every request in flight on one client, kept by one timer instead of timers per request.

    Why: ``asyncio.timeout`` around each request and aiohttp's ``sock_read`` each schedule and cancel timer handles
    on the loop's heap (see the module docstring). Here a request only notes its task and when it is due (its
    clock stopped by :meth:`pause` for time not counted); one timer, armed while requests are in flight, wakes
    every ``tick`` seconds (:func:`_tick`) and cancels the tasks past their due time. So a request is stopped between its
    deadline and one tick after it, and :meth:`LeanClient.exchange` turns that cancellation into a transient
    ``http_timeout``, by ``asyncio.timeout``'s rules: a cancellation from elsewhere (the chunk's own timeout)
    stays a cancellation.
    """

    __slots__ = ("_handle", "due", "expired", "tick")

    def __init__(self, tick: float) -> None:
        self.due: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.tick = tick
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], until: float) -> None:
        self.due[task] = until
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.tick, self._check)

    def pause(self) -> tuple[asyncio.Task[Any], float, float] | None:
        """Stop the current task's clock (time not counted: opening a connection, waiting for the rate limiter);
        give what :meth:`resume` takes."""
        task = asyncio.current_task()
        until = self.due.pop(task, None)  # type: ignore[arg-type]
        return None if task is None or until is None else (task, until, time.perf_counter())

    def resume(self, paused: tuple[asyncio.Task[Any], float, float] | None) -> None:
        if paused is not None:
            task, until, since = paused
            self.watch(task, until + time.perf_counter() - since)

    def sooner(self, tick: float) -> None:
        """A request with a shorter deadline than the client's: look at least every ``tick`` seconds."""
        if tick < self.tick:
            self.tick = tick
            self.close()

    def finished(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Forget ``task``'s request; True when the watchdog cancelled it and no other cancellation is pending
        (``cancelling``: the task's count before the request), i.e. the request timed out."""
        self.due.pop(task, None)
        if task not in self.expired:
            return False
        self.expired.discard(task)
        return task.uncancel() <= cancelling

    def _check(self) -> None:
        self._handle = None
        now = time.perf_counter()
        for task in [task for task, until in self.due.items() if until <= now]:
            del self.due[task]
            self.expired.add(task)
            task.cancel()
        if self.due:
            self._handle = asyncio.get_running_loop().call_later(self.tick, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class LeanClient:
    """Many requests to one API over one pooled, keep-alive aiohttp session (HTTP/1.1); ``async with`` it.

    Made with :func:`make_client`'s arguments and meanings: ``token`` (else ``settings.token``) is a bearer
    token registered for redaction, ``user:password@`` in ``base_url`` becomes basic auth, ``limiter`` takes a
    token before every request sent (redirect hops and retries included) and hears every 429. Every request
    carries ``Connection: keep-alive`` as httpx's do (a header given for the client or the request wins).
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
        if not any(name.lower() == "connection" for name in default):
            default = {**_KEEP_ALIVE, **default}
        base = ""
        if base_url:
            base, auth = _split_userinfo(validate_base_url(base_url))
            if auth is not None:  # httpx's auth flow sets it last, over a bearer token or a given header
                default["Authorization"] = auth._auth_header
        self.headers = default
        self._lower = {name.lower(): name for name in default}
        self.base = str(httpx.URL(base)) if base else ""  # httpx keeps a base path's trailing slash
        self._base_slash = self.base if self.base.endswith("/") else self.base + "/"
        self.deadline = settings.timeout_s  # from sending to the last byte read (see the module docstring)
        self._watchdog = _Watchdog(_tick(self.deadline))
        self._session: Any = None
        self._jar: Any = None
        self._url: Any = None
        self._wire: Any = default  # the client's headers as aiohttp's CIMultiDict, built once (see __aenter__)

    async def __aenter__(self) -> LeanClient:
        import aiohttp
        import yarl
        from multidict import CIMultiDict

        self._url = yarl.URL
        self._wire = CIMultiDict(self.headers)
        self._jar = _cookie_jar()
        connector = _connector_class()(self._watchdog, limit=self.max_connections, keepalive_timeout=5.0,
                                       ssl=_ssl_context())
        timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.timeout_s,
                                        sock_connect=self.settings.connect_timeout_s, sock_read=None)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=self._jar, trust_env=False,
        )
        self._session._retry_connection = False  # no hidden second retry layer (see client._aiohttp_transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._watchdog.close()
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

    def templated(self, template: RequestTemplate) -> Callable[[Any], str | None] | None:
        """item -> the URL of its request, for a template whose requests differ only in the URL (see
        :func:`tasks.api.request_spec.path_renderer`): what :meth:`url_of` gives for ``build_request(item,
        template)``, without building the RequestSpec. The function returns None for an item that is a full
        request spec (it goes through :meth:`send`); this method returns None when the template is not of that
        kind, or when its fixed text needs httpx's URL normalization (then every item goes through :meth:`send`)."""
        render = path_renderer(template)
        if render is None or "://" in template.path_template:
            return None
        try:
            probe = self._base_slash + template.path_template.format_map(_Probe()).lstrip("/")
        except (ValueError, KeyError, IndexError, AttributeError, TypeError):
            return None
        if not _SAFE_URL.match(probe, probe.find("://") + 3):
            return None
        base = self._base_slash

        def url_for(item: Any) -> str | None:
            path = render(item)
            return None if path is None else base + path.lstrip("/")

        return url_for

    @property
    def wire_headers(self) -> Any:
        """The client's headers, as given to aiohttp for a request that adds none (built once per client)."""
        return self._wire

    async def send(self, spec: RequestSpec, *, expect: Expect = "auto", max_retry_after_s: float = 300.0,
                   total_timeout_s: float | None = None, keep: bool = True) -> ResponseRecord | int:
        """:func:`tasks.api.client.send` on this client: one attempt, classified, no waiting (see :meth:`exchange`
        for ``keep``)."""
        body: bytes | None = None
        if spec.json is not None:
            body = request_body(spec.json)
        return await self.exchange(spec.method, self.url_of(spec), self._headers(spec, body), body, expect=expect,
                                   max_retry_after_s=max_retry_after_s, total_timeout_s=total_timeout_s, keep=keep)

    async def exchange(self, method: str, url: str, headers: Any, body: bytes | None = None, *,
                       expect: Expect = "auto", max_retry_after_s: float = 300.0, total_timeout_s: float | None = None,
                       keep: bool = True) -> ResponseRecord | int:
        """One attempt of a request given by its parts (``url`` full and unredacted, ``headers`` complete),
        classified as :func:`tasks.api.client.send` does: the ResponseRecord of an answer below 400, else the
        error raised. ``keep=False`` returns only the status of a success (what an api_bulk item without output
        rows keeps): no record, and no URL redaction, which only messages and records need."""
        deadline = total_timeout_s if total_timeout_s is not None else self.deadline
        watchdog = self._watchdog
        if deadline != self.deadline:
            watchdog.sooner(_tick(deadline))
        task = asyncio.current_task()
        assert task is not None, "LeanClient requests run inside an asyncio task"
        cancelling = task.cancelling()
        started = time.perf_counter()
        watchdog.watch(task, started + deadline)
        try:
            answer = await self._once(method, url, headers, body)
            if answer.status_code in REDIRECT_STATUSES and "Location" in answer.headers:
                answer = await self._follow(method, url, headers, body, answer)
        except asyncio.CancelledError as exc:
            if not watchdog.finished(task, cancelling):
                raise
            msg = (f"{method} {redact_text(url)} took longer than {deadline}s to answer "
                   "(transient: retried while attempts remain)")
            raise RetryableError(msg, category="http_timeout") from TimeoutError(str(exc) or "deadline")
        except (OSError, _client_error()) as exc:  # TimeoutError is an OSError; aiohttp's ServerTimeoutError both
            shown = redact_text(url)
            if isinstance(exc, TimeoutError) and not isinstance(exc, _client_error()):
                msg = (f"{method} {shown} took longer than {deadline}s to answer "
                       "(transient: retried while attempts remain)")
                raise RetryableError(msg, category="http_timeout") from exc
            category, what = _transport_category(exc)
            msg = (f"{method} {shown} failed: {what} ({redact_text(str(exc)) or type(exc).__name__}) "
                   "(transient: retried while attempts remain)")
            raise RetryableError(msg, category=category) from exc
        finally:
            watchdog.finished(task, cancelling)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        status = answer.status_code
        if status < 300 or status == 304:  # a success: only a body that is not the JSON expected fails it
            parsed = _parsed_body(answer, method, url, expect, keep)
            if not keep:
                return status
            return ResponseRecord(method=method, url=redact_text(url), status=status, body=parsed,
                                  elapsed_ms=elapsed_ms, headers=_kept_headers(answer))  # type: ignore[arg-type]
        return _classify(answer, method, redact_text(url), elapsed_ms, expect, max_retry_after_s)  # type: ignore[arg-type]

    def _headers(self, spec: RequestSpec, body: bytes | None) -> Any:
        """The client's headers updated by the request's, names compared without case (as httpx merges them)."""
        if not spec.headers and body is None:
            return self._wire
        merged = dict(self.headers)
        extra = dict(spec.headers or {})
        if body is not None and not has_content_type(merged, extra):
            extra["Content-Type"] = "application/json"  # as httpx: a Content-Type given for the client or request wins
        for name, value in extra.items():
            old = self._lower.get(name.lower())
            if old is not None and old != name:
                merged.pop(old, None)
            merged[name] = value
        return merged

    async def _follow(self, method: str, url: str, headers: Any, body: bytes | None, answer: _Answer) -> _Answer:
        """The redirect hops after a first answer that is a redirect with a Location (at most MAX_REDIRECTS)."""
        first_method, first_url = method, url
        for _ in range(MAX_REDIRECTS):
            method, url, headers, body = _redirected(method, url, headers, body, answer)
            answer = await self._once(method, url, headers, body)
            if answer.status_code not in REDIRECT_STATUSES or "Location" not in answer.headers:
                return answer
        _, url, _, _ = _redirected(method, url, headers, body, answer)
        msg = (f"{first_method} {redact_text(first_url)} was redirected more than {MAX_REDIRECTS} times "
               f"(last to {redact_text(url)}); point the item or base_url at the final address")
        raise ItemError(msg, category="http_redirect")

    async def _once(self, method: str, url: str, headers: Any, body: bytes | None) -> _Answer:
        if self.limiter is not None:
            paused = self._watchdog.pause()
            try:
                await self.limiter.acquire(1.0)
            finally:
                self._watchdog.resume(paused)
        target = self._url(url if _SAFE_URL.match(url, url.find("://") + 3) else str(httpx.URL(url)), encoded=True)
        if self._jar.holds() and not _has_cookie(headers):  # a request's own Cookie header goes alone (httpx)
            cookie = self._jar.header_for(target)
            if cookie:
                headers = {**headers, "Cookie": cookie}
        async with self._session.request(method, target, headers=headers, data=body, allow_redirects=False) as resp:
            content = await resp.read()
            answer = _Answer(resp.status, resp.reason, resp.headers, content)
        if answer.status_code == 429 and self.limiter is not None:
            self.limiter.on_throttle(parse_retry_after(answer.headers.get("Retry-After")))
        return answer


class _Probe(dict):  # type: ignore[type-arg]
    """Every placeholder of a template rendered as a plain safe value (for checking its fixed text)."""

    def __missing__(self, key: str) -> str:
        return "x"


def _parsed_body(answer: _Answer, method: str, url: str, expect: Expect, keep: bool) -> Any:
    """A success's body as :func:`tasks.api.client._body` reads it; the URL is redacted only for its error.

    Not kept (no output row), a JSON body is only checked: orjson accepts a subset of what ``json.loads`` does
    (RFC 8259 JSON in UTF-8; not NaN, not integers past 64 bits), at a seventh of its cost, and what orjson
    refuses goes to ``json.loads``, which decides. A kept body is always :func:`loads_exact`'s value (it is data: numbers kept as written)."""
    content = answer.content
    if not content:
        return None
    ctype = answer.headers.get("Content-Type", "")
    if expect == "text" or (expect == "auto" and "json" not in ctype.lower()):
        return answer.text
    if not keep and _fast_json is not None:
        try:
            _fast_json(content)
            return None
        except ValueError:
            pass
    try:
        return loads_exact(content, charset=declared_charset(ctype))
    except ValueError:
        return _body(answer, method, redact_text(url), expect)  # type: ignore[arg-type]  # raises its ItemError


def _orjson_loads() -> Callable[[bytes], Any] | None:
    try:
        import orjson
    except ImportError:  # pragma: no cover - a dependency of prefect
        return None
    return orjson.loads  # type: ignore[no-any-return]


_fast_json = _orjson_loads()


def _has_cookie(headers: Any) -> bool:
    """Whether a request's headers carry a Cookie (a CIMultiDict answers without case; a dict is searched)."""
    if hasattr(headers, "getall"):
        return "Cookie" in headers
    return any(name.lower() == "cookie" for name in headers)


@functools.cache
def _connector_class() -> type:
    import aiohttp

    class Connector(aiohttp.TCPConnector):
        """aiohttp's connector telling the client's watchdog how long a request spent opening its connection (bounded
        by ``connect_timeout_s`` itself), which the request's deadline does not count. Pooled connections cost
        nothing here: only a new connection comes through ``_create_connection``."""

        def __init__(self, watchdog: _Watchdog, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._watchdog = watchdog

        async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
            paused = self._watchdog.pause()
            try:
                return await super()._create_connection(*args, **kwargs)
            finally:
                self._watchdog.resume(paused)

    return Connector


@functools.cache
def _jar_class() -> type:
    from http.cookies import BaseCookie

    import aiohttp

    class Jar(aiohttp.CookieJar):
        """aiohttp's cookie store (IP hosts allowed, as httpx's) that Set-Cookie answers fill but that adds no
        cookie to a request by itself: :class:`LeanClient` writes the Cookie header as httpx does, the request's
        own Cookie header alone when it has one (aiohttp would merge the store's cookies into it), else the
        store's cookies (:meth:`header_for`) longest path first, then in the order they were set (aiohttp sorts
        them by name)."""

        def holds(self) -> bool:
            return bool(self._cookies)

        def header_for(self, url: Any) -> str:
            found = super().filter_cookies(url)  # aiohttp's choice; its morsels carry no path, the stored ones do
            stored = [(len(morsel["path"] or "/"), name) for cookies in self._cookies.values()
                      for name, morsel in cookies.items()
                      if name in found and found[name].coded_value == morsel.coded_value]
            stored.sort(key=lambda entry: -entry[0])  # stable: the order they were set within one path length
            names = dict.fromkeys(name for _, name in stored)
            return "; ".join(f"{name}={found[name].coded_value}" for name in names)

        def filter_cookies(self, request_url: Any = None) -> Any:
            return BaseCookie()

    return Jar


def _cookie_jar() -> Any:
    return _jar_class()(unsafe=True)


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
    new_headers = {name: value for name, value in headers.items() if name.lower() != "cookie"}  # the store decides
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
