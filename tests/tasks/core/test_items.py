"""One chunk's items: journal restore, fatal stops for every runner kind, byte-exact output rows."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.core.chunking import Chunk
from tasks.core.errors import FatalError, ItemError, SkipItem
from tasks.core.identity import chunk_hash
from tasks.core.items import ChunkJob, ChunkRef, ItemOptions, process_chunk
from tasks.core.journal import ChunkJournal, SourceChanged, journal_content


def ref_for(tmp_path: Path, index: int = 0) -> ChunkRef:
    return ChunkRef(key=f"k{index}", index=index, journal=str(tmp_path / "journal" / f"k{index}.jsonl"))


def rows(path: str | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path or "").read_text().splitlines()]


class Recorder:
    def __init__(self, fatal_at: int | None = None, sleep_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.started: list[float] = []
        self.fatal_at = fatal_at
        self.raised_at = float("inf")
        self.sleep_s = sleep_s
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.calls.append(x)
            self.started.append(time.monotonic())
        time.sleep(self.sleep_s)
        if x == self.fatal_at:
            self.raised_at = time.monotonic()
            raise FatalError("401 for token Bearer abcdefghijkl")
        if x % 10 == 3:
            raise ItemError("bad")
        if x % 10 == 5:
            raise SkipItem("skip")
        return x * 2


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_fatal_error_stops_every_sync_runner_and_keeps_true_outcomes(tmp_path: Path, concurrency: int) -> None:
    handler = Recorder(fatal_at=12, sleep_s=0.005)
    job = ChunkJob(handler=handler, options=ItemOptions(retries=0, item_concurrency=concurrency),
                   output_dir=str(tmp_path / "out"))
    report = process_chunk(Chunk(0, list(range(200))), job, ref_for(tmp_path))
    assert not report.complete and "***" in (report.stop_reason or "") and "abcdefghijkl" not in report.stop_reason
    # nothing starts after the fatal answer but, at most, one item per other runner that had already checked for
    # a stop when it came (under load the others may also run ahead while the fatal item's thread waits for the
    # GIL after its answer: those items started before the answer was seen)
    late = [x for x, at in zip(handler.calls, handler.started, strict=True) if at > handler.raised_at]
    assert len(late) <= concurrency - 1, late
    assert report.succeeded + report.failed + report.skipped + report.not_reached == 200
    assert report.not_reached == 200 - len(handler.calls)
    assert [f.category for f in report.failures if f.item == 12] == ["fatal"]
    done = {r["item"] for r in rows(report.output_path)}
    assert done == {x for x in handler.calls if x % 10 not in (3, 5) and x != 12}  # succeeded items keep outputs


def test_a_fatal_error_stops_async_runners(tmp_path: Path) -> None:
    calls: list[int] = []

    async def handler(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.005)
        if x == 5:
            raise FatalError("stop")
        return x

    job = ChunkJob(handler=handler, options=ItemOptions(retries=0, item_concurrency=4))
    report = process_chunk(Chunk(0, list(range(100))), job, ref_for(tmp_path))
    assert not report.complete and len(calls) <= 5 + 4 and report.not_reached == 100 - len(calls)


def test_the_rerun_of_a_stopped_chunk_runs_only_what_was_not_done(tmp_path: Path) -> None:
    first = Recorder(fatal_at=12)
    job = ChunkJob(handler=first, options=ItemOptions(retries=0), output_dir=str(tmp_path / "out"))
    ref = ref_for(tmp_path)
    process_chunk(Chunk(0, list(range(30))), job, ref)
    assert first.calls == list(range(13))
    second = Recorder()
    report = process_chunk(Chunk(0, list(range(30))), ChunkJob(handler=second, options=ItemOptions(retries=0),
                                                                 output_dir=str(tmp_path / "out")), ref)
    assert second.calls == list(range(12, 30))  # the fatal item again, then the rest; nothing twice
    assert report.complete and report.extra["items_resumed"] == 12
    assert (report.succeeded, report.failed, report.skipped) == (24, 3, 3)
    assert sorted(f.item for f in report.failures) == [3, 13, 23]  # restored failures keep their items
    assert [r["item"] for r in rows(report.output_path)] == [x for x in range(30) if x % 10 not in (3, 5)]


def test_output_rows_and_failed_items_are_the_users_data_byte_for_byte(tmp_path: Path) -> None:
    data = ["Basic monthly subscription", "use token abcd3fgh42", {"token": "the"}, "postgresql://u:pw@h/db",
            {"Authorization": "Bearer 0123456789"}, "café ✓"]

    def echo(x: Any) -> Any:
        if x == "use token abcd3fgh42":
            raise ItemError(f"refused {x}")
        return x

    report = process_chunk(Chunk(0, data), ChunkJob(handler=echo, output_dir=str(tmp_path / "out")), ref_for(tmp_path))
    expected = [json.dumps({"item": x, "result": x}, ensure_ascii=False) for x in data if x != "use token abcd3fgh42"]
    assert Path(report.output_path or "").read_text(encoding="utf-8").splitlines() == expected
    [failure] = report.failures
    assert failure.item == "use token abcd3fgh42" and "abcd3fgh42" not in failure.message  # message: about data


def test_journal_of_other_content_is_a_source_change(tmp_path: Path) -> None:
    ref = ref_for(tmp_path)
    process_chunk(Chunk(0, [1, 2, 3]), ChunkJob(handler=Recorder(fatal_at=2), options=ItemOptions(retries=0)), ref)
    assert journal_content(Path(ref.journal or "")) == chunk_hash([1, 2, 3])
    with pytest.raises(SourceChanged, match="source changed"):
        process_chunk(Chunk(0, [1, 9, 3]), ChunkJob(handler=Recorder()), ref)


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with ChunkJournal(path, "c") as journal:
        journal.record(0, "s", '{"item": 1}')
        journal.record(1, "k")
    with path.open("a") as fh:
        fh.write('2 s {"item": ')  # a write cut short (power loss)
    assert set(ChunkJournal(path, "c").load()) == {0, 1}


class BatchRecorder:
    """A per='batch' handler: doubles every item, raises FatalError when the batch holds ``fatal_at``."""

    def __init__(self, fatal_at: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fatal_at = fatal_at

    def __call__(self, batch: list[int]) -> list[Any]:
        self.calls.append(list(batch))
        return [FatalError("stop here") if x == self.fatal_at else x * 2 for x in batch]


def test_a_batch_call_that_all_succeeds_is_one_journal_line_and_resumes_from_it(tmp_path: Path) -> None:
    ref = ref_for(tmp_path)
    first = BatchRecorder(fatal_at=25)
    options = ItemOptions(retries=0, per="batch", max_batch_items=10)
    report = process_chunk(Chunk(0, list(range(40))), ChunkJob(handler=first, options=options), ref)
    assert not report.complete and report.succeeded == 29  # 0-19 whole calls, 20-29 all but the fatal 25
    lines = Path(ref.journal or "").read_text().splitlines()[1:]
    assert lines[:2] == ["0-9 s", "10-19 s"]  # a call whose items all succeeded: one line
    assert sorted(lines[2:]) == sorted(f"{p} s" for p in range(20, 30) if p != 25)  # a mixed call: one per item
    second = BatchRecorder()
    again = process_chunk(Chunk(0, list(range(40))), ChunkJob(handler=second, options=options), ref)
    assert second.calls == [[25, 30, 31, 32, 33, 34, 35, 36, 37, 38], [39]]  # nothing done twice
    assert again.complete and again.succeeded == 40 and again.extra["items_resumed"] == 29


def test_the_sequential_loop_journals_every_outcome_and_a_rerun_does_only_the_rest(tmp_path: Path) -> None:
    """One runner, no output rows: the loop journals each success as a line written ahead (``0007 s``, zero-padded
    to the chunk's width) whose newline is stored when the call returns, a failure goes through the retry policy
    from its second attempt, a fatal answer stops the loop, and the rerun of the chunk calls the handler only for
    the items that had no outcome."""
    flaky_seen: set[int] = set()

    def handler(x: int) -> int:
        if x == 41 and x not in flaky_seen:
            flaky_seen.add(x)
            raise ConnectionError("reset")  # transient: the second attempt succeeds
        return Recorder(fatal_at=1_500)(x)

    items = list(range(2_000))
    job = ChunkJob(handler=handler, options=ItemOptions(retries=1, retry_backoff_s=0.001))
    first = process_chunk(Chunk(0, items), job, ref_for(tmp_path))
    assert not first.complete and (first.succeeded, first.failed, first.skipped, first.not_reached) == (1_200, 151, 150, 499)
    journal = ChunkJournal(ref_for(tmp_path).journal or "", chunk_hash(items))
    text = Path(journal.path).read_text().splitlines()
    assert text[1:4] == ["0000 s", "0001 s", "0002 s"] and "41 s" in text and "1500 s" not in text  # 41: its retry
    assert all(line.endswith(("s", "k", "}")) for line in text[1:])  # nothing written ahead is left in the file
    entries = journal.load()
    assert len(entries) == 1_500 and entries[41].kind == "s" and entries[43].kind == "f" and entries[45].kind == "k"
    calls: list[int] = []
    rest = process_chunk(Chunk(0, items), ChunkJob(handler=lambda x: calls.append(x) or x), ref_for(tmp_path))
    assert calls == list(range(1_500, 2_000)) and rest.complete
    assert (rest.succeeded, rest.failed, rest.skipped) == (1_700, 150, 150)


def test_the_sequential_loop_journals_across_blocks_of_lines_written_ahead_and_resumes_scattered_items(
        tmp_path: Path) -> None:
    """Lines are written ahead 100,000 positions at a time: failures on both sides of a block's end, a rerun whose
    items left to do are scattered (each failure's neighbours were done), every outcome exactly once."""
    n = 230_001
    bad = {0, 99_999, 100_000, 100_001, 199_999, 230_000}
    calls: list[int] = []

    def handler(x: int) -> int:
        calls.append(x)
        if x in bad:
            raise ItemError(f"bad {x}")
        if x == 150_000:
            raise FatalError("stop at 150,000")
        return x

    items = list(range(n))
    ref = ref_for(tmp_path)
    first = process_chunk(Chunk(0, items), ChunkJob(handler=handler, options=ItemOptions(retries=0)), ref)
    assert calls == list(range(150_001)) and not first.complete
    assert (first.succeeded, first.failed, first.not_reached) == (149_996, 4 + 1, 80_000)  # 4 bad + the fatal item
    entries = ChunkJournal(ref.journal or "", chunk_hash(items)).load()
    assert len(entries) == 150_000 and {p for p, e in entries.items() if e.kind == "f"} == {0, 99_999, 100_000, 100_001}
    calls.clear()
    bad.discard(100_000)  # a failed item stays failed: it is not run again
    rest = process_chunk(Chunk(0, items), ChunkJob(handler=lambda x: (x in bad and handler(x)) or calls.append(x)),
                         ref)
    assert calls == list(range(150_000, n))  # the fatal item (never journaled) and the rest
    assert rest.complete and (rest.succeeded, rest.failed) == (n - 6, 6)


def test_a_sigkill_in_the_sequential_loop_loses_only_the_call_in_flight(tmp_path: Path) -> None:
    """The process dies (SIGKILL) inside the call of item 123,456, after the calls before it returned: the rerun
    of the chunk calls the handler for that item and the ones after it only."""
    script = f"""
import os, signal
from pathlib import Path
from tasks.core.chunking import Chunk
from tasks.core.items import ChunkJob, ChunkRef, ItemOptions, process_chunk

def handler(x):
    if x == 123_456:
        os.kill(os.getpid(), signal.SIGKILL)
    return x

ref = ChunkRef(key="c0", index=0, journal={str(tmp_path / "j" / "c0.jsonl")!r})
process_chunk(Chunk(0, list(range(200_000))), ChunkJob(handler=handler, options=ItemOptions(retries=0)), ref)
"""
    died = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[3], check=False)
    assert died.returncode == -signal.SIGKILL
    ref = ChunkRef(key="c0", index=0, journal=str(tmp_path / "j" / "c0.jsonl"))
    calls: list[int] = []
    again = process_chunk(Chunk(0, list(range(200_000))), ChunkJob(handler=calls.append), ref)
    assert calls == list(range(123_456, 200_000))
    assert again.complete and again.succeeded == 200_000 and again.extra["items_resumed"] == 123_456
