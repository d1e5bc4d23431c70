"""file_transform's chunk task and the checks and cleanups around it.

:func:`run_file_chunk` turns one :class:`ChunkSpec` into a ChunkReport whose items are the chunk's input
rows (tasks.files.process does the reading, validating, transforming and writing); ``file_chunk_task`` is
its Prefect face. :func:`check_plan` infers the schema and checks schema, transform and ``partition_by``
against the first file before any chunk runs; :func:`remove_stale_parts` clears the parts of an earlier
plan that would duplicate rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task

from tasks.core import (
    ChunkRef,
    ChunkReport,
    ConfigError,
    FailedItem,
    SourceError,
    failpoint,
    is_handle,
    recorded_safely,
    resolve_handle,
)
from tasks.files.inputs import InputFile
from tasks.files.process import LINE, SOURCE_FILE, ChunkSpec, Schema, apply_transform, infer_schema, process_chunk
from tasks.files.read import check_layouts, file_columns, is_empty_file, plan_json_keys
from tasks.files.schema import RowValidator
from tasks.files.split import FilePart
from tasks.files.write import FileOutputFormat, owned_parts, unwritable_columns


def resolve_transform_handle(transform: str | None) -> Any:
    """A ``mem:`` handle (callable given in Python) resolves to the callable; strings stay."""
    if transform is not None and is_handle(transform):
        return resolve_handle(transform, what="transform")
    return transform


def chunk_item(spec: ChunkSpec) -> dict[str, Any]:
    """What goes to the dead letter when a whole chunk fails: its index and file pieces."""
    return {
        "chunk": spec.index,
        "files": [
            {"path": f.path, "start": f.start, "end": f.end, "row_groups": f.row_groups} for f in spec.files
        ],
    }


def run_file_chunk(
    spec: ChunkSpec,
    output_dir: str,
    *,
    transform: Any = None,
    schema: Mapping[str, Any] | None = None,
    output_format: FileOutputFormat = "parquet",
    partition_by: Sequence[str] = (),
    keep_lineage: bool = False,
) -> ChunkReport:
    """One chunk as a ChunkReport whose items are the chunk's input rows (see the module docstring).

    An empty file (0 bytes, only whitespace) has no rows and takes nothing from the other files of its chunk;
    a chunk of empty files only writes no part. ``extra["files_empty"]`` counts them."""
    started = time.perf_counter()
    empty = [f.path for f in spec.files if is_empty_file(f)]
    if len(empty) == len(spec.files):
        return _empty_chunk(spec, output_dir, empty, started)
    res = process_chunk(
        spec, output_dir, transform=resolve_transform_handle(transform), schema=schema, output_format=output_format,
        partition_by=partition_by, keep_lineage=keep_lineage,
    )
    failpoint("chunk.after_output")
    failures = []
    if res.rows_rejected:  # one dead-letter line per chunk pointing at its rejects file, not one per row
        failures.append(FailedItem(
            item={"chunk": spec.index, "rejects_path": res.rejects_path, "rows_rejected": res.rows_rejected},
            chunk=spec.index, position=0, attempts=1, error_type="RejectedRows", category="rejected_rows",
            message=f"{res.rows_rejected} row(s) rejected by the schema or malformed; see {res.rejects_path}",
        ))
    report = ChunkReport(
        index=spec.index,
        size=res.rows_in,
        succeeded=res.rows_in - res.rows_rejected,
        failed=res.rows_rejected,
        failures=failures,
        duration_s=round(time.perf_counter() - started, 3),
        output_path=res.output_paths[0] if len(res.output_paths) == 1 else output_dir,
        extra={
            "rows_in": res.rows_in,
            "rows_out": res.rows_out,
            "rows_rejected": res.rows_rejected,
            "rows_filtered": res.rows_filtered,
            "bytes_in": res.bytes_in,
            "bytes_out": res.bytes_out,
            "chunks_fast_path": int(res.fast_path),
            "files_empty": len(empty),
            "parts_written": len(res.output_paths),
            "outputs": [*res.output_paths, *([res.rejects_path] if res.rejects_path else [])],  # checked on resume
        },
    )
    report.check()
    return report


def _empty_chunk(spec: ChunkSpec, output_dir: str, empty: list[str], started: float) -> ChunkReport:
    """A chunk of empty files: 0 rows, no part; a part of this index left by an earlier plan is removed."""
    for p, index in owned_parts(Path(output_dir)):
        if index == spec.index:
            p.unlink(missing_ok=True)
    print(f"chunk {spec.index}: {', '.join(empty)} empty (no header, no rows): 0 rows")
    zero = dict.fromkeys(("rows_in", "rows_out", "rows_rejected", "rows_filtered", "bytes_out"), 0)
    return ChunkReport(
        index=spec.index, size=0, succeeded=0, failed=0, failures=[], duration_s=round(time.perf_counter() - started, 3),
        output_path=output_dir, extra={**zero, "bytes_in": spec.nbytes, "chunks_fast_path": 0,
                                       "files_empty": len(empty), "parts_written": 0, "outputs": []},
    )


@task(name="file-chunk", task_run_name="chunk-{spec.index}", persist_result=True, log_prints=False)
def file_chunk_task(
    spec: ChunkSpec,
    output_dir: str,
    transform: str | None,
    schema: dict[str, Any] | None,
    output_format: FileOutputFormat,
    partition_by: list[str],
    keep_lineage: bool,
    ref: ChunkRef,
) -> ChunkReport:
    """Thin Prefect wrapper of :func:`run_file_chunk` (``ref`` drives the resume cache)."""
    with recorded_safely(f"chunk {spec.index}"):
        report = run_file_chunk(
            spec, output_dir, transform=transform, schema=schema, output_format=output_format,
            partition_by=partition_by, keep_lineage=keep_lineage,
        )
        report.content_hash = ref.content or ""
        return report


def _first_text_part(files: list[InputFile]) -> tuple[FilePart | None, list[str]]:
    """The first readable non-Parquet file (for schema inference), and why earlier ones were skipped."""
    skipped: list[str] = []
    for f in files:
        if f.format == "parquet":
            continue
        part = FilePart(path=f.path, format=f.format, compression=f.compression, size=f.size, mtime_ns=f.mtime_ns)
        try:
            file_columns(part, infer=False)
        except SourceError as exc:
            skipped.append(str(exc))
            continue
        return part, skipped
    return None, skipped


def check_plan(
    files: list[InputFile],
    schema: Schema | None,
    transform: Any,
    *,
    partition_by: Sequence[str],
    keep_lineage: bool,
    output_format: FileOutputFormat = "parquet",
) -> Schema | None:
    """Infer the schema if needed and check schema, transform, partition_by and the output columns' types
    (``output_format`` must hold them) before any work.

    Returns the schema every chunk gets (None only for all-Parquet inputs without a schema: native types).
    Raises ConfigError naming unknown columns and listing the columns that exist.
    """
    probe, skipped = _first_text_part(files)
    if probe is None:
        first = next((f for f in files if f.size), files[0])
        probe = FilePart(path=first.path, format=first.format, compression=first.compression, size=first.size)
        if first.format != "parquet":
            msg = f"no input file could be read: {'; '.join(skipped)}"
            raise SourceError(msg)
    if schema is None and probe.format != "parquet":
        schema = infer_schema(probe)
    check_layouts(files)  # CSV/TSV/Parquet: every file has the same columns (refused up front, naming both files)
    schema = plan_json_keys(schema, files)  # JSON lines: every chunk gets the same columns
    raw, _ = file_columns(probe, infer=False)
    if schema is not None and probe.format == "jsonl":
        raw |= {c: pl.String() for c in schema.columns if c not in raw}
    validator = RowValidator(schema, raw, source=probe.path)
    lf = pl.LazyFrame(schema=validator.output_schema)
    if not keep_lineage:
        lf = lf.drop(SOURCE_FILE, LINE)
    out = apply_transform(lf, transform)
    names = out.collect_schema().names()
    missing = [c for c in partition_by if c not in names]
    if missing:
        msg = f"partition_by column(s) {missing} not in the output; output columns are {names}"
        raise ConfigError(msg)
    _check_writable_types(out, output_format, partition_by)
    return schema


def _check_writable_types(out: pl.LazyFrame, output_format: FileOutputFormat, partition_by: Sequence[str]) -> None:
    """ConfigError naming the output columns ``output_format`` cannot hold (every chunk would fail on them)."""
    written = {c: t for c, t in out.collect_schema().items() if c not in partition_by}
    bad = unwritable_columns(written, output_format)
    if bad:
        msg = (f"output_format {output_format!r} cannot hold column(s) {', '.join(bad)}; use output_format "
               "'parquet', leave them out (SELECT the others), or make them text in the transform (SQL "
               "ARRAY_TO_STRING(col, ',') for a list; a 'pkg.mod:fn' transform can use "
               "pl.col(c).struct.json_encode() for a struct, pl.col(c).bin.encode('hex') for binary)")
        raise ConfigError(msg)


def remove_stale_parts(output_dir: Path, n_chunks: int) -> list[Path]:
    """Delete ``part-<i>`` files (outputs and rejects) with ``i >= n_chunks``, left by an earlier run of
    another plan (other inputs or chunk_bytes) in the same output_dir: they would duplicate rows. Only the names
    file_transform writes, where it writes them (:func:`tasks.files.write.owned_parts`): other files stay."""
    stale = [p for p, index in owned_parts(output_dir) if index >= n_chunks]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} part file(s) of an earlier plan from {output_dir} (e.g. {stale[0].name})")
    return stale


__all__ = [
    "check_plan",
    "chunk_item",
    "file_chunk_task",
    "remove_stale_parts",
    "resolve_transform_handle",
    "run_file_chunk",
]
