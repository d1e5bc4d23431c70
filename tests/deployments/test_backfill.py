"""deployments/backfill.py: each backfill run of a deployment with a fixed ``output`` writes its own folder (two
live runs into one folder are refused with OutputInUse), except an incremental extraction, whose watermark belongs
to its folder. The runs themselves: tests/deployments/test_deploy_e2e.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import IntervalSchedule

from deployments.backfill import backfill, own_output


def test_each_backfill_run_gets_its_own_output_folder_under_the_deployments() -> None:
    label = "backfill-20260101T001500Z"
    assert own_output({"output": ".batchflows/deployed/customers/", "items": [1]}, label) == {
        "output": f".batchflows/deployed/customers/{label}"}
    assert own_output({"output": "s3://bucket/orders-raw"}, label) == {"output": f"s3://bucket/orders-raw/{label}"}
    assert own_output({"items": [1]}, label) == {}  # no output: nothing to separate
    assert own_output({"output": "out", "incremental": {"param": "since", "record_field": "updated_at"}}, label) == {}


def test_a_file_transform_backfill_run_gets_its_own_output_dir() -> None:
    """file_transform's folder parameter is ``output_dir``, not ``output``; an incremental one keeps its folder."""
    label = "backfill-20260901T010000Z"
    params = {"source": "in/*.csv", "output_dir": ".batchflows/deployed/orders-clean"}
    assert own_output(params, label) == {"output_dir": f".batchflows/deployed/orders-clean/{label}"}
    assert own_output({**params, "incremental": True}, label) == {}


def _deploy_interval(name: str, schedule: IntervalSchedule) -> str:
    async def create() -> str:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("backfill-anchor-test")
            await client.create_deployment(flow_id, name, entrypoint="flows/batch_map.py:batch_map_flow",
                                           schedules=[DeploymentScheduleCreate(schedule=schedule, active=False)])
        return f"backfill-anchor-test/{name}"
    return asyncio.run(create())


def test_an_interval_schedule_anchored_at_deploy_time_is_refused_not_run_again() -> None:
    """prefect.yaml's interval without anchor_date is anchored at `prefect deploy`'s "now": every redeploy moved
    the times, the finished runs' names no longer matched, and a repeated backfill ran everything again."""
    name = _deploy_interval("unanchored", IntervalSchedule(interval=timedelta(hours=6)))
    start, end = datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 8, 1, 23, 59, tzinfo=UTC)
    with pytest.raises(SystemExit, match=r"interval schedule anchored at its last deploy .* fixed anchor_date"):
        asyncio.run(backfill(name, start, end, {}, dry_run=True))
    anchored = _deploy_interval("anchored", IntervalSchedule(interval=timedelta(hours=6),
                                                             anchor_date=datetime(2026, 1, 1, tzinfo=UTC)))
    assert asyncio.run(backfill(anchored, start, end, {}, dry_run=True)) == [
        f"would  backfill-20260801T{h}0000Z" for h in ("00", "06", "12", "18")]
