"""The item journal of a chunk: which items finished, so a resumed chunk redoes only the others.

A chunk's record (its ChunkReport) is written once the whole chunk is done. Without more, a crash
in the middle of a chunk would make the rerun call the handler again for every item of it, side
effects included. The journal closes that gap: each item's final outcome is appended as one line the
moment it is known, with one ``os.write`` on an ``O_APPEND`` descriptor (the kernel has the line when
the call returns, so a SIGKILL cannot lose it; concurrent writers never interleave within a line).
After a crash the rerun of the chunk reads the journal, restores those outcomes (and the output rows
they produced) and calls the handler only for the items that have no line: the ones that were in
flight. A chunk whose record is written no longer needs its journal; the run deletes it.

File format (text, one record per line)::

    bfj1 <content hash of the chunk>
    <position> s <output row as JSON, or nothing>      succeeded
    <position> k                                        skipped
    <position> f <FailedItem JSON without the item>    failed for good (retries exhausted, ItemError)

A fatal answer is never journaled: the item was not done, and after the fix the rerun sends it. A
torn last line (power loss, not SIGKILL) is ignored, so that item runs again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import SourceError

MAGIC = "bfj1"
SUCCEEDED, SKIPPED, FAILED = "s", "k", "f"


class SourceChanged(SourceError):
    """The source holds other items at a position than an earlier attempt of this run key recorded."""


@dataclass(frozen=True)
class Entry:
    kind: str
    payload: str


def journal_content(path: Path) -> str | None:
    """The content hash in a journal's header, or None when there is no (readable) journal."""
    try:
        with path.open("r", encoding="utf-8") as fh:
            header = fh.readline()
    except OSError:
        return None
    magic, _, content = header.strip().partition(" ")
    return content if magic == MAGIC and content else None


class ChunkJournal:
    """The journal of one chunk attempt; see the module docstring. Thread-safe (one write per line)."""

    def __init__(self, path: Path | str, content: str) -> None:
        self.path = Path(path)
        self.content = content
        self._fd: int | None = None

    def load(self) -> dict[int, Entry]:
        """The outcomes an earlier attempt recorded (empty when none, or when it recorded other content)."""
        entries: dict[int, Entry] = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return entries
        lines = data.decode("utf-8", "surrogateescape").split("\n")
        magic, _, content = lines[0].partition(" ")
        if magic != MAGIC:
            return entries
        if content != self.content:
            msg = (f"the journal {self.path.name} of this chunk was written for other items (content {content}, "
                   f"now {self.content}): the source changed since this run key started; use a new run_key or "
                   "cache_version")
            raise SourceChanged(msg)
        complete = lines[1:-1] if not data.endswith(b"\n") else lines[1:]
        for line in complete:
            if not line:
                continue
            position, _, rest = line.partition(" ")
            kind, _, payload = rest.partition(" ")
            if position.isdigit() and kind in (SUCCEEDED, SKIPPED, FAILED):
                entries[int(position)] = Entry(kind, payload)
        return entries

    def open(self) -> ChunkJournal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size == 0:
            os.write(fd, f"{MAGIC} {self.content}\n".encode())
        self._fd = fd
        return self

    @staticmethod
    def line(position: int, kind: str, payload: str = "") -> str:
        return f"{position} {kind} {payload}\n" if payload else f"{position} {kind}\n"

    def record(self, position: int, kind: str, payload: str = "") -> None:
        if self._fd is None:
            return
        os.write(self._fd, self.line(position, kind, payload).encode("utf-8", "surrogateescape"))

    def record_lines(self, lines: list[str]) -> None:
        """Several outcomes settled together (a batch call's) in one write; a torn last line is ignored on load."""
        if self._fd is not None and lines:
            os.write(self._fd, "".join(lines).encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ChunkJournal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FAILED", "SKIPPED", "SUCCEEDED", "ChunkJournal", "Entry", "SourceChanged", "journal_content"]
