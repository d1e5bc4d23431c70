"""What the lean path puts on the wire and what it makes of answers, against real loopback servers: the headers
httpx sends (``Connection: keep-alive`` included), cookies (a server of its own below: the test API sets none),
``Retry-After`` as an HTTP-date, and the total deadline kept by the client's watchdog."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.api.bulk import ApiJob, process_api_chunk
from tasks.api.client import RequestSpec, RequestTemplate, build_request, make_client, send
from tasks.api.lean import LeanClient
from tasks.core import Chunk
from tasks.core.errors import ItemError, RetryableError
from tasks.core.ratelimit import TokenBucket
from tasks.core.retry import RetryPolicy
from tasks.core.settings import HttpSettings
from tests.fixtures.api_server import ApiServer, LoopbackHTTPServer

TOKEN = "tok-WIRE-SECRET-8080"


def client_of(kind: str, url: str, **kw: Any) -> Any:
    return LeanClient(url, **kw) if kind == "lean" else make_client(url, **kw)


async def send_either(client: Any, spec: RequestSpec) -> Any:
    return await (client.send(spec) if isinstance(client, LeanClient) else send(client, spec))


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("spec", [RequestSpec("GET", "/ok/h"),
                                  RequestSpec("POST", "/ok/p", json={"a": 1}, headers={"X-Trace": "t1"}),
                                  RequestSpec("GET", "/ok/c", headers={"connection": "close"})],
                         ids=["get", "post", "connection-close"])
def test_the_lean_path_sends_the_headers_httpx_sends(api_server: ApiServer, spec: RequestSpec):
    sent = {}
    for kind in ("httpx", "lean"):
        api_server.reset()

        async def go(kind: str = kind) -> None:
            async with client_of(kind, api_server.url, token=TOKEN) as client:
                await send_either(client, spec)

        asyncio.run(go())
        [request] = api_server.requests
        sent[kind] = request.headers
    assert sent["lean"] == sent["httpx"]
    assert sent["lean"]["connection"] == ("close" if "connection" in spec.headers else "keep-alive")


# --------------------------------------------------------------------------- cookies


class CookieServer:
    """``/set/{name}?value=V&path=P&secure=1&max_age=N&to=U``: Set-Cookie (on a 302 to ``U`` when given);
    any other path: 200 echoing the Cookie header it got. Every Cookie header seen is in ``seen``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                server.seen.append((parts.path, self.headers.get("Cookie")))
                status, headers = 200, {}
                if parts.path.startswith("/set/"):
                    cookie = f"{parts.path[5:]}={query.get('value', 'v')}; Path={query.get('path', '/')}"
                    cookie += "; Secure" if query.get("secure") else ""
                    cookie += f"; Max-Age={query['max_age']}" if "max_age" in query else ""
                    headers["Set-Cookie"] = cookie
                    if "to" in query:
                        status, headers["Location"] = 302, query["to"]
                body = json.dumps({"cookie": self.headers.get("Cookie")}).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json",
                                    "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def cookie_server() -> Iterator[CookieServer]:
    server = CookieServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


COOKIE_CASES = {
    "set then sent": ["/set/sid?value=abc", "/echo/1", "/echo/2"],
    "set on a redirect, sent on its hop": ["/set/sid?value=r1&to=/echo/hop", "/echo/after"],
    "path-scoped": ["/set/scoped?value=p&path=/private", "/echo/public", "/private/x"],
    "secure cookie not sent over http": ["/set/sec?value=s&secure=1", "/echo/plain"],
    "replaced, then deleted by Max-Age=0": ["/set/sid?value=one", "/set/sid?value=two", "/echo/a",
                                            "/set/sid?value=gone&max_age=0", "/echo/b"],
    "two cookies": ["/set/a?value=1", "/set/b?value=2", "/echo/both"],
    "a request's own Cookie header goes alone": ["/set/sid?value=jar", RequestSpec("GET", "/echo/own", headers={
        "cookie": "mine=1"}), "/echo/store"],
    "a redirect hop sends the store's cookies, not the request's header": [
        "/set/sid?value=jar", RequestSpec("GET", "/set/hop?value=h&to=/echo/hop", headers={"Cookie": "mine=2"})],
    "a quoted value": ["/set/q?value=%22a%20b%22", "/echo/q"],
    "in the order they were set, not by name": ["/set/z?value=1", "/set/a?value=2", "/echo/order"],
    "longest path first": ["/set/z?value=1", "/set/a?value=2&path=/echo", "/set/m?value=3&path=/echo/deep",
                           "/echo/deep/x"],
}


@pytest.mark.parametrize("paths", COOKIE_CASES.values(), ids=COOKIE_CASES.keys())
def test_cookies_on_the_lean_path_are_httpx_cookies(cookie_server: CookieServer, paths: list[Any]):
    seen = {}
    for kind in ("httpx", "lean"):
        cookie_server.seen.clear()

        async def go(kind: str = kind) -> list[Any]:
            async with client_of(kind, cookie_server.url) as client:
                return [(await send_either(client, RequestSpec("GET", path) if isinstance(path, str) else path)).body
                        for path in paths]

        bodies = asyncio.run(go())
        seen[kind] = (bodies, [(path, _cookies(value)) for path, value in cookie_server.seen])
    assert seen["lean"] == seen["httpx"]
    assert any(cookie for _, cookie in seen["lean"][1]) or "secure" in paths[0]
    if "own" in str(paths):  # found by this test: aiohttp merged the store's cookies into the request's header
        assert ("/echo/own", ["mine=1"]) in seen["lean"][1] and ("/echo/store", ["sid=jar"]) in seen["lean"][1]
    if "mine=2" in str(paths):
        assert seen["lean"][1][-1] == ("/echo/hop", ["hop=h", "sid=jar"])


def _cookies(header: str | None) -> list[str] | None:
    return None if header is None else sorted(part.strip() for part in header.split(";"))


def test_cookies_last_for_one_chunk(cookie_server: CookieServer):
    """One session per chunk: a cookie set by an answer goes with the chunk's later requests, not to another chunk."""
    cookie_server.seen.clear()
    job = ApiJob(base_url=cookie_server.url, template=RequestTemplate(), item_concurrency=1, retries=0)
    report = process_api_chunk(Chunk(0, [{"path": "/set/sid?value=c0"}, {"path": "/echo/0"}]), job)
    assert report.succeeded == 2
    report = process_api_chunk(Chunk(1, [{"path": "/echo/1"}]), job)
    assert report.succeeded == 1
    assert cookie_server.seen == [("/set/sid", None), ("/echo/0", "sid=c0"), ("/echo/1", None)]


# --------------------------------------------------------------------------- Retry-After as an HTTP-date


class Waits:
    """An async sleep that records what the retry policy waited, and waits a tenth of it."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds / 10)


@pytest.mark.parametrize("kind", ["httpx", "lean"])
def test_retry_after_as_an_http_date_is_waited(api_server: ApiServer, kind: str):
    waits = Waits()
    policy = RetryPolicy(retries=2, backoff_s=0.001, async_sleep=waits)
    bucket = TokenBucket(1000, decrease_cooldown_s=0)
    spec = RequestSpec("GET", "/retry-after/d?times=1&after=3&style=date")

    async def go() -> Any:
        async with client_of(kind, api_server.url, limiter=bucket) as client:
            return await policy.acall(lambda: send_either(client, spec))

    before = time.time()
    record, attempts = asyncio.run(go())
    assert record.status == 200 and attempts == 2
    [waited] = waits.waits  # the date has whole seconds: 3 s ahead of the server's clock, less its fraction
    assert 1.0 < waited <= 3.0 + (time.time() - before)
    stats = bucket.stats()
    assert stats.throttled == 1 and stats.acquired == 2


@pytest.mark.parametrize("kind", ["httpx", "lean"])
def test_retry_after_date_past_the_cap_fails_the_item(api_server: ApiServer, kind: str):
    spec = RequestSpec("GET", "/retry-after/far?times=1&after=4000&style=date")

    async def go() -> Any:
        async with client_of(kind, api_server.url) as client:
            return await client.send(spec) if kind == "lean" else await send(client, spec)

    with pytest.raises(ItemError) as caught:
        asyncio.run(go())
    assert caught.value.category == "http_retry_after_too_long" and caught.value.status == 429  # type: ignore[attr-defined]


def test_a_chunk_waits_out_a_date_retry_after(api_server: ApiServer):
    job = ApiJob(base_url=api_server.url, template=RequestTemplate(path_template="/retry-after/{id}?times=1&after=1&style=date"),
                 item_concurrency=2, retries=2)
    report = process_api_chunk(Chunk(0, [{"id": "a"}, {"id": "b"}]), job)
    assert report.succeeded == 2 and report.extra["http_requests"] == 4 and not report.failures


# --------------------------------------------------------------------------- the total deadline (watchdog)


def test_the_deadline_ends_a_stalled_request(api_server: ApiServer):
    """A request's deadline (kept by the client's watchdog) ends a stalled answer as a transient http_timeout whose
    message names the deadline."""
    settings = HttpSettings(timeout_s=5, connect_timeout_s=1)

    async def go() -> Any:
        async with LeanClient(api_server.url, settings=settings) as client:
            return await client.send(RequestSpec("GET", "/slow/t?delay=2"), total_timeout_s=0.3)

    with pytest.raises(RetryableError) as caught:
        asyncio.run(go())
    assert caught.value.category == "http_timeout" and "took longer than 0.3s to answer" in str(caught.value)


def test_a_stall_past_timeout_s_times_out_on_a_fresh_connection(api_server: ApiServer):
    """``timeout_s`` counts from sending (opening the connection is connect_timeout_s's business): a 3 s stall
    times out at 0.3 s, not at 0.3 + 10 s (then the answer would have come)."""
    settings = HttpSettings(timeout_s=0.3, connect_timeout_s=10)

    async def go() -> None:
        async with LeanClient(api_server.url, settings=settings) as client:
            await client.send(RequestSpec("GET", "/slow/f?delay=3"))

    with pytest.raises(RetryableError, match=r"took longer than 0\.3s to answer"):
        asyncio.run(go())


def test_rate_limit_waits_do_not_count_against_the_deadline(api_server: ApiServer):
    settings = HttpSettings(timeout_s=0.3)
    bucket = TokenBucket(4, decrease_cooldown_s=0)

    async def go() -> list[Any]:
        async with LeanClient(api_server.url, settings=settings, limiter=bucket) as client:
            return await asyncio.gather(*(client.send(RequestSpec("GET", f"/ok/{i}")) for i in range(6)))

    # at 4/s the last of the six waits for the limiter longer than timeout_s: not counted, so no timeout
    assert [record.status for record in asyncio.run(go())] == [200] * 6
    assert bucket.stats().acquired == 6


def test_the_deadline_cancels_only_its_own_request(api_server: ApiServer):
    """Requests in flight beside a timed-out one finish; the task that timed out goes on (no cancel left pending)."""

    async def go() -> list[Any]:
        async with LeanClient(api_server.url) as client:
            async def slow() -> Any:
                try:
                    await client.send(RequestSpec("GET", "/slow/s?delay=1"), total_timeout_s=0.2)
                except RetryableError as exc:
                    await asyncio.sleep(0.05)  # the task was not left cancelled
                    return exc.category
                return "no timeout"

            async def fast(i: int) -> int:
                await asyncio.sleep(0.01 * i)
                return (await client.send(RequestSpec("GET", f"/ok/{i}"))).status

            return await asyncio.gather(slow(), *(fast(i) for i in range(5)))

    assert asyncio.run(go()) == ["http_timeout", 200, 200, 200, 200, 200]


def test_an_outside_cancel_stays_a_cancel(api_server: ApiServer):
    """A cancellation from elsewhere (a chunk's own timeout) is not turned into a request timeout."""

    async def go() -> None:
        async with LeanClient(api_server.url) as client:
            task = asyncio.create_task(client.send(RequestSpec("GET", "/slow/c?delay=1")))
            await asyncio.sleep(0.2)
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())


# --------------------------------------------------------------------------- the templated fast path


TEMPLATED = [
    ("/ok/{id}", {"id": 7}), ("/ok/{id}", {"id": "a b/c?d"}), ("/ok/{id}", {"id": ".."}), ("/ok/{id}", {"id": ".x"}),
    ("/ok/{id}", {"id": "zoë"}), ("/ok/{id}", 42), ("/ok/{a}/{b}?x=1", {"a": "p", "b": "q"}), ("ok/{id}", {"id": 1}),
    ("/ok/{id}", {"path": "/ok/spec", "params": {"q": 1}}), ("/ok/{id}", {"url": "/ok/u"}),
]


@pytest.mark.parametrize(("path_template", "item"), TEMPLATED)
def test_the_templated_url_is_the_url_of_the_built_request(path_template: str, item: Any):
    template = RequestTemplate(path_template=path_template)
    for base in ("http://127.0.0.1:9", "http://127.0.0.1:9/v1/"):
        client = LeanClient(base)
        url_for = client.templated(template)
        assert url_for is not None
        url = url_for(item)
        spec = build_request(item, template)
        if url is None:  # a full request spec: built the general way
            assert isinstance(item, dict) and ("path" in item or "url" in item)
        else:
            assert url == client.url_of(spec)


@pytest.mark.parametrize("template", [
    RequestTemplate(method="POST", path_template="/ok/{id}"), RequestTemplate(json_template={"a": "{id}"}),
    RequestTemplate(headers={"X-A": "1"}), RequestTemplate(path_template="https://other.example/{id}"),
    RequestTemplate(path_template="/ok/{id:>5}"), RequestTemplate(path_template="/ok/{{x}}/{id}"),
])
def test_templates_that_need_the_general_path(template: RequestTemplate):
    assert LeanClient("http://127.0.0.1:9").templated(template) is None


def test_a_missing_placeholder_fails_the_item_the_same_way(api_server: ApiServer):
    job = ApiJob(base_url=api_server.url, template=RequestTemplate(path_template="/ok/{id}"), retries=0)
    report = process_api_chunk(Chunk(0, [{"id": 1}, {"name": "x"}]), job)
    [failure] = report.failures
    assert failure.category == "bad_item" and "placeholder {id}" in failure.message and failure.attempts == 0
    assert report.succeeded == 1
