"""Multi-item requests (api_bulk ``batch_size=N``): one request carries up to N items, the answer is mapped
back to one outcome per item.

* **The request**: ``json_template`` holds the placeholder ``"{items}"`` where the list of items goes
  (``{"records": "{items}"}``); ``path_template`` is one path for every request (``/records/bulk``).
  An item that cannot go into a JSON body (NaN, a date) fails alone (``bad_item``); with ``result_key``, two
  items with the same key never share a request (the second starts the next one), so results match unambiguously.
  The ``Idempotency-Key`` is derived from the request (method, path, body): the same items give the same
  key on every retry and on a resume.
* **The whole request**: 429 and 5xx (and transport errors) retry the request; 401/403 stop the run;
  another 4xx fails every item of the request with the status.
* **The answer**: ``results_path`` (a dotted path, e.g. ``data.results``; default: the body when it is a
  list) is the list of per-record results, in the order of the items, or matched by ``result_key`` (a
  field both the items and the results have; an answer holding a record's key twice fails that record,
  ``result_key_ambiguous``). A result is an error when it has a non-empty ``error`` / ``errors`` or a
  ``status`` / ``status_code`` of 400 or more (an integer, an integral float or a numeric string:
  207-style answers); one with a transient
  status (429, 5xx) is sent again in the next request with the other records that need it, after the
  retry policy's backoff. An answer that cannot be mapped (not JSON, no list there, a wrong count, a
  record without its result) fails the records of that request, saying which.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tasks.api.client import ResponseRecord
from tasks.api.paginators import dig
from tasks.api.request_spec import RequestSpec, RequestTemplate, idempotency_key, render_json
from tasks.core import ChunkOutcomes, FailedItem, ItemError, RetryableError, RetryPolicy, attempts_made
from tasks.core.exactjson import json_body
from tasks.core.retry import TRANSIENT_STATUS

ITEMS_PLACEHOLDER = "{items}"


def batch_request(template: RequestTemplate, items: list[Any]) -> RequestSpec:
    """The request that carries ``items`` (see the module docstring)."""
    spec = RequestSpec(method=template.method.upper(), url=template.path_template,
                       json=render_json(template.json_template, {"items": items}), headers=dict(template.headers or {}))
    if template.idempotency_keys:
        spec.headers["Idempotency-Key"] = idempotency_key(spec, namespace=template.idempotency_namespace)
    return spec


def has_items_placeholder(node: Any) -> bool:
    if isinstance(node, str):
        return node == ITEMS_PLACEHOLDER
    if isinstance(node, dict):
        return any(has_items_placeholder(v) for v in node.values())
    if isinstance(node, list | tuple):
        return any(has_items_placeholder(v) for v in node)
    return False


def map_results(body: Any, items: Sequence[Any], *, results_path: str | None, result_key: str | None,
                shown: str) -> list[Any]:
    """One result per item, in the items' order; ItemError when the answer cannot be mapped."""
    try:
        results = dig(body, results_path) if results_path else body
    except KeyError as exc:
        keys = sorted(body)[:10] if isinstance(body, dict) else type(body).__name__
        msg = f"{shown}: the answer has no {results_path!r} (missing {exc.args[0]!r}; top level: {keys})"
        raise ItemError(msg, category="bulk_answer") from None
    if not isinstance(results, list):
        where = f"at {results_path!r}" if results_path else "(set results_path to the list of per-record results)"
        msg = f"{shown}: expected a list of per-record results {where}, got {type(results).__name__}"
        raise ItemError(msg, category="bulk_answer")
    if result_key is None:
        if len(results) != len(items):
            msg = f"{shown}: the answer has {len(results)} results for {len(items)} records (matched by order)"
            raise ItemError(msg, category="bulk_answer")
        return results
    return _by_key(results, items, result_key)


def _by_key(results: list[Any], items: Sequence[Any], field: str) -> list[Any]:
    """Keys compared as text (APIs often answer ids as strings); a key two results (or two items) hold is
    ambiguous: those records fail rather than take a result that may be another record's."""
    by_key = {str(r[field]): r for r in results if isinstance(r, dict) and field in r}
    answered = Counter(str(r[field]) for r in results if isinstance(r, dict) and field in r)
    asked = Counter(str(i[field]) for i in items if isinstance(i, dict) and field in i)
    mapped: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or field not in item:
            mapped.append(_Unmapped(f"the record has no {field!r}"))
            continue
        key = str(item[field])
        if answered[key] > 1 or asked[key] > 1:
            mapped.append(_Unmapped(f"{field}={item[field]!r} is held by {answered[key]} results for {asked[key]} "
                                    "record(s) of the request: which result is this record's cannot be told",
                                    "result_key_ambiguous"))
        else:
            mapped.append(by_key.get(key, _Unmapped(f"no result with {field}={item[field]!r} in the answer")))
    return mapped


class _Unmapped:
    def __init__(self, error: str, category: str = "bulk_missing_result") -> None:
        self.error, self.category = error, category


def result_error(result: Any, *, status: int | None = None) -> Exception | None:
    """The error a per-record result stands for (None: it succeeded). Its ``status`` (the dead letter's) is the
    record's own status when it has one, else ``status``, the HTTP status of the answer that held it."""
    if isinstance(result, _Unmapped):
        return _with_status(ItemError(result.error, category=result.category), status)
    if not isinstance(result, dict):
        return None
    own = _own_status(result)
    error = result.get("error") or result.get("errors")
    if not (own is not None and own >= 400) and not error:
        return None
    text = f"record answered {own}" if own is not None else "record failed"
    text += f": {error}" if error else ""
    if own is not None and own in TRANSIENT_STATUS:
        return _with_status(RetryableError(text, category="record_retryable"), own)
    return _with_status(ItemError(text, category="record_error"), own if own is not None else status)


def _own_status(result: Any) -> int | None:
    """A result's ``status`` / ``status_code`` as an integer: an int, an integral float or a numeric string
    (``"422"``); None when it has none or it is not a number (not an error by itself)."""
    value = result.get("status", result.get("status_code")) if isinstance(result, dict) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() else None


def _with_status(exc: Exception, status: int | None) -> Exception:
    exc.status = status  # type: ignore[attr-defined]  # the dead letter's `status`
    return exc


async def send_batches(
    outcomes: ChunkOutcomes, job: Any, *, send_one: Callable[..., Awaitable[ResponseRecord]], policy: RetryPolicy,
    max_retry_after_s: float, masked: Callable[[Any], Callable[[FailedItem], FailedItem]],
) -> int:
    """Send the items still to do in requests of ``job.batch_size``, ``job.item_concurrency`` in flight;
    record every item's outcome as it is known; return the number of requests sent (retries included).
    ``send_one(spec, expect=, max_retry_after_s=)`` is one classified attempt (``client.send`` of either path)."""
    items = outcomes.chunk.items
    with outcomes.together():
        groups = _groups(outcomes.todo(), items, job.batch_size, job.result_key, refuse=lambda position, exc: (
            outcomes.failed(position, exc, attempts=0, transform=masked(items[position]))))
    sent = 0

    def row(position: int, spec: RequestSpec, record: Any, result: Any) -> dict[str, Any] | None:
        if not job.output_dir:
            return None
        status = _own_status(result)
        return {"chunk": outcomes.chunk.index, "position": position, "item": items[position], "method": spec.method,
                "url": record.url, "status": record.status if status is None else status,
                "elapsed_ms": record.elapsed_ms, "body": result}

    def fail_all(pending: list[int], exc: Exception, attempt: int) -> None:
        with outcomes.together():  # one journal write per request, as for batch handlers
            for position in pending:
                outcomes.failed(position, exc, attempts=max(attempt, attempts_made(exc)),
                                transform=masked(items[position]))

    async def one_group(group: list[int]) -> None:
        nonlocal sent
        pending, attempt = group, 1
        while pending and not outcomes.stopped():
            spec = batch_request(job.template, [items[p] for p in pending])
            try:
                record, attempts = await policy.acall(
                    lambda spec=spec: send_one(spec, expect=job.expect, max_retry_after_s=max_retry_after_s))
            except Exception as exc:  # the whole request failed (FatalError stops the run)
                sent += attempts_made(exc)
                fail_all(pending, exc, attempt)
                return
            sent += attempts
            try:
                results = map_results(record.body, [items[p] for p in pending], results_path=job.results_path,
                                      result_key=job.result_key, shown=f"{spec.method} {record.url}")
            except ItemError as exc:
                fail_all(pending, _with_status(exc, record.status), attempt)
                return
            again: list[int] = []
            last: Exception | None = None
            with outcomes.together():
                for position, result in zip(pending, results, strict=True):
                    error = result_error(result, status=record.status)
                    if error is None:
                        outcomes.succeeded(position, row(position, spec, record, result))
                    elif policy.retries_left(attempt, error):
                        again.append(position)
                        last = error
                    else:
                        outcomes.failed(position, error, attempts=attempt, transform=masked(items[position]))
            if again:
                await asyncio.sleep(policy.backoff(attempt, last))
                attempt += 1
            pending = again

    async def worker() -> None:
        while groups and not outcomes.stopped():
            await one_group(groups.popleft())

    async with asyncio.TaskGroup() as tasks:
        for _ in range(min(job.item_concurrency, len(groups))):
            tasks.create_task(worker())
    return sent


def _groups(todo: Sequence[int], items: Sequence[Any], size: int, result_key: str | None, *,
            refuse: Callable[[int, ItemError], None]) -> deque[list[int]]:
    """The requests' items, in order, up to ``size`` each; an item that cannot be encoded is refused (it fails
    alone); an item whose ``result_key`` (as text) is already in the group starts the next one. Greedy from each
    group's first item, so a resume (whose to-do is whole groups) makes the same requests, with the same keys."""
    bad = _unsendable_items(todo, items)
    groups: deque[list[int]] = deque()
    group: list[int] = []
    keys: set[str] = set()
    for position in todo:
        if position in bad:
            refuse(position, bad[position])
            continue
        item = items[position]
        key = str(item[result_key]) if result_key is not None and isinstance(item, dict) and result_key in item else None
        if len(group) == size or key in keys:
            groups.append(group)
            group, keys = [], set()
        group.append(position)
        if key is not None:
            keys.add(key)
    if group:
        groups.append(group)
    return groups


def _unsendable_items(todo: Sequence[int], items: Sequence[Any]) -> dict[int, ItemError]:
    """The items JSON cannot carry, by position: one encoding of them all, item by item only when it fails."""
    try:
        json_body([items[p] for p in todo])
        return {}
    except Exception:
        pass
    bad: dict[int, ItemError] = {}
    for position in todo:
        try:
            json_body(items[position])
        except Exception as exc:  # worded as the one-item path's bad_item (tasks/api/bulk.py)
            bad[position] = ItemError(f"the item's request cannot be built: {type(exc).__name__}: {exc}",
                                      category="bad_item")
    return bad


__all__ = ["ITEMS_PLACEHOLDER", "batch_request", "has_items_placeholder", "map_results", "result_error", "send_batches"]
