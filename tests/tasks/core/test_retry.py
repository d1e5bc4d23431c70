from __future__ import annotations

import errno
import sqlite3

import httpx
import pytest

from tasks.core.errors import FatalError, ItemError, RetryableError, SkipItem
from tasks.core.retry import RetryPolicy, attempts_made, is_transient


class Clock:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def failing(times: int, exc: Exception):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return "ok"

    return fn, calls


def test_retries_then_succeeds_and_counts_attempts() -> None:
    clock = Clock()
    fn, calls = failing(2, ConnectionError("reset"))
    result = RetryPolicy(retries=3, backoff_s=1.0, sleep=clock.sleep).call(fn)
    assert result == ("ok", 3)
    assert calls["n"] == 3
    assert len(clock.sleeps) == 2
    assert all(0 <= s <= 2.0 for s in clock.sleeps)


def test_gives_up_after_retries_with_the_attempt_count() -> None:
    fn, calls = failing(99, ConnectionResetError("reset by peer"))
    with pytest.raises(ConnectionResetError) as info:
        RetryPolicy(retries=2, backoff_s=0, sleep=lambda _s: None).call(fn)
    assert calls["n"] == 3
    assert attempts_made(info.value) == 3


@pytest.mark.parametrize("exc", [KeyError("id"), TypeError("unsupported operand"), ValueError("bad literal")])
def test_bugs_fail_at_once_by_default_and_are_retried_with_retry_on_any(exc: Exception) -> None:
    """A handler bug is not transient: one attempt, no backoff; retry_on='any' restores retrying it."""
    fn, calls = failing(99, exc)
    with pytest.raises(type(exc)) as info:
        RetryPolicy(retries=3, backoff_s=0, sleep=lambda _s: None).call(fn)
    assert calls["n"] == 1 and attempts_made(info.value) == 1
    fn, calls = failing(99, exc)
    with pytest.raises(type(exc)):
        RetryPolicy(retries=3, backoff_s=0, retry_on="any", sleep=lambda _s: None).call(fn)
    assert calls["n"] == 4


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = _Response(status_code)


@pytest.mark.parametrize(("exc", "transient"), [
    (RetryableError("later"), True), (TimeoutError(), True), (ConnectionRefusedError(), True),
    (OSError(errno.ENETUNREACH, "unreachable"), True), (_HttpError(503), True), (_HttpError(429), True),
    (_HttpError(404), False), (OSError(errno.ENOENT, "no such file"), False), (KeyError("k"), False),
    (sqlite3.OperationalError("database is locked"), True), (sqlite3.OperationalError("no such table: t"), False),
    (sqlite3.OperationalError('near "SELCT": syntax error'), False), (httpx.ConnectError("refused"), True),
    (httpx.ReadTimeout("slow"), True), (ValueError("bad"), False),
])
def test_transient_failures_are_told_apart_from_bugs(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient

@pytest.mark.parametrize("exc", [ItemError("bad"), SkipItem("skip"), FatalError("stop")])
def test_permanent_errors_are_not_retried(exc: Exception) -> None:
    fn, calls = failing(99, exc)
    with pytest.raises(type(exc)):
        RetryPolicy(retries=5, sleep=lambda _s: None).call(fn)
    assert calls["n"] == 1


def test_retry_after_wins_over_backoff() -> None:
    clock = Clock()
    fn, _ = failing(2, RetryableError("429", retry_after=7.5))
    RetryPolicy(retries=3, backoff_s=0.001, sleep=clock.sleep).call(fn)
    assert clock.sleeps == [7.5, 7.5]


def test_retry_after_is_capped() -> None:
    clock = Clock()
    fn, _ = failing(1, RetryableError("429", retry_after=10_000))
    RetryPolicy(retries=1, max_retry_after_s=30, sleep=clock.sleep).call(fn)
    assert clock.sleeps == [30]


async def _async_ok() -> str:
    return "ok"


def test_async_call() -> None:
    import asyncio

    assert asyncio.run(RetryPolicy().acall(_async_ok)) == ("ok", 1)


def test_async_retries_with_the_same_budget() -> None:
    import asyncio

    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RetryableError("503", retry_after=0)
        return "ok"

    async def no_sleep(_s: float) -> None:
        return None

    assert asyncio.run(RetryPolicy(retries=3, async_sleep=no_sleep).acall(flaky)) == ("ok", 3)
    calls["n"] = -10
    with pytest.raises(RetryableError) as info:
        asyncio.run(RetryPolicy(retries=2, async_sleep=no_sleep).acall(flaky))
    assert attempts_made(info.value) == 3
