"""Multi-item requests (api_bulk batch_size): the mapping rules, then real runs against the loopback bulk
endpoint that takes at most N records, fails single records (207), retries flaky ones and answers bursts 429."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from flows.api_bulk import api_bulk
from tasks.api.multi import batch_request, map_results, result_error
from tasks.api.request_spec import RequestTemplate
from tasks.core.errors import ConfigError, ItemError, RetryableError
from tests.fixtures.api_server import ApiServer
from tests.tasks.api.loopback import raw_api

TEMPLATE = {"records": "{items}"}
FAST = {"retry_backoff_s": 0.01}


def test_the_request_carries_the_items_and_a_key_stable_for_the_same_items() -> None:
    t = RequestTemplate(method="POST", path_template="/bulk/x", json_template={"records": "{items}", "v": 2})
    a = batch_request(t, [{"id": 1}, {"id": 2}])
    assert a.json == {"records": [{"id": 1}, {"id": 2}], "v": 2} and a.url == "/bulk/x"
    assert a.headers["Idempotency-Key"] == batch_request(t, [{"id": 1}, {"id": 2}]).headers["Idempotency-Key"]
    assert a.headers["Idempotency-Key"] != batch_request(t, [{"id": 2}]).headers["Idempotency-Key"]


def test_results_by_order_by_key_and_what_cannot_be_mapped() -> None:
    body = {"data": {"results": [{"id": 2, "ok": 1}, {"id": 1, "ok": 1}]}}
    items = [{"id": 1}, {"id": 2}]
    assert map_results(body, items, results_path="data.results", result_key=None, shown="x") == body["data"]["results"]
    by_key = map_results(body, items, results_path="data.results", result_key="id", shown="x")
    assert [r["id"] for r in by_key] == [1, 2]
    missing = map_results(body, [{"id": 3}], results_path="data.results", result_key="id", shown="x")
    assert "no result with id=3" in str(result_error(missing[0]))
    with pytest.raises(ItemError, match="2 results for 3 records"):
        map_results(body, [*items, {"id": 3}], results_path="data.results", result_key=None, shown="x")
    with pytest.raises(ItemError, match=r"no 'data\.rows'"):
        map_results(body, items, results_path="data.rows", result_key=None, shown="x")
    with pytest.raises(ItemError, match="set results_path"):
        map_results(body, items, results_path=None, result_key=None, shown="x")


def test_which_results_are_errors() -> None:
    assert result_error({"id": 1, "status": 201}) is None and result_error("fine") is None
    assert isinstance(result_error({"status": 503, "error": "later"}), RetryableError)
    bad = result_error({"status": 422, "error": "invalid"})
    assert isinstance(bad, ItemError) and bad.category == "record_error" and "422: invalid" in str(bad)
    assert isinstance(result_error({"errors": ["x"]}), ItemError)


def test_a_record_error_carries_the_records_status_else_the_answers() -> None:
    assert result_error({"status": 422, "error": "invalid"}, status=207).status == 422  # type: ignore[union-attr]
    assert result_error({"errors": ["x"]}, status=207).status == 207  # type: ignore[union-attr]
    assert result_error({"status": 503}, status=207).status == 503  # type: ignore[union-attr]


def records(n: int, *, bad: set[int] = frozenset(), flaky: set[int] = frozenset()) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        r: dict[str, Any] = {"id": i, "name": f"rec-{i}"}
        if i in bad:
            r["bad"] = True
        if i in flaky:
            r["flaky"] = True
        out.append(r)
    return out


@pytest.mark.parametrize("by", ["order", "key"])
def test_bulk_endpoint_partial_failures_retries_and_bursts(api_server: ApiServer, tmp_path: Path, by: str) -> None:
    items = records(45, bad={4, 30}, flaky={7, 8, 41})
    order = "reversed" if by == "key" else "forward"
    s = api_bulk(items, base_url=api_server.url, method="POST", path_template=f"/bulk/run?max=10&burst_every=4&order={order}",
                 json_template=TEMPLATE, batch_size=10, results_path="data.results",
                 result_key="id" if by == "key" else None, chunk_size=20, item_concurrency=2, max_concurrency=2,
                 output=tmp_path / "out", min_success_ratio=0.9, **FAST)
    assert (s.total, s.succeeded, s.failed) == (45, 43, 2), s.render_text()
    dead = sorted(s.dead_letters(), key=lambda d: d["item"]["id"])
    assert [(d["item"], d["category"], d["status"]) for d in dead] == [
        (items[4], "record_error", 422), (items[30], "record_error", 422)]
    assert "422: invalid record" in dead[0]["message"]
    bulk = [r for r in api_server.requests if r.path == "/bulk/run"]
    assert all(len(__import__("json").loads(r.body)["records"]) <= 10 for r in bulk)
    seen = api_server.bulk_seen()
    assert {i: seen[i] for i in (7, 8, 41)} == {7: 2, 8: 2, 41: 2}  # flaky records sent again, alone
    assert all(seen[i] == 1 for i in range(45) if i not in (7, 8, 41))  # every other record accepted once
    rows = list(s.results())
    assert [r["item"]["id"] for r in rows] == [i for i in range(45) if i not in (4, 30)]
    assert all(r["body"]["id"] == r["item"]["id"] and r["status"] == 201 for r in rows)


def test_idempotency_keys_per_request_stay_the_same_on_retries_and_resume(api_server: ApiServer, tmp_path: Path) -> None:
    items = records(20)
    kwargs: dict[str, Any] = {"base_url": api_server.url, "method": "POST", "path_template": "/bulk/idem?max=5&burst_every=2",
                              "json_template": TEMPLATE, "batch_size": 5, "results_path": "data.results",
                              "chunk_size": 10, "run_key": "bulk-idem", **FAST}
    s = api_bulk(items, **kwargs)
    assert s.ok and s.succeeded == 20
    keys = Counter(r.headers["idempotency-key"] for r in api_server.requests)
    assert len(keys) == 4 and sum(keys.values()) == len(api_server.requests)  # a 429'd request kept its key
    again = api_bulk(items, **kwargs)
    assert again.chunks_resumed == 2 and len(api_server.requests) == sum(keys.values())


def test_a_whole_request_4xx_fails_its_records_and_bad_parameters_are_refused(api_server: ApiServer) -> None:
    s = api_bulk(records(12), base_url=api_server.url, method="POST", path_template="/bulk/small?max=3",
                 json_template=TEMPLATE, batch_size=4, results_path="data.results", raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed) == (0, 12) and api_server.count("/bulk/small") == 3
    assert {d["status"] for d in s.dead_letters()} == {413}
    with pytest.raises(ConfigError, match="use method POST"):
        api_bulk(records(1), base_url=api_server.url, json_template=TEMPLATE, batch_size=4)
    with pytest.raises(ConfigError, match='single placeholder "\\{items\\}"'):
        api_bulk(records(1), base_url=api_server.url, method="POST", path_template="/b", json_template={"r": "{id}"},
                 batch_size=4)
    with pytest.raises(ConfigError, match="one path for every request"):
        api_bulk(records(1), base_url=api_server.url, method="POST", json_template=TEMPLATE, batch_size=4)
    with pytest.raises(ConfigError, match="set batch_size too"):
        api_bulk(records(1), base_url=api_server.url, results_path="data")


def test_a_key_held_twice_is_ambiguous_and_fails_those_records_only() -> None:
    body = [{"id": 1, "status": 201}, {"id": 1, "status": 422}, {"id": 2, "status": 201}]
    mapped = map_results(body, [{"id": 1}, {"id": 2}], results_path=None, result_key="id", shown="x")
    error = result_error(mapped[0], status=207)
    assert isinstance(error, ItemError) and error.category == "result_key_ambiguous"
    assert "id=1 is held by 2 results" in str(error) and error.status == 207  # type: ignore[attr-defined]
    assert result_error(mapped[1]) is None
    twice = map_results([{"id": 3, "status": 201}], [{"id": 3}, {"id": "3"}], results_path=None, result_key="id",
                        shown="x")
    assert [result_error(r).category for r in twice] == ["result_key_ambiguous"] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "error"), [
    ("422", ItemError), (" 404 ", ItemError), (400.0, ItemError), ("400.0", ItemError), ("503", RetryableError),
    (503.0, RetryableError), ("201", None), (200.0, None), ("created", None), (True, None), (400.5, None), ("", None)])
def test_a_records_status_counts_as_a_number_whatever_its_json_type(status: Any, error: type | None) -> None:
    for field in ("status", "status_code"):
        found = result_error({field: status, "message": "m"}, status=207)
        assert (found is None) if error is None else isinstance(found, error), (field, status, found)
        if found is not None:
            assert found.status == int(float(status))  # type: ignore[attr-defined]


def _keyed_bulk(request: Any) -> tuple[int, dict[str, str], Any]:
    records = json.loads(request.body)["records"]
    return 207, {}, {"results": [{"email": r["email"], "status": 422 if r["n"] < 0 else 201} for r in records]}


@pytest.mark.parametrize("bad_first", [True, False])
def test_items_sharing_a_result_key_go_in_separate_requests(tmp_path: Path, bad_first: bool) -> None:
    a_bad, a_good = {"email": "a", "n": -1}, {"email": "a", "n": 2}
    items = [a_bad if bad_first else a_good, {"email": "b", "n": 1}, a_good if bad_first else a_bad, {"email": "c", "n": 3}]
    with raw_api(_keyed_bulk) as (url, seen):
        s = api_bulk(items, base_url=url, method="POST", path_template="/bulk", json_template=TEMPLATE, batch_size=10,
                     results_path="results", result_key="email", output=tmp_path / "out", raise_on_failure=False, **FAST)
    assert sorted([r["email"] for r in json.loads(q.body)["records"]] for q in seen) == [["a", "b"], ["a", "c"]]
    assert (s.succeeded, s.failed) == (3, 1)
    assert [(d["item"], d["category"], d["status"]) for d in s.dead_letters()] == [(a_bad, "record_error", 422)]
    assert sorted(r["item"]["n"] for r in s.results()) == [1, 2, 3]


def test_an_item_json_cannot_carry_fails_alone_and_its_neighbours_are_sent(tmp_path: Path) -> None:
    items = [{"email": "a"}, {"email": "b", "v": float("nan")}, {"email": "c"}, {"email": "d", "v": date(2026, 1, 1)},
             {"email": "e"}, {"email": "f"}]
    with raw_api(lambda q: (200, {}, {"results": [{"email": r["email"], "status": 201}
                                                  for r in json.loads(q.body)["records"]]})) as (url, seen):
        s = api_bulk(items, base_url=url, method="POST", path_template="/bulk", json_template=TEMPLATE, batch_size=3,
                     results_path="results", result_key="email", raise_on_failure=False, **FAST)
    assert sorted([r["email"] for r in json.loads(q.body)["records"]] for q in seen) == [["a", "c", "e"], ["f"]]
    assert (s.succeeded, s.failed) == (4, 2)
    dead = sorted(s.dead_letters(), key=lambda d: d["item"]["email"])
    assert [(d["item"]["email"], d["category"], d["attempts"]) for d in dead] == [("b", "bad_item", 0), ("d", "bad_item", 0)]
    assert dead[0]["message"] == "the item's request cannot be built: ValueError: Out of range float values are not JSON compliant"
    assert dead[1]["message"] == "the item's request cannot be built: TypeError: Object of type date is not JSON serializable"
