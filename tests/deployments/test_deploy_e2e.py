"""End to end as a user runs it: setup, `prefect deploy --all`, a worker, `prefect deployment run --watch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("deploy-state")
    env = {**{k: v for k, v in os.environ.items() if k != "BATCHFLOWS_PROJECT_DIR"},  # deployed as by hand
           "BATCHFLOWS_STATE_DIR": str(state), "PYTHONPATH": str(ROOT), "BATCHFLOWS_DEMO_ITEMS": "5000"}
    setup = run([sys.executable, "-m", "deployments.setup"], env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    deploy = run([PREFECT, "--no-prompt", "deploy", "--all"], env)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "batchflows-process"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield env
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_deployment_run_from_the_cli_completes_through_the_worker(deployed: dict[str, str]) -> None:
    out = run([PREFECT, "deployment", "run", "batch-map/hourly", "--param", "chunk_size=500", "--watch",
               "--watch-timeout", "240"], deployed, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Completed" in out.stdout
    api = os.environ["PREFECT_API_URL"]
    body = {"sort": "START_TIME_DESC", "limit": 1, "offset": 0,
            "deployments": {"name": {"any_": ["hourly"]}}}
    [flow_run] = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert "5000 items: 4998 succeeded, 1 failed, 1 skipped" in flow_run["state"]["message"]
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}},
                                                       "limit": 20, "offset": 0, "sort": "CREATED_DESC"}, timeout=10).json()
    table = next(a for a in arts if a["type"] == "table")
    rows = {r["metric"]: r["value"] for r in json.loads(table["data"])}
    assert rows["succeeded"] == 4998 and rows["state"] == "Completed"


def summary_rows(api: str, deployment: str, *, skip: int = 0) -> dict[str, object]:
    """The summary table artifact of a deployment's latest flow run (``skip`` runs back)."""
    body = {"sort": "START_TIME_DESC", "limit": 1, "offset": skip, "deployments": {"name": {"any_": [deployment]}}}
    [flow_run] = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}},
                                                       "limit": 20, "offset": 0, "sort": "CREATED_DESC"}, timeout=10).json()
    table = next(a for a in arts if a["type"] == "table")
    return {r["metric"]: r["value"] for r in json.loads(table["data"])}


def test_the_incremental_deployment_moves_only_what_is_new(deployed: dict[str, str]) -> None:
    """Two scheduled-style runs from the CLI: the second starts at the first's watermark and moves nothing new
    (the row at the watermark itself is read again: the window's lower bound is inclusive)."""
    for _ in range(2):
        out = run([PREFECT, "deployment", "run", "db-migrate/hourly-incremental", "--watch", "--watch-timeout", "240"],
                  deployed, timeout=300)
        assert out.returncode == 0 and "Completed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    api = os.environ["PREFECT_API_URL"]
    first, second = summary_rows(api, "hourly-incremental", skip=1), summary_rows(api, "hourly-incremental")
    assert first["watermark_after"] is not None and second["watermark_before"] == first["watermark_after"]
    assert second["rows_copied"] == 1 and second["watermark_after"] == first["watermark_after"]


def test_a_wrongly_typed_parameter_is_refused_with_a_clear_message(deployed: dict[str, str]) -> None:
    out = run([PREFECT, "deployment", "run", "batch-map/hourly", "--param", "chunk_size=lots"], deployed)
    assert out.returncode != 0
    assert "chunk_size" in (out.stdout + out.stderr)


def test_setup_is_idempotent(deployed: dict[str, str]) -> None:
    again = run([sys.executable, "-m", "deployments.setup"], deployed)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout and again.stdout.count("exists") >= 6
    deploy = run([PREFECT, "--no-prompt", "deploy", "--all"], deployed)
    assert deploy.returncode == 0, deploy.stdout[-2000:]


def test_backfill_creates_one_run_per_scheduled_time_and_skips_existing(deployed: dict[str, str]) -> None:
    # batch-map/hourly runs at minute 15 (Europe/Berlin): 00:15..02:15 UTC+1 in this window -> 3 times
    cmd = [sys.executable, "-m", "deployments.backfill", "batch-map/hourly", "--start", "2026-01-01T00:00:00+01:00",
           "--end", "2026-01-01T03:00:00+01:00", "--param", "chunk_size=1000"]
    first = run(cmd, deployed)
    assert first.returncode == 0, first.stderr
    created = [line for line in first.stdout.splitlines() if line.startswith("create")]
    assert [line.split()[1] for line in created] == [
        "backfill-20251231T231500Z", "backfill-20260101T001500Z", "backfill-20260101T011500Z"]
    second = run(cmd, deployed)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("skip") == 3 and "create" not in second.stdout
    api = os.environ["PREFECT_API_URL"]
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["backfill"]}}, "limit": 50,
                                                       "offset": 0, "sort": "START_TIME_DESC"}, timeout=10).json()
    assert len(runs) == 3
    assert {r["parameters"]["run_key"] for r in runs} == {r["name"] for r in runs}


def test_etl_demo_deployment_runs_every_stage_through_the_worker(deployed: dict[str, str], tmp_path: Path) -> None:
    from deployments.demo_api import running

    with running(orders=1200) as api:
        out = run([PREFECT, "deployment", "run", "etl-demo/daily", "--param", f"api_url={api.url}",
                   "--param", f"work_dir={tmp_path / 'etl'}", "--param", f"database_url=sqlite:///{tmp_path / 'wh.db'}",
                   "--watch", "--watch-timeout", "240"], deployed, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Completed" in out.stdout
    api_url = os.environ["PREFECT_API_URL"]
    body = {"sort": "START_TIME_DESC", "limit": 1, "offset": 0, "deployments": {"name": {"any_": ["daily"]}},
            "flows": {"name": {"any_": ["etl-demo"]}}}
    [flow_run] = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert "orders has 1198 rows; the transform wrote 1198" in flow_run["state"]["message"]


def test_the_api_bulk_demo_dead_letters_its_404_and_completes(deployed: dict[str, str], tmp_path: Path) -> None:
    """prefect.yaml's description says 404s are dead-lettered: its default ids include one the demo API 404s."""
    from deployments.demo_api import running

    with running() as demo:
        out = run([PREFECT, "deployment", "run", "api-bulk/nightly", "--param", f"base_url={demo.url}",
                   "--param", f"output={tmp_path / 'customers'}", "--watch", "--watch-timeout", "240"],
                  deployed, timeout=300)
    assert out.returncode == 0 and "Completed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    rows = summary_rows(os.environ["PREFECT_API_URL"], "nightly")
    assert rows["succeeded"] == 9 and rows["failed"] == 1, rows
