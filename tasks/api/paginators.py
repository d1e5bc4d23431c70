"""Paginators for api_extract: small objects that turn a JSON state into the next page's request.

Why a plain-dict state: it is the checkpoint. After a page's records are written the caller saves
``Page.next_state``; a rerun passes it back as ``state=`` and continues with the page after the last
written one, so nothing is fetched twice into the output and nothing is skipped. A state with
``done: true`` means the walk finished. ``state["pages"]`` counts pages across resumes, so
``max_pages`` means the same thing before and after a crash.

A server that ignores the pagination parameters (a wrong parameter name, a Link header pointing at
itself) answers the same page forever: a page whose records equal the previous page's is refused
with an ItemError naming the page (``state["last_page"]`` keeps the previous page's fingerprint, so
the check holds across parts and resumes).

A cursor or next link that repeats one of the last ``RECENT_REQUESTS`` pages' requests (the same
cursor returned twice in a row, a next link to the page itself, a short cycle) would loop forever:
the page before it is written, then the walk is refused with an ItemError (``state["sent"]`` keeps
short hashes of those requests, so the check also holds across parts and resumes). A longer cycle is
refused the same way at its first repeated request: the walk remembers every request it sent (in memory).

Stops: offset/page styles stop on an empty page (not yielded): a page shorter than ``page_size`` is
*not* trusted as the end because many APIs cap sizes silently. Cursor and link styles stop only when
there is no next page (cursor null/missing, no ``rel="next"`` link): an empty page with a next cursor
(a filtered page of a search API) is yielded with no records and the walk goes on. ``max_pages``
stops every style.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol
from urllib.parse import unquote_plus, urlencode, urljoin

import httpx

from tasks.api.client import ResponseRecord, send
from tasks.api.request_spec import RequestSpec
from tasks.core import ConfigError, ItemError, RetryPolicy, redact_text
from tasks.core.exactjson import JsonNumber

PaginatorKind = Literal["offset", "page", "cursor", "link_header"]
State = dict[str, Any]
RECENT_REQUESTS = 64  # requests remembered to spot a cursor/link loop (short hashes in the checkpoint)
MAX_WALKED = 1_000_000  # requests one walk remembers in memory to spot a longer cycle (~100 MB at most)


class Page(NamedTuple):
    """One fetched page: its 1-based number, its records, and the checkpoint to save after writing it."""

    number: int
    records: list[Any]
    next_state: State


class Paginator(Protocol):
    kind: str
    ends_on_empty: ClassVar[bool]  # True: an empty page ends the walk; False: only "no next page" does

    def initial_state(self) -> State: ...

    def request(self, url: str, state: State, params: Mapping[str, Any] | None) -> RequestSpec: ...

    def advance(self, state: State, record: ResponseRecord, records: list[Any]) -> State: ...


def _base(state: State, kind: str) -> State:
    return {"kind": kind, "pages": int(state.get("pages", 0)) + 1, "done": False}


@dataclass(frozen=True)
class OffsetPaginator:
    """``?offset=N&limit=page_size``; the next offset is the current one plus records received."""

    page_size: int = 100
    offset_param: str = "offset"
    limit_param: str = "limit"
    kind: str = "offset"
    ends_on_empty: ClassVar[bool] = True

    def initial_state(self) -> State:
        return {"kind": self.kind, "pages": 0, "done": False, "offset": 0}

    def request(self, url: str, state: State, params: Mapping[str, Any] | None) -> RequestSpec:
        query = {**(params or {}), self.offset_param: state["offset"], self.limit_param: self.page_size}
        return RequestSpec("GET", url, params=query)

    def advance(self, state: State, record: ResponseRecord, records: list[Any]) -> State:
        return {**_base(state, self.kind), "offset": int(state["offset"]) + len(records)}


@dataclass(frozen=True)
class PageNumberPaginator:
    """``?page=N&per_page=page_size`` starting at ``first_page``."""

    page_size: int = 100
    page_param: str = "page"
    size_param: str = "per_page"
    first_page: int = 1
    kind: str = "page"
    ends_on_empty: ClassVar[bool] = True

    def initial_state(self) -> State:
        return {"kind": self.kind, "pages": 0, "done": False, "page": self.first_page}

    def request(self, url: str, state: State, params: Mapping[str, Any] | None) -> RequestSpec:
        query = {**(params or {}), self.page_param: state["page"], self.size_param: self.page_size}
        return RequestSpec("GET", url, params=query)

    def advance(self, state: State, record: ResponseRecord, records: list[Any]) -> State:
        return {**_base(state, self.kind), "page": int(state["page"]) + 1}


@dataclass(frozen=True)
class CursorPaginator:
    """``?cursor=C``, the next cursor read from ``cursor_path`` in the body; null/missing ends the walk."""

    cursor_path: str = "next_cursor"
    cursor_param: str = "cursor"
    page_size: int | None = 100
    size_param: str = "limit"
    kind: str = "cursor"
    ends_on_empty: ClassVar[bool] = False

    def initial_state(self) -> State:
        return {"kind": self.kind, "pages": 0, "done": False, "cursor": None}

    def request(self, url: str, state: State, params: Mapping[str, Any] | None) -> RequestSpec:
        query = dict(params or {})
        if self.page_size is not None:
            query[self.size_param] = self.page_size
        if state.get("cursor") is not None:
            query[self.cursor_param] = state["cursor"]
        return RequestSpec("GET", url, params=query)

    def advance(self, state: State, record: ResponseRecord, records: list[Any]) -> State:
        cursor = dig(record.body, self.cursor_path, default=None)
        if isinstance(cursor, JsonNumber):  # sent and checkpointed as the body wrote it
            cursor = cursor.text
        nxt = {**_base(state, self.kind), "cursor": cursor}
        nxt["done"] = cursor in (None, "")  # the same cursor again is a loop: iter_pages refuses it
        return nxt


@dataclass(frozen=True)
class LinkHeaderPaginator:
    """RFC 5988/8288 ``Link: <url>; rel="next"``; the next URL is stored whole in the state."""

    page_size: int | None = None
    size_param: str = "per_page"
    kind: str = "link_header"
    ends_on_empty: ClassVar[bool] = False

    def initial_state(self) -> State:
        return {"kind": self.kind, "pages": 0, "done": False, "next_url": None}

    def request(self, url: str, state: State, params: Mapping[str, Any] | None) -> RequestSpec:
        if state.get("next_url"):
            return RequestSpec("GET", state["next_url"])
        query = dict(params or {})
        if self.page_size is not None:
            query[self.size_param] = self.page_size
        return RequestSpec("GET", url, params=query or None)

    def advance(self, state: State, record: ResponseRecord, records: list[Any]) -> State:
        nxt_url = next_link(record.headers.get("link", ""))
        if nxt_url is not None:  # RFC 8288: a relative target is resolved against the page's URL
            nxt_url = urljoin(record.url, nxt_url)
        return {**_base(state, self.kind), "next_url": nxt_url, "done": nxt_url is None}


def make_paginator(
    kind: PaginatorKind, *, page_size: int = 100, cursor_path: str | None = None, **options: Any
) -> Paginator:
    """The paginator for api_extract's ``paginator=`` parameter."""
    if page_size < 1:
        msg = f"page_size must be >= 1, got {page_size}"
        raise ConfigError(msg)
    classes: dict[str, Any] = {"offset": OffsetPaginator, "page": PageNumberPaginator, "cursor": CursorPaginator,
                               "link_header": LinkHeaderPaginator}
    if kind in classes:
        allowed = {f.name for f in dataclasses.fields(classes[kind])} - {"kind", "page_size", "cursor_path"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            msg = (f"paginator_options {unknown} do not apply to paginator {kind!r}; "
                   f"it takes {sorted(allowed) or 'no options'}")
            raise ConfigError(msg)
        bad = sorted(k for k, v in options.items() if not isinstance(v, str | int) or isinstance(v, bool) or v == "")
        if bad:
            msg = f"paginator_options {bad} must be non-empty parameter names (or first_page: an integer)"
            raise ConfigError(msg)
    if kind == "offset":
        return OffsetPaginator(page_size=page_size, **options)
    if kind == "page":
        return PageNumberPaginator(page_size=page_size, **options)
    if kind == "cursor":
        if not cursor_path:
            msg = "paginator='cursor' needs cursor_path, the dotted path of the next cursor in the body (e.g. 'meta.next')"
            raise ConfigError(msg)
        return CursorPaginator(cursor_path=cursor_path, page_size=page_size, **options)
    if kind == "link_header":
        return LinkHeaderPaginator(page_size=page_size, **options)
    msg = f"paginator {kind!r} is unknown; use 'offset', 'page', 'cursor' or 'link_header'"
    raise ConfigError(msg)


_MISSING = object()


def dig(body: Any, path: str, *, default: Any = _MISSING) -> Any:
    """Follow a dotted path (``"result.items"``, ``"data.0.id"``; ``""`` or ``"."`` is the body itself)."""
    node = body
    if path in ("", "."):
        return node
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            if default is not _MISSING:
                return default
            raise KeyError(part)
    return node


# one link-param: `; name`, `; name=token` or `; name="quoted, ; string"` (RFC 8288 section 3)
_LINK_PARAM = re.compile(r'\s*;\s*(?P<name>[^\s;,="]+)\s*(?:=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^\s;,"]*))?')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_link_header(header: str) -> list[tuple[str, dict[str, str]]]:
    """The link-values of a Link header (RFC 8288): ``[(target, {param: value})]`` in order.

    Link-values are split on commas outside ``<...>`` and outside quoted strings, so a target such as
    ``<https://h/items?page=2&fields=id,name>`` or a ``title="a, b"`` stays whole. Parameter names are
    lower-cased and may come in any order; values may be quoted or not; as the RFC says, only the first
    occurrence of a parameter counts.
    """
    links: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while (start := header.find("<", pos)) >= 0 and (close := header.find(">", start + 1)) >= 0:
        params: dict[str, str] = {}
        pos = close + 1
        while match := _LINK_PARAM.match(header, pos):
            value = match["value"] or ""
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            params.setdefault(match["name"].lower(), value)
            pos = match.end()
        links.append((header[start + 1 : close].strip(), params))
        pos = _after_comma(header, pos)
    return links


def _after_comma(header: str, pos: int) -> int:
    """The position after the next comma outside a quoted string (the end of a malformed link-value)."""
    quoted = False
    while pos < len(header):
        char = header[pos]
        if quoted and char == "\\":
            pos += 1
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            return pos + 1
        pos += 1
    return pos


def next_link(header: str) -> str | None:
    """The target of the first ``rel="next"`` link of a Link header (``rel`` may hold several space-separated
    relation types, quoted or not, in any case), or None."""
    for target, params in parse_link_header(header):
        if "next" in params.get("rel", "").lower().split():
            return target
    return None


def extract_records(body: Any, records_path: str, *, page: int, url: str) -> list[Any]:
    """The records of one page, or an ItemError naming the page and the keys that are there."""
    try:
        records = dig(body, records_path)
    except KeyError as exc:
        if isinstance(body, Mapping):
            found = f"the body's top-level keys are {sorted(body)}"
        elif isinstance(body, list):
            found = f"the body is a list of {len(body)} entries (records_path='' takes it as the records)"
        else:
            found = f"the body is a {type(body).__name__}"
        msg = (
            f"page {page} ({redact_text(url)}) has no {records_path!r} (missing {exc.args[0]!r}); {found}; set "
            "records_path to the list of records (dotted path, '' for a list body)"
        )
        raise ItemError(msg, category="records_path_missing") from None
    if records is None:
        return []
    if not isinstance(records, list):
        msg = f"page {page}: {records_path!r} is a {type(records).__name__}, not a list of records"
        raise ItemError(msg, category="records_path_missing")
    return records


async def iter_pages(
    client: httpx.AsyncClient,
    url: str,
    paginator: Paginator,
    *,
    records_path: str = "data",
    params: Mapping[str, Any] | None = None,
    state: State | None = None,
    max_pages: int | None = None,
    retry: RetryPolicy | None = None,
    secret_params: Mapping[str, str] | None = None,
) -> AsyncIterator[Page]:
    """Fetch page after page, yielding ``Page(number, records, next_state)``.

    Save ``next_state`` only after the page's records are written; pass it back as ``state`` to
    resume. Each page is one :func:`tasks.api.client.send` under ``retry`` (the one retry loop).
    ``secret_params`` (credential query parameters) go on every request, a next link's included, and never
    into the state: a next link that repeats them is stored without them (the state is the checkpoint).
    """
    state = dict(state) if state else paginator.initial_state()
    if state.get("kind", paginator.kind) != paginator.kind:
        msg = f"checkpoint is for paginator {state.get('kind')!r}, not {paginator.kind!r}; delete it or use the same paginator"
        raise ConfigError(msg)
    policy = retry or RetryPolicy(retries=0)
    walked: dict[str, int] = {}  # every request of this walk (in this process): a cycle longer than the checkpoint's
    while not state.get("done") and (max_pages is None or int(state.get("pages", 0)) < max_pages):
        spec = paginator.request(url, state, params)
        number = int(state.get("pages", 0)) + 1
        sent = request_fingerprint(spec)
        _refuse_a_loop(state, sent, number, paginator.kind, walked.get(sent))
        if not paginator.ends_on_empty and len(walked) < MAX_WALKED:
            walked[sent] = number
        wire = with_query(spec, secret_params)
        record, _ = await policy.acall(lambda wire=wire: send(client, wire, expect="json"))
        records = extract_records(record.body, records_path, page=number, url=record.url)
        if not records and paginator.ends_on_empty:
            return
        fingerprint = page_fingerprint(records)
        if records and number > 1 and fingerprint == state.get("last_page"):
            msg = (
                f"page {number} ({redact_text(record.url)}) returned exactly the {len(records)} records of page "
                f"{number - 1}: the API seems to ignore the {paginator.kind!r} pagination parameters, so the walk "
                "would never end; check the parameter names (paginator_options, e.g. {'offset_param': 'skip'}) "
                "or the next-page location. If the API's consecutive pages can really be identical (records "
                "without ids at a small page_size), use a larger page_size"
            )
            raise ItemError(msg, category="pagination_stuck")
        state = {**paginator.advance(state, record, records), "last_page": fingerprint,
                 **({} if paginator.ends_on_empty else {"sent": [*state.get("sent", ())[1 - RECENT_REQUESTS:], sent]})}
        if secret_params and state.get("next_url"):
            state["next_url"] = without_query(state["next_url"], secret_params)
        yield Page(number, records, state)


def with_query(spec: RequestSpec, extra: Mapping[str, str] | None) -> RequestSpec:
    """``spec`` with the query parameters ``extra`` added (over the same names). A URL that holds its own
    query (a next link) keeps it as the server wrote it: ``extra`` is appended, since httpx's params would
    replace that query."""
    if not extra:
        return spec
    if spec.params is not None or "?" not in spec.url:
        return dataclasses.replace(spec, params={**(spec.params or {}), **extra})
    url, hash_, fragment = without_query(spec.url, extra).partition("#")
    return dataclasses.replace(spec, url=f"{url}{'&' if '?' in url else '?'}{urlencode(extra)}{hash_}{fragment}")


def without_query(url: str, names: Mapping[str, Any]) -> str:
    """``url`` without the query parameters named in ``names``; the others stay as written."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = rest.partition("#")
    kept = [pair for pair in query.split("&") if pair and unquote_plus(pair.partition("=")[0]) not in names]
    return base + ("?" + "&".join(kept) if kept else "") + hash_ + fragment


def _refuse_a_loop(state: State, sent: str, number: int, kind: str, walked_at: int | None = None) -> None:
    """ItemError when page ``number``'s request repeats an earlier page's: one of the last pages' (in the
    checkpoint) or ``walked_at`` (any page of this walk so far): a cursor or next link that leads back, so
    following it would fetch the same pages forever."""
    recent = state.get("sent") or []
    if sent in recent:
        earlier = number - len(recent) + recent.index(sent)
    elif walked_at is not None:
        earlier = walked_at
    else:
        return
    what, check = {"cursor": ("next cursor", "cursor_path (it must point at the next page's cursor, e.g. "
                                             "'meta.next_cursor', not the current one) or ")}.get(kind, ("next link", ""))
    msg = (
        f"page {number} would repeat the request of page {earlier}: the {what} that page {number - 1} gave leads "
        f"back, so the walk would never end; check {check}the server's next-page location, or set max_pages"
    )
    raise ItemError(msg, category="pagination_stuck")


def request_fingerprint(spec: RequestSpec) -> str:
    """A short stable hash of a page request (method, URL, query), to spot a cursor or link loop."""
    text = json.dumps([spec.method, spec.url, spec.params], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def page_fingerprint(records: list[Any]) -> str:
    """A short stable hash of a page's records (to spot a server answering the same page forever)."""
    text = json.dumps(records, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


__all__ = [
    "RECENT_REQUESTS",
    "CursorPaginator",
    "LinkHeaderPaginator",
    "OffsetPaginator",
    "Page",
    "PageNumberPaginator",
    "Paginator",
    "PaginatorKind",
    "State",
    "dig",
    "extract_records",
    "iter_pages",
    "make_paginator",
    "next_link",
    "page_fingerprint",
    "parse_link_header",
    "request_fingerprint",
    "with_query",
    "without_query",
]
