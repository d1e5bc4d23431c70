"""A rate budget shared by name across processes and runs, through a Prefect global concurrency limit.

Why not Prefect's per-call ``rate_limit(name)``: it delivered ~20 % of a 50/s limit here. Reading the
server (prefect 3.8.8, ``server/models/concurrency_limits_v2.py``) explains it: a rate limit is a GCL
whose ``active_slots`` decay by ``floor(slot_decay_per_second * (now - updated))``, and *every* write
resets ``updated``, including the write that records a denied attempt (``bulk_update_denied_slots``
leaves ``active_slots`` alone). So each 423 erases the decay accrued so far, the floor drops the
fraction on every write, and the 423's ``Retry-After`` grows with ``denied_slots``. Many small
callers polling a busy limit starve it.

The design here: the GCL is created with ``limit = block`` and ``slot_decay_per_second = rate`` and
each process takes budget a **block** at a time (``block = rate * block_seconds``, one increment of
``block`` slots in ``rate_limit`` mode). A block is granted only once the previous one has fully
decayed, so grants are spaced ``block_seconds`` apart across all holders. Before incrementing, a
process **reads** the limit (reads do not write) and sleeps until the decay makes room, so denials
are rare (only two processes racing for the same block). The block is then spent locally through a
:class:`~tasks.core.ratelimit.TokenBucket` at ``rate``, and what is left of it expires at the end of its
window (plus 10 %) so a slow holder cannot overlap the next holder's window. Refills are prefetched
when the budget runs low so a single busy process sees no gap between blocks.

Measured figures are in tests/tasks/core/test_shared_ratelimit.py's docstring and the issue report.
A ``Retry-After`` pauses every holder: the process that got the 429 pauses its own bucket at once
and publishes the pause's end (epoch seconds) in a Prefect Variable named after the limit; every
holder reads it before taking a block and at most every ``pause_poll_s`` while spending one, so
the others stop within a fraction of a second instead of each collecting its own 429.

Known limits: a process's clock is assumed close to the Prefect server's (NTP); a skewed clock
causes early attempts (denied, then re-read) and a lower achieved rate, not overshoot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import hashlib
import math
import random
import threading
import time
from typing import Any

from tasks.core.errors import ConfigError, RetryableError
from tasks.core.ratelimit import TokenBucket

_MARGIN_S = 0.003


class SharedRateLimit:
    """``rate_per_second`` shared by every process using ``name``; same interface as TokenBucket.

    Needs a Prefect API (``PREFECT_API_URL`` or the ephemeral server). The limit is created when
    missing; when it exists its ``slot_decay_per_second`` and ``limit`` win (the server is the truth,
    so two runs asking for different rates cannot fight over it). Thread- and loop-safe.
    """

    def __init__(
        self,
        name: str,
        rate_per_second: float,
        *,
        block_seconds: float = 1.0,
        prefetch_fraction: float = 0.25,
        bucket_burst: float = 1.0,
        headroom: float = 0.02,
        pause_poll_s: float = 0.25,
    ) -> None:
        if not name or not isinstance(name, str):
            msg = f"rate_limit_name must be a non-empty string, got {name!r}"
            raise ConfigError(msg)
        if not rate_per_second > 0:
            msg = f"rate_per_second must be > 0 for the shared limit {name!r}, got {rate_per_second!r}"
            raise ConfigError(msg)
        self.name = name
        self.rate = float(rate_per_second)
        self.block = max(1, round(self.rate * block_seconds))
        self.prefetch_fraction = prefetch_fraction
        self.headroom = headroom  # pace a little under the rate: two holders' timing jitter at a block edge
        self._bucket_burst = bucket_burst
        self.bucket = self._new_bucket()
        self._lock = threading.Lock()
        self._budget = 0
        self._expires = 0.0
        self._refill: concurrent.futures.Future[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gcl-{name}")
        self._client: Any = None
        self._ensured = False
        self.grants = 0
        self.denials = 0
        # Retry-After shared through a Prefect Variable, read/written on its own thread and client
        self.pause_variable = "bf-ratelimit-pause-" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        self.pause_poll_s = pause_poll_s
        self._pause_io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gcl-pause-{name}")
        self._pause_client: Any = None
        self._pause_check: concurrent.futures.Future[None] | None = None
        self._next_pause_check = 0.0
        self._published_until = 0.0

    def _new_bucket(self) -> TokenBucket:
        return TokenBucket(self.rate * (1 - self.headroom), burst=self._bucket_burst)

    # --- public ---------------------------------------------------------------------------------
    async def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` from the shared budget, then pace them locally; returns seconds waited."""
        started = time.monotonic()
        while not self._take(tokens):
            await _wait_concurrent(self._start_refill())
        await self.bucket.acquire(tokens)
        return time.monotonic() - started

    def acquire_sync(self, tokens: float = 1.0) -> float:
        """Blocking twin of :meth:`acquire`."""
        started = time.monotonic()
        while not self._take(tokens):
            self._start_refill().result()
        self.bucket.acquire_sync(tokens)
        return time.monotonic() - started

    def on_throttle(self, retry_after: float | None = None) -> None:
        """A 429 reached this process: AIMD and pause here, and tell every other holder to pause too."""
        self.bucket.on_throttle(retry_after)
        if retry_after is not None and retry_after > 0:
            until = time.time() + retry_after
            with self._lock:
                if until <= self._published_until + 0.05:
                    return  # the 429s of one burst publish once
                self._published_until = until
            self._pause_io.submit(contextvars.copy_context().run, self._publish_pause, until)

    def pause_until(self, until: float) -> None:
        self.bucket.pause_until(until)

    def ensure_limit(self) -> None:
        """Create the GCL if missing (decay = rate, limit = block) or adopt the existing one's values."""
        self._executor.submit(contextvars.copy_context().run, self._ensure_blocking).result()

    def close(self) -> None:
        """Close the Prefect clients and threads (unspent budget simply decays)."""

        def _close(attr: str) -> None:
            client = getattr(self, attr)
            if client is not None:
                client.__exit__(None, None, None)
                setattr(self, attr, None)

        self._executor.submit(_close, "_client").result()
        self._executor.shutdown(wait=True)
        self._pause_io.submit(_close, "_pause_client").result()
        self._pause_io.shutdown(wait=True)

    # --- pauses shared through a Prefect Variable ------------------------------------------------
    def _pause_prefect(self) -> Any:
        if self._pause_client is None:
            from prefect.client.orchestration import get_client

            self._pause_client = get_client(sync_client=True)
            self._pause_client.__enter__()
        return self._pause_client

    def _publish_pause(self, until: float) -> None:
        from prefect.client.schemas.actions import VariableCreate, VariableUpdate

        try:
            client = self._pause_prefect()
            current = client.read_variable_by_name(self.pause_variable)
            if current is None:
                client.create_variable(VariableCreate(name=self.pause_variable, value=until))
            elif not isinstance(current.value, int | float) or current.value < until:
                client.update_variable(VariableUpdate(name=self.pause_variable, value=until))
        except Exception:  # best effort: the others still slow down through their own 429s
            return

    def _apply_shared_pause(self) -> float:
        """Read the published pause; pause the local bucket until then. Returns seconds left (0 if none)."""
        try:
            variable = self._pause_prefect().read_variable_by_name(self.pause_variable)
        except Exception:
            return 0.0
        value = getattr(variable, "value", None)
        left = float(value) - time.time() if isinstance(value, int | float) else 0.0
        if left > 0:
            self.bucket.pause_until(time.monotonic() + left)
        return max(0.0, left)

    def _poll_pause_locked(self, now: float) -> None:
        if now >= self._next_pause_check and (self._pause_check is None or self._pause_check.done()):
            self._next_pause_check = now + self.pause_poll_s
            self._pause_check = self._pause_io.submit(contextvars.copy_context().run, self._apply_shared_pause)

    # --- budget ---------------------------------------------------------------------------------
    def _take(self, tokens: float) -> bool:
        need = math.ceil(tokens)
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._budget = 0
            self._poll_pause_locked(now)
            if self._budget >= need:
                self._budget -= need
                if self._budget <= self.block * self.prefetch_fraction:
                    self._start_refill_locked()
                return True
            self._start_refill_locked()
            return False

    def _start_refill(self) -> concurrent.futures.Future[None]:
        with self._lock:
            return self._start_refill_locked()

    def _start_refill_locked(self) -> concurrent.futures.Future[None]:
        if self._refill is None or self._refill.done():
            self._refill = self._executor.submit(contextvars.copy_context().run, self._refill_blocking)
        return self._refill

    def _prefect(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def _ensure_blocking(self) -> None:
        if self._ensured:
            return
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        client = self._prefect()
        try:
            existing = client.read_global_concurrency_limit_by_name(self.name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another process won the race: read its limit
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=self.name, limit=self.block, slot_decay_per_second=self.rate)
                )
            existing = client.read_global_concurrency_limit_by_name(self.name)
        if not existing.slot_decay_per_second or existing.slot_decay_per_second <= 0:
            msg = (
                f"global concurrency limit {self.name!r} exists without slot decay, so it cannot be a rate "
                "limit; delete it or give it slot_decay_per_second = the rate (prefect gcl update)"
            )
            raise ConfigError(msg)
        if (existing.slot_decay_per_second, existing.limit) != (self.rate, self.block):
            self.rate = float(existing.slot_decay_per_second)
            self.block = int(existing.limit)
            self.bucket = self._new_bucket()
        self._ensured = True

    def _refill_blocking(self) -> None:
        """Wait until the shared limit has room for a block, take it, add it to the local budget."""
        from httpx import HTTPStatusError

        try:
            self._ensure_blocking()
            client = self._prefect()
            while True:
                paused = self._pause_io.submit(contextvars.copy_context().run, self._apply_shared_pause).result()
                if paused > 0:
                    time.sleep(paused)
                limit = client.read_global_concurrency_limit_by_name(self.name)
                self._sleep_until_room(limit)
                try:
                    client.increment_concurrency_slots(names=[self.name], slots=self.block, mode="rate_limit")
                except HTTPStatusError as exc:
                    if exc.response.status_code != 423:
                        raise
                    self.denials += 1
                    time.sleep(self.block / self.rate * random.uniform(0.02, 0.1))
                    continue
                break
        except (ConfigError, RetryableError):
            raise
        except Exception as exc:
            msg = (
                f"could not take rate budget from the Prefect global concurrency limit {self.name!r}: "
                f"{type(exc).__name__}: {exc}; check PREFECT_API_URL and that the server is up"
            )
            raise RetryableError(msg, category="rate_limit_unavailable") from exc
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._budget = 0
            self._budget += self.block
            self._expires = now + 1.1 * self.block / self.rate
            self.grants += 1

    def _sleep_until_room(self, limit: Any) -> None:
        # limit.active_slots is already decayed server-side; rebuild the raw count to find the next
        # whole-slot boundary of floor(decay * (t - updated)) that leaves room for one block.
        decay = float(limit.slot_decay_per_second)
        room_needed = int(limit.active_slots) + self.block - int(limit.limit)
        if room_needed <= 0 or limit.updated is None:
            return
        updated = limit.updated.timestamp()
        now = time.time()
        raw = int(limit.active_slots) + math.floor(decay * max(0.0, now - updated))
        ready_at = updated + (raw + self.block - int(limit.limit)) / decay
        time.sleep(min(max(0.0, ready_at - now) + _MARGIN_S, self.block / decay + 1.0))


async def _wait_concurrent(future: concurrent.futures.Future[None]) -> None:
    """Await a shared concurrent future without cancelling it for the other waiters."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def _done(f: concurrent.futures.Future[None]) -> None:
        def _set() -> None:
            if waiter.done():
                return
            exc = f.exception()
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)

        loop.call_soon_threadsafe(_set)

    future.add_done_callback(_done)
    await waiter


def rate_limiter(
    rate_per_second: float | None, name: str | None = None, **kwargs: Any
) -> TokenBucket | SharedRateLimit | None:
    """The limiter for a run: None (unthrottled), a local TokenBucket, or a SharedRateLimit by name."""
    if rate_per_second is None:
        if name:
            msg = f"rate_limit_name={name!r} needs rate_limit_per_second too (the budget of the shared limit)"
            raise ConfigError(msg)
        return None
    if name:
        return SharedRateLimit(name, rate_per_second, **kwargs)
    return TokenBucket(rate_per_second, **kwargs)


def internal_rate_limit_name(scope: str) -> str:
    """The name of the shared budget that holds an unnamed rate limit across a run's worker processes."""
    return "batchflows-run-" + hashlib.blake2b(scope.encode(), digest_size=8).hexdigest()


def run_rate_limit_name(rate_per_second: float | None, name: str | None, task_runner: str, scope: str) -> str | None:
    """The name a run's rate limit is shared under: ``name`` as given; with no name and chunks in other
    processes (task_runner 'processes' or 'dask'), the run's internal one, so one budget holds across them
    (drop it with :func:`drop_rate_limit` when the run ends); None for a limit local to this process."""
    if rate_per_second and not name and task_runner != "threads":
        return internal_rate_limit_name(scope)
    return name


def drop_rate_limit(name: str) -> None:
    """Delete a run's internal rate limit when the run ends (best effort: it is only a server object)."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)
    except Exception:  # the server is gone; the limit is harmless
        return


__all__ = ["SharedRateLimit", "drop_rate_limit", "internal_rate_limit_name", "rate_limiter", "run_rate_limit_name"]
