"""The item journal's file: lines stored through a shared map survive the process, ranges a crash left
unfinished are never read as lines, concurrent writers never mix lines, a reopened journal appends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks.core import journal as journal_mod
from tasks.core.journal import ChunkJournal


def test_lines_written_by_a_sigkilled_process_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    code = (
        "import os, signal, sys\n"
        "from tasks.core.journal import ChunkJournal\n"
        f"j = ChunkJournal({str(path)!r}, 'c').open()\n"
        "for i in range(5000):\n"
        "    j.record(i, 's', '{\"r\": %d}' % i if i % 2 else '')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], check=False)
    assert proc.returncode == -9
    entries = ChunkJournal(path, "c").load()
    assert sorted(entries) == list(range(5000))
    assert entries[7].payload == '{"r": 7}' and entries[8].payload == ""
    assert path.stat().st_size >= 64 * 1024  # never closed: the allocated step is still there


def test_ranges_a_crash_left_unfinished_are_not_lines(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    # what a map can hold after a SIGKILL: a whole line, a taken range never stored (zeros), a line stored
    # without its newline, a whole line, then the zeros of the allocated step
    path.write_bytes(b"bfj1 c\n0 s\n" + b"\0" * 6 + b"12 s {\"a\": 1}\0" + b"3 k\n" + b"4 s\0\0" + b"\0" * 100)
    assert {p: (e.kind, e.payload) for p, e in ChunkJournal(path, "c").load().items()} == {0: ("s", ""), 3: ("k", "")}
    with ChunkJournal(path, "c") as journal:  # reopened: the tail after the last newline is dropped, then appended
        journal.record(5, "s", '"x"')
    assert path.read_bytes().endswith(b"3 k\n5 s \"x\"\n")
    assert set(ChunkJournal(path, "c").load()) == {0, 3, 5}


def test_concurrent_writers_and_growth_keep_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    payload = '{"v": "' + "x" * 300 + '"}'
    with ChunkJournal(path, "c") as journal:
        def write(start: int) -> None:
            for i in range(start, start + 2000):
                journal.record(i, "s", payload)

        threads = [threading.Thread(target=write, args=(n * 2000,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        journal.record_lines([ChunkJournal.line(20_000, "k"), ChunkJournal.line(20_001, "s", "1")])
    data = path.read_bytes()
    assert b"\0" not in data and data.endswith(b"\n")  # cut back to its last line when closed
    entries = ChunkJournal(path, "c").load()
    assert len(entries) == 16_002 and all(entries[i].payload == payload for i in range(16_000))


def test_without_a_map_each_line_is_one_pwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "_CAN_MAP", False)
    path = tmp_path / "j.jsonl"
    with ChunkJournal(path, "c") as journal:
        journal.record(0, "s", "1")
        assert journal._map is None and os.path.getsize(path) == len(b"bfj1 c\n0 s 1\n")
        journal.record(1, "f", '{"e": 1}')
    assert {p: e.kind for p, e in ChunkJournal(path, "c").load().items()} == {0: "s", 1: "f"}


def test_range_lines_cover_runs_of_consecutive_positions(tmp_path: Path) -> None:
    assert ChunkJournal.range_lines([4, 5, 6, 7], "s") == ["4-7 s\n"]
    assert ChunkJournal.range_lines([3], "s") == ["3 s\n"]
    assert ChunkJournal.range_lines([0, 1, 2, 5, 7, 8], "s") == ["0-2 s\n", "5 s\n", "7-8 s\n"]
    path = tmp_path / "j.jsonl"
    with ChunkJournal(path, "c") as journal:
        journal.record_lines(ChunkJournal.range_lines([0, 1, 2, 5, 7, 8], "s"))
        journal.record(3, "f", '{"message": "x"}')
    entries = ChunkJournal(path, "c").load()
    assert sorted(entries) == [0, 1, 2, 3, 5, 7, 8]
    assert entries[3].kind == "f" and all(entries[p].kind == "s" and not entries[p].payload for p in (0, 2, 5, 8))
    path.write_bytes(b"bfj1 c\n0-3 s\n\0\0\0" + b"4-x s\n" + b"5- s\n" + b"6-7 k\n")  # not ranges: ignored
    assert sorted(ChunkJournal(path, "c").load()) == [0, 1, 2, 3]
