from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.errors import ItemError, SourceError
from tasks.core.outcomes import ChunkReport, DeadLetterWriter, FailedItem, SummaryBuilder, read_dead_letters
from tasks.core.redact import register_secret


def test_summary_folds_reports_and_keeps_the_invariant() -> None:
    builder = SummaryBuilder("batch-map", "k")
    fail = FailedItem.from_exception({"id": 1}, ItemError("bad", category="bad_item"), chunk=0, position=0, attempts=1)
    builder.add(ChunkReport(index=0, size=10, succeeded=8, failed=1, skipped=1, failures=[fail], duration_s=0.5))
    builder.add(ChunkReport(index=1, size=5, succeeded=5, resumed=True))
    s = builder.finish(2.0)
    assert (s.total, s.succeeded, s.failed, s.skipped, s.chunks_total, s.chunks_resumed) == (15, 13, 1, 1, 2, 1)
    assert s.top_errors[0].category == "bad_item" and s.top_errors[0].count == 1
    assert "15 items: 13 succeeded, 1 failed, 1 skipped" in s.render_text()


def test_chunk_report_check_catches_lost_items() -> None:
    with pytest.raises(AssertionError, match="lost items"):
        ChunkReport(index=3, size=4, succeeded=2).check()


def test_dead_letters_keep_the_item_exact_and_redact_the_message(tmp_path: Path) -> None:
    """The item is the user's data (replay feeds it back); the message is batchflows' text about it."""
    register_secret("tok-abcdef-123")
    path = tmp_path / "dl.jsonl"
    writer = DeadLetterWriter(path, flow="batch-map", run_key="k", handler="m:f")
    exc = ValueError("call with tok-abcdef-123 to https://u:pw@host/x failed")
    item = {"token": "the", "plan": "Basic monthly subscription", "dsn": "postgresql://u:pw@h/db", "id": 1}
    writer.write([FailedItem.from_exception(item, exc, chunk=2, position=0, attempts=3)])
    writer.close()
    [record] = list(read_dead_letters(path))
    assert record["item"] == item
    assert "tok-abcdef-123" not in record["message"] and ":pw@" not in record["message"]
    assert record["chunk"] == 2 and record["attempts"] == 3 and record["handler"] == "m:f"
    assert record["error_type"] == "ValueError"


def test_not_reached_items_count_apart_from_the_total() -> None:
    builder = SummaryBuilder("batch-map", "k")
    builder.add(ChunkReport(index=0, size=10, succeeded=6, failed=1, not_reached=3, complete=False))
    s = builder.finish(1.0)
    assert (s.total, s.succeeded, s.failed, builder.not_reached) == (7, 6, 1, 3)


def test_empty_dead_letter_file_is_removed_and_bad_files_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    DeadLetterWriter(path, flow="f", run_key="k", handler=None).close()
    assert not path.exists()
    with pytest.raises(SourceError, match="does not exist"):
        list(read_dead_letters(path))
    path.write_text(json.dumps({"item": 1}) + "\nnot json\n")
    with pytest.raises(SourceError, match=r"dl.jsonl:2"):
        list(read_dead_letters(path))
