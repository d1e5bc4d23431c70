"""File transforms: the plain function layer under the ``file_transform`` flow.

The flow does ``resolve_inputs -> plan_chunks -> process_chunk`` (one Prefect task per ChunkSpec).
``process_chunk`` is lazy end to end: the chunk reader feeds bounded, validated batches into a polars
LazyFrame, the transform (polars SQL over ``df`` or a LazyFrame -> LazyFrame callable) adds
expressions, and the result is sunk atomically into ``part-<index>``. Rows that fail the schema go
to ``_rejects/part-<index>.<input format>`` with ``_reject_reason``, ``_source_file`` and ``_line``.

Fast path: when the schema is known, a single-file CSV/TSV chunk is first run as one native polars
query over its byte range (tasks.files.fast); it commits only when its counters prove the result equals the
careful path's with no rejects, otherwise the careful reader below runs the chunk.

Sibling modules: inputs (resolve, format detection), split (ChunkSpec, planning, byte ranges),
schema (Schema, validation), read (ChunkReader), write (atomic writes), fast, chunks (the chunk task).
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tasks.core import ConfigError, FatalError, output_write_error
from tasks.files.fast import fast_path_possible, try_fast_chunk
from tasks.files.inputs import InputFile, InputFormat, detect_format, resolve_inputs
from tasks.files.read import ChunkReader, infer_schema, scan_chunk
from tasks.files.schema import ALLOWED_TYPES, LINE, RAW, REJECT_REASON, SOURCE_FILE, Schema, parse_schema
from tasks.files.split import ChunkSpec, FilePart, plan_chunks, split_byte_ranges
from tasks.files.write import FileOutputFormat, part_name, remove_temp_files, sink_atomic, write_atomic
from tasks.files.write import sink_partitioned_atomic as _sink_partitioned

TransformFn = Callable[[pl.LazyFrame], pl.LazyFrame]
Transform = str | TransformFn | None
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_UNKNOWN_COLUMN = re.compile(r'unable to find column "([^"]+)"')


class ChunkResult(BaseModel):
    """What one chunk did. Invariant: rows_in == rows_out + rows_rejected + rows_filtered."""

    index: int
    rows_in: int = Field(description="Data rows read (blank lines not counted).")
    rows_out: int = Field(description="Rows written to the output part file(s).")
    rows_rejected: int = Field(description="Rows sent to the rejects file (schema or malformed line).")
    rows_filtered: int = Field(
        description="rows_in - rows_rejected - rows_out: dropped (or, if negative, added) by the transform."
    )
    output_paths: list[str]
    rejects_path: str | None = None
    bytes_in: int
    bytes_out: int
    duration_s: float
    fast_path: bool = Field(False, description="Read by polars' typed scan of the whole range (no rejects).")


def resolve_transform(transform: Transform) -> str | TransformFn | None:
    """A callable stays; ``"pkg.mod:fn"`` is imported; any other string is SQL over the table ``df``."""
    if transform is None or callable(transform):
        return transform
    if not isinstance(transform, str) or not transform.strip():
        msg = f"transform must be SQL over table df, 'pkg.mod:fn' or a callable, got {transform!r}"
        raise ConfigError(msg)
    text = transform.strip()
    if not _IMPORT_PATH.match(text):
        return text
    module_name, fn_name = text.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        msg = f"transform {text!r} cannot be imported ({exc}); check the module is on PYTHONPATH"
        raise ConfigError(msg) from None
    if not callable(fn):
        msg = f"transform {text!r} is not callable; it must take and return a polars LazyFrame"
        raise ConfigError(msg)
    return fn


class TransformError(ConfigError):
    """The user's transform raised while building its query (a bug in it: every chunk would fail alike)."""


class TransformFailed(FatalError):
    """A chunk's transform raised (see TransformError): the run stops instead of failing every chunk alike."""


def _transform_label(transform: Transform, fn: str | TransformFn) -> str:
    if isinstance(fn, str):
        return f"(SQL) {fn[:200]!r}"
    if isinstance(transform, str):
        return repr(transform.strip())
    return repr(f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}")


def apply_transform(lf: pl.LazyFrame, transform: Transform) -> pl.LazyFrame:
    """Add the transform to the plan and resolve its schema now, so a bad column fails before any work.

    Any error of the transform is a ConfigError naming it: a TransformError with the original error when it
    raised something other than an unknown column or invalid SQL."""
    fn = resolve_transform(transform)
    if fn is None:
        return lf
    columns = lf.collect_schema().names()
    try:
        out = _run_transform(fn, lf)
        out.collect_schema()
    except ConfigError:
        raise
    except pl.exceptions.ColumnNotFoundError as exc:
        found = _UNKNOWN_COLUMN.search(str(exc))
        name = found[1] if found else str(exc).splitlines()[0]
        msg = f"transform refers to unknown column {name!r}; columns of df are {columns}"
        raise ConfigError(msg) from None
    except (
        pl.exceptions.SQLSyntaxError,
        pl.exceptions.SQLInterfaceError,
        pl.exceptions.InvalidOperationError,
        pl.exceptions.SchemaError,
    ) as exc:
        msg = f"transform is invalid: {str(exc).splitlines()[0]}; the table is named df, columns are {columns}"
        raise ConfigError(msg) from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        msg = (f"transform {_transform_label(transform, fn)} raised {type(exc).__name__}: {first} (given df with "
               f"columns {columns}); fix the transform")
        raise TransformError(msg) from exc
    return out


def _run_transform(fn: str | TransformFn, lf: pl.LazyFrame) -> pl.LazyFrame:
    if isinstance(fn, str):
        return pl.SQLContext(df=lf, eager=False).execute(fn)
    out = fn(lf)
    if isinstance(out, pl.DataFrame):
        out = out.lazy()
    if not isinstance(out, pl.LazyFrame):
        msg = f"transform {getattr(fn, '__name__', fn)!r} returned {type(out).__name__}; return a LazyFrame"
        raise ConfigError(msg)
    return out


def _count_rows(path: Path, fmt: str) -> int:
    if path.stat().st_size == 0:
        return 0
    if fmt == "parquet":
        return pq.read_metadata(path).num_rows
    if fmt == "jsonl":  # one line per row (polars escapes a newline in a value); NaN is not JSON polars reads
        return _count_lines(path)
    return int(pl.scan_csv(path, infer_schema=False).select(pl.len()).collect().item())


def _count_lines(path: Path, block: int = 8 << 20) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while data := fh.read(block):
            lines += data.count(b"\n")
            last = data[-1:]
    return lines + (last != b"\n")


def process_chunk(
    spec: ChunkSpec,
    output_dir: str | Path,
    *,
    transform: Transform = None,
    schema: Schema | Mapping[str, Any] | str | None = None,
    output_format: FileOutputFormat = "parquet",
    partition_by: Sequence[str] = (),
    keep_lineage: bool = False,
    fast: bool = True,
) -> ChunkResult:
    """Read, validate, transform and write one chunk; the body of the flow's chunk task.

    Idempotent: the same spec writes the same file names, each atomically, so a retried or resumed
    chunk replaces its earlier output instead of adding to it. ``schema=None`` infers types from the
    first MiB of the chunk's first file; pass ``infer_schema(...)`` from the flow for consistent types
    across parts. ``keep_lineage`` keeps ``_source_file``/``_line`` in the good output (and visible to
    the transform). A corrupt gzip raises SourceError naming the file; other chunks are unaffected.

    ``fast=True`` first tries polars' typed scan of the whole byte range (tasks.files.fast) when the
    schema is known; it commits only when it provably matches the careful path with no rejects, and
    otherwise leaves nothing behind and the careful path below runs.
    """
    if output_format not in ("parquet", "csv", "jsonl"):
        msg = f"output_format {output_format!r} is not supported; use 'parquet', 'csv' or 'jsonl'"
        raise ConfigError(msg)
    try:
        return _process_chunk(spec, Path(output_dir), transform=transform, schema=schema, output_format=output_format,
                              partition_by=partition_by, keep_lineage=keep_lineage, fast=fast)
    except TransformError as exc:
        files = ", ".join(sorted({f.path for f in spec.files}))
        msg = (f"chunk {spec.index} ({files}): {exc}. The run stopped here: the transform would fail every chunk "
               "alike; fix it and run again")
        raise TransformFailed(msg) from exc
    except Exception as exc:  # read-only, full, a file in the way: stop the run instead of failing every chunk
        failure = output_write_error(exc, output_dir)
        if failure is None:
            raise
        raise failure from exc


def _process_chunk(
    spec: ChunkSpec, out: Path, *, transform: Transform, schema: Schema | Mapping[str, Any] | str | None,
    output_format: FileOutputFormat, partition_by: Sequence[str], keep_lineage: bool, fast: bool,
) -> ChunkResult:
    started = time.perf_counter()
    parsed = parse_schema(schema)
    if fast and fast_path_possible(spec, parsed, keep_lineage=keep_lineage, partition_by=partition_by):
        assert parsed is not None
        done = try_fast_chunk(
            spec, out, transform=transform, schema=parsed, output_format=output_format,
            apply_transform=apply_transform,
        )
        if done is not None:
            (out / "_rejects" / part_name(spec.index, spec.files[0].format)).unlink(missing_ok=True)
            rows_out = sum(_count_rows(p, output_format) for p in done["paths"])
            return ChunkResult(
                index=spec.index,
                rows_in=done["rows_in"],
                rows_out=rows_out,
                rows_rejected=0,
                rows_filtered=done["rows_in"] - rows_out,
                output_paths=[str(p) for p in done["paths"]],
                rejects_path=None,
                bytes_in=spec.nbytes,
                bytes_out=sum(p.stat().st_size for p in done["paths"]),
                duration_s=round(time.perf_counter() - started, 3),
                fast_path=True,
            )
    reader = ChunkReader(spec, schema=parsed)
    lf = reader.lazy()
    if not keep_lineage:
        lf = lf.drop(SOURCE_FILE, LINE)
    lf = apply_transform(lf, transform)
    name = part_name(spec.index, output_format)
    try:
        if partition_by:
            paths = _sink_partitioned(lf, out, name, output_format, list(partition_by))
        else:
            paths = [sink_atomic(lf, out / name, output_format)]
        reader.drain()
    except Exception as exc:
        if reader.error is not None and reader.error is not exc:
            raise reader.error from exc
        raise
    rejects = reader.rejects()
    rejects_fmt = spec.files[0].format
    rejects_file = out / "_rejects" / part_name(spec.index, rejects_fmt)
    if rejects is not None:
        write_atomic(rejects, rejects_file, rejects_fmt)
    else:
        rejects_file.unlink(missing_ok=True)
    rows_out = sum(_count_rows(p, output_format) for p in paths)
    return ChunkResult(
        index=spec.index,
        rows_in=reader.rows_in,
        rows_out=rows_out,
        rows_rejected=reader.rows_rejected,
        rows_filtered=reader.rows_in - reader.rows_rejected - rows_out,
        output_paths=[str(p) for p in paths],
        rejects_path=str(rejects_file) if rejects is not None else None,
        bytes_in=spec.nbytes,
        bytes_out=sum(p.stat().st_size for p in paths),
        duration_s=round(time.perf_counter() - started, 3),
    )


__all__ = [
    "ALLOWED_TYPES",
    "LINE",
    "RAW",
    "REJECT_REASON",
    "SOURCE_FILE",
    "ChunkReader",
    "ChunkResult",
    "ChunkSpec",
    "FileOutputFormat",
    "FilePart",
    "InputFile",
    "InputFormat",
    "Schema",
    "Transform",
    "TransformError",
    "TransformFailed",
    "apply_transform",
    "detect_format",
    "infer_schema",
    "parse_schema",
    "plan_chunks",
    "process_chunk",
    "remove_temp_files",
    "resolve_inputs",
    "resolve_transform",
    "scan_chunk",
    "split_byte_ranges",
    "write_atomic",
]
