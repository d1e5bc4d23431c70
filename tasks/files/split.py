"""Plan file chunks: small files grouped, big text files split into byte ranges, Parquet by row groups.

A chunk is a small JSON-able ``ChunkSpec`` so it can be a Prefect task parameter and part of a cache
key: it names files by path plus size and mtime, so a changed input gets a new key.

Quoted newlines: a CSV field may hold a newline inside quotes, so "the next newline after offset X" is
not always a record boundary. We track quote parity from the start of the data: under RFC 4180 a
newline ends a record exactly when an even number of quote characters precede it (escaped quotes
``""`` add two and keep the parity). Counting is a C-speed ``bytes.count`` per block, so planning a
10 GB file costs one sequential read. The split is then exact for well-formed files; a file with an
unterminated quote never returns to even parity, so everything after it stays in one range — the same
reading a CSV parser makes, and never a split inside a quoted field. JSONL escapes newlines inside
strings, so any newline is a boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from tasks.core import ConfigError, FileSettings
from tasks.files.inputs import FileFormat, InputFile

_SCAN_BLOCK = 16 * 1024 * 1024
_HEADER_PROBE = 1024 * 1024
_SPLITTABLE: frozenset[str] = frozenset({"csv", "tsv", "jsonl"})


class FilePart(InputFile):
    """A whole file, a byte range ``[start, end)`` of a text file, or some row groups of a Parquet file.

    ``first_line`` is the 1-based line number, in the source file, of the first byte of the range; for a
    CSV range that starts at 0 the reader skips the header itself. ``0`` means "not counted at planning"
    (ranges of a split file): the reader counts the newlines before ``start`` when it needs line numbers
    (the careful path), so the fast path never pays for it.
    """

    start: int = 0
    end: int | None = None
    first_line: int = 1
    row_groups: list[int] | None = None

    @property
    def nbytes(self) -> int:
        """Approximate input bytes of this part (compressed bytes for gzip and Parquet)."""
        return (self.size if self.end is None else self.end) - self.start


class ChunkSpec(BaseModel):
    """One unit of work: the files (or pieces of one file) that end up in ``part-<index>``."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    files: list[FilePart]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)


def _whole(f: InputFile) -> FilePart:
    return FilePart(path=f.path, format=f.format, compression=f.compression, size=f.size, mtime_ns=f.mtime_ns)


def quote_byte(fmt: FileFormat) -> bytes | None:
    """The quote character that can hide newlines in this format (None for JSONL and Parquet)."""
    return b'"' if fmt in ("csv", "tsv") else None


def record_end(block: bytes, pos: int, parity: int, quote: bytes | None) -> int:
    """Index of the first newline at or after ``pos`` that ends a record, or -1.

    ``parity`` is the quote parity at ``block[0]``. Quotes are counted incrementally between candidate
    newlines, so a run of newlines inside one long quoted field stays linear.
    """
    idx = block.find(b"\n", pos)
    if quote is None or idx == -1:
        return idx
    odd = (parity + block.count(quote, 0, idx)) % 2
    while odd:
        nxt = block.find(b"\n", idx + 1)
        if nxt == -1:
            return -1
        odd = (odd + block.count(quote, idx, nxt)) % 2
        idx = nxt
    return idx


def header_end(path: str | Path, quote: bytes | None) -> tuple[int, int]:
    """Byte offset just after the CSV header record and the number of lines it spans."""
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_PROBE)
    idx = record_end(head, 0, 0, quote)
    if idx == -1:
        return len(head), head.count(b"\n") + (1 if head else 0)
    return idx + 1, head.count(b"\n", 0, idx + 1)


def iter_byte_ranges(
    path: str | Path,
    *,
    chunk_bytes: int,
    quote: bytes | None,
    start: int = 0,
    first_line: int = 1,
    count_lines: bool = True,
) -> Iterator[tuple[int, int, int]]:
    """:func:`split_byte_ranges` as a generator: each range is yielded as soon as its end is found,
    so the first chunks can run while the rest of a big file is still being planned."""
    if chunk_bytes <= 0:
        msg = f"chunk_bytes must be > 0, got {chunk_bytes}"
        raise ConfigError(msg)
    size = Path(path).stat().st_size
    prev_start, prev_line = start, first_line
    target = start + chunk_bytes
    parity = 0
    lines = first_line
    base = start
    with open(path, "rb") as fh:
        fh.seek(start)
        while target < size:
            block = fh.read(_SCAN_BLOCK)
            if not block:
                break
            pos = 0
            while target < base + len(block):
                idx = record_end(block, max(target - base, pos), parity, quote)
                if idx == -1:
                    break
                cut = base + idx + 1
                if cut >= size:
                    target = size
                    break
                if cut > prev_start:
                    yield prev_start, cut, prev_line
                prev_start, prev_line = cut, lines + block.count(b"\n", 0, idx + 1) if count_lines else 0
                target = cut + chunk_bytes
                pos = idx + 1
            if quote is not None:
                parity = (parity + block.count(quote)) % 2
            if count_lines:
                lines += block.count(b"\n")
            base += len(block)
    if size > prev_start:
        yield prev_start, size, prev_line


def split_byte_ranges(
    path: str | Path,
    *,
    chunk_bytes: int,
    quote: bytes | None,
    start: int = 0,
    first_line: int = 1,
    count_lines: bool = True,
) -> list[tuple[int, int, int]]:
    """Cut ``[start, EOF)`` into ``(start, end, first_line)`` ranges of about ``chunk_bytes``.

    Every cut is just after a newline that ends a record (quote parity even, see module docstring),
    so each range holds whole records and line numbers stay exact. ``count_lines=False`` skips the
    newline count (the costliest part of planning: ~0.7 s per GB) and gives ``first_line=0`` ("not
    counted") to every range but the first; the reader counts them only if it needs line numbers.
    """
    return list(
        iter_byte_ranges(
            path, chunk_bytes=chunk_bytes, quote=quote, start=start, first_line=first_line, count_lines=count_lines
        )
    )


def _parquet_parts(f: InputFile, chunk_bytes: int) -> list[list[int]]:
    meta = pq.ParquetFile(f.path).metadata
    groups: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        nbytes = sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
        if current and current_bytes + nbytes > chunk_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += nbytes
    if current:
        groups.append(current)
    return groups


def _split_parts(whole: FilePart, limit: int) -> Iterator[FilePart]:
    """The byte ranges of a big text file; the file whole when it cannot be opened any more (deleted or moved
    since it was listed): its one chunk then fails naming it, and the other files go on."""
    quote = quote_byte(whole.format)
    start, first_line = (0, 1)
    try:
        if whole.format != "jsonl":
            start, header_lines = header_end(whole.path, quote)
            first_line = header_lines + 1
        ranges = iter_byte_ranges(
            whole.path, chunk_bytes=limit, quote=quote, start=start, first_line=first_line, count_lines=False
        )
        first = next(ranges, None)  # stats and opens the file: past this, the open file is read to its end
    except OSError:
        yield whole
        return
    for s, e, line in chain(() if first is None else (first,), ranges):
        yield whole.model_copy(update={"start": s, "end": e, "first_line": line})


def plan_chunks(files: list[InputFile], *, chunk_bytes: int | None = None) -> list[ChunkSpec]:
    """Turn resolved inputs into ordered ChunkSpecs (index 0..n-1, stable for the same inputs).

    - files of the same format smaller than ``chunk_bytes`` are grouped until the group would pass it;
    - a bigger uncompressed CSV/TSV/JSONL is split into byte ranges at record boundaries;
    - a bigger Parquet file is split by row groups (grouped toward ``chunk_bytes``);
    - a gzip file is one chunk whatever its size, never grouped with others: gzip cannot be entered
      in the middle, so it is decompressed as a stream by the reader, and a corrupt gzip fails only
      its own chunk while the other files go on.
    """
    return list(iter_chunks(files, chunk_bytes=chunk_bytes))


def iter_chunks(files: list[InputFile], *, chunk_bytes: int | None = None) -> Iterator[ChunkSpec]:
    """:func:`plan_chunks` as a generator (same chunks, same order): a flow can start the first chunks
    of a big file while its later byte ranges are still being found."""
    limit = chunk_bytes if chunk_bytes is not None else FileSettings().chunk_bytes
    if limit <= 0:
        msg = f"chunk_bytes must be > 0, got {limit}"
        raise ConfigError(msg)
    index = 0
    group: list[FilePart] = []
    group_bytes = 0

    def emit(parts: list[FilePart]) -> ChunkSpec:
        nonlocal index
        index += 1
        return ChunkSpec(index=index - 1, files=parts)

    for f in files:
        if f.size <= limit and f.compression != "gzip":
            if group and (group[0].format != f.format or group_bytes + f.size > limit):
                yield emit(group)
                group, group_bytes = [], 0
            group.append(_whole(f))
            group_bytes += f.size
            continue
        if group:
            yield emit(group)
            group, group_bytes = [], 0
        whole = _whole(f)
        if f.compression == "gzip":
            yield emit([whole])
        elif f.format in _SPLITTABLE:
            for part in _split_parts(whole, limit):
                yield emit([part])
        elif f.format == "parquet":
            try:
                groups = _parquet_parts(f, limit)
            except OSError:  # gone since it was listed: its one chunk fails naming it
                yield emit([whole])
                continue
            for rgs in groups:
                yield emit([whole.model_copy(update={"row_groups": rgs})])
        else:
            yield emit([whole])
    if group:
        yield emit(group)


__all__ = [
    "ChunkSpec",
    "FilePart",
    "header_end",
    "iter_byte_ranges",
    "iter_chunks",
    "plan_chunks",
    "quote_byte",
    "record_end",
    "split_byte_ranges",
]
