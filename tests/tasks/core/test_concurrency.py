"""tasks/core/concurrency.py against the session's real Prefect server: a held slot is taken and given
back through the synchronous client; a release that fails is logged, not raised."""

from __future__ import annotations

import logging
import threading
import time
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.core.concurrency import acquire_slot, ensure_concurrency_limit, held_slot, release_slot
from tasks.core.errors import ConfigError


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


def test_a_full_limit_makes_the_next_holder_wait_until_a_slot_is_given_back() -> None:
    name = f"bf-test-held-{uuid4().hex[:8]}"
    ensure_concurrency_limit(name, 1)
    events: list[str] = []

    def second() -> None:
        with held_slot(name, lease_s=60):
            events.append("second holds")

    with held_slot(name, lease_s=60):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.5)  # the waiter has been told 423 Locked at least once by now
        events.append("first gives back")
    waiter.join(timeout=30)
    assert events == ["first gives back", "second holds"]
    assert _active(name) == 0


def test_a_missing_limit_limits_nothing_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="batchflows.concurrency"):
        assert acquire_slot(f"bf-test-missing-{uuid4().hex[:8]}", lease_s=60) is None
        with held_slot("bf-test-missing-too", lease_s=60):
            pass
    assert "'bf-test-missing-too' does not exist or is inactive: it limits nothing" in caplog.text


def test_a_refused_request_names_the_limit() -> None:
    name = f"bf-test-held-{uuid4().hex[:8]}"
    ensure_concurrency_limit(name, 1)
    with pytest.raises(ConfigError, match=rf"global concurrency limit '{name}': the Prefect API refused a slot \(422"):
        acquire_slot(name, lease_s=5)  # the server's shortest lease is 60 s


def test_a_failed_release_is_logged_and_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = {PREFECT_API_URL: "http://127.0.0.1:9/api"}  # nothing listens on the discard port
    with temporary_settings(nowhere), caplog.at_level(logging.WARNING, logger="batchflows.concurrency"):
        assert release_slot(uuid4(), name="bf-gone", lease_s=90) is False
    assert "bf-gone" in caplog.text and "lease of 90 s" in caplog.text
