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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from tasks.core import ConfigError
from tasks.core.results import REJECTS_DIR, part_files
from tasks.core.results import part_index as indexed

FileOutputFormat = Literal["parquet", "csv", "jsonl"]
RejectsFormat = Literal["parquet", "csv", "tsv", "jsonl"]
_TMP_PREFIX = ".tmp-"


def part_name(index: int, fmt: str) -> str:
    """``part-00017.parquet``: zero-padded so parts sort in chunk order."""
    return f"part-{index:05d}.{fmt}"


def part_index(name: str) -> int | None:
    """The chunk index of a part's file name (``part-00017.parquet``, a partition's ``part-00017-1.csv``, a
    reject part's ``part-00017.tsv``), None for any other name (``part-7.csv``, ``part-00017.csv.bak``)."""
    return indexed(name, "files") if name.endswith((".parquet", ".csv", ".jsonl")) else indexed(name, "rejects")


def owned_parts(output_dir: Path) -> list[tuple[Path, int]]:
    """The part files file_transform writes in ``output_dir`` with their chunk indexes: directly in it, in its
    ``col=value/`` partition folders and in ``_rejects/``; other names and other subfolders (a user's files, a
    nested output) are never listed, so never removed."""
    found = [(Path(p), indexed(Path(p).name, "files")) for p in part_files(output_dir, layout="files")]
    found += [(Path(p), indexed(Path(p).name, "rejects"))
              for p in part_files(output_dir / REJECTS_DIR, layout="rejects")]
    return [(path, index) for path, index in found if index is not None]


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


def _sink(lf: pl.LazyFrame, target: Path | pl.PartitionBy, fmt: str, *, written: Path) -> None:
    """Write ``lf`` to ``target``; ``written`` is the file or (partitioned) directory the files go to."""
    if fmt == "parquet":
        lf.sink_parquet(target, compression="zstd", mkdir=True)
    elif fmt in ("csv", "tsv"):
        lf.sink_csv(target, separator="\t" if fmt == "tsv" else ",", check_extension=False, mkdir=True)
    elif fmt == "jsonl":
        try:
            finite_floats_only(lf).sink_ndjson(target, check_extension=False, mkdir=True)
        except NonFiniteFloats:  # rare: the float columns again, written as json.dumps does
            if written.is_dir():
                shutil.rmtree(written)  # the partial files of the first try
            _sink_ndjson_non_finite(lf, target, written)
    else:
        msg = f"unknown output format {fmt!r}; use 'parquet', 'csv' or 'jsonl'"
        raise ConfigError(msg)


class NonFiniteFloats(pl.exceptions.ComputeError):
    """A float bound for JSON lines (a column, or inside a list, array or struct) holds NaN or an infinity,
    which polars' writer turns into null."""


def _has_float(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.List | pl.Array):
        return _has_float(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_has_float(f.dtype) for f in dtype.fields)
    return dtype.is_float()


def _float_columns(lf: pl.LazyFrame) -> list[str]:
    """The columns with floats: float columns, and lists, arrays and structs with a float inside."""
    return [c for c, t in lf.collect_schema().items() if _has_float(t)]


def _non_finite(value: pl.Expr, dtype: pl.DataType) -> list[pl.Expr]:
    """One boolean per float inside ``value``: does any value of the column (every element of its lists and
    arrays, every field of its structs) hold NaN or an infinity."""
    if isinstance(dtype, pl.List):
        return _non_finite(value.list.explode(), dtype.inner)
    if isinstance(dtype, pl.Array):
        return _non_finite(value.arr.explode(), dtype.inner)
    if isinstance(dtype, pl.Struct):
        return [e for f in dtype.fields for e in _non_finite(value.struct.field(f.name), f.dtype)]
    return [(value.is_nan() | value.is_infinite()).any()] if dtype.is_float() else []


def finite_floats_only(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``lf``, raising NonFiniteFloats (a polars ComputeError) at the first batch whose floats (also inside
    lists, arrays and structs) hold NaN or an infinity: one vectorized check per batch, so JSON lines never
    get a null for them. Frames without floats are returned as they are."""
    schema = lf.collect_schema()
    floats = _float_columns(lf)
    if not floats:
        return lf
    odd = pl.any_horizontal([e for c in floats for e in _non_finite(pl.col(c), schema[c])])

    def check(df: pl.DataFrame) -> pl.DataFrame:
        if df.select(odd).item():
            msg = f"a NaN or infinity in the float column(s) {floats}"
            raise NonFiniteFloats(msg)
        return df

    return lf.map_batches(check, streamable=True)


def _float_text(value: pl.Expr, mark: str) -> pl.Expr:
    text = pl.when(value.is_nan()).then(pl.lit("NaN")).when(value == float("inf")).then(pl.lit("Infinity")) \
        .when(value == float("-inf")).then(pl.lit("-Infinity")).otherwise(value.cast(pl.String))
    return pl.concat_str([pl.lit(mark), text])


def _as_text(value: pl.Expr, dtype: pl.DataType, mark: str) -> pl.Expr:
    """``value`` with every float inside it (``dtype`` has one) replaced by its marked text, at any depth."""
    if isinstance(dtype, pl.List):
        return value.list.eval(_as_text(pl.element(), dtype.inner, mark))
    if isinstance(dtype, pl.Array):
        return value.arr.eval(_as_text(pl.element(), dtype.inner, mark))
    if isinstance(dtype, pl.Struct):
        fields = [_as_text(pl.field(f.name), f.dtype, mark).alias(f.name) for f in dtype.fields if _has_float(f.dtype)]
        return value.struct.with_fields(fields)
    return _float_text(value, mark)


def _sink_ndjson_non_finite(lf: pl.LazyFrame, target: Path | pl.PartitionBy, written: Path) -> None:
    """JSON lines whose floats include NaN or an infinity: each float (in a column, or inside a list, array or
    struct) goes out as text behind a one-off marker (polars writes a finite float's text as it writes the
    float), then the files lose the quotes and marker, so the values read ``NaN``, ``Infinity``,
    ``-Infinity`` as Python's json.dumps writes them."""
    mark = f"nonfinite-{uuid.uuid4().hex}:"
    schema = lf.collect_schema()
    texts = [_as_text(pl.col(c), schema[c], mark).alias(c) for c in _float_columns(lf)]
    lf.with_columns(texts).sink_ndjson(target, check_extension=False, mkdir=True)
    quoted = re.compile(b'"' + re.escape(mark.encode()) + b'([^"]*)"')
    for path in sorted(written.rglob("*")) if written.is_dir() else [written]:
        if path.is_file():
            _unquote(path, quoted)


def _unquote(path: Path, quoted: re.Pattern[bytes], block: int = 8 << 20) -> None:
    """Replace every match of ``quoted`` by its group in ``path`` (whole lines per block: bounded memory)."""
    tmp = path.with_name(f"{path.name}.unquoted")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        rest = b""
        while data := src.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            dst.write(quoted.sub(rb"\1", data[:cut]))
        dst.write(quoted.sub(rb"\1", rest))
    os.replace(tmp, path)


def unwritable_columns(schema: Mapping[str, pl.DataType], fmt: str) -> list[str]:
    """The columns ``fmt`` cannot hold, as ``'name' (dtype)``: CSV no nested (list, struct, array), binary,
    duration or object values; JSON lines no binary or object values, also inside lists and structs. polars
    fails (or panics) on them after reading the whole chunk."""
    return [f"{name!r} ({dtype})" for name, dtype in schema.items() if _cannot_write(dtype, fmt)]


def _cannot_write(dtype: pl.DataType, fmt: str) -> bool:
    if isinstance(dtype, pl.Object):
        return True
    if fmt in ("csv", "tsv"):
        return dtype.is_nested() or isinstance(dtype, pl.Binary | pl.Duration)
    if fmt != "jsonl":
        return False
    if isinstance(dtype, pl.List | pl.Array):
        return _cannot_write(dtype.inner, fmt)
    if isinstance(dtype, pl.Struct):
        return any(_cannot_write(f.dtype, fmt) for f in dtype.fields)
    return isinstance(dtype, pl.Binary)


def sink_atomic(lf: pl.LazyFrame, path: str | Path, fmt: str) -> Path:
    """Stream ``lf`` into ``path`` (parquet zstd, csv, tsv or jsonl) so the file appears whole or not at all."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(final)
    try:
        _sink(lf, tmp, fmt, written=tmp)
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
            written=staging,
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
    "NonFiniteFloats",
    "RejectsFormat",
    "finite_floats_only",
    "owned_parts",
    "part_index",
    "part_name",
    "remove_temp_files",
    "sink_atomic",
    "sink_partitioned_atomic",
    "unwritable_columns",
    "write_atomic",
]
