"""Who owns the part files of an output folder: one live run at a time, and a run's results() only its own rows.

* A run into a folder another live run writes to (another run_key, as a backfill of a deployment with a fixed
  output makes) is refused up front, naming that run; the live run's parts are never deleted.
* A run_key reused with a new cache_version or handler (its chunks' records are not reused) drops the parts of
  the earlier identity, so a chunk that now fails as a whole cannot hand back the old run's rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.batch_map import batch_map
from tasks.core.outcomes import RunSummary
from tasks.core.runlock import OutputInUse
from tests.faults.helpers import finish, passed, wait_until
from tests.run_flow import start_flow, summary_in

_VERSION = {"v": "v1", "wrong_from": 10**9}


def versioned(batch: list[int]) -> list[Any]:
    """per='batch': tags each item with the current version; a chunk holding an item >= wrong_from answers
    with the wrong number of results, so the chunk fails as a whole (and writes no part)."""
    if any(x >= _VERSION["wrong_from"] for x in batch):
        return batch[:1]
    return [{"v": _VERSION["v"], "n": x} for x in batch]


def other_handler(batch: list[int]) -> list[Any]:
    """Another handler (a new identity under the same run_key): fails every chunk but the first as a whole."""
    return [{"v": "other", "n": x} for x in batch] if batch[0] == 0 else batch[:1]


@pytest.fixture(autouse=True)
def _version() -> Any:
    yield
    _VERSION.update(v="v1", wrong_from=10**9)


def test_a_second_run_into_a_live_runs_output_folder_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    out, gate, effects = tmp_path / "out", tmp_path / "gate", tmp_path / "effects.log"
    gate.mkdir()
    params = {"source": list(range(40)), "handler": "tests.faults.helpers:effect", "chunk_size": 5,
              "max_concurrency": 1, "retries": 0, "run_key": "live-a", "output": str(out), "min_success_ratio": 0}
    proc = start_flow("batch-map", params, {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": "12",
                                            "BF_EFFECTS": str(effects)})
    try:
        wait_until(lambda: passed(gate) >= 13 and len(list(out.glob("part-*.jsonl"))) >= 2, proc,
                   what="run A holding its output folder with 2 parts written")
        before = {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")}
        with pytest.raises(OutputInUse) as refused:
            batch_map(list(range(100, 110)), versioned, per="batch", chunk_size=5, run_key="other-b",
                      output=out)
        text = str(refused.value)
        assert "'live-a'" in text and f"pid {proc.pid}" in text and "its own output folder" in text
        assert {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")} == before  # nothing of A deleted
    finally:
        (gate / "open").touch()
    output = finish(proc)
    assert proc.returncode == 0, output
    a = summary_in(output, RunSummary)
    failing_or_skipped = {x for x in range(40) if x % 10 in (3, 5)}
    assert [r["item"] for r in a.results()] == [x for x in range(40) if x not in failing_or_skipped]
    # once A is done the folder is free: B takes it and reads back only its own rows
    b = batch_map(list(range(100, 110)), versioned, per="batch", chunk_size=5, run_key="other-b", output=out)
    assert [r["result"]["n"] for r in b.results()] == list(range(100, 110))


def test_runs_one_after_another_share_a_folder(tmp_path: Path) -> None:
    """The output lock goes with its run: the next run (another run_key) takes the folder over."""
    out = tmp_path / "out"
    first = batch_map(list(range(10)), versioned, per="batch", chunk_size=5, run_key="one", output=out)
    second = batch_map(list(range(10, 20)), versioned, per="batch", chunk_size=5, run_key="two", output=out)
    assert first.ok and second.ok
    assert [r["result"]["n"] for r in second.results()] == list(range(10, 20))


@pytest.mark.parametrize("change", ["cache_version", "handler"])
def test_a_run_key_reused_with_a_new_identity_reads_back_only_its_own_rows(tmp_path: Path, change: str) -> None:
    out = tmp_path / "out"
    items = list(range(10))
    first = batch_map(items, versioned, per="batch", chunk_size=5, run_key="same", output=out)
    assert [r["result"]["v"] for r in first.results()] == ["v1"] * 10
    _VERSION.update(v="v2", wrong_from=5)
    kwargs: dict[str, Any] = {"cache_version": "2"} if change == "cache_version" else {}
    second = batch_map(items, versioned if change == "cache_version" else other_handler, per="batch", chunk_size=5,
                       run_key="same", output=out, chunk_retries=0, raise_on_failure=False, **kwargs)
    assert (second.succeeded, second.failed, second.chunks_resumed) == (5, 5, 0)
    rows = list(second.results())
    assert [r["result"]["n"] for r in rows] == [0, 1, 2, 3, 4]
    assert {r["result"]["v"] for r in rows} == ({"v2"} if change == "cache_version" else {"other"})
    assert sorted(p.name for p in out.glob("part-*")) == ["part-000000.jsonl"]


def test_a_resumed_run_of_the_same_identity_keeps_its_parts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _VERSION.update(wrong_from=5)
    first = batch_map(list(range(10)), versioned, per="batch", chunk_size=5, run_key="resume", output=out,
                      chunk_retries=0, raise_on_failure=False)
    assert (first.succeeded, first.failed) == (5, 5)
    part = (out / "part-000000.jsonl").read_bytes()
    _VERSION.update(wrong_from=10**9)
    second = batch_map(list(range(10)), versioned, per="batch", chunk_size=5, run_key="resume", output=out)
    assert second.ok and second.chunks_resumed == 1
    assert (out / "part-000000.jsonl").read_bytes() == part
    assert [json.loads(line)["result"]["n"] for p in sorted(out.glob("part-*")) for line in p.read_text().splitlines()
            ] == list(range(10))
