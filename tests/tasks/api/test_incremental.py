"""api_extract's watermark: start values, resume from the checkpoint, the newest record field."""

from __future__ import annotations

from pathlib import Path

from tasks.api.incremental import ApiIncremental, ExtractWatermark, newest_of
from tasks.core.exactjson import loads_exact
from tasks.core.outcomes import RunSummary
from tasks.core.watermarks import read_watermark

SPEC = ApiIncremental(param="updated_since", record_field="meta.updated_at")


class Log:
    def info(self, msg: str) -> None:
        self.last = msg


def test_newest_of_follows_a_dotted_path_and_skips_records_without_it() -> None:
    records = [{"meta": {"updated_at": "2026-01-02T00:00:00Z"}}, {"meta": {}}, {"meta": {"updated_at": "2026-01-03"}}]
    assert newest_of(records, "meta.updated_at") == "2026-01-03"
    assert newest_of([], "meta.updated_at") is None


def test_a_number_field_kept_as_its_text_is_a_watermark_by_its_value() -> None:
    records = loads_exact('[{"v": 1700000000.50}, {"v": 1700000001}, {"v": 1.7e9}]')
    assert newest_of(records, "v") == 1700000001
    newest = newest_of(records[:1], "v")
    assert newest == 1700000000.5 and type(newest) is float  # stored as a JSON number


def test_first_run_then_stored_then_checkpointed(state_dir: Path) -> None:
    w = ExtractWatermark(spec=SPEC.model_copy(update={"initial": "2020-01-01"}), flow="api-extract", stream="s1")
    assert w.start(None) == {"updated_since": "2020-01-01"}  # nothing stored: the initial value
    w.saw("2026-01-02T00:00:00Z")
    summary = RunSummary(flow="api-extract", run_key="r1")
    w.finish(summary, complete=True, run_key="r1", log=Log())
    assert read_watermark("api-extract", "s1")["value"] == "2026-01-02T00:00:00Z"  # type: ignore[index]

    nxt = ExtractWatermark(spec=SPEC, flow="api-extract", stream="s1")
    assert nxt.start(None) == {"updated_since": "2026-01-02T00:00:00Z"}
    nxt.saw("2026-01-05T00:00:00Z")
    failed = RunSummary(flow="api-extract", run_key="r2")
    nxt.finish(failed, complete=False, run_key="r2", log=Log())
    assert failed.extra["watermark_after"] == "2026-01-02T00:00:00Z"  # kept
    assert read_watermark("api-extract", "s1")["value"] == "2026-01-02T00:00:00Z"  # type: ignore[index]

    resumed = ExtractWatermark(spec=SPEC, flow="api-extract", stream="s1", reset=True)
    assert resumed.start({"before": "2025-12-31", "newest": "2026-01-04"}) == {"updated_since": "2025-12-31"}
    assert resumed.resumed and resumed.newest == "2026-01-04"  # the checkpoint wins over reset and the store
