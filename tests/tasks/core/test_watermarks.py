"""The state-dir watermark store and how watermark values compare (ISO times as instants, numbers as numbers)."""

from __future__ import annotations

from pathlib import Path

from tasks.core.watermarks import lag_seconds, later, read_watermark, reset_watermarks, save_watermark, stream_id


def test_later_compares_times_as_instants_and_numbers_as_numbers() -> None:
    assert later("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z") == "2026-01-01T09:00:00Z"  # 08:00Z < 09:00Z
    assert later("2026-01-01T10:00:00", "2026-01-01 09:59:59") == "2026-01-01T10:00:00"
    assert later(9, 10) == 10 and later(10, 9) == 10 and later(None, 3) == 3 and later(3, None) == 3
    assert later("2026-01-01", None) == "2026-01-01"


def test_lag_is_for_times_only() -> None:
    assert lag_seconds("2000-01-01T00:00:00Z") > 0
    assert lag_seconds(12) is None and lag_seconds("not a time") is None


def test_store_round_trip_and_reset(state_dir: Path) -> None:
    stream = stream_id("https://api.example.com/v1/items", {"a": 1})
    assert read_watermark("api-extract", stream) is None
    save_watermark("api-extract", stream, {"value": "2026-01-01T00:00:00Z"}, run_key="r1")
    stored = read_watermark("api-extract", stream)
    assert stored is not None and stored["value"] == "2026-01-01T00:00:00Z" and stored["run_key"] == "r1"
    assert not list(state_dir.rglob(".*tmp*"))  # written atomically, no litter
    assert reset_watermarks("file-transform") == []
    assert len(reset_watermarks("api-extract")) == 1 and read_watermark("api-extract", stream) is None
