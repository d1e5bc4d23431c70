"""Atomic writes of chunk outputs: temp name in the same directory, fsync, ``os.replace``.

Same directory because ``os.replace`` is atomic only within one filesystem; fsync of the file and of
the directory so a power cut after the rename cannot leave an empty file under the final name. A
killed chunk leaves at most a hidden ``.tmp-*`` file that readers skip (polars and Spark ignore
names starting with ``.``) and that ``remove_temp_files`` clears.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from tasks.core import ConfigError

FileOutputFormat = Literal["parquet", "csv", "jsonl"]
RejectsFormat = Literal["parquet", "csv", "tsv", "jsonl"]
_TMP_PREFIX = ".tmp-"
_PART = re.compile(r"^part-(\d{5,})(?:-\d+)?\.[a-z]+$")


def part_name(index: int, fmt: str) -> str:
    """``part-00017.parquet``: zero-padded so parts sort in chunk order."""
    return f"part-{index:05d}.{fmt}"


def part_index(name: str) -> int | None:
    """The chunk index of a part's file name (``part-00017.parquet``, a partition's ``part-00017-1.csv``),
    None for any other name."""
    m = _PART.match(name)
    return int(m[1]) if m else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(final: Path) -> Path:
    return final.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}")


def _commit(tmp: Path, final: Path) -> None:
    _fsync_file(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _sink(lf: pl.LazyFrame, target: Path | pl.PartitionBy, fmt: str) -> None:
    if fmt == "parquet":
        lf.sink_parquet(target, compression="zstd", mkdir=True)
    elif fmt in ("csv", "tsv"):
        lf.sink_csv(target, separator="\t" if fmt == "tsv" else ",", check_extension=False, mkdir=True)
    elif fmt == "jsonl":
        lf.sink_ndjson(target, check_extension=False, mkdir=True)
    else:
        msg = f"unknown output format {fmt!r}; use 'parquet', 'csv' or 'jsonl'"
        raise ConfigError(msg)


def sink_atomic(lf: pl.LazyFrame, path: str | Path, fmt: str) -> Path:
    """Stream ``lf`` into ``path`` (parquet zstd, csv, tsv or jsonl) so the file appears whole or not at all."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(final)
    try:
        _sink(lf, tmp, fmt)
        _commit(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def write_atomic(df: pl.DataFrame, path: str | Path, fmt: str) -> Path:
    """Write a small in-memory frame (rejects) atomically."""
    return sink_atomic(df.lazy(), path, fmt)


def sink_partitioned_atomic(
    lf: pl.LazyFrame, output_dir: str | Path, file_name: str, fmt: str, partition_by: Sequence[str]
) -> list[Path]:
    """Hive layout ``output_dir/k=v/.../<file_name>``; each file is renamed into place on its own.

    polars writes the partitions into a hidden staging directory next to them; every file is then
    fsynced and ``os.replace``d to its final name, so each final file is whole even if the chunk dies
    half way (the chunk is then rerun and replaces the same names).
    """
    out = Path(output_dir)
    missing = [c for c in partition_by if c not in lf.collect_schema()]
    if missing:
        msg = f"partition_by column(s) {missing} not in the output; columns are {lf.collect_schema().names()}"
        raise ConfigError(msg)
    staging = out / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}-{Path(file_name).stem}"
    try:
        _sink(
            lf,
            pl.PartitionBy(staging, key=list(partition_by), include_key=False, approximate_bytes_per_file=None),
            fmt,
        )
        written: list[Path] = []
        seen: dict[Path, int] = {}
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel_dir = src.parent.relative_to(staging)
            n = seen[rel_dir] = seen.get(rel_dir, -1) + 1
            name = file_name if n == 0 else f"{Path(file_name).stem}-{n}{Path(file_name).suffix}"
            final = out / rel_dir / name
            final.parent.mkdir(parents=True, exist_ok=True)
            _commit(src, final)
            written.append(final)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_temp_files(output_dir: str | Path) -> int:
    """Delete leftovers of killed writes (``.tmp-*`` files and staging dirs); returns how many."""
    removed = 0
    for p in sorted(Path(output_dir).rglob(f"{_TMP_PREFIX}*"), reverse=True):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed


__all__ = [
    "FileOutputFormat",
    "RejectsFormat",
    "part_index",
    "part_name",
    "remove_temp_files",
    "sink_atomic",
    "sink_partitioned_atomic",
    "write_atomic",
]
