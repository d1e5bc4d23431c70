"""`make up` as a new user runs it: on a fresh clone before anything else has run, a second time (no second
server), and again after `make down` (issue: it once failed with "unable to open database file")."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(900)
def test_make_up_on_a_fresh_clone_twice_and_after_make_down(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    port = free_port()
    # a user's shell: none of the test session's Prefect or batchflows settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHFLOWS_", "PYTHONPATH"))}

    def make(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", target, f"UP_PORT={port}"], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=600)

    try:
        first = make("up")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert healthy(port) and f"UI: http://127.0.0.1:{port}" in first.stdout
        server_pid = (clone / ".run" / "server.pid").read_text().strip()
        second = make("up")
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "server already running" in second.stdout and "worker already running" in second.stdout
        assert (clone / ".run" / "server.pid").read_text().strip() == server_pid
        down = make("down")
        assert down.returncode == 0 and "stopped server" in down.stdout, down.stdout + down.stderr
        assert not healthy(port)
        third = make("up")
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert healthy(port)
    finally:
        make("down")
