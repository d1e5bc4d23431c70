"""Local rate limiting: a smooth token bucket with AIMD on 429 and a shared pause for Retry-After.

Why a reservation bucket (GCRA) and not "refill N tokens each second": a per-second refill lets N
requests out at once at every second boundary, which is exactly what rate-enforcing APIs punish.
Here every caller reserves the next free send time under a lock, then sleeps outside it, so
requests leave evenly spaced at ``1/rate`` with at most ``burst`` back to back.

On top of the spacing, the sends of the last ``window_s`` (1 s) are counted and capped at the
limit's share: a waiter that wakes late sends late, and a late tail of one second landing in the
next one is exactly what a per-second server counts as over the limit (measured: one 429 and its
1 s Retry-After pause cost ~15 % of a 12 s run at 500/s on a busy machine).

The lock is a ``threading.Lock`` held only for arithmetic (never across an ``await``), so one bucket
is safe for coroutines on any event loop and for threads at the same time.

AIMD: ``on_throttle()`` (a 429) cuts the current rate (once per ``decrease_cooldown_s``, since a
burst of in-flight requests answers 429 together), then the rate grows back linearly by
``recovery_per_second`` up to the configured limit. The cut escalates: a first 429 after a quiet
spell costs 10 % (``first_decrease_factor``: at the configured limit a lone 429 is usually send-time
jitter at the server's window edge, and halving for it cost ~15 % of a 12 s run at 500/s), a second
one within ``streak_s`` 30 %, then ``decrease_factor`` (halving) each time, so a server whose real
limit is far below ours is still found in a few seconds. Recovery is fast up to 95 % of the rate
that drew the last 429 and slow (a tenth) past it, so a bucket set above the server's real limit
probes that limit every few seconds instead of every second (each 429 costs everyone a
Retry-After pause). A ``Retry-After`` pauses everyone using the
bucket until then (``pause_until``), and outstanding reservations are re-queued behind the pause.

For a budget shared by name across processes and runs see :mod:`tasks.core.shared_ratelimit`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tasks.core.errors import ConfigError

KNEE = 0.95  # after a cut, recover fast to this share of the rate that drew the 429 ...
PROBE = 0.1  # ... then grow at this share of recovery_per_second (fewer 429s, each costing a Retry-After pause)

Clock = Callable[[], float]
AsyncSleep = Callable[[float], Awaitable[None]]
SyncSleep = Callable[[float], None]


@dataclass(frozen=True)
class BucketStats:
    """Counters for summaries and tests."""

    acquired: float
    throttled: int
    decreases: int
    current_rate: float
    limit: float


class TokenBucket:
    """Smooth local rate limit of ``rate_per_second`` with small ``burst``, AIMD and shared pauses.

    ``clock`` (monotonic seconds), ``sleep`` (async) and ``sleep_sync`` are injectable so tests can
    run it on a fake clock. Use :meth:`acquire` from coroutines, :meth:`acquire_sync` from threads.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        burst: float = 1.0,
        min_rate_per_second: float | None = None,
        decrease_factor: float = 0.5,
        first_decrease_factor: float = 0.9,
        streak_s: float = 5.0,
        recovery_per_second: float | None = None,
        decrease_cooldown_s: float | None = None,
        window_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: AsyncSleep = asyncio.sleep,
        sleep_sync: SyncSleep = time.sleep,
    ) -> None:
        if not rate_per_second > 0:
            msg = f"rate_per_second must be > 0, got {rate_per_second!r}; omit the rate limit to run unthrottled"
            raise ConfigError(msg)
        if burst < 1:
            msg = f"burst must be >= 1 token, got {burst!r}"
            raise ConfigError(msg)
        if not 0 < decrease_factor < 1:
            msg = f"decrease_factor must be between 0 and 1 (exclusive), got {decrease_factor!r}"
            raise ConfigError(msg)
        if not 0 < first_decrease_factor < 1:
            msg = f"first_decrease_factor must be between 0 and 1 (exclusive), got {first_decrease_factor!r}"
            raise ConfigError(msg)
        self.limit = float(rate_per_second)
        self.burst = float(burst)
        self.min_rate = float(min_rate_per_second or max(self.limit * 0.02, 0.1))
        self.decrease_factor = decrease_factor
        # escalating cuts: gentle for a lone 429, then down to decrease_factor while 429s keep coming
        first = max(decrease_factor, first_decrease_factor)
        self._cuts = (first, max(decrease_factor, first - 0.2), decrease_factor)
        self.streak_s = streak_s
        self._streak = 0
        self.recovery_per_second = float(recovery_per_second or self.limit / 10)
        self.decrease_cooldown_s = decrease_cooldown_s if decrease_cooldown_s is not None else 1.0
        self._clock, self._sleep, self._sleep_sync = clock, sleep, sleep_sync
        self._lock = threading.Lock()
        now = clock()
        self._tat = now  # theoretical arrival time of the next token (GCRA)
        self._paused_until = now
        self._generation = 0
        self._rate_after_decrease = self.limit
        self._ceiling = self.limit
        self._last_decrease = float("-inf")
        self._acquired = 0.0
        # sends in the last window_s, capped at the limit's share (see _commit)
        self.window_s = window_s
        self._window_cap = max(self.burst, self.limit * window_s)
        self._sent: deque[float] = deque()
        self._throttled = 0
        self._decreases = 0

    # --- rate -----------------------------------------------------------------------------------
    def current_rate(self) -> float:
        """The rate in force now: the limit, or on its way back up after a 429."""
        with self._lock:
            return self._rate_locked(self._clock())

    def _rate_locked(self, now: float) -> float:
        base = self._rate_after_decrease
        if base >= self.limit:
            return self.limit
        elapsed = max(0.0, now - self._last_decrease)
        # fast back up to just under the rate that drew the last 429, then probe slowly past it
        knee = max(base, self._ceiling * KNEE)
        fast_s = (knee - base) / self.recovery_per_second
        if elapsed <= fast_s:
            return min(self.limit, base + self.recovery_per_second * elapsed)
        return min(self.limit, knee + self.recovery_per_second * PROBE * (elapsed - fast_s))

    # --- taking tokens --------------------------------------------------------------------------
    def _reserve(self, tokens: float) -> tuple[float, int]:
        """Book the next free slot; returns (seconds to wait, generation of the booking)."""
        with self._lock:
            now = self._clock()
            interval = 1.0 / self._rate_locked(now)
            earliest = max(self._tat, now - (self.burst - 1.0) * interval, self._paused_until)
            self._tat = earliest + tokens * interval
            return max(0.0, earliest - now), self._generation

    def _still_valid(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation and self._clock() >= self._paused_until

    def _commit(self, tokens: float) -> float:
        """Record a send unless the last ``window_s`` already holds the window's share; else the wait.

        The bookings are evenly spaced, but a waiter that wakes late (a busy event loop, the GIL)
        sends late, so one window of a server that counts per second can receive a late tail of
        the previous one on top of its own share. Counting the sends themselves caps every sliding
        window, hence every fixed one.
        """
        with self._lock:
            now = self._clock()
            sent = self._sent
            while sent and sent[0] <= now - self.window_s + 1e-9:
                sent.popleft()
            if len(sent) + tokens > self._window_cap and sent:
                return sent[0] + self.window_s - now
            sent.extend([now] * math.ceil(tokens))
            self._acquired += tokens
            return 0.0

    async def acquire(self, tokens: float = 1.0) -> float:
        """Wait until ``tokens`` may be spent; returns the seconds waited."""
        waited = 0.0
        while True:
            wait, generation = self._reserve(tokens)
            if wait > 0:
                await self._sleep(wait)
                waited += wait
            if wait <= 0 or self._still_valid(generation):
                while (late := self._commit(tokens)) > 0:
                    await self._sleep(late)
                    waited += late
                return waited

    def acquire_sync(self, tokens: float = 1.0) -> float:
        """Blocking twin of :meth:`acquire` for thread-based handlers."""
        waited = 0.0
        while True:
            wait, generation = self._reserve(tokens)
            if wait > 0:
                self._sleep_sync(wait)
                waited += wait
            if wait <= 0 or self._still_valid(generation):
                while (late := self._commit(tokens)) > 0:
                    self._sleep_sync(late)
                    waited += late
                return waited

    # --- feedback -------------------------------------------------------------------------------
    def on_throttle(self, retry_after: float | None = None) -> None:
        """A 429 was seen: decrease the rate multiplicatively and honor ``retry_after`` for everyone."""
        with self._lock:
            now = self._clock()
            self._throttled += 1
            if now - self._last_decrease >= self.decrease_cooldown_s:
                self._streak = self._streak + 1 if now - self._last_decrease < self.streak_s else 0
                cut = self._cuts[min(self._streak, len(self._cuts) - 1)]
                self._ceiling = self._rate_locked(now)  # the rate that drew this 429
                self._rate_after_decrease = max(self.min_rate, self._ceiling * cut)
                self._last_decrease = now
                self._decreases += 1
                self._requeue_locked(now)
        if retry_after is not None and retry_after > 0:
            self.pause_until(self._clock() + retry_after)

    def pause_until(self, until: float) -> None:
        """Nobody using this bucket sends before ``until`` (same clock); later pauses win."""
        with self._lock:
            if until > self._paused_until:
                self._paused_until = until
                self._requeue_locked(self._clock())

    def _requeue_locked(self, now: float) -> None:
        # Bookings made at the old pace or before the pause are void; waiters book again on waking.
        self._generation += 1
        self._tat = max(now, self._paused_until)

    def stats(self) -> BucketStats:
        with self._lock:
            return BucketStats(
                acquired=self._acquired,
                throttled=self._throttled,
                decreases=self._decreases,
                current_rate=self._rate_locked(self._clock()),
                limit=self.limit,
            )


__all__ = ["AsyncSleep", "BucketStats", "Clock", "SyncSleep", "TokenBucket"]
