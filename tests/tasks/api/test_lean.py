"""tasks/api/lean.py against the real loopback test API: the lean path gives what the httpx client gives.

Each scenario runs through both clients with the server reset in between (its scripted failures count per
key), and compares the outcome (record or error: type, category, status, message, attempts) and what the
server saw (method, path, query, body, credentials, Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.api.bulk import ApiJob, open_client, process_api_chunk
from tasks.api.client import RequestSpec, RequestTemplate, build_request, make_client, send
from tasks.api.lean import LeanClient, decode_text, use_lean
from tasks.core import Chunk
from tasks.core.errors import ConfigError, RetryableError
from tasks.core.ratelimit import TokenBucket
from tasks.core.retry import RetryPolicy, attempts_made
from tasks.core.settings import HttpSettings
from tests.fixtures.api_server import ApiServer
from tests.tasks.api.test_client import URL_CASES

TOKEN = "tok-LEAN-SECRET-5150"
FAST = RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.005)
SCENARIOS = [
    RequestSpec("GET", "/ok/1"),
    RequestSpec("GET", "/ok/a%2Fb%20c/x", params={"q": "a b", "n": 3, "flag": True, "many": [1, 2]}),
    RequestSpec("GET", "/ok/p", params={"api_key": TOKEN}),
    RequestSpec("POST", "/ok/post", json={"x": 1, "name": "zoë", "nested": [1.5, None, True]}),
    build_request({"id": "k1", "n": 7}, RequestTemplate(method="PUT", path_template="/fail/{id}?times=2",
                                                         json_template={"n": "{n}"})),
    RequestSpec("GET", "/fail/a?times=2&status=503"),
    RequestSpec("GET", "/fail/b?times=9&status=502"),
    RequestSpec("GET", "/fail/c?times=1&status=408"),
    RequestSpec("GET", "/fail/d?times=1&status=425"),
    RequestSpec("GET", "/fail/e?times=1&status=409"),
    RequestSpec("GET", "/reset/f?times=2"),
    RequestSpec("GET", "/retry-after/g?times=1&after=0.05"),
    RequestSpec("GET", "/retry-after/h?times=1&after=999"),
    RequestSpec("GET", "/status/401"),
    RequestSpec("GET", "/status/403"),
    RequestSpec("GET", "/status/404"),
    RequestSpec("GET", "/status/422"),
    RequestSpec("GET", "/malformed/m"),
    RequestSpec("GET", "/text/t"),
    RequestSpec("GET", "/redirect/a?to=/ok/moved&status=301"),
    RequestSpec("POST", "/redirect/b?to=/ok/kept&status=307", json={"x": 1}),
    RequestSpec("POST", "/redirect/c?to=/ok/get&status=302", json={"x": 1}),
    RequestSpec("POST", "/redirect/d?to=/ok/get301&status=301", json={"x": 1}),
    RequestSpec("POST", "/redirect/e?to=/ok/kept308&status=308", json={"x": 2}),
    RequestSpec("GET", "/redirect/f?to=none"),
    RequestSpec("GET", "/redirect/g?to=/ok/x&status=300"),
    RequestSpec("GET", "/redirect/loop"),
]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def client_of(kind: str, url: str, **kw: Any) -> Any:
    return LeanClient(url, **kw) if kind == "lean" else make_client(url, **kw)


def send_either(client: Any, spec: RequestSpec) -> Any:
    return client.send(spec) if isinstance(client, LeanClient) else send(client, spec)


async def outcome(client: Any, spec: RequestSpec, policy: RetryPolicy = FAST) -> dict[str, Any]:
    try:
        record, attempts = await policy.acall(lambda: send_either(client, spec))
    except Exception as exc:
        return {"error": type(exc).__name__, "category": getattr(exc, "category", None),
                "status": getattr(exc, "status", None), "message": str(exc), "attempts": attempts_made(exc)}
    return {**record.to_dict(), "elapsed_ms": None, "attempts": attempts}


def seen(server: ApiServer) -> list[tuple[Any, ...]]:
    return [(r.method, r.path, r.query, r.body, r.headers.get("authorization"), r.headers.get("idempotency-key"),
             r.headers.get("content-type"), r.headers.get("user-agent"), r.headers.get("accept"))
            for r in server.requests]


def both(server: ApiServer, spec: RequestSpec, **kw: Any) -> tuple[Any, Any]:
    results = []
    for kind in ("httpx", "lean"):
        server.reset()

        async def go(kind: str = kind) -> dict[str, Any]:
            async with client_of(kind, server.url, token=TOKEN, **kw) as client:
                return await outcome(client, spec)

        results.append((run(go()), seen(server)))
    return results[0], results[1]




@pytest.mark.parametrize("spec", SCENARIOS, ids=lambda s: f"{s.method} {s.url}")
def test_same_outcome_and_same_requests_on_both_paths(api_server: ApiServer, spec: RequestSpec):
    (via_httpx, saw_httpx), (via_lean, saw_lean) = both(api_server, spec)
    assert via_lean == via_httpx
    assert saw_lean == saw_httpx
    assert TOKEN not in json.dumps(via_lean.get("url")) + via_lean.get("message", "")


def test_redirect_leaving_the_origin_drops_authorization(api_server: ApiServer):
    other = api_server.url.replace("127.0.0.1", "localhost")  # same server, another origin
    spec = RequestSpec("GET", f"/redirect/x?to={other}/ok/away&status=302")
    (via_httpx, saw_httpx), (via_lean, saw_lean) = both(api_server, spec)
    assert via_lean == via_httpx and via_lean["status"] == 200
    assert saw_lean == saw_httpx
    assert [s[4] for s in saw_lean] == [f"Bearer {TOKEN}", None]


def test_password_in_base_url_is_basic_auth_and_redacted(api_server: ApiServer):
    url = api_server.url.replace("http://", "http://user:hunter2pass@")
    results = []
    for kind in ("httpx", "lean"):
        api_server.reset()

        async def go(kind: str = kind) -> dict[str, Any]:
            async with client_of(kind, url) as client:
                return await outcome(client, RequestSpec("GET", "/ok/basic"))

        results.append((run(go()), seen(api_server)))
    assert results[0] == results[1]
    assert results[1][1][0][4] == httpx.BasicAuth("user", "hunter2pass")._auth_header
    assert "hunter2pass" not in results[1][0]["url"]


def test_connect_error_and_read_timeout_categories():
    async def refused() -> dict[str, Any]:
        async with LeanClient("http://user:hunter2pass@127.0.0.1:1", settings=HttpSettings(connect_timeout_s=1)) as c:
            return await outcome(c, RequestSpec("GET", "/x"), RetryPolicy(retries=0))

    result = run(refused())
    assert result["category"] == "http_connect" and "hunter2pass" not in result["message"]


def test_read_timeout_is_transient(api_server: ApiServer):
    async def slow() -> dict[str, Any]:
        async with LeanClient(api_server.url, settings=HttpSettings(timeout_s=0.2, connect_timeout_s=0.2)) as c:
            return await outcome(c, RequestSpec("GET", "/slow/1?delay=1"), RetryPolicy(retries=0))

    result = run(slow())
    assert result["error"] == RetryableError.__name__ and result["category"] == "http_timeout"


def test_limiter_takes_a_token_per_request_sent_and_hears_429(api_server: ApiServer):
    bucket = TokenBucket(1000, decrease_cooldown_s=0)

    async def go() -> None:
        async with LeanClient(api_server.url, limiter=bucket) as client:
            await FAST.acall(lambda: client.send(RequestSpec("GET", "/retry-after/h?times=1&after=0.05")))
            await client.send(RequestSpec("GET", "/redirect/r?to=/ok/r"))

    run(go())
    stats = bucket.stats()
    assert stats.acquired == 4 and stats.throttled == 1 and stats.current_rate < 1000  # 2 + a redirect's 2 hops


@pytest.mark.parametrize(("base", "url", "params"), URL_CASES)
def test_the_lean_url_is_the_url_httpx_sends(base: str, url: str, params: dict[str, Any] | None):
    client = make_client(base, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert LeanClient(base).url_of(RequestSpec("GET", url, params=params)) == str(
        client.build_request("GET", url, params=params).url)


def test_bad_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match="not a valid http"):
        LeanClient("not a url")


def test_text_is_decoded_as_httpx_decodes_it():
    for ctype, raw in [("text/plain; charset=latin-1", "é".encode("latin-1")), ("text/plain", "é".encode()),
                       ("text/plain; charset=nonsense", b"\xff ok"), (None, b"plain")]:
        response = httpx.Response(200, content=raw, headers={"Content-Type": ctype} if ctype else {})
        assert decode_text(raw, ctype) == response.text


def test_the_lean_path_is_the_default_and_httpx_is_kept_where_needed():
    job = ApiJob(base_url="http://127.0.0.1:9", template=RequestTemplate())
    assert use_lean("aiohttp") and not use_lean("httpx") and not use_lean(httpx.MockTransport(lambda r: None))
    assert isinstance(open_client(job, token=None, limiter=None), LeanClient)
    assert isinstance(open_client(ApiJob(**{**job.__dict__, "transport": "httpx"}), token=None, limiter=None),
                      httpx.AsyncClient)
    assert isinstance(open_client(ApiJob(**{**job.__dict__, "lean": False}), token=None, limiter=None),
                      httpx.AsyncClient)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_a_chunk_gives_the_same_rows_and_dead_letters_on_both_paths(api_server: ApiServer, tmp_path: Path,
                                                                     batch_size: int | None):
    if batch_size:
        items: list[Any] = [{"id": i, "name": f"r{i}", **({"bad": True} if i == 3 else {})} for i in range(7)]
        template = RequestTemplate(method="POST", path_template="/bulk/k?max=5", json_template={"records": "{items}"})
    else:
        items = [{"path": f"/ok/{i}", "params": {"i": i}} for i in range(5)] + [
            {"path": "/fail/t?times=1&status=503"}, {"path": "/status/404"}, {"path": "/malformed/m"},
            {"path": "/text/t"}, {"path": "/redirect/r?to=/ok/r"}, {"method": "POST", "path": "/ok/p", "json": {"a": 1}},
            {"path": "/redirect/n?to=none"}]
        template = RequestTemplate()
    parts, failures = [], []
    for lean in (False, True):
        api_server.reset()
        out = tmp_path / f"lean-{lean}"
        job = ApiJob(base_url=api_server.url, template=template, item_concurrency=3, retries=2, retry_backoff_s=0.001,
                     output_dir=str(out), lean=lean, batch_size=batch_size,
                     results_path="data.results" if batch_size else None)
        report = process_api_chunk(Chunk(0, items), job)
        rows = [json.loads(line) for line in (out / "part-000000.jsonl").read_text().splitlines()]
        parts.append([{**row, "elapsed_ms": None} for row in rows])
        failures.append(sorted((f.position, f.category, f.status, f.attempts, f.message) for f in report.failures))
    assert parts[0] == parts[1] and failures[0] == failures[1]
    assert len(parts[1]) + len(failures[1]) == len(items) and failures[1]
