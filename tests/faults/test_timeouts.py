"""Handlers that hang forever: item_timeout_s and chunk_timeout_s end the run anyway, counts add up, nothing
done is lost, and the rerun with the same run_key runs only what did not finish (pytest-timeout is the bound:
a run that waited on a hung call would never end)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.api_extract import api_extract
from flows.batch_map import batch_map
from flows.replay import replay_dead_letters
from tasks.core.outcomes import RunSummary
from tests.fixtures.api_server import DATASET_SIZE, ApiServer

release = threading.Event()
calls: Counter[int] = Counter()
calls_lock = threading.Lock()
HUNG = {3, 11}


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    release.clear()
    calls.clear()
    yield
    release.set()  # the abandoned calls end with the test


def _count(item: int) -> None:
    with calls_lock:
        calls[item] += 1


def hang_on_some(item: int) -> int:
    _count(item)
    if item in HUNG and not release.is_set():
        release.wait()
    return item * 2


async def ahang_on_some(item: int) -> int:
    _count(item)
    if item in HUNG and not release.is_set():
        await asyncio.Event().wait()
    return item * 2


def hang_from_five(item: int) -> int:
    _count(item)
    if item >= 5 and not release.is_set():
        release.wait()
    return item * 2


def adds_up(s: RunSummary) -> None:
    assert s.succeeded + s.failed + s.skipped == s.total, s.render_text()


@pytest.mark.parametrize(("handler", "item_concurrency"), [(hang_on_some, 1), (hang_on_some, 4), (ahang_on_some, 4)])
def test_item_timeout_fails_only_the_hung_items_after_their_retries(handler: Any, item_concurrency: int) -> None:
    s = batch_map(list(range(16)), handler, chunk_size=4, max_concurrency=2, item_concurrency=item_concurrency,
                  item_timeout_s=0.3, retries=1, retry_backoff_s=0.01, raise_on_failure=False, run_key="hung-items")
    adds_up(s)
    assert (s.succeeded, s.failed) == (14, 2)
    dead = list(s.dead_letters())
    assert sorted(d["item"] for d in dead) == sorted(HUNG)
    assert {d["category"] for d in dead} == {"timeout"} and {d["attempts"] for d in dead} == {2}
    assert all("item_timeout_s=0.3s" in d["message"] for d in dead)
    assert {i: calls[i] for i in HUNG} == dict.fromkeys(HUNG, 2) and all(calls[i] == 1 for i in range(16) if i not in HUNG)
    again = batch_map(list(range(16)), handler, chunk_size=4, max_concurrency=2, item_concurrency=item_concurrency,
                      item_timeout_s=0.3, retries=1, retry_backoff_s=0.01, run_key="hung-items",
                      raise_on_failure=False)
    assert again.chunks_resumed == 4 and sum(calls.values()) == 18  # failed items are done: nothing ran again
    release.set()  # the cause is fixed: the dead letters are replayed, and pass
    replayed = replay_dead_letters(s.dead_letter_path, handler=handler, item_timeout_s=0.3)
    assert replayed.ok and replayed.succeeded == 2
    assert {i: calls[i] for i in HUNG} == dict.fromkeys(HUNG, 3)


@pytest.mark.parametrize("item_concurrency", [1, 3])
def test_chunk_timeout_keeps_finished_items_retries_the_rest_then_dead_letters_them(item_concurrency: int) -> None:
    kwargs: dict[str, Any] = {"chunk_size": 10, "max_concurrency": 1, "item_concurrency": item_concurrency,
                              "chunk_timeout_s": 1.0, "chunk_retries": 1, "run_key": f"hung-chunk-{item_concurrency}"}
    s = batch_map(list(range(10)), hang_from_five, **kwargs, raise_on_failure=False)
    adds_up(s)
    assert (s.total, s.succeeded, s.failed) == (10, 5, 5) and not s.ok
    dead = list(s.dead_letters())
    assert sorted(d["item"] for d in dead) == [5, 6, 7, 8, 9]
    assert {d["category"] for d in dead} == {"timeout"}
    assert all("chunk_timeout_s=1s" in d["message"] for d in dead), dead[0]
    assert all(calls[i] == 1 for i in range(5))  # the retry of the chunk did not run the finished items again
    assert calls[5] == 2  # the first hung item started once per attempt
    release.set()
    done_before = sum(calls.values())
    again = batch_map(list(range(10)), hang_from_five, **kwargs)
    assert again.ok and again.succeeded == 10
    assert sum(calls.values()) - done_before == 5 and all(calls[i] == 1 for i in range(5))


def slow_item(item: int) -> int:
    _count(item)
    time.sleep(0.05)
    return item


def test_run_timeout_stops_the_run_gracefully_and_the_rerun_finishes_exactly_once() -> None:
    kwargs: dict[str, Any] = {"chunk_size": 10, "max_concurrency": 2, "run_key": "bounded-run"}
    s = batch_map(list(range(200)), slow_item, run_timeout_s=1.0, **kwargs, raise_on_failure=False)
    adds_up(s)
    assert not s.ok and "run_timeout_s=1s passed" in s.message and "Rerun with run_key='bounded-run'" in s.message
    assert s.remaining and s.remaining > 0 and s.succeeded + s.remaining == 200 and s.failed == 0
    again = batch_map(list(range(200)), slow_item, **kwargs)
    assert again.ok and again.succeeded == 200
    assert sorted(calls) == list(range(200)) and set(calls.values()) == {1}  # nothing twice, nothing missing


def test_a_run_past_its_timeout_waiting_for_a_call_that_does_not_return_says_why(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A handler call that never returns keeps a timed-out run waiting (a running call cannot be stopped): the
    run said nothing after its timeout warning; now it names the cause and item_timeout_s."""
    from tasks.core import run as run_module

    monkeypatch.setattr(run_module, "STILL_RUNNING_S", 0.5)

    def stuck_then_done(item: int) -> int:
        time.sleep(2.5 if item == 0 else 0)  # "never" returns, for this test's purpose
        return item

    s = batch_map(list(range(20)), stuck_then_done, chunk_size=10, max_concurrency=1, run_timeout_s=0.5,
                  run_key="stuck-call", raise_on_failure=False)
    assert not s.ok and "run_timeout_s=0.5s passed" in s.message
    assert "passed 0.5 s ago and chunks are still in flight: a handler call that does not return" in caplog.text
    assert "Bound each call with item_timeout_s" in caplog.text


def test_api_extract_run_timeout_keeps_the_checkpoint(api_server: ApiServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"output": out, "page_size": 10, "pages_per_part": 1, "run_key": "slow-pages"}
    s = api_extract(f"{api_server.url}/pages/offset?delay=0.2", run_timeout_s=1.0, **kwargs, raise_on_failure=False)
    assert not s.ok and "run_timeout_s=1s passed" in s.message and "continue from page" in s.message
    again = api_extract(f"{api_server.url}/pages/offset?delay=0.2", **kwargs)
    assert again.ok and again.succeeded == DATASET_SIZE
    ids = [json.loads(line)["id"] for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert ids == list(range(DATASET_SIZE))


def test_a_server_that_never_answers_fails_its_items_by_timeout_and_the_run_ends(api_server: ApiServer) -> None:
    from flows.api_bulk import api_bulk

    items = [{"path": f"/ok/{i}"} for i in range(6)] + [{"path": "/slow/hung?delay=3600"}]
    s = api_bulk(items, base_url=api_server.url, timeout_s=0.5, retries=1, retry_backoff_s=0.01, chunk_size=4,
                 raise_on_failure=False)
    adds_up(s)
    assert (s.succeeded, s.failed) == (6, 1)
    [dead] = list(s.dead_letters())
    assert dead["item"] == items[-1] and dead["category"] == "http_timeout" and dead["attempts"] == 2
    assert "timed out" in dead["message"] or "took longer than" in dead["message"], dead["message"]


def test_api_bulk_chunk_timeout_keeps_the_answered_requests_and_the_rerun_sends_the_rest(api_server: ApiServer) -> None:
    from flows.api_bulk import api_bulk

    items = [{"path": f"/ok/{i}"} for i in range(4)] + [{"path": f"/slow/s{i}?delay=3"} for i in range(4, 8)]
    kwargs: dict[str, Any] = {"base_url": api_server.url, "chunk_size": 8, "item_concurrency": 1, "retry_backoff_s": 0.01,
                              "run_key": "slow-chunk", "timeout_s": 60}
    s = api_bulk(items, chunk_timeout_s=1.0, chunk_retries=0, raise_on_failure=False, **kwargs)
    adds_up(s)
    assert (s.succeeded, s.failed) == (4, 4), s.render_text()
    assert {d["category"] for d in s.dead_letters()} == {"timeout"}
    assert all("chunk_timeout_s=1s" in d["message"] for d in s.dead_letters())
    again = api_bulk(items, **kwargs)  # no chunk limit now: the slow requests get their 3 s
    assert again.ok and again.succeeded == 8
    assert all(api_server.count(f"/ok/{i}") == 1 for i in range(4))  # answered before the timeout: never resent
