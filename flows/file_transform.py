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
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import polars as pl
from pydantic import Field, model_validator

from tasks.core import (
    SETTING,
    ChunkBytes,
    ChunkedRun,
    ChunkTaskGroup,
    ConfigError,
    FileSettings,
    FlowParams,
    FromSetting,
    InputFormatField,
    MaxConcurrency,
    OutcomeGroup,
    RunGroup,
    RunSummary,
    batchflow,
    check_writable_dir,
    handler_identity,
    python_entry,
    value_hash,
)
from tasks.core.watermarks import stream_id
from tasks.files import (
    ChunkSpec,
    FileOutputFormat,
    Schema,
    check_plan,
    chunk_item,
    file_chunk_task,
    iter_chunks,
    parse_schema,
    remove_stale_parts,
    remove_temp_files,
    resolve_inputs,
    resolve_transform_handle,
)
from tasks.files.incremental import FileManifest, per_file_chunks

# The parameter is named ``schema`` as in DESIGN.md; pydantic warns that the name shadows a BaseModel
# attribute, which is harmless for a parameter.
warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

FLOW_NAME = "file-transform"


class FileTransformParams(FlowParams, RunGroup, OutcomeGroup, ChunkTaskGroup):
    """Transform big files and folders of files with polars: chunked, validated, atomic, resumable."""

    source: Annotated[str | list[str], Field(description=(
        "A file, a directory, a glob ('data/in/*.csv.gz') or a list of them."))]
    output_dir: Annotated[str, Field(min_length=1, description="Directory for the part-NNNNN files and _rejects/.")]
    transform: Annotated[str | None, Field(description=(
        "SQL over the table df, or 'pkg.mod:fn' (a LazyFrame -> LazyFrame function)."))] = None
    schema: Annotated[dict[str, Any] | None, Field(description=(
        "{'columns': {col: type}, 'not_null': [...], 'unique_key': [...]} or just {col: type}; rows that do not "
        "fit go to _rejects/. unique_key is checked within each chunk only (a file, or a chunk_bytes piece of one): "
        "a key repeated in another chunk or file is not rejected."))] = None
    input_format: InputFormatField = "auto"
    output_format: Annotated[FileOutputFormat, Field(description="parquet, csv or jsonl.")] = "parquet"
    chunk_bytes: Annotated[ChunkBytes, FromSetting(FileSettings, "chunk_bytes")] = SETTING
    max_concurrency: Annotated[MaxConcurrency, FromSetting(FileSettings, "max_concurrency")] = SETTING
    partition_by: Annotated[list[str], Field(description="Hive partition columns of the output.")] = Field(
        default_factory=list)
    keep_lineage: Annotated[bool, Field(description="Keep _source_file and _line in the output.")] = False
    incremental: Annotated[bool, Field(description=(
        "Read only files that are new or changed since the last run (path, size, mtime, first and last MiB); "
        "each run writes to output_dir/run-RUN_KEY/, a changed file's old parts are replaced and a file no "
        "longer in source (deleted, or outside a narrower glob) loses its parts."))] = False
    reset_incremental: Annotated[bool, Field(description=(
        "Forget the processed files: delete the outputs of earlier incremental runs and process every file."))] = False

    @model_validator(mode="after")
    def _consistent(self) -> FileTransformParams:
        if self.reset_incremental and not self.incremental:
            msg = "reset_incremental applies to incremental runs: pass incremental=True"
            raise ValueError(msg)
        return self


@batchflow(FLOW_NAME, FileTransformParams, positional=("source", "output_dir"))
def file_transform_flow(p: FileTransformParams) -> RunSummary:
    """Transform big files and folders of files with polars: chunked, validated, atomic, resumable."""
    out = Path(p.output_dir)
    if out.exists() and not out.is_dir():
        msg = f"output_dir {p.output_dir!r} exists and is not a directory; pass a directory path"
        raise ConfigError(msg)
    fn = resolve_transform_handle(p.transform)
    files = resolve_inputs(p.source, input_format=p.input_format, output_dir=p.output_dir)
    parsed = check_plan(files, parse_schema(p.schema), fn, partition_by=p.partition_by, keep_lineage=p.keep_lineage,
                        output_format=p.output_format)
    check_writable_dir(out, what="output_dir")
    if out.exists():
        remove_temp_files(out)
    schema_json = parsed.model_dump(mode="json") if parsed is not None else None
    options = {  # the run's identity: what a chunk's output is made of; a chunk adds its position
        "transform": None if fn is None else (fn if isinstance(fn, str) else handler_identity(fn).text),
        "schema": schema_json, "output_format": p.output_format, "partition_by": p.partition_by,
        "keep_lineage": p.keep_lineage, "output_dir": str(out.resolve()),
    }
    manifest = FileManifest.load(  # one per output_dir: a file the source no longer gives loses its parts
        FLOW_NAME, stream_id(options["output_dir"]), out, reset=p.reset_incremental, identity=stream_id(options),
        legacy_stream=stream_id(p.source, options)) if p.incremental else None
    todo = manifest.changed(files) if manifest is not None else files
    seen = f"{len(todo)} new or changed of " if manifest is not None else ""
    print(f"file-transform: {seen}{len(files)} file(s), {sum(f.size for f in todo):,} bytes -> {out}")
    planned = [0]
    chunk_files: dict[int, str] = {}  # incremental: chunk index -> its file
    reports: dict[int, Any] = {}

    def chunks(start: int) -> Iterator[ChunkSpec]:
        """Chunks as they are planned: the first ones run while a big file is still being split."""
        specs = per_file_chunks(todo, chunk_bytes=p.chunk_bytes, chunk_files=chunk_files, start=start) \
            if manifest is not None else iter_chunks(files, chunk_bytes=p.chunk_bytes)
        for spec in specs:
            planned[0] += 1
            yield spec

    # a part deleted since it was written is rewritten: chunks are pure transforms of their input
    with ChunkedRun(FLOW_NAME, run_key=p.run_key, total=None, on_error=p.on_error, unit="rows",
                    redo_missing_outputs=True, identity=(p.cache_version, json.dumps(options, sort_keys=True),
                                                         *(["incremental"] if manifest is not None else []))) as run:
        run.lock_output(out)  # another live run into this output_dir is refused: their parts would share names
        run_dir = f"run-{run.run_key}"
        parts_dir = out / run_dir if manifest is not None else out
        if manifest is not None:
            for gone in manifest.begin(run_dir, run.run_key):
                print(f"removed {gone} (left by an earlier incremental run that did not finish, or replaced)")
        summary = run.execute(
            chunks(manifest.first_index(run_dir) if manifest is not None else 0),
            lambda spec: {
                "spec": spec, "output_dir": str(parts_dir), "transform": p.transform, "schema": schema_json,
                "output_format": p.output_format, "partition_by": p.partition_by, "keep_lineage": p.keep_lineage,
                "ref": run.ref(spec.index, content=value_hash(spec.model_dump(mode="json"))),
            },
            run.configure(file_chunk_task, chunk_retries=p.chunk_retries, tags=p.tags),
            chunk=lambda spec: (spec.index, 1, [chunk_item(spec)]),
            describe=lambda spec: f"chunk {spec.index} ({', '.join(sorted({f.path for f in spec.files}))})",
            max_concurrency=p.max_concurrency,
            on_report=lambda spec, rep: reports.__setitem__(spec.index, rep),
        )
        if manifest is None and parts_dir.exists() and not run.should_stop():  # incremental: the manifest's end
            remove_stale_parts(parts_dir, planned[0])
        if out.exists():  # every chunk is done: no writer is left, so any temp file is litter (seen: polars sinks)
            remove_temp_files(out)
        extra = summary.extra
        for key in ("rows_in", "rows_out", "rows_rejected", "rows_filtered", "bytes_in", "bytes_out",
                    "chunks_fast_path"):
            extra.setdefault(key, 0)
        extra.update(chunks_failed=summary.chunks_failed, output_dir=str(parts_dir),
                     rejects_dir=str(parts_dir / "_rejects") if extra["rows_rejected"] else None)
        if manifest is not None:
            known = len(manifest.files)
            recorded, removed = manifest.end(run_dir, run.run_key, chunk_files, reports)
            extra.update(files_seen=len(files), files_new_or_changed=len(todo), files_done=recorded,
                         files_removed=removed, files_known_before=known, files_known_after=len(manifest.files),
                         lag_s=round(time.time() - max(f.mtime_ns for f in files) / 1e9, 3))
            gone = f"; {removed} no longer in source (their parts removed)" if removed else ""
            print(f"incremental: {recorded} of {len(todo)} new or changed file(s) done{gone}; "
                  f"{len(manifest.files)} known")
        return run.finish(summary, min_success_ratio=p.min_success_ratio, output_path=str(parts_dir))


def _plain_values(values: dict[str, Any], handles: list[str]) -> None:
    """Python-side values as parameters: paths as str, a schema object as its JSON form."""
    source = values.get("source")
    if isinstance(source, Path):
        values["source"] = str(source)
    elif isinstance(source, list | tuple):
        values["source"] = [str(s) for s in source]
    if "schema" in values:
        parsed = parse_schema(values["schema"])
        values["schema"] = parsed.model_dump(mode="json") if parsed is not None else None


file_transform = python_entry(
    file_transform_flow, prepare=_plain_values,
    objects={"output_dir": str | Path, "transform": str | Callable[[pl.LazyFrame], pl.LazyFrame] | None},
    types={"source": str | Path | Sequence[str | Path], "schema": Schema | Mapping[str, Any] | str | None})

__all__ = ["FLOW_NAME", "FileTransformParams", "file_transform", "file_transform_flow"]
