"""bench/huge.py: disk use by part of the state layout, RSS per quarter, the verdicts, one real small run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.huge import HugeRun, disk_use, rss_quarters, run_one, verdicts
from tasks.core.outcomes import RunSummary


def test_disk_use_splits_records_journals_and_the_plan(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "batch-map" / "k"
    (run / "chunks").mkdir(parents=True)
    (run / "journal").mkdir()
    (run / "chunks" / "a").write_bytes(b"x" * 5000)
    (run / "journal" / "b.jsonl").write_bytes(b"y" * 100)
    (run / "plan.log").write_text("100\n200\n")
    (run / "summary.json").write_text("{}")
    use = disk_use(tmp_path)
    assert set(use) == {"records", "journals", "plan.log", "other"}
    assert use["records"] >= 5000 and 0 < use["journals"] < use["records"]
    assert disk_use(tmp_path / "missing") == {}


def test_rss_quarters_shows_the_peak_of_each_quarter() -> None:
    history = [(0.0, 10_000_000), (1.0, 50_000_000), (2.0, 40_000_000), (3.0, 45_000_000), (4.0, 20_000_000)]
    assert rss_quarters(history) == "10 / 50 / 40 / 45"
    assert rss_quarters([]) == "-"


def _run(items: int, maxrss_mb: float, task_runs: int) -> HugeRun:
    summary = RunSummary(flow="batch-map", run_key="k", total=items, succeeded=items, chunks_total=task_runs)
    return HugeRun(items, maxrss_mb=maxrss_mb, sampled_rss_mb=maxrss_mb, task_runs=task_runs, counts_ok=True,
                   summary=summary)


def test_verdicts_pass_within_ten_percent_and_one_task_run_per_10k_items() -> None:
    rows = verdicts([_run(10_000_000, 140.0, 111), _run(100_000_000, 150.0, 1_011)])
    assert [r["result"] for r in rows] == ["PASS"] * 5
    rows = verdicts([_run(10_000_000, 140.0, 111), _run(100_000_000, 160.0, 20_000)])
    assert [r["result"] for r in rows] == ["MISS", "PASS", "MISS", "PASS", "PASS"]


@pytest.mark.slow
def test_a_small_run_counts_its_task_runs_on_the_server_and_adds_up(tmp_path: Path) -> None:
    run = run_one(20_000, state=tmp_path / "huge-state", api_url=os.environ["PREFECT_API_URL"],
                  target_chunk_seconds=1.0, max_concurrency=2)
    assert run.counts_ok and run.summary.succeeded == 20_000
    assert run.task_runs == run.chunks == run.summary.chunks_total > 1
    assert run.maxrss_mb > 0 and run.sampled_rss_mb > 0 and run.largest_chunk > 100
    assert run.disk_end.get("records", 0) > 0 and run.disk_end.get("journals", 0) == 0
