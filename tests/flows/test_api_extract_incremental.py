"""api_extract incremental, as scheduled runs use it: a real loopback API with an ``updated_since`` filter
(inclusive, as most APIs have it); each run asks from the last complete run's maximum; a SIGKILLed run
resumes with the same request parameters (no gap, nothing twice) and stores the watermark only when done.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flows.api_extract import ApiExtractParams, api_extract
from tasks.core import ConfigError
from tasks.core.outcomes import RunSummary
from tasks.core.state import _main as state_cli
from tasks.core.watermarks import read_watermark
from tests.faults.helpers import finish, kill, wait_until
from tests.run_flow import start_flow, summary_in
from tests.tasks.api import loopback

BASE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
INCREMENTAL = {"param": "updated_since", "record_field": "updated_at"}
A = TypeVar("A", bound="_PagedApi")


class _PagedApi:
    """``GET {path}?updated_since=&offset=&limit=``, answered through :func:`tests.tasks.api.loopback.raw_api`:
    the records :meth:`matching` gives (as JSON text) sliced by offset and limit; ``seen`` keeps each query."""

    path = ""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.hold_after: int | None = None  # requests past this number wait (so a SIGKILL lands mid-run)
        self.release = threading.Event()
        self.url = ""

    def matching(self, since: str | None) -> list[str]:
        raise NotImplementedError

    def answer(self, request: loopback.Seen) -> tuple[int, dict[str, str], bytes]:
        query = {k: v[0] for k, v in request.query.items()}
        self.seen.append(query)
        if self.hold_after is not None and len(self.seen) > self.hold_after:
            self.release.wait(60)
        rows = self.matching(query.get("updated_since"))
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 10))
        return 200, {}, ('{"data": [' + ",".join(rows[offset:offset + limit]) + "]}").encode()


@contextmanager
def serving(api: A) -> Iterator[A]:
    """``api`` answering on a loopback server (its ``url`` set) until the block ends; held requests are released."""
    with loopback.raw_api(api.answer) as (url, _):
        api.url = url + api.path
        try:
            yield api
        finally:
            api.release.set()


class ChangesApi(_PagedApi):
    """Records with updated_at >= updated_since, oldest first."""

    path = "/changes"

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, dict[str, Any]] = {}

    def matching(self, since: str | None) -> list[str]:
        rows = sorted((r for r in self.records.values() if since is None or r["updated_at"] >= since),
                      key=lambda r: (r["updated_at"], r["id"]))
        return [json.dumps(r) for r in rows]

    def put(self, ids: range | list[int], at: dt.datetime, name: str = "Basic monthly") -> None:
        for i in ids:
            self.records[i] = {"id": i, "name": f"{name} {i}", "updated_at": (at + dt.timedelta(seconds=i)).isoformat()}

    def newest(self) -> str:
        return max(r["updated_at"] for r in self.records.values())


@pytest.fixture
def changes() -> Iterator[ChangesApi]:
    with serving(ChangesApi()) as api:
        yield api


def records_of(summary: RunSummary) -> list[dict[str, Any]]:
    return summary.results()


def test_each_run_asks_from_the_last_complete_runs_maximum(changes: ChangesApi, tmp_path: Path) -> None:
    changes.put(range(1, 96), BASE)
    out = tmp_path / "out"

    def run(**kwargs: Any) -> RunSummary:
        s = api_extract(changes.url, output=out, page_size=10, pages_per_part=3, incremental=INCREMENTAL, **kwargs)
        assert s.ok, s.render_text()
        return s

    first = run()
    assert first.total == 95 and first.extra["watermark_before"] is None
    assert first.extra["watermark_after"] == changes.newest() and first.extra["lag_s"] > 0
    assert "updated_since" not in changes.seen[0]
    assert Path(first.output_path or "").parent == out and Path(first.output_path or "").name.startswith("run-")
    assert [r["name"] for r in records_of(first)][:2] == ["Basic monthly 1", "Basic monthly 2"]  # data exact

    changes.seen.clear()
    changes.put([3, 4, 5], BASE + dt.timedelta(days=1), name="changed")
    changes.put(range(96, 106), BASE + dt.timedelta(days=1))
    second = run()
    assert {q.get("updated_since") for q in changes.seen} == {first.extra["watermark_after"]}
    assert second.total == 1 + 13  # the boundary record again (the API's filter is inclusive), the 13 changes
    assert second.extra["watermark_before"] == first.extra["watermark_after"]
    assert second.extra["watermark_after"] == changes.newest()
    assert {r["id"] for r in records_of(second)} == {95, 3, 4, 5, *range(96, 106)}
    assert len(list(out.glob("run-*"))) == 2  # each run's parts in their own directory, none replaced

    third = run()
    assert third.total == 1 and third.extra["watermark_after"] == second.extra["watermark_after"]
    everything = run(reset_incremental=True)
    assert everything.total == 105 and everything.extra["watermark_before"] is None

    assert state_cli(["reset-incremental", "--flow", "api-extract"]) == 0
    assert run().total == 105  # forgotten: starts over


def test_a_killed_incremental_run_resumes_with_the_same_start_and_stores_only_when_done(
        changes: ChangesApi, tmp_path: Path) -> None:
    changes.put(range(1, 41), BASE)
    out = tmp_path / "out"
    params: dict[str, Any] = {"url": changes.url, "output": str(out), "page_size": 10, "pages_per_part": 1,
                              "incremental": INCREMENTAL, "run_key": "inc-extract"}
    first = api_extract(**{**params, "run_key": "first"})
    changes.put(range(1, 61), BASE + dt.timedelta(days=1), name="changed")  # 60 changed, 20 of them new

    changes.seen.clear()
    changes.hold_after = 3  # three pages answered, the fourth waits: the SIGKILL lands mid-run
    proc = start_flow("flows.api_extract:api_extract", params)
    run_dir = out / "run-inc-extract"
    wait_until(lambda: len(list(run_dir.glob("part-*.jsonl"))) >= 3 and len(changes.seen) > 3, proc,
               what="three parts and the fourth request")
    kill(proc)
    stream = ApiExtractParams(**{k: v for k, v in params.items() if k != "run_key"}).identity()
    assert read_watermark("api-extract", stream)["value"] == first.extra["watermark_after"]  # not moved

    changes.hold_after = None
    changes.release.set()
    changes.seen.clear()
    rerun = start_flow("flows.api_extract:api_extract", params)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    s = summary_in(output, RunSummary)
    assert s.ok and s.chunks_resumed >= 3 and s.extra["watermark_before"] == first.extra["watermark_after"]
    assert {q.get("updated_since") for q in changes.seen} == {first.extra["watermark_after"]}  # same start
    ids = [json.loads(line)["id"] for p in sorted(run_dir.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(ids) == list(range(1, 61)) and len(ids) == 60  # every change once, none twice
    assert s.extra["watermark_after"] == changes.newest()


def test_incremental_with_max_pages_is_refused(changes: ChangesApi, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_pages"):
        api_extract(changes.url, output=tmp_path, incremental=INCREMENTAL, max_pages=2)
    with pytest.raises(ConfigError, match="record_field"):
        api_extract(changes.url, output=tmp_path, incremental={"param": "since"})


class RawApi(_PagedApi):
    """Records kept as JSON text (numbers as written), in the order added, those with updated_at >= updated_since
    (numbers exactly, ISO date-times as instants, as epochs)."""

    path = "/raw"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []

    def matching(self, since: str | None) -> list[str]:
        return [r for r in self.rows
                if since is None or _epoch(json.loads(r, parse_float=Decimal)["updated_at"]) >= _epoch(since)]


def _epoch(value: Any) -> Decimal:
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError):
        return Decimal(str(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()))


@pytest.fixture
def raw_api() -> Iterator[RawApi]:
    with serving(RawApi()) as api:
        yield api


def test_a_numeric_watermark_is_kept_and_sent_as_the_api_wrote_it(raw_api: RawApi, tmp_path: Path) -> None:
    raw_api.rows += ['{"id": 1, "updated_at": 1767225600.5}', '{"id": 2, "updated_at": 1767225625.999999999}']
    out = tmp_path / "out"
    first = api_extract(raw_api.url, output=out, page_size=10, incremental=INCREMENTAL)
    assert first.ok and first.extra["watermark_after"] == "1767225625.999999999"  # not the double 1767225626.0
    raw_api.rows.append('{"id": 3, "updated_at": 1767225625.999999999}')  # at the watermark, committed late
    raw_api.seen.clear()
    second = api_extract(raw_api.url, output=out, page_size=10, incremental=INCREMENTAL)
    assert {q.get("updated_since") for q in raw_api.seen} == {"1767225625.999999999"}
    assert second.ok and [r["id"] for r in records_of(second)] == [2, 3]  # the record at the watermark again
    lines = [line for p in sorted(Path(second.output_path or "").glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert '"updated_at": 1767225625.999999999' in lines[1]  # data exact


def test_values_of_another_kind_do_not_become_the_watermark(
        raw_api: RawApi, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw_api.rows += ['{"id": 1, "updated_at": "2026-03-01T00:00:00Z"}', '{"id": 2, "updated_at": 0}']
    out = tmp_path / "out"
    first = api_extract(raw_api.url, output=out, page_size=10, incremental=INCREMENTAL)
    assert first.ok and first.total == 2 and first.extra["watermark_after"] == "2026-03-01T00:00:00Z"
    warned = [r.getMessage() for r in caplog.records if "more than one kind" in r.getMessage()]
    assert len(warned) == 1 and "'updated_at'" in warned[0] and "1 date-time, 1 number" in warned[0]
    raw_api.seen.clear()
    second = api_extract(raw_api.url, output=out, page_size=10, incremental=INCREMENTAL)
    assert {q.get("updated_since") for q in raw_api.seen} == {"2026-03-01T00:00:00Z"}
    assert second.total == 1 and second.extra["watermark_after"] == "2026-03-01T00:00:00Z"
