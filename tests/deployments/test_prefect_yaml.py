"""prefect.yaml as a user deploys it by hand: `prefect deploy --all` from the checkout, no environment variable set,
then what the server stored (pull step, schedules, concurrency) and what a backfill makes of it."""

from __future__ import annotations

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


def deployment(api: str, name: str) -> dict[str, object]:
    return httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()


@pytest.fixture(scope="module")
def by_hand() -> Iterator[dict[str, str]]:
    """`prefect deploy --all` as the README and prefect.yaml's header say, without BATCHFLOWS_PROJECT_DIR (only
    `make up` set it: the pull step kept '{{ $BATCHFLOWS_PROJECT_DIR }}' and every run crashed)."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHFLOWS_PROJECT_DIR"}
    pool = run([PREFECT, "work-pool", "create", "batchflows-process", "--type", "process"], env)
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr, pool.stdout + pool.stderr
    deploy = run([PREFECT, "--no-prompt", "deploy", "--all"], env)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    yield env


def test_every_deployment_runs_from_this_checkout_without_an_environment_variable(by_hand: dict[str, str]) -> None:
    api = by_hand["PREFECT_API_URL"]
    names = ["batch-map/hourly", "api-bulk/nightly", "api-extract/every-6h", "file-transform/daily", "db-migrate/weekly",
             "db-migrate/hourly-incremental", "replay-dead-letters/on-demand", "etl-demo/daily"]
    for name in names:
        assert deployment(api, name)["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}], name


def test_interval_schedules_keep_their_times_across_redeploys(by_hand: dict[str, str]) -> None:
    """A backfill recognises the times already done by their run names; a redeploy must not move the times."""
    cmd = [sys.executable, "-m", "deployments.backfill", "api-extract/every-6h", "--start", "2026-08-01",
           "--end", "2026-08-01T23:59", "--dry-run"]
    expected = "\n".join(f"would  backfill-20260801T{h}0000Z" for h in ("00", "06", "12", "18"))
    first = run(cmd, by_hand)
    assert first.returncode == 0 and first.stdout.strip() == expected, first.stdout + first.stderr
    again = run([PREFECT, "--no-prompt", "deploy", "-n", "every-6h"], by_hand)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = run(cmd, by_hand)
    assert second.returncode == 0 and second.stdout.strip() == expected, second.stdout + second.stderr
    for name in ("api-extract/every-6h", "etl-demo/daily"):
        anchors = [s["schedule"]["anchor_date"] for s in deployment(by_hand["PREFECT_API_URL"], name)["schedules"]
                   if "interval" in s["schedule"]]
        assert anchors and all(a.startswith("2026-01-01T00:00:00") for a in anchors), (name, anchors)


def test_the_incremental_deployment_runs_one_at_a_time(by_hand: dict[str, str]) -> None:
    """A schedule firing while the last incremental run still goes waits for it instead of running beside it."""
    stored = deployment(by_hand["PREFECT_API_URL"], "db-migrate/hourly-incremental")
    assert stored["global_concurrency_limit"]["limit"] == 1
    assert stored["concurrency_options"]["collision_strategy"] == "ENQUEUE"


def test_a_file_transform_backfill_gives_each_run_its_own_output_dir(by_hand: dict[str, str]) -> None:
    """file_transform's folder parameter is ``output_dir``: the runs all targeted the deployment's one folder, so
    all but one were refused (OutputInUse) when they overlapped."""
    api = by_hand["PREFECT_API_URL"]
    cmd = [sys.executable, "-m", "deployments.backfill", "file-transform/daily", "--start", "2026-09-01",
           "--end", "2026-09-02T23:00"]
    out = run(cmd, by_hand)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("create")]
    try:
        runs = {r["name"]: (r["parameters"]["output_dir"], r["parameters"]["run_key"])
                for r in (httpx.get(f"{api}/flow_runs/{i}", timeout=10).json() for i in ids)}
    finally:
        for i in ids:  # no worker here; other tests count the backfill runs they make
            httpx.delete(f"{api}/flow_runs/{i}", timeout=10)
    assert runs == {label: (f".batchflows/deployed/orders-clean/{label}", label)
                    for label in ("backfill-20260901T010000Z", "backfill-20260902T010000Z")}
