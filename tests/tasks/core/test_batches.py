"""Batch handlers (per="batch") end to end through batch_map: per-item outcomes from one call, retries of
only the items that need them, whole-call errors, wrong returns, max_batch_items, async, stop and resume."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from flows.batch_map import batch_map
from tasks.core.errors import ConfigError, FatalError, ItemError, RetryableError, SkipItem
from tasks.core.flowdef import RunFailed

calls: list[list[Any]] = []
lock = threading.Lock()
seen_fail: set[Any] = set()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()
    seen_fail.clear()


def _log(items: list[Any]) -> None:
    with lock:
        calls.append(list(items))


def mixed_batch(items: list[int]) -> list[Any]:
    """x % 10: 3 -> skipped, 5 -> failed at once, 7 -> transient once then fine, else x * 2."""
    _log(items)
    out: list[Any] = []
    for x in items:
        if x % 10 == 3:
            out.append(SkipItem("nothing to do"))
        elif x % 10 == 5:
            out.append(ItemError(f"record {x} refused", category="rejected"))
        elif x % 10 == 7 and x not in seen_fail:
            seen_fail.add(x)
            out.append(RetryableError("busy"))
        else:
            out.append(x * 2)
    return out


async def amixed_batch(items: list[int]) -> list[Any]:
    return mixed_batch(items)


def test_one_call_per_chunk_gives_every_item_its_own_outcome(tmp_path: Any) -> None:
    s = batch_map(list(range(20)), mixed_batch, per="batch", chunk_size=10, retry_backoff_s=0.01,
                  output=str(tmp_path / "out"), min_success_ratio=0.5)
    assert (s.total, s.succeeded, s.failed, s.skipped) == (20, 16, 2, 2)
    assert sorted(map(len, calls)) == [1, 1, 10, 10]  # each chunk once, then only its transient item again
    assert sorted(c[0] for c in calls if len(c) == 1) == [7, 17]
    dead = sorted(s.dead_letters(), key=lambda d: d["item"])
    assert [(d["item"], d["category"], d["attempts"]) for d in dead] == [(5, "rejected", 1), (15, "rejected", 1)]
    expected = [x for x in range(20) if x % 10 not in (3, 5)]
    assert [(r["item"], r["result"]) for r in s.results()] == [(x, x * 2) for x in expected]


def test_max_batch_items_and_concurrent_calls_and_async() -> None:
    s = batch_map(list(range(10)), mixed_batch, per="batch", chunk_size=10, max_batch_items=3, item_concurrency=2,
                  retry_backoff_s=0.01, min_success_ratio=0.5)
    assert (s.succeeded, s.failed, s.skipped) == (8, 1, 1)
    assert sorted(map(len, calls)) == [1, 1, 3, 3, 3]  # 3+3+3+1, then item 7 again
    calls.clear()
    seen_fail.clear()
    a = batch_map(list(range(10)), amixed_batch, per="batch", chunk_size=5, max_batch_items=2, item_concurrency=3,
                  retry_backoff_s=0.01, min_success_ratio=0.5)
    assert (a.succeeded, a.failed, a.skipped) == (8, 1, 1)
    assert sorted(map(len, calls)) == [1, 1, 1, 2, 2, 2, 2]


_raised_once: set[int] = set()


def flaky_whole_call(items: list[int]) -> list[int]:
    _log(items)
    if items[0] not in _raised_once:
        _raised_once.add(items[0])
        raise ConnectionResetError("the bulk endpoint dropped the connection")
    return [x + 1 for x in items]


def refused_whole_call(items: list[int]) -> list[int]:
    raise ItemError("batch refused: schema v2 expected", category="schema")


def test_an_exception_raised_by_the_call_retries_the_whole_batch_then_fails_each_item() -> None:
    _raised_once.clear()
    s = batch_map(list(range(6)), flaky_whole_call, per="batch", chunk_size=3, retry_backoff_s=0.01)
    assert s.ok and s.succeeded == 6 and sorted(map(len, calls)) == [3, 3, 3, 3]
    bad = batch_map(list(range(6)), refused_whole_call, per="batch", chunk_size=3, raise_on_failure=False)
    assert (bad.succeeded, bad.failed) == (0, 6)
    assert {(d["category"], d["attempts"]) for d in bad.dead_letters()} == {("schema", 1)}


def short_answer(items: list[int]) -> list[int]:
    return items[:-1]


def test_a_wrong_length_return_fails_the_chunk_and_says_what_came_back() -> None:
    s = batch_map(list(range(6)), short_answer, per="batch", chunk_size=3, chunk_retries=0, raise_on_failure=False)
    assert (s.succeeded, s.failed, s.chunks_failed) == (0, 6, 2)
    dead = list(s.dead_letters())
    assert "returned a list of 2 entries for a batch of 3 items" in dead[0]["message"]


_fatal_once = threading.Event()


def stop_at_13(items: list[int]) -> list[Any]:
    _log(items)
    out: list[Any] = []
    for x in items:
        if x == 13 and not _fatal_once.is_set():
            _fatal_once.set()
            out.append(FatalError("credentials revoked"))
        else:
            out.append(x)
    return out


def test_a_fatal_entry_stops_the_run_and_the_rerun_does_only_the_rest() -> None:
    _fatal_once.clear()
    kwargs: dict[str, Any] = {"per": "batch", "chunk_size": 10, "max_batch_items": 5, "max_concurrency": 1,
                              "run_key": "batch-fatal"}
    with pytest.raises(RunFailed, match="credentials revoked") as err:
        batch_map(list(range(30)), stop_at_13, **kwargs)
    first = err.value.summary
    assert (first.succeeded, first.failed, first.remaining) == (14, 1, 15)
    done_first = [x for c in calls for x in c if x != 13]
    calls.clear()
    again = batch_map(list(range(30)), stop_at_13, **kwargs)
    assert again.ok and again.succeeded == 30
    redone = [x for c in calls for x in c]
    assert sorted(redone + done_first) == list(range(30))  # every item handled exactly once overall, 13 twice
    assert 13 in redone and not set(redone) & set(done_first)


def test_max_batch_items_needs_per_batch() -> None:
    with pytest.raises(ConfigError, match="max_batch_items is for per='batch'"):
        batch_map([1], mixed_batch, max_batch_items=3)


def short_unless_first(items: list[int]) -> list[int]:
    return items if items[0] == 0 else items[:-1]


def test_chunks_all_failing_the_same_way_stop_the_run_unless_one_succeeded() -> None:
    s = batch_map(list(range(100)), short_answer, per="batch", chunk_size=10, max_concurrency=1, chunk_retries=0,
                  raise_on_failure=False)
    assert s.chunks_failed == 3 and s.failed == 30 and s.remaining == 70, s.render_text()
    assert "the first 3 chunks all failed the same way" in s.message and "Rerun with run_key" in s.message
    ok_first = batch_map(list(range(100)), short_unless_first, per="batch", chunk_size=10, max_concurrency=1,
                         chunk_retries=0, raise_on_failure=False)
    assert ok_first.chunks_failed == 9 and ok_first.succeeded == 10 and ok_first.remaining == 0  # it works at all
