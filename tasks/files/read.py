"""Read one chunk as a stream of bounded batches, exposed to polars as a lazy source.

Why a Python-fed source instead of ``pl.scan_csv(path)``: a chunk may be a byte range of a big file
or a gzip stream, and malformed lines must become rejects with line numbers instead of killing the
scan. So the chunk is read in segments of ``segment_bytes`` cut at record boundaries (quote parity,
see tasks.files.split), each segment is parsed by polars' native CSV/NDJSON reader (multi-threaded), and
only a segment that polars refuses (bad quoting, invalid JSON) is re-parsed by Python's csv/json to
find the bad lines. Segments are wrapped with ``register_io_source`` so the caller stays lazy
(``scan -> expressions -> sink``) and memory stays at a few segments whatever the chunk size.

``_line`` is the 1-based physical line in the source file where the row starts (for Parquet: the
1-based row number in the file). Empty lines are skipped and not counted as rows (in CSV only a line with
nothing on it: in a one-column file a value of spaces is a row). An empty file (nothing but whitespace, e.g.
0 bytes, or a gzip of nothing) has no header and no rows: it adds 0 rows to its chunk. A UTF-8 byte order
mark before the header is not part of the first column's name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import polars as pl
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from tasks.core import ConfigError, SourceError
from tasks.files.inputs import InputFile
from tasks.files.parse import parse_csv, parse_jsonl, utf8_encodable
from tasks.files.schema import (
    LINE,
    PAST_MICROS,
    RAW,
    REJECT_REASON,
    SOURCE_FILE,
    RowValidator,
    Schema,
    inexact_integer_text,
    out_of_float_range,
    polars_dtype,
    type_name_of,
)
from tasks.files.split import ChunkSpec, FilePart, quote_byte, record_end

SEGMENT_BYTES = 8 * 1024 * 1024
_SAMPLE_BYTES = 1024 * 1024
_INFER_ROWS = 5_000
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark: not part of the first record
_UINT64_MAX = (1 << 64) - 1
_DECIMAL38_MAX = 10**38 - 1
_EXACT_FLOAT_INTS = 1 << 53  # every integer up to this is a float exactly


def _separator(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _last_boundary(buf: bytes, quote: bytes | None, parity: int = 0) -> int:
    """Index just after the last newline of ``buf`` that ends a record (quote parity ``parity`` at buf[0]), or -1."""
    idx = buf.rfind(b"\n")
    if quote is None or idx == -1:
        return idx + 1 if idx != -1 else -1
    odd = (parity + buf.count(quote, 0, idx)) % 2
    while odd:
        prev = buf.rfind(b"\n", 0, idx)
        if prev == -1:
            return -1
        odd = (odd + buf.count(quote, prev, idx)) % 2
        idx = prev
    return idx + 1


def _open(part: FilePart) -> IO[bytes]:
    try:
        if part.compression == "gzip":
            return gzip.open(part.path, "rb")
        fh = open(part.path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError:
        msg = f"input file {part.path} no longer exists (deleted or moved after the run was planned); restore it " \
              "and rerun with the same run_key to read it"
        raise SourceError(msg) from None
    fh.seek(part.start)
    return fh


def _read(part: FilePart, stream: IO[bytes], nbytes: int) -> bytes:
    try:
        return stream.read(nbytes) if nbytes > 0 else b""
    except _GZIP_ERRORS as exc:
        msg = f"{part.path} is a corrupt or truncated gzip file ({exc}); replace it or remove it from the input"
        raise SourceError(msg) from exc


def _segments(part: FilePart, stream: IO[bytes], segment_bytes: int) -> Iterator[bytes]:
    """Yield pieces of the range that end at record boundaries, the CSV header (at offset 0) skipped.

    A record is never cut: one longer than a segment (or an unterminated quote) is read on until a boundary or
    the end of the range, so memory grows with the longest record. Blocks without a boundary are kept apart
    and joined once, and only the new block is searched (with the quote parity before it): linear in the
    record's size."""
    quote = quote_byte(part.format)
    remaining = None if part.end is None or part.compression == "gzip" else part.end - part.start

    def read(nbytes: int) -> bytes:
        nonlocal remaining
        block = _read(part, stream, nbytes if remaining is None else min(nbytes, remaining))
        if remaining is not None:
            remaining -= len(block)
        return block

    pending: list[bytes] = []  # blocks read since the last boundary
    parity = 0  # quote parity at the end of ``pending``
    if part.format in ("csv", "tsv") and part.start == 0:
        while (cut := record_end(block := read(64 * 1024), 0, parity, quote)) == -1:
            if not block:
                return
            parity = (parity + block.count(quote)) % 2 if quote is not None else 0
        pending, parity = _after(block[cut + 1 :], quote)
    while block := read(segment_bytes):
        cut = _last_boundary(block, quote, parity)
        if cut == -1:
            pending.append(block)
            parity = (parity + block.count(quote)) % 2 if quote is not None else 0
            continue
        yield b"".join([*pending, block[:cut]])
        pending, parity = _after(block[cut:], quote)
    if any(pending):
        yield b"".join(pending)


def _after(rest: bytes, quote: bytes | None) -> tuple[list[bytes], int]:
    """The blocks and quote parity after a boundary: what follows it in the block."""
    return ([rest] if rest else []), (rest.count(quote) % 2 if quote is not None else 0)


def _lines_before(part: FilePart) -> int:
    """Newlines in ``[0, part.start)`` of an uncompressed file (a range planned without line counts)."""
    count, left = 0, part.start
    with open(part.path, "rb") as fh:
        while left > 0:
            block = fh.read(min(16 * 1024 * 1024, left))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _read_sample(part: FilePart, nbytes: int = _SAMPLE_BYTES) -> bytes:
    try:
        with _open(part) as fh:
            head = fh.read(nbytes)
    except _GZIP_ERRORS as exc:
        msg = f"{part.path} is a corrupt or truncated gzip file ({exc}); replace it or remove it from the input"
        raise SourceError(msg) from exc
    if len(head) == nbytes:
        cut = _last_boundary(head, quote_byte(part.format))
        head = head[:cut] if cut > 0 else head
    return head


def _whole_file(part: FilePart) -> FilePart:
    return part.model_copy(update={"start": 0, "end": None, "first_line": 1, "row_groups": None})


def _csv_names(part: FilePart, head: bytes) -> list[str]:
    """The column names of a CSV/TSV header (the first record of ``head``); a name given twice is refused:
    its values would go to one column and every row would have a field too many."""
    text = head.decode("utf-8-sig", "replace")
    names = next(csv.reader(io.StringIO(text, newline=""), delimiter=_separator(part.format)), [])
    names = [n.strip("\r") for n in names]
    if len(set(names)) != len(names):
        twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        msg = (f"{part.path} has the column name(s) {twice} more than once in its header {names}; give every "
               "column of the header a name of its own (e.g. rename the second one) and run again")
        raise ConfigError(msg)
    return names


def _header_bytes(part: FilePart) -> bytes:
    """The bytes of a text file up to the end of its first record (the CSV header), at most about 1 MiB."""
    head = b""
    with _open(_whole_file(part)) as fh:
        while len(head) < _SAMPLE_BYTES and (block := _read(part, fh, 64 * 1024)):
            head += block
            if record_end(head, 0, 0, quote_byte(part.format)) != -1:
                break
    return head


def header_columns(part: FilePart) -> list[str]:
    """The column names of a CSV/TSV header or a Parquet file, read by name (no sample); [] for JSON lines."""
    if part.format == "parquet":
        return list(pl.read_parquet_schema(part.path))
    if part.format == "jsonl":
        return []
    return _csv_names(part, _header_bytes(part))


def check_layouts(files: Sequence[InputFile]) -> None:
    """Refuse, before any work, a CSV/TSV/Parquet file whose set of columns differs from the first one's: its
    rows would fail its whole chunk, or its parts would have other columns than the others. The same columns
    in another order are fine (read by name). Empty and unreadable files are left to their chunks."""
    first: tuple[str, list[str]] | None = None
    for f in files:
        if f.format == "jsonl":
            continue
        part = FilePart(path=f.path, format=f.format, compression=f.compression, size=f.size, mtime_ns=f.mtime_ns)
        try:
            columns = [] if is_empty_file(part) else header_columns(part)
        except (SourceError, OSError, pl.exceptions.PolarsError):  # a corrupt file: its chunk says so
            continue
        if not columns:
            continue
        if first is None:
            first = (f.path, columns)
        elif set(columns) != set(first[1]):
            msg = (f"{f.path} has columns {columns} but {first[0]} has {first[1]}; every file of a run needs the "
                   "same columns (in any order): transform files of another layout in a run of their own (another "
                   "source and output_dir)")
            raise ConfigError(msg)


def file_columns(part: FilePart, *, infer: bool = True) -> tuple[dict[str, pl.DataType], dict[str, pl.DataType]]:
    """(raw columns as the reader yields them, inferred types or all String when ``infer=False``)."""
    if part.format == "parquet":
        native = dict(pl.read_parquet_schema(part.path))
        return native, native
    head = _read_sample(_whole_file(part))
    if part.format == "jsonl":
        head = head.removeprefix(_BOM)
        sample = [
            obj for x in head.decode("utf-8", "replace").split("\n") if isinstance(obj := _json_or_none(x), dict)
        ]
        names = list(dict.fromkeys(k for obj in sample for k in obj if utf8_encodable(k)))  # a lone surrogate is no name
        try:
            inferred = _inferred_types(pl.read_ndjson(head.rstrip(b"\r\n"), infer_schema_length=None)) if infer else {}
            inferred.update(dict.fromkeys(_big_integers_in_floats(inferred, sample), pl.String()))
        except pl.exceptions.PolarsError:
            inferred = {}
    else:
        sep = _separator(part.format)
        names = _csv_names(part, head)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sample_df = (
                    pl.read_csv(
                        head, separator=sep, n_rows=_INFER_ROWS, try_parse_dates=True, truncate_ragged_lines=True
                    )
                    if infer
                    else None
                )
                dates = [n for n, t in (sample_df.schema.items() if sample_df is not None else ())
                         if t.is_temporal() or t.is_float()]  # the text of the values inference may change
                raw_df = pl.read_csv(head, separator=sep, n_rows=_INFER_ROWS, infer_schema=False, columns=dates,
                                     truncate_ragged_lines=True) if dates else None
            inferred = _inferred_types(sample_df, raw_df) if sample_df is not None else {}
        except pl.exceptions.PolarsError:
            inferred = {}
    if not names:
        msg = f"{part.path} has no header or no rows to take column names from; check the file and input_format"
        raise SourceError(msg)
    raw = dict.fromkeys(names, pl.String())
    typed = {n: polars_dtype(type_name_of(inferred[n])) if n in inferred else pl.String() for n in names}
    return raw, typed


def is_empty_file(part: FilePart) -> bool:
    """True for a 0-byte file or a text file with nothing but whitespace after an optional UTF-8 byte order mark
    (a gzip of nothing, an empty file saved "with BOM"): no header, no rows. Reads until the first other byte,
    so a file with data costs one small read."""
    if part.compression == "none" and part.size == 0:
        return True
    if part.format == "parquet":
        return False
    with _open(_whole_file(part)) as fh:
        block = _read(part, fh, 4096).removeprefix(_BOM)
        while block:
            if block.strip():
                return False
            block = _read(part, fh, 4096)
    return True


def _inferred_types(sample: pl.DataFrame, raw: pl.DataFrame | None = None) -> dict[str, pl.DataType]:
    """The dtypes polars infers for a sample; an integer column wider than int64 (polars says Int128) is
    narrowed by the sample's values: uint64 if they fit, else decimal(38,0), else str; a datetime with digits
    past the microseconds is str, so is a float column holding an integer a float would make another one
    (``9007199254740993`` beside ``1.5``). Each keeps every digit, so no value the inference saw is rejected."""
    types = dict(sample.schema)
    for name, dtype in types.items():
        if isinstance(dtype, pl.Int128 | pl.UInt128 | pl.UInt64):
            low, high = sample[name].min(), sample[name].max()
            if low is None or (low >= 0 and high <= _UINT64_MAX):
                types[name] = pl.UInt64()
            elif low >= -_DECIMAL38_MAX and high <= _DECIMAL38_MAX:
                types[name] = pl.Decimal(38, 0)
            else:
                types[name] = pl.String()
        elif isinstance(dtype, pl.Datetime) and raw is not None and name in raw.columns and bool(
                raw[name].cast(pl.String).str.contains(PAST_MICROS).any()):
            types[name] = pl.String()  # polars parsed them cutting the digits past the microseconds: keep the text
        elif dtype.is_float() and raw is not None and name in raw.columns and bool(raw.select(pl.any_horizontal(
                check(pl.col(name).cast(pl.String), pl.Float64()) for check in (inexact_integer_text, out_of_float_range)
        )).to_series().any()):
            types[name] = pl.String()  # a float would change an integer past 2**53 or a number past its range
    return types


def _big_integers_in_floats(types: dict[str, pl.DataType], sample: list[dict[str, Any]]) -> list[str]:
    """The float columns of a JSON-lines sample holding an integer a float would make another one."""
    floats = [name for name, dtype in types.items() if dtype.is_float()]
    return [name for name in floats if any(
        type(v := obj.get(name)) is int and abs(v) > _EXACT_FLOAT_INTS and int(float(v)) != v for obj in sample)]


def plan_json_keys(schema: Schema | None, files: Sequence[InputFile]) -> Schema | None:
    """The schema with ``json_keys`` set to the keys in the first MiB of the first JSON-lines file (unless it
    has them), so every chunk of a run has the same columns: a line with another key is rejected naming it.
    None stays None (Parquet only)."""
    if schema is None or schema.json_keys is not None:
        return schema
    for f in files:
        if f.format != "jsonl":
            continue
        part = FilePart(path=f.path, format=f.format, compression=f.compression, size=f.size, mtime_ns=f.mtime_ns)
        try:
            keys = list(file_columns(part, infer=False)[0])
        except SourceError:  # no object in its first MiB, or a corrupt gzip: its chunk says so
            continue
        return schema.model_copy(update={"json_keys": keys})
    return schema


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _by_name(parsed: tuple[pl.DataFrame, pl.DataFrame], names: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of a file whose header has the chunk's columns in another order, in the chunk's order."""
    good, bad = parsed
    if good.columns[: len(names)] != names:
        good = good.select(*names, SOURCE_FILE, LINE)
    return good, bad


@dataclass
class _Pass:
    """One read of a chunk: its own counts and rejects."""

    rows_in: int = 0
    rows_rejected: int = 0
    rejects: list[pl.DataFrame] = field(default_factory=list)
    complete: bool = False
    batches: Iterator[pl.DataFrame] = field(default_factory=lambda: iter(()))


class ChunkReader:
    """Streams one ChunkSpec as validated batches; counts rows and keeps the (bounded) rejects.

    Use ``lazy()`` once to get a LazyFrame of good rows; after it has been consumed (or after
    ``drain()``), ``rows_in``, ``rows_rejected`` and ``rejects()`` describe the whole chunk.

    Every scan of the LazyFrame is a fresh pass over the chunk with its own counts and rejects, so a
    transform that collects part of its input (a first row, a lookup, a self-join) takes nothing
    away from the rows the sink writes. The counts and rejects reported are those of the most
    complete pass (``drain()`` completes it when the query stopped early, e.g. after a LIMIT).
    """

    def __init__(self, spec: ChunkSpec, *, schema: Schema | None = None, segment_bytes: int = SEGMENT_BYTES) -> None:
        if not spec.files:
            msg = f"chunk {spec.index} has no files; plan chunks with plan_chunks()"
            raise SourceError(msg)
        self.spec = spec
        self.segment_bytes = segment_bytes
        self._files = [f for f in spec.files if not is_empty_file(f)]  # an empty file has no rows
        first = self._files[0] if self._files else spec.files[0]
        raw, typed = self._json_columns(first, schema) if first.format == "jsonl" else \
            file_columns(first, infer=schema is None)
        self.raw_columns = raw
        if schema is None and first.format != "parquet":
            schema = Schema(columns={c: type_name_of(t) for c, t in typed.items()}, inferred=True)
        self.validator = RowValidator(schema, raw, source=first.path)
        out = self.validator.output_schema
        # JSON-lines columns whose text is kept (a number in them must come out as the file writes it)
        self._exact_columns = [c for c in raw if c in out and (out[c] == pl.String or isinstance(out[c], pl.Decimal))]
        # CSV columns cast to another type than str: a quoted "" is null there, as in polars' typed read
        self._empty_as_null = [c for c in raw if c in out and out[c] != pl.String]
        self._passes: list[_Pass] = []
        self._passes_lock = threading.Lock()
        self._started = False
        self.error: BaseException | None = None

    def _json_columns(
        self, first: FilePart, schema: Schema | None
    ) -> tuple[dict[str, pl.DataType], dict[str, pl.DataType]]:
        """JSON lines: the schema's ``json_keys`` (the flow's plan sets them), else the keys in the first MiB of
        each file of the chunk (types inferred from the first); then the schema's other columns. A line with a
        key outside them is rejected naming it (tasks.files.parse), never dropped."""
        if schema is not None and schema.json_keys is not None:
            keys, typed = list(schema.json_keys), {}
        else:
            raw, typed = file_columns(first, infer=schema is None)
            keys = list(raw)
            for part in self._files[1:]:
                try:
                    keys += [k for k in file_columns(part, infer=False)[0] if k not in keys]
                except SourceError:  # no object in its first MiB: its lines say why they are rejected
                    continue
        keys += [c for c in (schema.columns if schema is not None else {}) if c not in keys]
        return dict.fromkeys(keys, pl.String()), {k: typed.get(k, pl.String()) for k in keys}

    @property
    def schema(self) -> dict[str, pl.DataType]:
        """Schema of the good rows, lineage columns included."""
        return self.validator.output_schema

    def _raw_batches(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        names = list(self.raw_columns)
        for part in self._files:
            if part.format == "parquet":
                yield from self._parquet(part, names)
                continue
            columns = names
            if part.format in ("csv", "tsv") and part is not self._files[0]:
                columns = header_columns(part)
                if set(columns) != set(names):
                    msg = (
                        f"{part.path} has columns {columns} but {self._files[0].path} (same chunk) has {names}; "
                        "give files of one layout per source, or transform them in separate runs"
                    )
                    raise SourceError(msg)
            with _open(part) as stream:
                if part.start and part.first_line == 0:
                    line = _lines_before(part) + 1
                else:
                    line = part.first_line if part.start or part.format == "jsonl" else 0
                for i, seg in enumerate(_segments(part, stream, self.segment_bytes)):
                    if line == 0:
                        line = self._data_first_line(part)
                    if part.format == "jsonl":
                        body = seg.removeprefix(_BOM) if i == 0 and part.start == 0 else seg
                        yield parse_jsonl(body, names, line, part.path, self._exact_columns)
                    else:
                        yield _by_name(parse_csv(seg, columns, _separator(part.format), line, part.path,
                                                 empty_as_null=self._empty_as_null), names)
                    line += seg.count(b"\n")

    @staticmethod
    def _data_first_line(part: FilePart) -> int:
        """Line where data starts after the header (a header may span lines via quoted newlines)."""
        with _open(_whole_file(part)) as fh:
            head = _read(part, fh, _SAMPLE_BYTES)
        return head.count(b"\n", 0, record_end(head, 0, 0, b'"') + 1) + 1

    def _parquet(self, part: FilePart, names: list[str]) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        pf = pq.ParquetFile(part.path)
        meta = pf.metadata
        groups = part.row_groups if part.row_groups is not None else list(range(meta.num_row_groups))
        offsets = [0]
        for i in range(meta.num_row_groups):
            offsets.append(offsets[-1] + meta.row_group(i).num_rows)
        empty = pl.DataFrame(schema={RAW: pl.String, SOURCE_FILE: pl.String, LINE: pl.Int64, REJECT_REASON: pl.String})
        for rg in groups:
            row = offsets[rg] + 1
            for batch in pf.iter_batches(row_groups=[rg], batch_size=64 * 1024, columns=names):
                df = pl.from_arrow(batch)
                assert isinstance(df, pl.DataFrame)
                df = df.with_columns(
                    pl.lit(part.path).alias(SOURCE_FILE), pl.int_range(row, row + df.height, dtype=pl.Int64).alias(LINE)
                )
                row += df.height
                yield df, empty

    def batches(self) -> Iterator[pl.DataFrame]:
        """Good rows, typed, batch by batch: one new pass, whose rejects and counts the reader keeps."""
        return self._new_pass().batches

    def _new_pass(self) -> _Pass:
        run = _Pass()
        run.batches = self._pass_batches(run)
        with self._passes_lock:
            self._passes.append(run)
        return run

    def _pass_batches(self, run: _Pass) -> Iterator[pl.DataFrame]:
        for raw, malformed in self._raw_batches():
            good, rejects = self.validator.split(raw)
            run.rows_in += raw.height + malformed.height
            bad = pl.concat([rejects, malformed], how="diagonal_relaxed") if malformed.height else rejects
            if bad.height:
                run.rows_rejected += bad.height
                run.rejects.append(bad)
            yield good
        run.complete = True

    def _best(self) -> _Pass | None:
        """The pass that read the most of the chunk (a complete one if any)."""
        with self._passes_lock:
            return max(self._passes, key=lambda r: (r.complete, r.rows_in), default=None)

    @property
    def rows_in(self) -> int:
        best = self._best()
        return best.rows_in if best else 0

    @property
    def rows_rejected(self) -> int:
        best = self._best()
        return best.rows_rejected if best else 0

    def lazy(self) -> pl.LazyFrame:
        """A LazyFrame over the chunk's good rows; every scan of it reads the chunk afresh (see the class)."""
        if self._started:
            msg = f"chunk {self.spec.index} was already read; create a new ChunkReader to read it again"
            raise SourceError(msg)
        self._started = True

        def source(
            with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _batch_size: int | None
        ) -> Iterator[pl.DataFrame]:
            left = n_rows
            good = self.batches()
            try:
                for df in good:
                    if predicate is not None:
                        df = df.filter(predicate)
                    if with_columns is not None:
                        df = df.select(with_columns)
                    if left is not None:
                        df = df.head(left)
                        left -= df.height
                    yield df
                    if left is not None and left <= 0:
                        return
            except Exception as exc:
                self.error = exc
                raise

        return register_io_source(source, schema=self.schema, explain_name=f"chunk-{self.spec.index}")

    def drain(self) -> None:
        """Complete the most complete pass (e.g. after a LIMIT) so the counts cover the chunk."""
        self._started = True
        best = self._best()
        if best is not None and best.complete:
            return
        run = best or self._new_pass()
        try:
            for _ in run.batches:
                pass
        except Exception as exc:
            self.error = exc
            raise

    def rejects(self) -> pl.DataFrame | None:
        """All rejects of the chunk (raw values, ``_raw``, lineage, ``_reject_reason``), or None."""
        best = self._best()
        if best is None or not best.rejects:
            return None
        out = pl.concat(best.rejects, how="diagonal_relaxed")
        order = [c for c in [*self.raw_columns, RAW, SOURCE_FILE, LINE, REJECT_REASON] if c in out.columns]
        return out.select(order).sort(SOURCE_FILE, LINE, maintain_order=True)


def scan_chunk(spec: ChunkSpec, *, schema: Schema | None = None) -> pl.LazyFrame:
    """Convenience: the good rows of a chunk as a LazyFrame (rejects are dropped; use ChunkReader to keep them)."""
    return ChunkReader(spec, schema=schema).lazy()


def infer_schema(part: FilePart) -> Schema:
    """Guess a Schema from the first MiB of a file; pass it to every chunk so all parts share types."""
    _, typed = file_columns(part)
    return Schema(columns={c: type_name_of(t) for c, t in typed.items()}, inferred=True)


__all__ = [
    "SEGMENT_BYTES",
    "ChunkReader",
    "check_layouts",
    "file_columns",
    "header_columns",
    "infer_schema",
    "is_empty_file",
    "plan_json_keys",
    "scan_chunk",
]
