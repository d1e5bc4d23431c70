"""file-transform: polars transforms of big files and folders of files, chunked, validated, resumable.

    file_transform("data/in/*.csv.gz", "data/out", transform="SELECT * FROM df WHERE amount > 0",
                   schema={"id": "int64", "amount": "float64"}) -> RunSummary

The flow resolves the inputs (a file, a directory, a glob or a list of them), plans chunks (small files
grouped toward ``chunk_bytes``, a big uncompressed CSV/TSV/JSONL split into byte ranges at record
boundaries, Parquet by row groups, a gzip file whole), infers the schema once when none is given, checks
the schema, transform and ``partition_by`` against the columns of the first file *before any work*, and
runs one Prefect chunk task per chunk through :class:`ChunkedRun`. Each chunk writes
``output_dir/part-<index>.<fmt>`` (and ``_rejects/part-<index>.<input fmt>`` for rejected rows)
atomically, so a resumed run (same ``run_key``) skips the chunks whose persisted result says they are
done and rewrites the others under the same names: no duplicate, no missing rows.

**What an item is.** The summary counts *input data rows*: ``total`` = rows read, ``succeeded`` = rows
that passed the schema (written, or dropped by the transform's filters), ``failed`` = rows rejected by
the schema or malformed (they are in the rejects files, named by ``summary.extra["rejects_dir"]``, with
``_reject_reason``, ``_source_file`` and ``_line``). A chunk that cannot be read at all (a corrupt gzip)
has no row count: it counts as **one** failed item, dead-lettered with the error and the chunk's files,
and ``summary.extra["chunks_failed"]`` counts it. ``summary.extra`` holds ``rows_in``, ``rows_out``,
``rows_rejected``, ``rows_filtered`` with ``rows_in == rows_out + rows_rejected + rows_filtered``
(``rows_filtered`` < 0 when the transform adds rows), plus bytes in/out and the fast-path count.
With ``min_success_ratio=1.0`` (the default) any rejected row ends the run Failed (outputs of the good
rows are still written); pass e.g. 0.999 to tolerate a few rejects.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from prefect import flow, task
from pydantic import Field

from flows.batch_map import summary_from_state, summary_state
from tasks.chunked_run import ChunkedRun, OnErrorMode
from tasks.engine import recorded_safely
from tasks.errors import ConfigError, SourceError
from tasks.failpoints import failpoint
from tasks.files import (
    LINE,
    SOURCE_FILE,
    ChunkSpec,
    Schema,
    apply_transform,
    infer_schema,
    parse_schema,
    process_chunk,
    remove_temp_files,
    resolve_inputs,
)
from tasks.files_inputs import InputFile, InputFormat
from tasks.files_read import file_columns
from tasks.files_schema import RowValidator
from tasks.files_split import FilePart, iter_chunks
from tasks.files_write import OutputFormat
from tasks.identity import handler_identity, value_hash
from tasks.items import ChunkRef
from tasks.loader import is_handle, register_object, release_object, resolve_handle
from tasks.notify import HOOKS
from tasks.outcomes import ChunkReport, FailedItem, RunSummary
from tasks.progress import api_errors_explained
from tasks.state import check_writable_dir

# The flow parameter is named ``schema`` as in DESIGN.md; Prefect's parameter model warns that the name
# shadows a pydantic BaseModel attribute, which is harmless for a parameter.
warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

FLOW_NAME = "file-transform"
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
_OUTPUT_FORMATS = ("parquet", "csv", "jsonl")
_INPUT_FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet")


def _transform_of(transform: str | None) -> Any:
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
    output_format: OutputFormat = "parquet",
    partition_by: Sequence[str] = (),
    keep_lineage: bool = False,
) -> ChunkReport:
    """One chunk as a ChunkReport whose items are the chunk's input rows (see the module docstring)."""
    started = time.perf_counter()
    res = process_chunk(
        spec, output_dir, transform=_transform_of(transform), schema=schema, output_format=output_format,
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
            "parts_written": len(res.output_paths),
            "outputs": [*res.output_paths, *([res.rejects_path] if res.rejects_path else [])],  # checked on resume
        },
    )
    report.check()
    return report


@task(name="file-chunk", task_run_name="chunk-{spec.index}", persist_result=True, log_prints=False)
def file_chunk_task(
    spec: ChunkSpec,
    output_dir: str,
    transform: str | None,
    schema: dict[str, Any] | None,
    output_format: OutputFormat,
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
) -> Schema | None:
    """Infer the schema if needed and check schema, transform and partition_by before any work.

    Returns the schema every chunk gets (None only for all-Parquet inputs without a schema: native types).
    Raises ConfigError naming unknown columns and listing the columns that exist.
    """
    probe, skipped = _first_text_part(files)
    if probe is None:
        first = files[0]
        probe = FilePart(path=first.path, format=first.format, compression=first.compression, size=first.size)
        if first.format != "parquet":
            msg = f"no input file could be read: {'; '.join(skipped)}"
            raise SourceError(msg)
    if schema is None and probe.format != "parquet":
        schema = infer_schema(probe)
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
    return schema


_PART = re.compile(r"^part-(\d{5,})(?:-\d+)?\.[a-z]+$")


def remove_stale_parts(output_dir: Path, n_chunks: int) -> list[Path]:
    """Delete ``part-<i>`` files (outputs and rejects) with ``i >= n_chunks``, left by an earlier run of
    another plan (other inputs or chunk_bytes) in the same output_dir: they would duplicate rows."""
    stale = [p for p in output_dir.rglob("part-*") if (m := _PART.match(p.name)) and int(m[1]) >= n_chunks]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} part file(s) of an earlier plan from {output_dir} (e.g. {stale[0].name})")
    return stale


def _validate(output_format: str, input_format: str, output_dir: str) -> None:
    if output_format not in _OUTPUT_FORMATS:
        msg = f"output_format {output_format!r} is not supported; use one of {list(_OUTPUT_FORMATS)}"
        raise ConfigError(msg)
    if input_format not in _INPUT_FORMATS:
        msg = f"input_format {input_format!r} is not supported; use one of {list(_INPUT_FORMATS)}"
        raise ConfigError(msg)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        msg = f"output_dir {output_dir!r} exists and is not a directory; pass a directory path"
        raise ConfigError(msg)


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def file_transform_flow(
    source: Annotated[
        str | list[str], Field(description="A file, a directory, a glob ('data/in/*.csv.gz') or a list of them.")
    ],
    output_dir: Annotated[str, Field(description="Directory for part-NNNNN files and _rejects/.")],
    transform: Annotated[
        str | None, Field(description="SQL over table df, or 'pkg.mod:fn' (LazyFrame -> LazyFrame).")
    ] = None,
    schema: Annotated[
        dict[str, Any] | None,
        Field(description="{'columns': {col: type}, 'not_null': [...], 'unique_key': [...]} or {col: type}."),
    ] = None,
    input_format: Annotated[InputFormat, Field(description="auto | csv | tsv | jsonl | parquet")] = "auto",
    output_format: Annotated[Literal["parquet", "csv", "jsonl"], Field(description="parquet | csv | jsonl")] = "parquet",
    chunk_bytes: Annotated[int, Field(gt=0, description="Target input bytes per chunk.")] = DEFAULT_CHUNK_BYTES,
    max_concurrency: Annotated[int, Field(ge=1, le=64, description="Chunk tasks in flight.")] = 2,
    partition_by: Annotated[list[str] | None, Field(description="Hive partition columns of the output.")] = None,
    keep_lineage: Annotated[bool, Field(description="Keep _source_file/_line in the output.")] = False,
    min_success_ratio: Annotated[float, Field(ge=0, le=1, description="Minimum good rows / rows read.")] = 1.0,
    on_error: Annotated[OnErrorMode, Field(description="continue | fail_fast")] = "continue",
    chunk_retries: Annotated[int, Field(ge=0, le=20, description="Retries of a failed chunk task.")] = 1,
    tags: Annotated[list[str] | None, Field(description="Chunk task tags (tag limits).")] = None,
    run_key: Annotated[str | None, Field(description="Reuse to resume a crashed run.")] = None,
    cache_version: Annotated[str, Field(description="Change to force a rerun of every chunk.")] = "1",
) -> RunSummary:
    _validate(output_format, input_format, output_dir)
    parsed = parse_schema(schema)
    fn = _transform_of(transform)
    files = resolve_inputs(source, input_format=input_format, output_dir=output_dir)
    parts = list(partition_by or [])
    parsed = check_plan(files, parsed, fn, partition_by=parts, keep_lineage=keep_lineage)
    out = Path(output_dir)
    check_writable_dir(out, what="output_dir")
    if out.exists():
        remove_temp_files(out)
    schema_json = parsed.model_dump(mode="json") if parsed is not None else None
    options = {
        "transform": None if fn is None else (fn if isinstance(fn, str) else handler_identity(fn).text),
        "schema": schema_json, "output_format": output_format, "partition_by": parts,
        "keep_lineage": keep_lineage, "output_dir": str(out.resolve()),
    }
    options_key = json.dumps(options, sort_keys=True)
    print(f"file-transform: {len(files)} file(s), {sum(f.size for f in files):,} bytes -> {out}")
    planned = [0]

    def chunks() -> Iterator[ChunkSpec]:
        """Chunks as they are planned: the first ones run while a big file is still being split."""
        for spec in iter_chunks(files, chunk_bytes=chunk_bytes):
            planned[0] += 1
            yield spec

    # a part deleted since it was written is rewritten: chunks are pure transforms of their input
    with ChunkedRun(FLOW_NAME, run_key=run_key, total=None, on_error=on_error, unit="rows",
                    redo_missing_outputs=True, identity=(cache_version, options_key)) as run:
        chunk_task = run.configure(file_chunk_task, chunk_retries=chunk_retries, tags=tags or [])
        summary = run.execute(
            chunks(),
            lambda spec: {
                "spec": spec, "output_dir": str(out), "transform": transform, "schema": schema_json,
                "output_format": output_format, "partition_by": parts, "keep_lineage": keep_lineage,
                "ref": run.ref(spec.index, content=value_hash(spec.model_dump(mode="json"))),
            },
            chunk_task,
            chunk=lambda spec: (spec.index, 1, [chunk_item(spec)]),
            describe=lambda spec: f"chunk {spec.index} ({', '.join(sorted({f.path for f in spec.files}))})",
            max_concurrency=max_concurrency,
        )
        if out.exists() and not run.should_stop():
            remove_stale_parts(out, planned[0])
        if out.exists():  # every chunk is done: no writer is left, so any temp file is litter (seen: rare polars sink leftovers)
            remove_temp_files(out)
        summary.extra.setdefault("rows_in", 0)
        for key in ("rows_out", "rows_rejected", "rows_filtered", "bytes_in", "bytes_out", "chunks_fast_path"):
            summary.extra.setdefault(key, 0)
        summary.extra["chunks_failed"] = summary.chunks_failed
        summary.extra["output_dir"] = str(out)
        summary.extra["rejects_dir"] = str(out / "_rejects") if summary.extra["rows_rejected"] else None
        return summary_state(  # type: ignore[return-value]
            run.finish(summary, min_success_ratio=min_success_ratio, output_path=str(out))
        )


def file_transform(
    source: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    transform: str | Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
    schema: Schema | Mapping[str, Any] | str | None = None,
    input_format: InputFormat = "auto",
    output_format: OutputFormat = "parquet",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_concurrency: int = 2,
    partition_by: Sequence[str] = (),
    keep_lineage: bool = False,
    min_success_ratio: float = 1.0,
    on_error: OnErrorMode = "continue",
    chunk_retries: int = 1,
    tags: Sequence[str] = (),
    run_key: str | None = None,
    cache_version: str = "1",
) -> RunSummary:
    """Run the file-transform flow from Python and return its RunSummary (``summary.ok`` tells the state).

    ``transform`` may also be a Python callable (LazyFrame -> LazyFrame); it is passed to the flow as a
    process-local handle and keyed in the resume cache by ``module:qualname``. Bad parameters, missing
    inputs, an empty glob and unknown columns raise (ConfigError / SourceError) before any chunk runs.
    """
    parsed = parse_schema(schema)
    _validate(output_format, input_format, str(output_dir))
    src: str | list[str] = str(source) if isinstance(source, (str, Path)) else [str(s) for s in source]
    handle = register_object(transform) if callable(transform) else None
    try:
        with warnings.catch_warnings(), api_errors_explained(FLOW_NAME, run_key):
            warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)
            state = file_transform_flow(
                source=src, output_dir=str(output_dir), transform=handle or transform,
                schema=parsed.model_dump(mode="json") if parsed is not None else None, input_format=input_format,
                output_format=output_format, chunk_bytes=chunk_bytes, max_concurrency=max_concurrency,
                partition_by=list(partition_by), keep_lineage=keep_lineage, min_success_ratio=min_success_ratio,
                on_error=on_error, chunk_retries=chunk_retries, tags=list(tags), run_key=run_key,
                cache_version=cache_version, return_state=True,
            )
        return summary_from_state(state)
    finally:
        if handle is not None:
            release_object(handle)


__all__ = [
    "FLOW_NAME",
    "check_plan",
    "chunk_item",
    "file_chunk_task",
    "file_transform",
    "file_transform_flow",
    "remove_stale_parts",
    "run_file_chunk",
]
