"""A real local Prefect server on a free loopback port, for the demo, the benchmarks and the tests.

Without a server, every Prefect process starts a temporary one of its own (10-20 s each); one real
server shared through PREFECT_API_URL costs that once. Start it before importing prefect so the
settings of this process see the URL: :func:`ensure_server` does both.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrefectServer:
    """``prefect server start`` in its own session; ``home`` is its PREFECT_HOME (kept if given).
    ``database_url``: a PostgreSQL database for the server (``postgresql+asyncpg://...``; the
    ``postgresql+psycopg://`` form is accepted and converted); default: SQLite in ``home``."""

    def __init__(self, home: Path | None = None, *, database_url: str | None = None) -> None:
        self.database_url = database_url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1) \
            if database_url else None
        self.keep_home = home is not None
        self.home = home or Path(tempfile.mkdtemp(prefix="bf-prefect-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = self.home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, **self.env()}
        env.pop("PREFECT_API_URL")
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
            # a loaded machine (2 cores, a test suite beside) makes the 5 s defaults fail connects with a 500
            env.setdefault("PREFECT_API_DATABASE_CONNECTION_TIMEOUT", "30")
            env.setdefault("PREFECT_API_DATABASE_TIMEOUT", "60")
        prefect = str(Path(sys.executable).with_name("prefect"))
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)


def ensure_server(home: Path | None = None) -> PrefectServer | None:
    """Start a local server unless PREFECT_API_URL is already set; export its settings to os.environ."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = PrefectServer(home)
    server.start()
    os.environ.update(server.env())
    # registered before prefect is imported, so it runs after prefect's own exit hooks flush the logs
    atexit.register(server.stop)
    return server
