"""The item journal of a chunk: which items finished, so a resumed chunk redoes only the others.

A chunk's record (its ChunkReport) is written once the whole chunk is done. Without more, a crash
in the middle of a chunk would make the rerun call the handler again for every item of it, side
effects included. The journal closes that gap: each item's final outcome is appended as one line the
moment it is known, before its thread starts another item, into a shared memory map of the file
(``mmap``, ``MAP_SHARED``): the store lands in the kernel's page cache, the same pages a ``write`` would
fill, so a SIGKILL cannot lose a line whose store finished; no system call per item. Each writer takes
its own byte range (a lock around two integers; none for a chunk with one item thread, which is then the
only writer), so concurrent writers never interleave; it stores the
line's text first and its ``\n`` last, so a line with its newline is whole. The file grows in
allocated steps (``posix_fallocate``: a full disk is an OSError at the step, never a SIGBUS) and is cut
back to its last line when closed. Where a file cannot be mapped, each line is one ``pwrite``.
After a crash the rerun of the chunk reads the journal, restores those outcomes (and the output rows
they produced) and calls the handler only for the items that have no line: the ones that were in
flight. A chunk whose record is written no longer needs its journal; the run deletes it.

File format (text, one record per line)::

    bfj1 <content hash of the chunk>
    <position> s <output row as JSON, or nothing>      succeeded
    <first>-<last> s                                    succeeded, every position first..last (a batch call's
                                                        items without output rows: one line, not one each)
    <position> k                                        skipped
    <position> f <FailedItem JSON without the item>    failed for good (retries exhausted, ItemError)

A fatal answer is never journaled: the item was not done, and after the fix the rerun sends it. A
torn last line (power loss, not SIGKILL) is ignored, so that item runs again. After a SIGKILL the map can
hold ranges that writers had taken but not finished: zero bytes, or a line without its newline followed by
zeros. Line text never holds a zero byte (JSON escapes control characters), so a line is read from after
the last zero byte before its newline; what has no newline is not a line.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import SourceError

MAGIC = "bfj1"
_FIRST_MAP_BYTES = 64 * 1024
_UNMAPPABLE = frozenset({errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES})
_CAN_MAP = hasattr(os, "posix_fallocate")  # without it a full disk would be a SIGBUS at a store: pwrite instead
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


def consecutive(positions: Sequence[int]) -> bool:
    """Whether increasing ``positions`` are one run without gaps (then first..last covers them all)."""
    return bool(positions) and positions[-1] - positions[0] == len(positions) - 1


class ChunkJournal:
    """The journal of one chunk attempt; see the module docstring. Thread-safe (each line its own byte range)."""

    def __init__(self, path: Path | str, content: str) -> None:
        self.path = Path(path)
        self.content = content
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._end = self._size = 0  # bytes taken by lines; bytes allocated and mapped
        self._map: mmap.mmap | None = None
        self._maps: list[mmap.mmap] = []
        self._mappable = True

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
        for line in lines[1:-1]:  # the last piece has no newline: empty, or not a (whole) line
            if "\x00" in line:  # ranges taken by writers a crash stopped come before it (module docstring)
                line = line.rpartition("\x00")[2]
            if not line:
                continue
            position, _, rest = line.partition(" ")
            kind, _, payload = rest.partition(" ")
            if position.isdigit() and kind in (SUCCEEDED, SKIPPED, FAILED):
                entries[int(position)] = Entry(kind, payload)
            elif kind == SUCCEEDED and not payload:
                first, _, last = position.partition("-")
                if first.isdigit() and last.isdigit():
                    entries.update(dict.fromkeys(range(int(first), int(last) + 1), Entry(kind, "")))
        return entries

    def open(self) -> ChunkJournal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                header = f"{MAGIC} {self.content}\n".encode()
                os.pwrite(fd, header, 0)
                size = len(header)
            else:  # an earlier attempt's file: drop what follows its last newline (zeros, an unfinished line)
                with open(fd, "rb", closefd=False) as fh:
                    data = fh.read()
                size = data.rfind(b"\n") + 1
                os.ftruncate(fd, size)
                if size == 0:  # not even its header was whole
                    header = f"{MAGIC} {self.content}\n".encode()
                    os.pwrite(fd, header, 0)
                    size = len(header)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._end = self._size = size
        self._maps = []
        self._map = None
        self._mappable = _CAN_MAP
        return self

    def _reserve(self, n: int) -> tuple[int, mmap.mmap | None]:
        """Take ``n`` bytes at the end; the map to store them through (None: write them with pwrite)."""
        with self._lock:
            start = self._end
            end = self._end = start + n
            if end > self._size and self._mappable:
                try:
                    self._grow(end)
                except (ValueError, BufferError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno not in _UNMAPPABLE:
                        self._end = start
                        raise  # a full disk, a read-only file system: the caller names it
                    self._mappable = False  # this file system cannot map files: one pwrite per line
            return start, self._map if self._mappable else None

    def _grow(self, end: int) -> None:
        assert self._fd is not None
        size = max(end, 2 * self._size, _FIRST_MAP_BYTES)
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        os.posix_fallocate(self._fd, self._size, size - self._size)  # ENOSPC here, not a SIGBUS at a store
        self._map = mmap.mmap(self._fd, size)
        self._maps.append(self._map)  # earlier maps stay open: other threads may still store through them
        self._size = size

    def store(self, data: bytes) -> None:
        """Store one whole line (``\\n``-terminated bytes): its text first, its newline last."""
        n = len(data)
        lock = self._lock
        lock.acquire()
        start = self._end
        view = self._map
        if view is not None and start + n <= self._size:  # room in the current map: the common case
            self._end = start + n
            lock.release()
        else:
            lock.release()
            start, view = self._reserve(n)
        if view is None:
            assert self._fd is not None
            os.pwrite(self._fd, data, start)
            return
        end = start + n - 1
        view[start:end] = data[:-1]
        view[end] = 10  # the newline last: a line with its newline is whole

    def single_writer(self) -> Callable[[bytes], None]:
        """``store_text(text)``: :meth:`store` of ``text + b"\\n"`` for a chunk whose lines come from one thread
        only (a sequential item loop): no lock while the map has room (nothing else takes a range then)."""
        store = self.store

        def store_text(text: bytes) -> None:
            start = self._end
            end = start + len(text)
            view = self._map
            if view is not None and end < self._size:
                self._end = end + 1
                view[start:end] = text
                view[end] = 10  # the newline last
            else:
                store(text + b"\n")

        return store_text

    def reserve_filled(self, text: bytes) -> tuple[mmap.mmap, int] | None:
        """For the chunk's only writer: store ``text`` (whole lines but for their newlines, zero bytes) after the
        last line; each line counts once the writer stores its newline there. Returns the map and the offset of
        ``text`` (None where the file cannot be mapped). The writer ends with :meth:`release_from`."""
        if self._fd is None:
            return None
        start, view = self._reserve(len(text))
        if view is None:
            self.release_from(start)
            return None
        view[start:start + len(text)] = text
        return view, start

    def release_from(self, end: int) -> None:
        """Lines end at ``end``: what :meth:`reserve_filled` took beyond it (no newline there) is free again."""
        with self._lock:
            self._end = end

    @staticmethod
    def line(position: int, kind: str, payload: str = "") -> str:
        return f"{position} {kind} {payload}\n" if payload else f"{position} {kind}\n"

    def record(self, position: int, kind: str, payload: str = "") -> None:
        if self._fd is None:
            return
        line = f"{position} {kind} {payload}\n" if payload else f"{position} {kind}\n"
        self.store(line.encode("utf-8", "surrogateescape"))

    @staticmethod
    def range_lines(positions: Sequence[int], kind: str) -> list[str]:
        """Lines recording ``kind`` (no payload) for ``positions``: one per run of consecutive positions."""
        if consecutive(positions):
            first, last = positions[0], positions[-1]
            return [f"{first} {kind}\n" if first == last else f"{first}-{last} {kind}\n"]
        lines: list[str] = []
        i, n = 0, len(positions)
        while i < n:
            j = i
            while j + 1 < n and positions[j + 1] == positions[j] + 1:
                j += 1
            lines.append(f"{positions[i]} {kind}\n" if i == j else f"{positions[i]}-{positions[j]} {kind}\n")
            i = j + 1
        return lines

    def record_lines(self, lines: list[str]) -> None:
        """Several outcomes settled together (a batch call's), each line stored text first, newline last."""
        if self._fd is None:
            return
        for line in lines:
            self.store(line.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        if self._fd is None:
            return
        with self._lock:
            for view in self._maps:
                view.close()
            self._maps, self._map = [], None
            try:
                os.ftruncate(self._fd, self._end)  # the allocated steps beyond the last line
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> ChunkJournal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FAILED", "SKIPPED", "SUCCEEDED", "ChunkJournal", "Entry", "SourceChanged", "consecutive", "journal_content"]
