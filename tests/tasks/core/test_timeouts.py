"""Deadline: sync calls abandoned past their limit, async calls cancelled, the handler's own TimeoutError kept."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tasks.core import timeouts
from tasks.core.errors import ChunkTimeout, FatalError, ItemTimeout
from tasks.core.retry import is_retryable
from tasks.core.timeouts import Deadline, abandoned_calls

release = threading.Event()


@pytest.fixture(autouse=True)
def _release_hung_calls() -> object:
    release.clear()
    yield
    release.set()  # lets every abandoned call of the test end


def test_no_limits_calls_directly_in_this_thread() -> None:
    d = Deadline(item_timeout_s=None, chunk_timeout_s=None, chunk=0)
    assert not d.active and d.call(lambda: threading.current_thread().name) == threading.current_thread().name


def test_a_hung_sync_call_is_abandoned_as_an_item_timeout_and_is_retryable() -> None:
    d = Deadline(item_timeout_s=0.05, chunk_timeout_s=None, chunk=3)
    before = abandoned_calls()
    with pytest.raises(ItemTimeout, match=r"item_timeout_s=0\.05s") as err:
        d.call(release.wait)
    assert err.value.category == "timeout" and is_retryable(err.value, "transient")
    assert abandoned_calls() == before + 1
    assert d.call(lambda: 42) == 42
    with pytest.raises(KeyError):
        d.call(lambda: {}["missing"])  # the handler's own errors come through unchanged


def test_the_chunk_deadline_binds_when_it_is_nearer_and_is_never_retried_per_item() -> None:
    d = Deadline(item_timeout_s=60, chunk_timeout_s=0.05, chunk=7)
    with pytest.raises(ChunkTimeout, match=r"chunk 7 did not finish within chunk_timeout_s=0\.05s") as err:
        d.call(release.wait)
    assert not is_retryable(err.value, "any")
    assert d.passed()
    with pytest.raises(ChunkTimeout):
        d.call(lambda: 1)  # nothing starts after the deadline


def test_async_calls_are_cancelled_and_their_own_timeout_error_kept() -> None:
    d = Deadline(item_timeout_s=0.05, chunk_timeout_s=None, chunk=0)
    cancelled = []

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def own() -> None:
        raise TimeoutError("the handler's own")

    with pytest.raises(ItemTimeout):
        asyncio.run(d.acall(hang))
    assert cancelled == [True]
    with pytest.raises(TimeoutError, match="the handler's own"):
        asyncio.run(d.acall(own))


def test_too_many_stuck_calls_stop_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeouts, "MAX_ABANDONED", abandoned_calls() + 1)
    d = Deadline(item_timeout_s=0.02, chunk_timeout_s=None, chunk=0)
    with pytest.raises(ItemTimeout):
        d.call(release.wait)
    with pytest.raises(FatalError, match="still running past their timeout"):
        d.call(release.wait)
