"""tasks/ratelimit.py: the token bucket on a fake clock, then measured against the rate-enforcing endpoint."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from tasks.api.client import RequestSpec, make_client, send
from tasks.core.errors import ConfigError
from tasks.core.ratelimit import TokenBucket
from tasks.core.retry import RetryPolicy
from tests.fixtures.api_server import ApiServer


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sends: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def sleep_sync(self, seconds: float) -> None:
        self.now += seconds


def _bucket(clock: FakeClock, rate: float = 10, **kw: float) -> TokenBucket:
    return TokenBucket(rate, clock=clock, sleep=clock.sleep, sleep_sync=clock.sleep_sync, **kw)


def test_sends_are_evenly_spaced_without_burst():
    clock = FakeClock()
    bucket = _bucket(clock, rate=10)

    async def go() -> list[float]:
        times = []
        for _ in range(21):
            await bucket.acquire()
            times.append(clock.now)
        return times

    times = asyncio.run(go())
    assert times[0] == 100.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(0.1) for gap in gaps)


def test_burst_capacity_after_idle_is_small():
    clock = FakeClock()
    bucket = _bucket(clock, rate=10, burst=3)
    clock.now += 60  # idle for a minute: still only `burst` tokens at once
    waits = [bucket.acquire_sync() for _ in range(5)]
    assert waits[:3] == [0, 0, 0] and waits[3] == pytest.approx(0.1) and waits[4] == pytest.approx(0.1)


def test_late_wakeups_never_put_more_than_the_limit_in_a_second():
    """Many waiters book evenly spaced slots; some wake late (a busy loop) and send next to on-time ones.

    Simulated with the bucket's own booking and commit steps on a fake clock: the waiters booked in
    the last 0.4 s of the first second wake 0.45 s late, in the next second, whose own waiters are
    on time.
    """
    import heapq

    clock = FakeClock()
    bucket = _bucket(clock, rate=10)
    booked = [bucket._reserve(1)[0] + clock.now for _ in range(40)]  # 40 waiters: 100.0, 100.1, ... 103.9
    wakeups = [(t + (0.45 if 100.55 < t < 100.95 else 0.0), i) for i, t in enumerate(booked)]
    heapq.heapify(wakeups)
    sends: list[float] = []
    while wakeups:
        clock.now, i = heapq.heappop(wakeups)
        late = bucket._commit(1)
        if late > 0:
            heapq.heappush(wakeups, (clock.now + late, i))
        else:
            sends.append(clock.now)
    assert len(sends) == 40
    per_second: dict[int, int] = {}
    for t in sends:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    assert max(per_second.values()) <= 10, per_second  # without the send window: 14 in second 101
    sends.sort()
    assert min(b - a for a, b in zip(sends, sends[10:], strict=False)) >= 1.0 - 1e-6  # sliding windows too


def test_aimd_cuts_escalate_while_429s_keep_coming_and_recovery_probes_slowly_past_the_last_429():
    clock = FakeClock()
    bucket = _bucket(clock, rate=100, recovery_per_second=10, decrease_cooldown_s=1.0)
    bucket.on_throttle()  # a lone 429 after a quiet spell: a gentle 10 % cut
    assert bucket.current_rate() == pytest.approx(90)
    bucket.on_throttle()  # same burst of 429s: within the cooldown, no second cut
    assert bucket.current_rate() == pytest.approx(90)
    clock.now += 0.5
    assert bucket.current_rate() == pytest.approx(95)  # fast (10/s) up to 95 % of the rate that drew the 429
    clock.now += 1
    assert bucket.current_rate() == pytest.approx(96)  # then a tenth as fast
    bucket.on_throttle()  # again within the streak: 30 %
    assert bucket.current_rate() == pytest.approx(67.2)
    clock.now += 1
    assert bucket.current_rate() == pytest.approx(77.2)
    bucket.on_throttle()  # and again: halving from now on
    assert bucket.current_rate() == pytest.approx(38.6)
    clock.now += 1
    bucket.on_throttle()
    assert bucket.current_rate() == pytest.approx(24.3)
    clock.now += 100
    assert bucket.current_rate() == 100  # never above the configured limit
    bucket.on_throttle()  # a quiet spell resets the streak: gentle again
    assert bucket.current_rate() == pytest.approx(90)
    assert bucket.stats().decreases == 5 and bucket.stats().throttled == 6


def test_a_server_far_below_our_limit_is_found_within_a_few_cuts():
    clock = FakeClock()
    bucket = _bucket(clock, rate=500, decrease_cooldown_s=1.0)
    rates = []
    while not rates or rates[-1] > 100:  # the server allows 100/s: it answers 429 every second until we are there
        bucket.on_throttle(retry_after=1)
        rates.append(bucket.current_rate())
        clock.now += 1
    assert len(rates) <= 5, rates


def test_retry_after_pauses_every_user_of_the_bucket():
    clock = FakeClock()
    bucket = _bucket(clock, rate=10, decrease_cooldown_s=0)

    async def go() -> list[float]:
        await bucket.acquire()
        bucket.on_throttle(retry_after=5)
        starts = []
        for _ in range(3):
            await bucket.acquire()
            starts.append(clock.now)
        return starts

    starts = asyncio.run(go())
    assert starts[0] >= 105.0
    assert starts[1] - starts[0] == pytest.approx(1 / 9)  # at the rate cut by 10 %


def test_thread_safe_no_token_given_twice():
    bucket = TokenBucket(400)
    sent: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            bucket.acquire_sync()
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(sent) == 100
    assert elapsed >= 99 / 400 * 0.95  # 100 tokens at 400/s cannot take less than ~0.25 s


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_rate_is_config_error(bad: float):
    with pytest.raises(ConfigError, match="rate_per_second"):
        TokenBucket(bad)


def test_measured_rate_stays_within_server_limit(api_server: ApiServer):
    """60/s against a server enforcing 60/s per wall second with 32 requests in flight: no 429."""
    api_server.reset(rate_limit_per_second=60)
    bucket = TokenBucket(60)
    n = 150

    async def go() -> float:
        async with make_client(api_server.url, limiter=bucket) as client:
            sem = asyncio.Semaphore(32)
            policy = RetryPolicy(retries=5, backoff_s=0.01)

            async def one(i: int) -> None:
                async with sem:
                    await policy.acall(lambda: send(client, RequestSpec("GET", f"/limited/{i}")))

            started = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.monotonic() - started

    asyncio.run(go())
    rejected = sum(api_server.limited_rejected().values())
    counts = api_server.limited_counts()
    assert sum(counts.values()) == n
    assert max(counts.values()) <= 60
    assert rejected <= 1  # <= 1 % of requests
    # how close to the limit the bucket gets is measured by bench/api_bulk.py (a lower bound on speed here
    # would fail on a loaded machine, which says nothing about the bucket)


def test_aimd_reacts_to_429_from_the_server(api_server: ApiServer):
    """Asking for 100/s from a server allowing 30/s: 429s make the bucket slow down, items all succeed."""
    api_server.reset(rate_limit_per_second=30)
    bucket = TokenBucket(100, recovery_per_second=5)

    async def go() -> None:
        async with make_client(api_server.url, limiter=bucket) as client:
            sem = asyncio.Semaphore(16)
            policy = RetryPolicy(retries=10, backoff_s=0.05)

            async def one(i: int) -> None:
                async with sem:
                    await policy.acall(lambda: send(client, RequestSpec("GET", f"/limited/{i}")))

            await asyncio.gather(*(one(i) for i in range(90)))

    asyncio.run(go())
    stats = bucket.stats()
    assert sum(api_server.limited_counts().values()) == 90
    assert stats.throttled >= 1 and stats.decreases >= 1
    assert stats.current_rate < 100
