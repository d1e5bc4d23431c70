"""Backfill a deployment: one flow run per scheduled time in a range.

    python -m deployments.backfill 'batch-map/hourly' --start 2026-01-01 --end 2026-01-07 [--param k=v] [--dry-run]

The times come from the deployment's own schedules (cron, interval, rrule; active or not). Each run
gets ``run_key = backfill-<time>`` as a parameter (so an interrupted backfill run resumes when it is
run again), the name ``backfill-<time>``, the tag ``backfill`` and a Scheduled state at that time. Times
that already have a run of this deployment which completed, or is still scheduled or running, are
skipped; failed or crashed ones get a new run (which resumes the old one's finished chunks). An interval
schedule without a fixed ``anchor_date`` is refused: `prefect deploy` anchors it at the moment it runs, so each
redeploy moves its times and the runs already done would no longer be recognised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

ACTIVE_OR_DONE = {"COMPLETED", "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"}


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        msg = f"{value!r} is not an ISO date or datetime (e.g. 2026-01-01 or 2026-01-01T06:00)"
        raise argparse.ArgumentTypeError(msg) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        msg = f"--param {value!r} must look like key=value"
        raise argparse.ArgumentTypeError(msg)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def run_name(when: datetime) -> str:
    return "backfill-" + when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


async def scheduled_times(schedules: list[Any], start: datetime, end: datetime) -> list[datetime]:
    from prefect.server.schemas import schedules as server_schedules

    kinds = {"IntervalSchedule": server_schedules.IntervalSchedule, "CronSchedule": server_schedules.CronSchedule,
             "RRuleSchedule": server_schedules.RRuleSchedule}
    times: set[datetime] = set()
    for deployment_schedule in schedules:
        schedule = deployment_schedule.schedule
        kind = kinds.get(type(schedule).__name__)
        if kind is None:
            continue
        server_schedule = kind.model_validate(schedule.model_dump())
        times.update(await server_schedule.get_dates(n=10_000, start=start, end=end))
    return sorted(t for t in times if start <= t <= end)


def unanchored_intervals(schedules: list[Any]) -> list[str]:
    """Interval schedules anchored when `prefect deploy` ran (a prefect.yaml interval without ``anchor_date`` gets
    the current time, fractions of a second included; a hand-written anchor has none)."""
    return [f"every {s.schedule.interval.total_seconds():g} s from {s.schedule.anchor_date.isoformat()}"
            for s in schedules
            if type(s.schedule).__name__ == "IntervalSchedule" and s.schedule.anchor_date.microsecond]


def _refuse_unanchored(name: str, schedules: list[Any]) -> None:
    if unanchored := unanchored_intervals(schedules):
        msg = (f"deployment {name!r} has an interval schedule anchored at its last deploy ({'; '.join(unanchored)}):"
               " every `prefect deploy` moves its times, so the runs already done would not be recognised and would"
               " run again; give the schedule a fixed anchor_date in prefect.yaml (e.g. anchor_date:"
               ' "2026-01-01T00:00:00") and deploy again')
        raise SystemExit(msg)


OUTPUT_PARAMETERS = ("output", "output_dir")  # api_bulk, api_extract / file_transform


def own_output(parameters: dict[str, Any], label: str) -> dict[str, Any]:
    """The output folder of one backfill run (``output``, or file_transform's ``output_dir``): its own folder under
    the deployment's (two live runs into one folder are refused, OutputInUse), so the runs can overlap. An incremental
    run keeps its folder (the watermark or file manifest belongs to it) and runs one time at a time."""
    if parameters.get("incremental"):
        return {}
    return {key: f"{out.rstrip('/')}/{label}" for key in OUTPUT_PARAMETERS
            if isinstance(out := parameters.get(key), str) and out}


async def backfill(name: str, start: datetime, end: datetime, params: dict[str, Any], dry_run: bool) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Scheduled

    lines: list[str] = []
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            msg = f"deployment {name!r} not found; names look like 'batch-map/hourly' (see `prefect deployment ls`)"
            raise SystemExit(msg) from None
        _refuse_unanchored(name, deployment.schedules)
        times = await scheduled_times(deployment.schedules, start, end)
        if not times:
            return [f"{name}: no scheduled times between {start.isoformat()} and {end.isoformat()}"]
        labels = [run_name(t) for t in times]
        taken: set[str] = set()
        for i in range(0, len(labels), 200):  # the API returns at most 200 runs per call
            existing = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["backfill"]), name=FlowRunFilterName(any_=labels[i : i + 200])
                ),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                sort=FlowRunSort.START_TIME_DESC, limit=200, offset=0,
            )
            taken |= {r.name for r in existing if r.state_type is not None and r.state_type.value in ACTIVE_OR_DONE}
        for when in times:
            label = run_name(when)
            if label in taken:
                lines.append(f"skip   {label} (already completed, scheduled or running)")
                continue
            if dry_run:
                lines.append(f"would  {label}")
                continue
            own = own_output({**deployment.parameters, **params}, label)
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={**params, **own, "run_key": label}, name=label, tags=["backfill"],
                state=Scheduled(scheduled_time=when),
            )
            lines.append(f"create {label} -> flow run {run.id}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.backfill", description=__doc__.split("\n")[0])
    parser.add_argument("deployment", help="flow-name/deployment-name, e.g. batch-map/hourly")
    parser.add_argument("--start", type=parse_time, required=True)
    parser.add_argument("--end", type=parse_time, required=True)
    parser.add_argument("--param", type=parse_param, action="append", default=[], help="key=value (JSON or text)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.end < args.start:
        parser.error("--end is before --start")
    if not os.environ.get("PREFECT_API_URL"):
        parser.error("PREFECT_API_URL is not set (make up prints it)")
    lines = asyncio.run(backfill(args.deployment, args.start, args.end, dict(args.param), args.dry_run))
    print("\n".join(lines))
    created = sum(1 for line in lines if line.startswith("create"))
    print(f"{created} flow run(s) created", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
