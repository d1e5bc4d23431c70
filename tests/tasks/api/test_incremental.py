"""api_extract's watermark: start values, resume from the checkpoint, the newest record field."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.api.incremental import ApiIncremental, ExtractWatermark, newest_of
from tasks.core.exactjson import JsonNumber, loads_exact
from tasks.core.outcomes import RunSummary
from tasks.core.watermarks import read_watermark, watermark_path

SPEC = ApiIncremental(param="updated_since", record_field="meta.updated_at")


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        self.last = msg

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def test_newest_of_follows_a_dotted_path_and_skips_records_without_it() -> None:
    records = [{"meta": {"updated_at": "2026-01-02T00:00:00Z"}}, {"meta": {}}, {"meta": {"updated_at": "2026-01-03"}}]
    seen = newest_of(records, "meta.updated_at")
    assert seen is not None and seen.best == {"date-time": "2026-01-03"} and seen.counts == {"date-time": 2}
    assert newest_of([], "meta.updated_at") is None and newest_of([{"meta": {}}], "meta.updated_at") is None


def test_a_number_field_kept_as_its_text_is_a_watermark_by_its_exact_value() -> None:
    records = loads_exact('[{"v": 1700000000.50}, {"v": 1700000001}, {"v": 1.7e9}]')
    assert newest_of(records, "v").best["number"] == 1700000001  # type: ignore[union-attr]
    newest = newest_of(records[:1], "v").best["number"]  # type: ignore[union-attr]
    assert type(newest) is JsonNumber and str(newest) == "1700000000.50"  # sent and stored as the API wrote it
    ties = loads_exact('[{"v": 1767225625.999999999}, {"v": 1767225625.9999999989}, {"v": 1767225600.5}]')
    assert str(newest_of(ties, "v").best["number"]) == "1767225625.999999999"  # type: ignore[union-attr]


def test_a_sub_microsecond_number_is_stored_sent_and_checkpointed_as_written(state_dir: Path) -> None:
    spec = ApiIncremental(param="since", record_field="v")
    w = ExtractWatermark(spec=spec, flow="api-extract", stream="s2")
    assert w.start(None) == {}
    w.saw(newest_of(loads_exact('[{"v": 1767225600.5}, {"v": 1767225625.999999999}]'), "v"))
    resumed = ExtractWatermark(spec=spec, flow="api-extract", stream="s2")
    resumed.start(json.loads(json.dumps(w.checkpoint(), default=str)))  # as the run dir writes and reads it
    assert str(resumed.newest) == "1767225625.999999999"
    summary = RunSummary(flow="api-extract", run_key="r1")
    resumed.finish(summary, complete=True, run_key="r1", log=Log())
    assert summary.extra["watermark_after"] == "1767225625.999999999"  # exact (not the double 1767225626.0)
    assert '"value": 1767225625.999999999' in watermark_path("api-extract", "s2").read_text()  # a JSON number
    nxt = ExtractWatermark(spec=spec, flow="api-extract", stream="s2")
    assert {k: str(v) for k, v in nxt.start(None).items()} == {"since": "1767225625.999999999"}
    nxt.saw(newest_of([{"v": 1767225626.0}], "v"))
    assert nxt.newest == 1767225626.0  # numbers compare exactly: 1767225626.0 is later


def test_a_float_watermark_stored_by_an_older_version_still_loads(state_dir: Path) -> None:
    path = watermark_path("api-extract", "old")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"value": 1767225626.0, "param": "since", "record_field": "v", "run_key": "r0"}')
    w = ExtractWatermark(spec=ApiIncremental(param="since", record_field="v"), flow="api-extract", stream="old")
    assert w.start(None) == {"since": 1767225626.0}
    resumed = ExtractWatermark(spec=w.spec, flow="api-extract", stream="old")
    resumed.start({"before": 1767225626.0, "newest": 1767225627.5})  # an older version's checkpoint
    assert resumed.newest == 1767225627.5 and resumed.resumed


def test_values_of_another_kind_are_counted_and_not_the_watermark(state_dir: Path) -> None:
    spec = ApiIncremental(param="since", record_field="at")
    records = [{"at": "2026-03-01T00:00:00Z"}, {"at": 0}, {"at": "2026-02-01T00:00:00Z"}, {"at": 5}, {"at": -1}]
    w = ExtractWatermark(spec=spec, flow="api-extract", stream="mixed")
    w.start(None)
    w.saw(newest_of(records[:2], "at"))
    w.saw(newest_of(records[2:], "at"))  # most values are numbers: the run's kind is the majority's
    log = Log()
    w.finish(RunSummary(flow="api-extract", run_key="r1"), complete=True, run_key="r1", log=log)
    assert read_watermark("api-extract", "mixed")["value"] == 5  # type: ignore[index]
    assert len(log.warnings) == 1 and "'at'" in log.warnings[0] and "2 date-time, 3 number" in log.warnings[0]

    first_seen = ExtractWatermark(spec=spec, flow="api-extract", stream="tie", reset=True)
    first_seen.start(None)
    first_seen.saw(newest_of(records[:2], "at"))  # a tie: the first kind seen (the sentinel does not win)
    assert first_seen.newest == "2026-03-01T00:00:00Z"

    stored = ExtractWatermark(spec=spec, flow="api-extract", stream="mixed")
    stored.start(None)
    stored.saw(newest_of([{"at": "2026-03-01T00:00:00Z"}], "at"))  # not the stored watermark's kind
    log = Log()
    stored.finish(RunSummary(flow="api-extract", run_key="r2"), complete=True, run_key="r2", log=log)
    assert read_watermark("api-extract", "mixed")["value"] == 5  # type: ignore[index]
    assert "1 date-time" in log.warnings[0] and "stored watermark" in log.warnings[0]


def test_first_run_then_stored_then_checkpointed(state_dir: Path) -> None:
    w = ExtractWatermark(spec=SPEC.model_copy(update={"initial": "2020-01-01"}), flow="api-extract", stream="s1")
    assert w.start(None) == {"updated_since": "2020-01-01"}  # nothing stored: the initial value
    w.saw(newest_of([{"meta": {"updated_at": "2026-01-02T00:00:00Z"}}], SPEC.record_field))
    summary = RunSummary(flow="api-extract", run_key="r1")
    w.finish(summary, complete=True, run_key="r1", log=Log())
    assert read_watermark("api-extract", "s1")["value"] == "2026-01-02T00:00:00Z"  # type: ignore[index]

    nxt = ExtractWatermark(spec=SPEC, flow="api-extract", stream="s1")
    assert nxt.start(None) == {"updated_since": "2026-01-02T00:00:00Z"}
    nxt.saw(newest_of([{"meta": {"updated_at": "2026-01-05T00:00:00Z"}}], SPEC.record_field))
    failed = RunSummary(flow="api-extract", run_key="r2")
    nxt.finish(failed, complete=False, run_key="r2", log=Log())
    assert failed.extra["watermark_after"] == "2026-01-02T00:00:00Z"  # kept
    assert read_watermark("api-extract", "s1")["value"] == "2026-01-02T00:00:00Z"  # type: ignore[index]

    resumed = ExtractWatermark(spec=SPEC, flow="api-extract", stream="s1", reset=True)
    assert resumed.start({"before": "2025-12-31", "newest": "2026-01-04"}) == {"updated_since": "2025-12-31"}
    assert resumed.resumed and resumed.newest == "2026-01-04"  # the checkpoint wins over reset and the store
