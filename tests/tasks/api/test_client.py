"""tasks/api/client.py and tasks/api/request_spec.py against the real loopback test API (tests/fixtures/api_server.py).

Retry scenarios drive ``send`` through ``RetryPolicy`` (the one retry loop) with tiny backoff and
assert the exact number of requests the server saw.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tasks.api.client import RequestSpec, RequestTemplate, build_request, make_client, parse_retry_after, send
from tasks.core.errors import ConfigError, FatalError, ItemError, RetryableError
from tasks.core.ratelimit import TokenBucket
from tasks.core.retry import RetryPolicy, attempts_made
from tasks.core.settings import HttpSettings
from tests.fixtures.api_server import ApiServer

TOKEN = "tok-SUPERSECRET-4242"
FAST = RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.005)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _call(server: ApiServer, spec: RequestSpec, *, policy: RetryPolicy = FAST, **client_kw: Any) -> Any:
    async with make_client(server.url, token=TOKEN, **client_kw) as client:
        return await policy.acall(lambda: send(client, spec))


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(
    ("path", "expected_requests"),
    [("/fail/a?times=2&status=503", 3), ("/fail/b?times=1&status=502", 2), ("/fail/c?times=2&status=504", 3),
     ("/fail/d?times=1&status=408", 2), ("/fail/e?times=1&status=425", 2), ("/reset/f?times=2", 3)],
)
def test_transient_failures_are_retried_exactly(api_server: ApiServer, transport: str, path: str, expected_requests: int):
    record, attempts = run(_call(api_server, RequestSpec("GET", path), transport=transport))
    assert record.status == 200
    assert attempts == expected_requests
    assert api_server.count(path.split("?")[0]) == expected_requests


def test_retries_give_up_after_policy_attempts(api_server: ApiServer):
    with pytest.raises(RetryableError) as info:
        run(_call(api_server, RequestSpec("GET", "/fail/x?times=9&status=503")))
    assert attempts_made(info.value) == 4
    assert api_server.count("/fail/x") == 4
    assert info.value.category == "http_503"


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_fatal_and_not_retried(api_server: ApiServer, status: int):
    with pytest.raises(FatalError, match="credentials were refused") as info:
        run(_call(api_server, RequestSpec("GET", f"/status/{status}")))
    assert api_server.count("/status") == 1
    assert TOKEN not in str(info.value)


def test_404_is_an_item_error_with_status_and_excerpt_not_retried(api_server: ApiServer):
    with pytest.raises(ItemError) as info:
        run(_call(api_server, RequestSpec("GET", "/status/404")))
    assert info.value.category == "http_4xx"
    assert info.value.status == 404
    assert "404" in str(info.value) and "scripted" in str(info.value)
    assert api_server.count("/status/404") == 1


def test_redirects_are_followed_and_one_that_cannot_be_fails_the_item_with_its_location(api_server: ApiServer):
    record, _ = run(_call(api_server, RequestSpec("GET", "/redirect/a?to=/ok/moved&status=301")))
    assert record.status == 200 and record.body["id"] == "moved"
    posted, _ = run(_call(api_server, RequestSpec("POST", "/redirect/b?to=/ok/kept&status=307", json={"x": 1})))
    assert posted.body["method"] == "POST" and posted.body["json"] == {"x": 1}  # 307 keeps the method and body
    with pytest.raises(ItemError, match="answered 302 Found \\(no Location header\\) and was not followed") as info:
        run(_call(api_server, RequestSpec("GET", "/redirect/c?to=none")))
    assert info.value.category == "http_redirect" and info.value.status == 302
    with pytest.raises(ItemError, match="redirected more than 5 times"):
        run(_call(api_server, RequestSpec("GET", "/redirect/loop")))
    assert api_server.count("/redirect/loop") == 6  # the first request and 5 redirects, no retry


@pytest.mark.parametrize("style", ["seconds", "date"])
def test_retry_after_is_honored(api_server: ApiServer, style: str):
    after = 1 if style == "seconds" else 2  # HTTP-dates have one-second resolution: 2 s means 1-2 s
    path = f"/retry-after/k?times=1&after={after}&style={style}"
    record, attempts = run(_call(api_server, RequestSpec("GET", path)))
    assert record.status == 200 and attempts == 2
    first, second = [r.time for r in api_server.requests]
    assert second - first >= 0.95


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_longer_than_the_cap_fails_the_item(api_server: ApiServer):
    async def go() -> None:
        async with make_client(api_server.url) as client:
            await send(client, RequestSpec("GET", "/retry-after/z?times=1&after=999"), max_retry_after_s=10)

    with pytest.raises(ItemError, match="Retry-After 999s"):
        run(go())


def test_idempotency_key_is_stable_across_retries_and_items(api_server: ApiServer):
    template = RequestTemplate(method="POST", path_template="/fail/{id}?times=2", json_template={"n": "{n}"})
    spec = build_request({"id": "p1", "n": 7}, template)
    record, attempts = run(_call(api_server, spec))
    keys = {r.headers.get("idempotency-key") for r in api_server.requests}
    assert attempts == 3 and len(keys) == 1 and None not in keys
    assert record.body["json"] == {"n": 7}  # a whole-leaf placeholder keeps the value's type
    assert build_request({"id": "p1", "n": 7}, template).headers == spec.headers  # same item, same key (resume)
    assert build_request({"id": "p1", "n": 8}, template).headers != spec.headers
    assert "Idempotency-Key" not in build_request({"id": "p1"}).headers  # GET


def test_token_never_in_messages_or_shown_urls_and_bodies_stay_exact(api_server: ApiServer):
    """What batchflows writes about a request (its shown URL, error messages) masks the token; the response
    body is the API's data and comes back exactly as sent, even when the API echoes a credential."""
    async def go() -> tuple[Any, list[str]]:
        seen: list[str] = []
        async with make_client(api_server.url, token=TOKEN) as client:
            rec = await send(client, RequestSpec("GET", "/ok/1", params={"api_key": TOKEN}))
            for path in ("/status/401", "/status/404", "/fail/t?times=5"):
                try:
                    await send(client, RequestSpec("GET", path, params={"token": TOKEN}))
                except Exception as exc:
                    seen.append(str(exc))
        return rec, seen

    rec, seen = run(go())
    assert len(seen) == 3 and all(TOKEN not in text for text in seen)
    assert TOKEN not in rec.url
    assert rec.body["query"] == {"api_key": TOKEN}  # the echo is data: not rewritten
    assert api_server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_password_in_base_url_is_redacted_in_errors():
    async def go() -> None:
        async with make_client("http://user:hunter2pass@127.0.0.1:1", settings=HttpSettings(connect_timeout_s=1)) as c:
            await send(c, RequestSpec("GET", "/x"))

    with pytest.raises(RetryableError) as info:
        run(go())
    assert "hunter2pass" not in str(info.value) and info.value.category == "http_connect"


def test_read_timeout_and_malformed_json(api_server: ApiServer):
    settings = HttpSettings(timeout_s=0.2, connect_timeout_s=0.2)
    with pytest.raises(RetryableError) as info:
        run(_call(api_server, RequestSpec("GET", "/slow/1?delay=1"), policy=RetryPolicy(retries=0), settings=settings))
    assert info.value.category == "http_timeout"
    with pytest.raises(ItemError, match="not JSON") as info:
        run(_call(api_server, RequestSpec("GET", "/malformed/1")))
    assert info.value.category == "http_bad_json"
    assert api_server.count("/malformed") == 1


def test_max_connections_bounds_concurrent_connections(api_server: ApiServer):
    async def go() -> float:
        async with make_client(api_server.url, max_connections=4) as client:
            started = time.perf_counter()
            await asyncio.gather(*(send(client, RequestSpec("GET", f"/slow/{i}?delay=0.2")) for i in range(8)))
            return time.perf_counter() - started

    assert run(go()) >= 0.38  # 8 requests of 0.2 s through 4 connections take two rounds


def test_limiter_hooks_take_tokens_and_hear_429(api_server: ApiServer):
    bucket = TokenBucket(1000, decrease_cooldown_s=0)

    async def go() -> None:
        async with make_client(api_server.url, limiter=bucket) as client:
            await FAST.acall(lambda: send(client, RequestSpec("GET", "/retry-after/h?times=1&after=0.05")))

    run(go())
    stats = bucket.stats()
    assert stats.acquired == 2 and stats.throttled == 1 and stats.current_rate < 1000


def test_templates_render_and_missing_placeholder_names_keys():
    t = RequestTemplate(method="put", path_template="/users/{id}/x", json_template={"a": ["{v}", "n={id}"], "k": 1})
    spec = build_request({"id": "a/b c", "v": [1, 2]}, t)
    assert spec.method == "PUT" and spec.url == "/users/a%2Fb%20c/x"
    assert spec.json == {"a": [[1, 2], "n=a/b c"], "k": 1}
    with pytest.raises(ItemError, match=r"\{v\}.*keys \['id', 'w'\]"):
        build_request({"id": 1, "w": 2}, t)
    full = build_request({"method": "post", "path": "/ok/1", "json": {"x": 1}, "params": {"q": 1}}, t)
    assert full.url == "/ok/1" and full.params == {"q": 1} and "Idempotency-Key" in full.headers
    assert build_request(5).url == "/5"  # a scalar item is its id


@pytest.mark.parametrize("bad", ["not a url", "ftp://x.example", "http://", ""])
def test_bad_base_url_is_a_config_error(bad: str):
    with pytest.raises(ConfigError, match="not a valid http"):
        make_client(bad or "::")


def test_mock_transport_classification_without_sockets():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"e": 1})

    async def go() -> None:
        async with make_client("http://api.test", transport=httpx.MockTransport(handler)) as client:
            await send(client, RequestSpec("GET", "/x"))

    with pytest.raises(RetryableError) as info:
        run(go())
    assert info.value.retry_after == 7.0 and info.value.category == "http_429"


URL_CASES = [  # (base_url, request URL, params): also the lean client's (tests/tasks/api/test_lean.py)
    ("http://127.0.0.1:9/v1", "/users/7", None),
    ("http://127.0.0.1:9", "ok/a", None),
    ("http://127.0.0.1:9/", "/ok/a", {"q": 1}),
    ("http://127.0.0.1:9/v1/", "users/7", {"q": "a b", "n": 3, "flag": True, "many": [1, 2]}),
    ("http://127.0.0.1:9", "http://other:8/x?y=1", {"z": "é"}),
    ("http://127.0.0.1:9/v1", "/redirect/x?to=http://other:8/y", None),  # a URL in the query is not the target
]


@pytest.mark.parametrize(("base", "url", "params"), URL_CASES)
def test_shown_url_is_the_url_httpx_sends(base: str, url: str, params: dict[str, Any] | None):
    from tasks.api.client import _shown_url

    client = make_client(base, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    spec = RequestSpec("GET", url, params=params)
    assert _shown_url(client, spec) == str(client.build_request("GET", url, params=params).url)


def test_a_url_query_and_params_are_merged_not_dropped():
    spec = build_request({"path": "/x?a=1&a=2&b=3", "params": {"b": 4, "c": 5}})
    assert spec.url == "/x" and spec.params == {"a": ["1", "2"], "b": 4, "c": 5}
    assert build_request({"path": "/x?a=1"}).url == "/x?a=1"
