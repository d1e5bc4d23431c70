"""Async iterables as sources: every item once and in order, bounded memory, slow sources not held back,
errors named, early stops close the async generator on its own loop; then through batch_map."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from flows.batch_map import batch_map
from tasks.core import async_source
from tasks.core.errors import SourceError
from tasks.core.sources import open_source


async def numbers(n: int, produced: list[int] | None = None) -> AsyncIterator[int]:
    for i in range(n):
        if produced is not None:
            produced.append(i)
        if i % 5000 == 0:
            await asyncio.sleep(0)
        yield i


def test_every_item_once_in_order_with_the_producer_kept_close_to_the_reader() -> None:
    """1M items: the producer never runs more than DEPTH batches ahead, so memory stays bounded at any size."""
    produced: list[int] = []
    it = open_source(numbers(1_000_000, produced), input_format=None).iterate()
    seen = 0
    for i, item in enumerate(it):
        assert item == i
        seen += 1
        if i % 250_000 == 50_000:  # the producer is at most DEPTH batches (plus one being filled) ahead
            time.sleep(0.2)
            assert len(produced) - i <= (async_source.DEPTH + 2) * async_source.BATCH
    assert seen == 1_000_000


def test_a_slow_source_hands_over_what_it_has() -> None:
    """The second item is produced only after the reader got the first: a pump that waited for a full
    batch would never hand the first over (the test would hang until pytest's timeout)."""
    got_first = threading.Event()

    async def slow() -> AsyncIterator[str]:
        yield "first"
        while not got_first.is_set():
            await asyncio.sleep(0.01)
        yield "second"

    it = open_source(slow(), input_format=None).iterate()
    assert next(it) == "first"
    got_first.set()
    assert list(it) == ["second"]


def test_errors_are_source_errors_and_early_stops_close_the_generator() -> None:
    closed = threading.Event()

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ValueError("cursor lost")

    async def tracked() -> AsyncIterator[int]:
        try:
            for i in range(10**9):
                yield i
        finally:
            closed.set()

    it = open_source(broken(), input_format=None).iterate()
    with pytest.raises(SourceError, match="raised ValueError: cursor lost"):
        list(it)
    it2 = open_source(tracked(), input_format=None).iterate()
    assert [next(it2) for _ in range(3)] == [0, 1, 2]
    it2.close()
    assert closed.wait(5)


def double(x: int) -> int:
    return x * 2


def test_batch_map_streams_an_async_generator_and_a_callable_returning_one() -> None:
    s = batch_map(numbers(5_000), double, chunk_size=1000, collect=True)
    assert s.ok and s.total == 5_000 and [r["result"] for r in s.collected] == [i * 2 for i in range(5_000)]
    again = batch_map(lambda: numbers(300), double, chunk_size=100)
    assert again.ok and again.total == 300
