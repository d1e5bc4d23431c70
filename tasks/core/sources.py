"""Item sources: lists, any iterable, files (jsonl/csv/tsv/parquet, optionally .gz), "pkg.mod:fn".

Sources stream: nothing here materializes the input. Files are checked before any work (exists,
readable, every JSONL line parses, every CSV row has the header's width) in one streaming pass that
also counts the items, so progress can show an ETA and a malformed line is reported with its number
instead of failing the run half-way.

Python callers may hand over objects that Prefect cannot carry as flow parameters (a generator is
consumed by Prefect's parameter serialization): ``tasks.core.loader.register_object`` keeps such an object
in this process and returns a ``"mem:<id>"`` handle, a plain string that is safe to pass to a flow.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import shutil
import tempfile
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from tasks.core.errors import ConfigError, InputNotFound, SourceError
from tasks.core.exactjson import loads_items
from tasks.core.loader import is_handle, is_import_path, load_object, resolve_handle

FileFormat = Literal["jsonl", "csv", "tsv", "parquet"]
InputFormat = Literal["auto", "jsonl", "csv", "tsv", "parquet"]  # "auto": from the name and the magic bytes
FILE_FORMATS: tuple[FileFormat, ...] = ("jsonl", "csv", "tsv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass
class Source:
    """An opened source: ``label`` for messages, ``total`` when known, ``iterate()`` to stream items."""

    label: str
    total: int | None
    iterate: Callable[[], Iterator[Any]]

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()


def open_source(spec: Any, *, input_format: str | None = None) -> Source:
    """Resolve a source spec into a :class:`Source`, validating it before any work is done."""
    if isinstance(spec, Source):
        return spec
    if is_handle(spec):
        obj = resolve_handle(spec, what="source")
        return obj if isinstance(obj, Source) else _from_object(obj, label="in-memory source")
    if isinstance(spec, Path) or (isinstance(spec, str) and not is_import_path(spec)):
        return open_file_source(Path(spec), input_format=input_format)
    if isinstance(spec, str):
        factory = load_object(spec, what="source")
        if not callable(factory):
            return _from_object(factory, label=spec)
        try:
            produced = factory()
        except Exception as exc:
            msg = f"source {spec!r} raised {type(exc).__name__}: {exc}"
            raise SourceError(msg) from exc
        return _from_object(produced, label=spec)
    if spec is None:
        msg = "source is required: a list, an iterable, a file path or 'pkg.mod:fn'"
        raise ConfigError(msg)
    return _from_object(spec, label=f"{type(spec).__name__} source")


def _from_object(obj: Any, *, label: str) -> Source:
    if callable(obj) and not isinstance(obj, Iterable):
        try:
            obj = obj()
        except Exception as exc:
            msg = f"{label}: the source callable raised {type(exc).__name__}: {exc}"
            raise SourceError(msg) from exc
    if isinstance(obj, AsyncIterable):
        return _from_async(obj, label=label)
    if isinstance(obj, str | bytes | dict) or not isinstance(obj, Iterable):
        msg = f"{label}: a {type(obj).__name__} is not a source of items; pass a list or another iterable"
        raise ConfigError(msg)
    total = len(obj) if hasattr(obj, "__len__") else None  # type: ignore[arg-type]
    reusable = isinstance(obj, list | tuple | range)
    consumed = threading.Event()

    def iterate() -> Iterator[Any]:
        if not reusable and consumed.is_set():
            msg = f"{label} is a one-shot iterator and was already consumed; pass a list or 'pkg.mod:fn'"
            raise SourceError(msg)
        consumed.set()
        return iter(obj)

    return Source(label=label, total=total, iterate=iterate)


def _from_async(obj: AsyncIterable[Any], *, label: str) -> Source:
    """An async iterable or async generator, streamed in bounded memory (tasks.core.async_source)."""
    from tasks.core.async_source import iterate_async

    consumed = threading.Event()

    def iterate() -> Iterator[Any]:
        if consumed.is_set():
            msg = f"{label} is a one-shot async iterator and was already consumed; pass 'pkg.mod:fn' returning it"
            raise SourceError(msg)
        consumed.set()
        return iterate_async(obj, label=label)

    return Source(label=label, total=None, iterate=iterate)


def detect_format(path: Path, input_format: str | None = None) -> tuple[str, bool]:
    """Return (format, gzipped) from the suffixes and the gzip magic bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    with path.open("rb") as fh:
        magic = fh.read(2)
    gz = gz or magic == b"\x1f\x8b"
    if input_format is not None and input_format != "auto":
        if input_format not in FILE_FORMATS:
            msg = f"input_format {input_format!r} is not one of {list(FILE_FORMATS)}"
            raise ConfigError(msg)
        return input_format, gz
    core = suffixes[:-1] if suffixes and suffixes[-1] == ".gz" else suffixes
    fmt = _SUFFIXES.get(core[-1]) if core else None
    if fmt is None:
        msg = f"cannot tell the format of {str(path)!r} from its name; use .jsonl/.csv/.tsv/.parquet (+ .gz) or set input_format"
        raise ConfigError(msg)
    return fmt, gz


def open_file_source(path: Path, *, input_format: str | None = None) -> Source:
    if not path.exists():
        msg = f"source file {str(path)!r} does not exist (working directory: {Path.cwd()})"
        raise InputNotFound(msg)
    if not path.is_file():
        msg = f"source {str(path)!r} is not a file"
        raise SourceError(msg)
    try:
        fmt, gz = detect_format(path, input_format)
    except OSError as exc:
        msg = f"source file {str(path)!r} cannot be read: {exc.strerror}"
        raise SourceError(msg) from None
    label = str(path)
    if fmt == "parquet":
        return _parquet_source(path, gz, label)
    reader = _jsonl_reader if fmt == "jsonl" else _csv_records
    delimiter = "\t" if fmt == "tsv" else ","

    def iterate() -> Iterator[Any]:
        with _open_text(path, gz) as fh:
            for _, record in reader(fh, label, delimiter):
                yield record

    total = 0
    try:
        with _open_text(path, gz) as fh:
            for total, _ in enumerate(reader(fh, label, delimiter), start=1):  # noqa: B007
                pass
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        msg = f"source file {label!r} cannot be read ({type(exc).__name__}: {exc}); is it corrupt or mis-named?"
        raise SourceError(msg) from None
    return Source(label=label, total=total, iterate=iterate)


def _open_text(path: Path, gz: bool) -> IO[str]:
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _jsonl_reader(fh: IO[str], label: str, _delimiter: str) -> Iterator[tuple[int, Any]]:
    return jsonl_records(fh, label)


def jsonl_records(fh: IO[str], label: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file; a malformed line is a SourceError
    naming ``label`` and the line (items, part files, dead letters all read this way). A number a double would
    write differently (``12.50``, ``1e400``) is a float that keeps its text for outputs and dead letters
    (:class:`tasks.core.exactjson.JsonFloat`)."""
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, loads_items(line)
        except json.JSONDecodeError as exc:
            msg = f"{label}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
            raise SourceError(msg) from None


def _csv_records(fh: IO[str], label: str, delimiter: str) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(fh, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        msg = f"{label}:1: malformed header ({exc})"
        raise SourceError(msg) from None
    width = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            msg = f"{label}:{reader.line_num}: malformed CSV ({exc}); fix the quoting of that line"
            raise SourceError(msg) from None
        if not row:
            continue
        if len(row) != width:
            msg = (
                f"{label}:{reader.line_num}: {len(row)} fields where the header has {width}; "
                "fix that row (or quote its delimiters)"
            )
            raise SourceError(msg)
        yield reader.line_num, dict(zip(header, row, strict=True))


def _parquet_source(path: Path, gz: bool, label: str) -> Source:
    import pyarrow.parquet as pq

    def open_file() -> tuple[Any, Path | None]:
        if not gz:
            return pq.ParquetFile(path), None
        tmp = Path(tempfile.mkstemp(suffix=".parquet")[1])
        with gzip.open(path, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return pq.ParquetFile(tmp), tmp

    try:
        pf, tmp = open_file()
        total = pf.metadata.num_rows
        pf.close()
        if tmp:
            tmp.unlink(missing_ok=True)
    except Exception as exc:
        msg = f"source file {label!r} is not a readable Parquet file: {exc}"
        raise SourceError(msg) from None

    def iterate() -> Iterator[Any]:
        pf, tmp = open_file()
        try:
            for batch in pf.iter_batches(batch_size=8192):
                yield from batch.to_pylist()
        finally:
            pf.close()
            if tmp:
                tmp.unlink(missing_ok=True)

    return Source(label=label, total=total, iterate=iterate)


def take(iterator: Iterator[Any], n: int) -> list[Any]:
    return list(itertools.islice(iterator, n))


__all__ = [
    "FILE_FORMATS",
    "FileFormat",
    "InputFormat",
    "Source",
    "detect_format",
    "jsonl_records",
    "open_file_source",
    "open_source",
]
