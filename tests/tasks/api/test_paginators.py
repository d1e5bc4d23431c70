"""tasks/pagination.py: every paginator walks the fixed dataset of the test API exactly, and resumes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tasks.api.client import ResponseRecord, make_client
from tasks.api.paginators import Page, dig, iter_pages, make_paginator, next_link
from tasks.core.errors import ConfigError, ItemError
from tasks.core.exactjson import loads_exact
from tasks.core.retry import RetryPolicy
from tests.fixtures.api_server import DATASET, ApiServer
from tests.tasks.api.loopback import Seen, raw_api

STYLES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("offset", "/pages/offset", "data", {}),
    ("page", "/pages/page", "data", {}),
    ("cursor", "/pages/cursor", "result.items", {"cursor_path": "meta.next_cursor"}),
    ("link_header", "/pages/link", "", {}),
]


def _walk(server: ApiServer, kind: str, path: str, records_path: str, opts: dict[str, Any], **kw: Any) -> list[Page]:
    async def go() -> list[Page]:
        async with make_client(server.url) as client:
            paginator = make_paginator(kind, page_size=25, **opts)  # type: ignore[arg-type]
            return [p async for p in iter_pages(client, path, paginator, records_path=records_path, **kw)]

    return asyncio.run(go())


@pytest.mark.parametrize(("kind", "path", "records_path", "opts"), STYLES)
def test_walks_dataset_exactly(api_server: ApiServer, kind: str, path: str, records_path: str, opts: dict[str, Any]):
    pages = _walk(api_server, kind, path, records_path, opts)
    records = [r for p in pages for r in p.records]
    assert records == DATASET  # no duplicate, none missing, in order
    assert [p.number for p in pages] == list(range(1, 11))
    # offset/page stop on the empty page after the short last one; cursor/link stop on "no next"
    assert api_server.count(path) == (11 if kind in ("offset", "page") else 10)


@pytest.mark.parametrize(("kind", "path", "records_path", "opts"), STYLES)
def test_resume_from_checkpoint_continues_after_last_written_page(
    api_server: ApiServer, kind: str, path: str, records_path: str, opts: dict[str, Any]
):
    first = _walk(api_server, kind, path, records_path, opts, max_pages=4)
    assert len(first) == 4
    checkpoint = json.loads(json.dumps(first[-1].next_state))  # states are JSON
    api_server.reset()
    rest = _walk(api_server, kind, path, records_path, opts, state=checkpoint)
    assert [p.number for p in rest] == list(range(5, 11))
    assert [r for p in first + rest for r in p.records] == DATASET
    assert api_server.count(path) == (7 if kind in ("offset", "page") else 6)


def test_finished_checkpoint_fetches_nothing(api_server: ApiServer):
    pages = _walk(api_server, "cursor", "/pages/cursor", "result.items", {"cursor_path": "meta.next_cursor"})
    api_server.reset()
    again = _walk(
        api_server, "cursor", "/pages/cursor", "result.items", {"cursor_path": "meta.next_cursor"}, state=pages[-1].next_state
    )
    assert pages[-1].next_state["done"] and again == [] and api_server.count("/") == 0


def test_max_pages_counts_across_resume(api_server: ApiServer):
    first = _walk(api_server, "offset", "/pages/offset", "data", {}, max_pages=3)
    more = _walk(api_server, "offset", "/pages/offset", "data", {}, max_pages=5, state=first[-1].next_state)
    assert [p.number for p in more] == [4, 5]


def test_missing_records_path_names_page_and_keys(api_server: ApiServer):
    with pytest.raises(ItemError, match=r"page 1 .*'items'.*keys are \['data', 'total'\]") as info:
        _walk(api_server, "offset", "/pages/offset", "items", {})
    assert info.value.category == "records_path_missing"


def test_page_retries_go_through_the_policy(api_server: ApiServer):
    pages = _walk(
        api_server, "page", "/fail/p", "json", {}, max_pages=1,
        params={"times": 2, "status": 503}, retry=RetryPolicy(retries=3, backoff_s=0.001),
    )
    assert len(pages) == 0 or pages[0].number == 1
    assert api_server.count("/fail/p") == 3


@pytest.mark.parametrize(("kind", "path", "opts"), [
    ("offset", "/pages/offset", {"offset_param": "skip"}),  # the server knows offset=, not skip=
    ("page", "/pages/page", {"page_param": "p"}),
])
def test_a_server_ignoring_the_pagination_is_refused_at_the_repeated_page(
    api_server: ApiServer, kind: str, path: str, opts: dict[str, Any]
):
    with pytest.raises(ItemError, match=r"page 2 .*exactly the 25 records of page 1.*ignore the .* parameters") as info:
        _walk(api_server, kind, path, "data", opts)
    assert info.value.category == "pagination_stuck"
    assert api_server.count(path) == 2  # stopped at once, not after max_pages or forever


def test_the_repeat_check_holds_across_a_resume(api_server: ApiServer):
    first = _walk(api_server, "offset", "/pages/offset", "data", {"offset_param": "skip"}, max_pages=1)
    with pytest.raises(ItemError, match="page 2"):
        _walk(api_server, "offset", "/pages/offset", "data", {"offset_param": "skip"}, state=first[-1].next_state)


def test_paginator_options_are_checked():
    assert make_paginator("offset", offset_param="skip", limit_param="take").request("/x", {"offset": 5}, None).params == {
        "skip": 5, "take": 100}
    with pytest.raises(ConfigError, match=r"\['cursor_param'\] do not apply to paginator 'offset'.*limit_param"):
        make_paginator("offset", cursor_param="c")
    with pytest.raises(ConfigError, match="non-empty parameter names"):
        make_paginator("page", page_param="")


def test_helpers_and_config_errors():
    assert dig({"a": {"b": [1, {"c": 2}]}}, "a.b.1.c") == 2
    assert dig([1, 2], "") == [1, 2]
    assert next_link('<https://x/a?page=2>; rel="next", <https://x/a?page=9>; rel="last"') == "https://x/a?page=2"
    assert next_link('<https://x/a?page=1>; rel="prev"') is None
    with pytest.raises(ConfigError, match="cursor_path"):
        make_paginator("cursor")
    with pytest.raises(ConfigError, match="unknown"):
        make_paginator("scroll")  # type: ignore[arg-type]


def test_a_numeric_cursor_is_sent_and_checkpointed_as_the_body_wrote_it():
    paginator = make_paginator("cursor", cursor_path="next")
    record = ResponseRecord("GET", "http://x/", 200, loads_exact('{"next": 1700000000.50}'), 1.0, {})
    state = paginator.advance({"cursor": None}, record, [{"id": 1}])
    assert state["cursor"] == "1700000000.50" and json.loads(json.dumps(state)) == state


# --------------------------------------------------------------------------- APIs the test API does not play

Route = Callable[[str, dict[str, str], str], tuple[Any, dict[str, str]]]  # (path, query, host) -> (body, headers)


@contextmanager
def scripted_api(route: Route) -> Iterator[tuple[str, list[str]]]:
    """A real loopback API answering each GET with ``route(path, query, host)`` as JSON; yields its URL and the
    request targets it saw."""
    targets: list[str] = []

    def answer(request: Seen) -> tuple[int, dict[str, str], Any]:
        targets.append(request.target)
        parts = urlsplit(request.target)
        host = next(v for k, v in request.headers.items() if k.lower() == "host")
        body, headers = route(parts.path, dict(parse_qsl(parts.query)), host)
        return 200, headers, body

    with raw_api(answer) as (url, _):
        yield url, targets


def _walk_url(url: str, kind: str, records_path: str, opts: dict[str, Any], **kw: Any) -> list[Page]:
    async def go() -> list[Page]:
        async with make_client(url) as client:
            paginator = make_paginator(kind, page_size=10, **opts)  # type: ignore[arg-type]
            return [p async for p in iter_pages(client, "/items", paginator, records_path=records_path, **kw)]

    return asyncio.run(go())


def _rows(page: int) -> list[dict[str, int]]:
    return [{"id": page * 100 + i} for i in range(10)]


@pytest.mark.parametrize(("header", "target"), [
    ('<https://h/items?page=2&fields=id,name>; rel="next"', "https://h/items?page=2&fields=id,name"),
    ('<https://h/a?p=1>; rel="prev", <https://h/a?p=3&f=a,b>; rel="next"', "https://h/a?p=3&f=a,b"),
    ('<https://h/a?p=3>; title="page, 3; of 9"; rel=next', "https://h/a?p=3"),  # unquoted rel, quoted comma
    ('<https://h/a?p=3>;rel="last next"', "https://h/a?p=3"),  # several relation types
    ('<https://h/a?p=3> ; REL = "Next"', "https://h/a?p=3"),
    ('<https://h/a?p=1>; title="rel=\\"next\\", <x>"; rel="first", <https://h/a?p=2>; rel="next"', "https://h/a?p=2"),
    ('<https://h/a?p=1>; rel="prev"; rel="next"', None),  # only a parameter's first occurrence counts
    ('<https://h/a?p=9>; rel="nextpage"', None),
    ("", None),
    ("garbage", None),
])
def test_next_link_parses_rfc8288(header: str, target: str | None):
    assert next_link(header) == target


def test_a_link_header_walk_follows_next_urls_holding_commas():
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        links = {2: f'<http://{host}/items?page=2&fields=id,name>; rel="next"',  # absolute, a comma in it
                 3: '</items?page=3&fields=id,name>; title="more, please"; rel=next'}  # relative, a quoted comma
        return _rows(page), ({"Link": links[page + 1]} if page + 1 in links else {})

    with scripted_api(route) as (url, seen):
        pages = _walk_url(url, "link_header", "", {}, params={"fields": "id,name"})
    assert [r for p in pages for r in p.records] == _rows(1) + _rows(2) + _rows(3)
    assert seen[1:] == ["/items?page=2&fields=id,name", "/items?page=3&fields=id,name"]


def _cursor_api(empty: set[int], last: int = 4, *, loop_at: int | None = None, back_to: int | None = None) -> Route:
    """Cursor pages 0..last; the pages in ``empty`` have no records but a next cursor; page ``loop_at`` gives
    ``back_to`` as its next cursor."""
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        c = int(query.get("cursor") or 0)
        nxt = back_to if c == loop_at else c + 1 if c < last else None
        return {"data": [] if c in empty else _rows(c), "meta": {"next": None if nxt is None else str(nxt)}}, {}

    return route


def test_a_cursor_walk_goes_on_past_empty_pages_that_have_a_next_cursor():
    with scripted_api(_cursor_api({1, 2})) as (url, seen):
        pages = _walk_url(url, "cursor", "data", {"cursor_path": "meta.next"})
    assert [r for p in pages for r in p.records] == _rows(0) + _rows(3) + _rows(4)
    assert [len(p.records) for p in pages] == [10, 0, 0, 10, 10] and pages[-1].next_state["done"]
    assert len(seen) == 5


def test_a_link_walk_goes_on_past_an_empty_page_with_a_next_link():
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        return ([] if page == 2 else _rows(page)), ({"Link": f"</items?page={page + 1}>; rel=next"} if page < 3 else {})

    with scripted_api(route) as (url, _):
        pages = _walk_url(url, "link_header", "", {})
    assert [r for p in pages for r in p.records] == _rows(1) + _rows(3)


@pytest.mark.parametrize(("route", "written", "message"), [
    (_cursor_api(set(), loop_at=2, back_to=2), 3, r"page 4 would repeat the request of page 3.*cursor_path"),
    (_cursor_api({2}, loop_at=2, back_to=2), 3, "page 4 would repeat the request of page 3"),  # empty, same cursor
    (_cursor_api({1, 2, 3}, loop_at=3, back_to=1), 4, "page 5 would repeat the request of page 2"),  # empty cycle
    # a cycle longer than the 64 requests a checkpoint remembers: it looped until max_pages (none: forever)
    (_cursor_api(set(), last=200, loop_at=150, back_to=10), 151, "page 152 would repeat the request of page 11"),
])
def test_a_cursor_that_leads_back_is_refused_after_writing_the_page_before(route: Route, written: int, message: str):
    pages: list[Page] = []

    async def go() -> None:
        async with make_client(url) as client:
            paginator = make_paginator("cursor", page_size=10, cursor_path="meta.next")
            async for page in iter_pages(client, "/items", paginator, records_path="data"):
                pages.append(page)

    with scripted_api(route) as (url, seen), pytest.raises(ItemError, match=message) as info:
        asyncio.run(go())
    assert info.value.category == "pagination_stuck"
    assert len(pages) == len(seen) == written  # every page fetched once, the looping request never sent


def test_a_next_link_to_the_page_itself_is_refused_even_when_empty():
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        return ([] if page == 2 else _rows(page)), {"Link": f"</items?page={min(page + 1, 2)}>; rel=next"}

    with scripted_api(route) as (url, seen), pytest.raises(ItemError, match="page 3 would repeat the request of page 2"):
        _walk_url(url, "link_header", "", {})
    assert len(seen) == 2


def test_the_loop_check_holds_across_a_resume():
    with scripted_api(_cursor_api(set(), loop_at=2, back_to=2)) as (url, seen):
        first = _walk_url(url, "cursor", "data", {"cursor_path": "meta.next"}, max_pages=3)
        checkpoint = json.loads(json.dumps(first[-1].next_state))
        with pytest.raises(ItemError, match="page 4 would repeat"):
            _walk_url(url, "cursor", "data", {"cursor_path": "meta.next"}, state=checkpoint)
    assert len(seen) == 3  # the resume sent nothing
