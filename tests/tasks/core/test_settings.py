"""Every ``BATCHFLOWS_*`` setting the README lists changes what a run does when the parameter is not given.

(``BATCHFLOWS_STATE_RETENTION_DAYS`` and the default state dir: tests/tasks/core/test_state.py;
``BATCHFLOWS_NOTIFY_*``: test_notify.py; ``BATCHFLOWS_CHUNK_SIZE`` against a parameter and
``BATCHFLOWS_FLOW_RETRY_DELAY_S``: test_flowdef.py.)
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from flows.api_bulk import api_bulk
from flows.batch_map import batch_map
from flows.db_migrate import db_migrate
from flows.file_transform import file_transform
from tasks.api.client import make_client
from tasks.core.errors import SettingError, SourceError
from tasks.core.settings import EngineSettings, HttpSettings
from tests import handlers
from tests.fixtures.api_server import ApiServer
from tests.tasks.db.test_migration import sqlite_exec

FAST = {"retry_backoff_s": 0.01}


def test_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_STATE_DIR", str(tmp_path / "elsewhere"))
    s = batch_map([1, 2], handlers.double, run_key="where")
    assert s.run_dir == str(tmp_path / "elsewhere" / "runs" / "batch-map" / "where")
    assert (tmp_path / "elsewhere" / "runs" / "batch-map" / "where" / "summary.json").is_file()


def test_chunk_size_and_max_concurrency(monkeypatch: pytest.MonkeyPatch, api_server: ApiServer,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "4")
    monkeypatch.setenv("BATCHFLOWS_MAX_CONCURRENCY", "1")
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("BF_PROBE_DIR", str(probe))
    monkeypatch.setenv("BF_SLEEP", "0.01")
    s = batch_map(list(range(12)), handlers.concurrency_probe)
    assert s.chunks_total == 3  # 12 items in chunks of 4
    assert max(int(x) for x in (probe / "observed.log").read_text().split()) == 1  # one chunk at a time
    assert api_bulk([{"path": f"/ok/{i}"} for i in range(12)], base_url=api_server.url).chunks_total == 3


def test_memory_limit_mb(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BATCHFLOWS_MEMORY_LIMIT_MB", "1")  # every process is above 1 MB: pause before each submit
    caplog.set_level(logging.WARNING)
    s = batch_map(list(range(20)), handlers.double, chunk_size=2, max_concurrency=4)
    assert s.ok and s.succeeded == 20
    assert "is above BATCHFLOWS_MEMORY_LIMIT_MB=1" in caplog.text


def _progress_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if "batch-map: " in r.getMessage() and "items/s" in r.getMessage())


def test_progress_interval_s(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("BATCHFLOWS_PROGRESS_INTERVAL_S", "3600")
    batch_map(list(range(20)), handlers.double, chunk_size=1, max_concurrency=1)
    rare = _progress_lines(caplog)
    caplog.clear()
    monkeypatch.setenv("BATCHFLOWS_PROGRESS_INTERVAL_S", "0.000001")
    batch_map(list(range(20)), handlers.double, chunk_size=1, max_concurrency=1)
    assert rare <= 2 and _progress_lines(caplog) >= 20  # the first and the final line vs one per chunk


def test_http_timeout_user_agent_token_and_retry_after(monkeypatch: pytest.MonkeyPatch, api_server: ApiServer) -> None:
    monkeypatch.setenv("BATCHFLOWS_HTTP_TIMEOUT_S", "0.3")
    monkeypatch.setenv("BATCHFLOWS_HTTP_USER_AGENT", "nightly-sync/2")
    monkeypatch.setenv("BATCHFLOWS_HTTP_TOKEN", "tok-from-the-environment")
    monkeypatch.setenv("BATCHFLOWS_HTTP_MAX_RETRY_AFTER_S", "2")
    s = api_bulk([{"path": "/slow/a?delay=1.5"}, {"path": "/retry-after/b?times=1&after=30"}, {"path": "/ok/c"}],
                 base_url=api_server.url, retries=0, raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed) == (1, 2)
    errors = {e.category: e.example for e in s.top_errors}
    assert "http_timeout" in errors  # 0.3 s, not the 30 s default
    assert any("longer than the 2s" in e for e in errors.values())  # not waited for 30 s
    assert {r.headers.get("user-agent") for r in api_server.requests} == {"nightly-sync/2"}
    assert {r.headers.get("authorization") for r in api_server.requests} == {"Bearer tok-from-the-environment"}
    assert api_bulk([{"path": "/slow/d?delay=1.5"}], base_url=api_server.url, timeout_s=5).ok  # the parameter wins


def test_http_connect_timeout_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_HTTP_CONNECT_TIMEOUT_S", "1.5")
    assert make_client("http://127.0.0.1:9").timeout.connect == 1.5


def test_files_chunk_bytes_and_max_concurrency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "rows.csv"
    src.write_text("id,amount\n" + "".join(f"{i},{i * 0.5}\n" for i in range(2000)))
    monkeypatch.setenv("BATCHFLOWS_FILES_CHUNK_BYTES", "4000")
    small = file_transform(src, tmp_path / "a", schema={"id": "int64", "amount": "float64"})
    monkeypatch.delenv("BATCHFLOWS_FILES_CHUNK_BYTES")
    whole = file_transform(src, tmp_path / "b", schema={"id": "int64", "amount": "float64"})
    assert whole.chunks_total == 1 and small.chunks_total > 5
    monkeypatch.setenv("BATCHFLOWS_FILES_MAX_CONCURRENCY", "0")
    with pytest.raises(SettingError, match="BATCHFLOWS_FILES_MAX_CONCURRENCY='0' is not accepted"):
        file_transform(src, tmp_path / "c")


def test_db_urls_chunk_rows_and_connect_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"sqlite:///{tmp_path / 'shop.db'}"
    sqlite_exec(source, "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)")
    sqlite_exec(source, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
                        "INSERT INTO orders SELECT i, i * 1.5 FROM n")
    monkeypatch.setenv("BATCHFLOWS_DB_SOURCE_URL", source)
    monkeypatch.setenv("BATCHFLOWS_DB_TARGET_URL", f"sqlite:///{tmp_path / 'reporting.db'}")
    monkeypatch.setenv("BATCHFLOWS_DB_CHUNK_ROWS", "250")
    s = db_migrate(table="orders")
    assert s.ok and s.succeeded == 1000 and s.ranges_total == 4

    silent = socket.socket()  # accepts TCP connections (backlog) but never answers PostgreSQL's handshake
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("BATCHFLOWS_DB_CONNECT_TIMEOUT_S", "1")
        started = time.monotonic()
        with pytest.raises(SourceError, match="cannot connect to the source database"):
            db_migrate(f"postgresql+psycopg://u:p@127.0.0.1:{silent.getsockname()[1]}/db", table="orders")
        assert time.monotonic() - started < 9  # the default waits 10 s
    finally:
        silent.close()


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("BATCHFLOWS_MEMORY_LIMIT_MB", "-1", "Input should be greater than 0; expected a whole number > 0 (default 1500)"),
    ("BATCHFLOWS_MEMORY_LIMIT_MB", "1.5GB", "valid integer, unable to parse string as an integer; expected a whole "
                                            "number > 0 (default 1500)"),
    ("BATCHFLOWS_STATE_LEASE_S", "1", "equal to 3; expected a number >= 3 (default 60.0)"),
    ("BATCHFLOWS_HTTP_CONNECT_TIMEOUT_S", "ten", "valid number, unable to parse string as a number; expected a "
                                                 "number > 0 (default 10.0)"),
])
def test_a_bad_value_is_refused_naming_the_variable_its_value_and_the_expected_form(
        env: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingError) as refused:
        (HttpSettings if "_HTTP_" in env else EngineSettings)()
    assert str(refused.value).startswith(f"bad setting: {env}='{value}' is not accepted: ")
    assert str(refused.value).endswith(expected)


def test_a_bad_setting_without_a_parameter_fails_the_run_at_once_not_retried(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every parameter given, so only the flow run reads the variable: a ConfigError naming it, not a pydantic
    ValidationError about 'EngineSettings', and flow_retries does not run it again."""
    monkeypatch.setenv("BATCHFLOWS_MEMORY_LIMIT_MB", "1.5GB")
    monkeypatch.setenv("BATCHFLOWS_FLOW_RETRY_DELAY_S", "30")
    started = time.monotonic()
    with pytest.raises(SettingError, match=r"BATCHFLOWS_MEMORY_LIMIT_MB='1\.5GB' is not accepted"):
        batch_map([1, 2, 3], handlers.double, chunk_size=2, max_concurrency=2, flow_retries=2)
    assert time.monotonic() - started < 25 and "ended without finishing" not in caplog.text
    monkeypatch.delenv("BATCHFLOWS_MEMORY_LIMIT_MB")
    monkeypatch.setenv("BATCHFLOWS_HTTP_CONNECT_TIMEOUT_S", "ten")
    with pytest.raises(SettingError, match="BATCHFLOWS_HTTP_CONNECT_TIMEOUT_S='ten' is not accepted"):
        api_bulk([{"id": 1}], base_url="http://127.0.0.1:9", timeout_s=5, retries=0, max_concurrency=1)
