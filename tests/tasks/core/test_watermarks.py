"""The state-dir watermark store and how watermark values compare (ISO times as instants, numbers as numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.core.exactjson import loads_exact
from tasks.core.state import _main as state_cli
from tasks.core.watermarks import (
    lag_seconds,
    later,
    read_watermark,
    reset_watermarks,
    save_watermark,
    stream_id,
    watermark_path,
)


def test_later_compares_times_as_instants_and_numbers_as_numbers() -> None:
    assert later("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z") == "2026-01-01T09:00:00Z"  # 08:00Z < 09:00Z
    assert later("2026-01-01T10:00:00", "2026-01-01 09:59:59") == "2026-01-01T10:00:00"
    assert later(9, 10) == 10 and later(10, 9) == 10 and later(None, 3) == 3 and later(3, None) == 3
    assert later("2026-01-01", None) == "2026-01-01"


def test_later_compares_numbers_exactly_and_never_across_kinds() -> None:
    exact = loads_exact("[1767225625.999999999, 1767225625.9999999991]")
    assert later(exact[0], 1767225626.0) == 1767225626.0 and later(1767225626.0, exact[0]) == 1767225626.0
    assert str(later(exact[0], exact[1])) == "1767225625.9999999991"
    assert later("2026-03-01T00:00:00Z", 0) == "2026-03-01T00:00:00Z"  # a 0 sentinel does not outrank a time
    assert later(5, "2026-03-01T00:00:00Z") == 5 and later(None, 0) == 0
    assert later(1, loads_exact("NaN")) == 1


def test_a_number_kept_as_its_text_is_stored_as_that_json_number(state_dir: Path) -> None:
    save_watermark("api-extract", "n1", {"value": loads_exact("1767225625.999999999")}, run_key="r1")
    assert '"value": 1767225625.999999999' in watermark_path("api-extract", "n1").read_text()
    assert str(read_watermark("api-extract", "n1")["value"]) == "1767225625.999999999"  # type: ignore[index]


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


def _reset_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        state_cli(["reset-incremental", *args])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_reset_refuses_paths_and_patterns_and_names_unknown_flows(state_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = state_dir / "runs" / "batch-map" / "k1"
    run.mkdir(parents=True)
    for name in ("summary.json", "checkpoint.json"):
        (run / name).write_text("{}")
    save_watermark("api-extract", "s1", {"value": 1}, run_key="r1")
    save_watermark("api-extract", "s2", {"value": 2}, run_key="r1")
    for flow in ("../runs/batch-map/*", "../runs/batch-map", "api-*", "*", "a/b"):
        assert "not a flow name" in _reset_cli(capsys, "--flow", flow)
    for stream in ("*", "../../runs/batch-map/k1/summary", "s[12]"):
        assert "not a stream name" in _reset_cli(capsys, "--flow", "api-extract", "--stream", stream)
    err = _reset_cli(capsys, "--flow", "api_extract")
    assert "unknown flow 'api_extract'" in err and "api-extract, file-transform" in err
    assert "has stream 's3'" in _reset_cli(capsys, "--flow", "api-extract", "--stream", "s3")
    assert "target database" in _reset_cli(capsys, "--flow", "db-migrate")
    assert (run / "summary.json").exists() and (run / "checkpoint.json").exists()
    assert read_watermark("api-extract", "s1") is not None and read_watermark("api-extract", "s2") is not None
    assert state_cli(["reset-incremental", "--flow", "api-extract", "--stream", "s2"]) == 0
    assert "removed 1 watermark(s)" in capsys.readouterr().out
    assert read_watermark("api-extract", "s1") is not None and read_watermark("api-extract", "s2") is None
    with pytest.raises(ConfigError, match="not a flow name"):
        reset_watermarks("..")
    assert reset_watermarks("file-transform") == []  # a known flow without watermarks: nothing to do
    assert reset_watermarks() == [state_dir / "watermarks" / "api-extract" / "s1.json"]


def test_a_reset_keeps_a_record_that_lists_output_parts_marked_reset(state_dir: Path) -> None:
    manifest = {"files": {"/in/a.csv": {"fingerprint": {"size": 1}, "parts": ["run-1/part-00000.parquet"]}},
                "pending": None, "garbage": [], "next_index": {"run-1": 1}}
    save_watermark("file-transform", "out1", manifest, run_key="r1")
    save_watermark("api-extract", "s1", {"value": 1}, run_key="r1")
    assert reset_watermarks() == [state_dir / "watermarks" / "api-extract" / "s1.json",
                                  state_dir / "watermarks" / "file-transform" / "out1.json"]
    kept = read_watermark("file-transform", "out1")
    assert kept is not None and kept["reset"] is True and kept["files"] == manifest["files"]  # the only list of parts
    assert read_watermark("api-extract", "s1") is None
    assert reset_watermarks("file-transform") == [state_dir / "watermarks" / "file-transform" / "out1.json"]
