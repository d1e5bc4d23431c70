"""tasks/pagination.py: every paginator walks the fixed dataset of the test API exactly, and resumes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tasks.api.client import ResponseRecord, make_client
from tasks.api.paginators import Page, dig, iter_pages, make_paginator, next_link
from tasks.core.errors import ConfigError, ItemError
from tasks.core.exactjson import loads_exact
from tasks.core.retry import RetryPolicy
from tests.fixtures.api_server import DATASET, ApiServer

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
