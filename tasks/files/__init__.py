"""File transforms with polars: what the flows may use.

Modules: inputs (resolve files, folders and globs; formats), split (chunk plans, byte ranges), parse, read
(the careful chunk reader), schema (schemas, row validation, rejects), fast (the typed fast path), write
(atomic parts), process (one chunk, end to end), chunks (file_transform's chunk task and plan checks).
"""

from tasks.files.chunks import check_plan, chunk_item, file_chunk_task, remove_stale_parts, resolve_transform_handle
from tasks.files.inputs import InputFile, resolve_inputs
from tasks.files.process import ChunkResult, ChunkSpec, Schema, parse_schema, process_chunk, remove_temp_files
from tasks.files.split import iter_chunks, plan_chunks
from tasks.files.write import FileOutputFormat

__all__ = [
    "ChunkResult",
    "ChunkSpec",
    "FileOutputFormat",
    "InputFile",
    "Schema",
    "check_plan",
    "chunk_item",
    "file_chunk_task",
    "iter_chunks",
    "parse_schema",
    "plan_chunks",
    "process_chunk",
    "remove_stale_parts",
    "remove_temp_files",
    "resolve_inputs",
    "resolve_transform_handle",
]
