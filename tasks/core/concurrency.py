"""Prefect global concurrency limits: create-if-missing, so ``strict=True`` slots always mean something.

With ``strict=False`` a missing limit silently limits nothing, so batchflows creates the limit (with
the given number of slots) before the first chunk asks for one, and uses an existing limit as it is.

:func:`held_slot` is Prefect's ``concurrency()`` (the same acquisition and lease renewal) with the slot
given back through the synchronous client: Prefect 3.8 releases it with ``run_coro_as_sync`` on its
event-loop thread, which hung a chunk on a Dask worker (seen once in CI, the chunk's future then stayed
PENDING); a release that fails is logged, and the server frees the slot when its lease runs out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectNotFound

from tasks.core.errors import ConfigError

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
    """Hold one slot of the global concurrency limit ``name`` (which must exist) for the block."""
    from prefect.concurrency._asyncio import _discard_cleanup_lease
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    granted = acquire_concurrency_slots_with_lease([name], 1, strict=True, lease_duration=lease_s)
    try:
        with maintain_concurrency_lease(granted.lease_id, lease_s, raise_on_lease_renewal_failure=True):
            yield
    finally:
        if release_slot(granted.lease_id, name=name, lease_s=lease_s):
            _discard_cleanup_lease(granted.lease_id)


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


__all__ = ["ensure_concurrency_limit", "held_slot", "release_slot"]
