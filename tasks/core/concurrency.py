"""Prefect global concurrency limits: create-if-missing, so ``strict=True`` slots always mean something.

With ``strict=False`` a missing limit silently limits nothing, so batchflows creates the limit (with
the given number of slots) before the first chunk asks for one, and uses an existing limit as it is.
"""

from __future__ import annotations

import logging

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


__all__ = ["ensure_concurrency_limit"]
