from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deployments.local_server import PrefectServer  # noqa: E402

pytest_plugins = ["tests.fixtures.api_server", "tests.fixtures.postgres", "tests.fixtures.mariadb", "tests.fixtures.s3"]

_server: PrefectServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's Prefect server before test modules import prefect."""
    global _server
    if os.environ.get("PREFECT_API_URL"):
        return
    _server = PrefectServer()
    _server.start()
    os.environ.update(_server.env())
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own BATCHFLOWS_STATE_DIR."""
    path = tmp_path / "state"
    monkeypatch.setenv("BATCHFLOWS_STATE_DIR", str(path))
    monkeypatch.setenv("BATCHFLOWS_PROGRESS_INTERVAL_S", "0.2")
    yield path


# The awkward source table of the db tests (tests/tasks/db/test_migration.py), shared by the db_migrate flow tests.
@pytest.fixture
def pg_items(pg_url: str) -> str:
    from tests.tasks.db.test_migration import create_pg  # imported late: prefect must not load before the server is up

    create_pg(pg_url)
    return pg_url


@pytest.fixture
def sqlite_items(tmp_path: Path) -> str:
    from tests.tasks.db.test_migration import create_sqlite

    url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    create_sqlite(url)
    return url


@pytest.fixture
def pg_target(pg_cluster: Any) -> str:
    """An empty database on the session's PostgreSQL cluster."""
    return str(pg_cluster.url(pg_cluster.create_database()))
