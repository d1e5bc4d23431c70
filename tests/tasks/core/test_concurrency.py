"""tasks/core/concurrency.py against the session's real Prefect server: a held slot is taken and given
back through the synchronous client; a release that fails is logged, not raised."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.core.concurrency import ensure_concurrency_limit, held_slot, release_slot


def _active(name: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def test_held_slot_takes_one_slot_and_gives_it_back() -> None:
    name = f"bf-test-held-{uuid4().hex[:8]}"
    assert ensure_concurrency_limit(name, 2) == 2
    with held_slot(name, lease_s=60):
        assert _active(name) == 1
        with held_slot(name, lease_s=60):
            assert _active(name) == 2
        assert _active(name) == 1
    assert _active(name) == 0


def test_held_slot_gives_the_slot_back_when_the_block_raises() -> None:
    name = f"bf-test-held-{uuid4().hex[:8]}"
    ensure_concurrency_limit(name, 1)
    with pytest.raises(RuntimeError, match="boom"), held_slot(name, lease_s=60):
        raise RuntimeError("boom")
    assert _active(name) == 0


def test_a_failed_release_is_logged_and_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = {PREFECT_API_URL: "http://127.0.0.1:9/api"}  # nothing listens on the discard port
    with temporary_settings(nowhere), caplog.at_level(logging.WARNING, logger="batchflows.concurrency"):
        assert release_slot(uuid4(), name="bf-gone", lease_s=90) is False
    assert "bf-gone" in caplog.text and "lease of 90 s" in caplog.text
