"""Prefect global concurrency limits: create-if-missing, so ``strict=True`` slots always mean something.

With ``strict=False`` a missing limit silently limits nothing, so batchflows creates the limit (with
the given number of slots) before the first chunk asks for one, and uses an existing limit as it is.

:func:`held_slot` does what Prefect's ``concurrency()`` does (a slot leased for ``lease_s``, renewed from a
thread, given back at the end) with the synchronous client only: Prefect 3.8 acquires and releases through
``run_coro_as_sync`` on its own event-loop threads, and a chunk on a Dask worker hung there (twice in CI,
the run then waited past its 300 s test timeout). A release that fails is logged, and the server frees the
slot when its lease runs out.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectNotFound

from tasks.core.errors import ConfigError
from tasks.core.progress import PrefectApiUnreachable

MAX_POLL_S = 2.0  # longest wait between two asks for a slot (the server suggests up to 30 s)
MAX_API_FAILURES = 10

log = logging.getLogger("batchflows.concurrency")


def ensure_concurrency_limit(name: str, slots: int, *, slot_decay_per_second: float | None = None) -> int:
    """Make sure the global concurrency limit ``name`` exists; return its number of slots."""
    if not name or len(name) > 100:
        msg = f"concurrency_limit name {name!r} must be 1-100 characters"
        raise ConfigError(msg)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
            if not existing.active:
                log.warning("global concurrency limit %r exists but is inactive: it limits nothing", name)
            return int(existing.limit)
        except ObjectNotFound:
            pass
        extra = {} if slot_decay_per_second is None else {"slot_decay_per_second": slot_decay_per_second}
        create = GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True, **extra)
        try:
            client.create_global_concurrency_limit(create)
        except Exception as exc:  # a concurrent run created it first
            try:
                return int(client.read_global_concurrency_limit_by_name(name).limit)
            except ObjectNotFound:
                raise exc from None
        log.info("created global concurrency limit %r with %d slots", name, slots)
        return slots


@contextmanager
def held_slot(name: str, *, lease_s: float) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``name`` for the block.

    The slot is leased for ``lease_s`` seconds and renewed from a thread while the block runs, so a process
    that dies gives it back when the lease runs out. A missing or inactive limit limits nothing (logged).
    """
    lease_id = acquire_slot(name, lease_s=lease_s)
    if lease_id is None:
        yield
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_lease, args=(lease_id, name, lease_s, stop), daemon=True,
                               name=f"batchflows-lease-{name}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        release_slot(lease_id, name=name, lease_s=lease_s)


def acquire_slot(name: str, *, lease_s: float) -> UUID | None:
    """Wait for a slot of ``name`` and lease it; its lease id, or None when no active limit has that name.

    Polls the server (423 Locked: again after its Retry-After, at most :data:`MAX_POLL_S`); an unreachable
    API is retried the same way, logged each time.
    """
    failures = 0
    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=lease_s
                )
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status == 423:  # every slot taken
                    wait = _retry_after(exc.response)
                elif status < 500:
                    msg = (f"global concurrency limit {name!r}: the Prefect API refused a slot "
                           f"({status}: {exc.response.text[:200]})")
                    raise ConfigError(msg) from None
                else:
                    failures = _unreachable(name, failures + 1, f"HTTP {status}")
                    wait = MAX_POLL_S
            except httpx.TransportError as exc:
                failures = _unreachable(name, failures + 1, type(exc).__name__)
                wait = MAX_POLL_S
            else:
                body = response.json()
                if not body.get("limits"):
                    log.warning("global concurrency limit %r does not exist or is inactive: it limits nothing", name)
                    return None
                return UUID(body["lease_id"])
            time.sleep(wait * random.uniform(0.8, 1.0))  # jitter: waiters do not ask in step


def _unreachable(name: str, failures: int, what: str) -> int:
    if failures > MAX_API_FAILURES:
        msg = (f"global concurrency limit {name!r}: no answer from the Prefect API to {MAX_API_FAILURES} asks for a "
               f"slot ({what}); check PREFECT_API_URL and the server, then rerun with the same run_key")
        raise PrefectApiUnreachable(msg)
    log.warning("could not ask for a slot of the global concurrency limit %r (%s); trying again", name, what)
    return failures


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", MAX_POLL_S)), 0.05), MAX_POLL_S)
    except ValueError:
        return MAX_POLL_S


def _keep_lease(lease_id: UUID, name: str, lease_s: float, stop: threading.Event) -> None:
    """Renew the lease every quarter of it until ``stop``; a failed renewal is tried again every few seconds."""
    every = lease_s / 4
    with get_client(sync_client=True) as client:
        while not stop.wait(every):
            try:
                client.renew_concurrency_lease(lease_id=lease_id, lease_duration=lease_s)
                every = lease_s / 4
            except Exception as exc:  # the next attempt comes sooner; the lease still has most of its time
                log.warning("could not renew the lease on a slot of the global concurrency limit %r (%s); if it "
                            "runs out the limit can be exceeded until this chunk ends", name, type(exc).__name__)
                every = min(lease_s / 4, MAX_POLL_S)


def release_slot(lease_id: UUID, *, name: str, lease_s: float) -> bool:
    """Give a slot's lease back through the synchronous client; False (logged) when that failed."""
    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id)
    except Exception as exc:  # the lease expires on the server: the slot comes back anyway
        log.warning("could not give back a slot of the global concurrency limit %r (%s); the server frees it "
                    "when its lease of %.0f s runs out", name, type(exc).__name__, lease_s)
        return False
    return True


__all__ = ["acquire_slot", "ensure_concurrency_limit", "held_slot", "release_slot"]
