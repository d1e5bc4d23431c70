"""etl-demo end to end against the local demo API, SQLite and (load step) PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deployments.demo_api import TOKEN, DemoApi, order, running
from flows.etl_demo import EtlDemoParams, etl_demo, etl_demo_flow
from tasks.core.errors import ConfigError
from tasks.db.load_parts import count_rows
from tests.fixtures.mariadb import MY_PASSWORD
from tests.tasks.db.test_dburl import stored_for_run


@pytest.fixture
def demo_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoApi]:
    monkeypatch.setenv("BATCHFLOWS_HTTP_TOKEN", TOKEN)
    with running(orders=1500) as api:
        yield api


@pytest.mark.parametrize("warehouse", ["sqlite", "mysql"])
def test_pipeline_extracts_transforms_loads_and_verifies_then_resumes(demo_api: DemoApi, tmp_path: Path,
                                                                      warehouse: str,
                                                                      request: pytest.FixtureRequest) -> None:
    db = f"sqlite:///{tmp_path / 'wh.db'}" if warehouse == "sqlite" else str(request.getfixturevalue("mysql_url"))
    params = {"api_url": demo_api.url, "work_dir": str(tmp_path / "work"), "database_url": db, "run_key": "etl-1",
              "page_size": 200}
    first = etl_demo(**params)
    bad = sum(1 for i in range(1500) if order(i)["amount"] == "n/a")
    assert first.ok, first.message
    assert (first.total, first.succeeded, first.failed) == (1500, 1500 - bad, bad)
    assert first.succeeded + first.failed + first.skipped == first.total
    assert count_rows(db, "orders") == 1500 - bad
    assert "verify" in first.extra and first.chunks_resumed == 0
    again = etl_demo(**params)
    assert again.ok and again.chunks_resumed == again.chunks_total > 0  # every stage resumed, nothing redone
    assert count_rows(db, "orders") == 1500 - bad


def test_a_refused_token_fails_the_extract_stage_with_a_clear_message(demo_api: DemoApi, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_HTTP_TOKEN", "wrong-token-value")
    with pytest.raises(Exception, match="stage extract failed"):
        etl_demo(api_url=demo_api.url, work_dir=str(tmp_path / "w"), database_url=f"sqlite:///{tmp_path / 'x.db'}",
                 run_key="etl-bad")


def test_a_password_url_is_refused_as_a_flow_parameter_and_kept_masked_from_python(demo_api: DemoApi,
                                                                                    tmp_path: Path,
                                                                                    mysql_url: str) -> None:
    """Prefect stores flow parameters and shows them in its UI: a plain URL with a password is refused there
    (a Secret block, or Python), and etl_demo() passes it masked."""
    with pytest.raises(ConfigError, match="database_url: the URL holds a database password") as refused:
        EtlDemoParams.parse({"database_url": mysql_url})
    assert MY_PASSWORD not in str(refused.value) and "'secret:<block name>'" in str(refused.value)
    state = etl_demo_flow(api_url=demo_api.url, work_dir=str(tmp_path / "w"), database_url=mysql_url,
                          return_state=True)
    assert state.is_failed() and "database_url: the URL holds a database password" in (state.message or "")
    summary = etl_demo(api_url=demo_api.url, work_dir=str(tmp_path / "w2"), database_url=mysql_url, page_size=500)
    assert summary.ok and count_rows(mysql_url, "orders") == summary.succeeded
    with get_client(sync_client=True) as client:
        stored = [json.dumps(r.parameters, default=str) for r in client.read_flow_runs(limit=50)]  # refused one too
    assert not [p for p in stored if MY_PASSWORD in p]


def test_a_refused_password_url_is_masked_in_what_prefect_stored_for_the_run(tmp_path: Path) -> None:
    """The refused run's stored parameters (UI, ``prefect flow-run inspect``) show the URL with its password
    masked, and the password is in none of its state messages or logs."""
    url = "mysql+pymysql://etl:Etl-pw-3Hv@127.0.0.1:1/wh?charset=utf8mb4"
    state = etl_demo_flow(api_url="http://127.0.0.1:1", work_dir=str(tmp_path / "w"), database_url=url,
                          return_state=True)
    assert state.is_failed() and "database_url: the URL holds a database password" in (state.message or "")
    stored = stored_for_run(state.state_details.flow_run_id)
    assert stored["parameters"]["database_url"] == "mysql+pymysql://etl:***@127.0.0.1:1/wh?charset=utf8mb4"
    assert stored["parameters"]["work_dir"] == str(tmp_path / "w")
    assert any("Finished in state Failed" in log for log in stored["logs"])
    assert "Etl-pw-3Hv" not in json.dumps(stored)


def test_an_api_url_password_is_refused_and_masked_in_what_prefect_stored(tmp_path: Path) -> None:
    """etl-demo refuses it before any subflow runs, with its own advice, and masks it in its stored parameters."""
    state = etl_demo_flow(api_url="http://bob:Api-pw-6Tq@127.0.0.1:1", work_dir=str(tmp_path / "w"), return_state=True)
    assert state.is_failed() and "api_url 'http://bob:***@127.0.0.1:1' holds a password" in (state.message or "")
    assert "auth_secret=" in (state.message or "") and "secret_headers" not in (state.message or "")
    stored = stored_for_run(state.state_details.flow_run_id)
    assert stored["parameters"]["api_url"] == "http://bob:***@127.0.0.1:1"
    assert "Api-pw-6Tq" not in json.dumps(stored)
