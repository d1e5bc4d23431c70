"""db_migrate's URL parameters and Prefect: a deployment, the CLI or ``db_migrate_flow(...)`` pass them as plain
JSON, which Prefect stores with the flow run and shows in its UI, so a plain URL holding a password is refused
there (the way batch_map refuses one as a query source); the Python ``db_migrate()`` / ``db_verify()`` pass
URLs as SecretStr, which Prefect stores masked, and keep working with passwords."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from flows.db_migrate import DbMigrateParams, db_migrate, db_migrate_flow, db_verify
from tasks.core.errors import ConfigError

SQLITE = "sqlite:///{}"


def _stored_parameters(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return json.dumps(client.read_flow_run(flow_run_id).parameters, default=str)


@pytest.mark.parametrize("name", ["source_url", "target_url"])
def test_a_plain_url_with_a_password_is_refused_naming_the_parameter_and_the_way_out(
        name: str, pg_cluster: Any, tmp_path: Path) -> None:
    urls = {"source_url": SQLITE.format(tmp_path / "a.db"), "target_url": SQLITE.format(tmp_path / "b.db"),
            name: pg_cluster.url("shop")}
    with pytest.raises(ConfigError) as refused:
        DbMigrateParams.parse({**urls, "table": "orders"})
    text = str(refused.value)
    assert f"{name}: the URL holds a database password" in text
    assert f"{name}='secret:" in text and f"BATCHFLOWS_DB_{name.upper()}" in text and "db_migrate() from Python" in text
    assert pg_cluster.password not in text


def test_what_is_not_refused_and_a_password_option_that_is(tmp_path: Path) -> None:
    ok = {"target_url": SQLITE.format(tmp_path / "b.db"), "table": "orders"}
    for url in ("postgresql+psycopg://reader@db.internal:5432/shop", "secret:shop-db",
                SecretStr("postgresql+psycopg://u:pw-in-python@db/shop")):  # the last: what db_migrate() passes
        assert DbMigrateParams.parse({**ok, "source_url": url}).source_url is not None
    with pytest.raises(ConfigError, match="source_url: the URL holds a database password"):
        DbMigrateParams.parse({**ok, "source_url": "postgresql+psycopg://u@db/shop?password=opt-s3cret"})


def test_the_flow_called_with_a_password_url_fails_before_any_work_and_python_keeps_working(
        pg_items: str, pg_cluster: Any, tmp_path: Path) -> None:
    target = SQLITE.format(tmp_path / "copy.db")
    state = db_migrate_flow(source_url=pg_items, target_url=target, table="items", return_state=True)
    assert state.is_failed() and "source_url: the URL holds a database password" in (state.message or "")
    assert pg_cluster.password not in (state.message or "")
    assert not (tmp_path / "copy.db").exists()  # nothing was copied
    summary = db_migrate(pg_items, target, "items")  # Python: the URL travels as SecretStr, stored masked
    assert summary.ok and summary.succeeded > 0
    assert pg_cluster.password not in _stored_parameters(summary.flow_run_id)
    checked = db_verify(pg_items, target, "items")
    assert checked.ok and pg_cluster.password not in _stored_parameters(checked.flow_run_id)
