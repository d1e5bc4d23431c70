"""The fast path of a chunk: polars' typed CSV scan of the whole byte range, verified, else nothing.

The careful reader (tasks.files.read) feeds polars 8 MB pieces read as text, counts fields per record to
find ragged rows and casts every column in Python-driven batches: exact, but ~3x slower than a plain
``scan_csv(...).sink_parquet(...)``. Most chunks of real files are clean, so a chunk whose schema is
known is first tried as one native polars query over its byte range:

    bytes of [start, end) -> scan_csv(typed) -> casts -> transform -> sink (temp file)
                          \\-> counters (rows, failed casts, nulls in not_null, separators in values)

run in one ``pl.collect_all`` (the scan is shared). The part is committed only if the counters prove
the careful path would have produced the same rows and no rejects:

* polars raised (a value that does not parse as its type, too many fields, bad quoting) -> no;
* a cast done in expressions (date, datetime, decimal, tz datetime) nulled a value -> no (date and naive
  datetime use one strptime format, the careful path's first that fits the chunk's first value, and no
  strip: values with spaces or in mixed formats go to the careful path, which tries them all);
* a ``not_null`` column has a null -> no;
* ragged rows with *too few* fields (polars pads them with nulls silently) and blank lines (the careful
  path skips them, polars reads a row of nulls) both leave a null in the last column; so when the last
  column has nulls, the separators in the range must equal ``(columns - 1) * rows`` plus the
  separators inside string values (a second pass, only then) -> else no.

"No" means: the temp output is deleted and the chunk runs through the careful path, which writes the
rejects with line numbers. Not tried either: gzip, JSONL, Parquet, multi-file chunks, ``unique_key``
(needs state across pieces), ``keep_lineage`` (line numbers) and ``partition_by``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import polars as pl

from tasks.files.read import file_columns
from tasks.files.schema import (
    _NAIVE_FORMATS,
    FLOAT_EXACT,
    RESERVED_COLUMNS,
    Schema,
    _cast_string,
    _finer_than_micros,
    polars_dtype,
)
from tasks.files.split import ChunkSpec, FilePart, header_end, quote_byte
from tasks.files.write import _commit, _tmp_path, finite_floats_only, part_name

_NATIVE = {"int64": pl.Int64(), "float64": pl.Float64(), "bool": pl.Boolean(), "str": pl.String()}


def fast_path_possible(spec: ChunkSpec, schema: Schema | None, *, keep_lineage: bool, partition_by: Any) -> bool:
    """Cheap eligibility test (no I/O)."""
    if schema is None or schema.unique_key or keep_lineage or partition_by or len(spec.files) != 1:
        return False
    part = spec.files[0]
    return part.format in ("csv", "tsv") and part.compression == "none"


def _range_bytes(part: FilePart) -> bytes:
    start = part.start
    if start == 0:
        start = header_end(part.path, quote_byte(part.format))[0]
    end = part.size if part.end is None else part.end
    with open(part.path, "rb") as fh:
        fh.seek(start)
        return fh.read(max(end - start, 0))


def _blank(data: bytes) -> bool:
    """Nothing but whitespace (checked on a prefix first: a full ``strip`` copies the range)."""
    return not data[:4096].strip() and not data.strip()


def _datetime_format(sample: pl.Series) -> str | None:
    """The first naive format (in the careful path's order) that parses the first value of the sample."""
    values = sample.drop_nulls().str.strip_chars()
    values = values.filter(values != "")
    if values.is_empty():
        return _NAIVE_FORMATS[0]
    probe = values.head(1)
    for fmt in _NAIVE_FORMATS:
        if probe.str.strptime(pl.Datetime("us"), fmt, strict=False).null_count() == 0:
            return fmt
    return None


def _separators_add_up(data: bytes, sep: str, names: list[str], types: dict[str, str], rows: int) -> bool:
    """True if every row has all its fields: separators in the range == (columns - 1) * rows + those
    inside (quoted) string values. A second, cheap pass, only for ranges whose last column has nulls."""
    in_values = 0
    if b'"' in data:
        strings = [c for c, t in types.items() if t == "str"]
        if strings:
            lf = pl.scan_csv(data, has_header=False, separator=sep, schema=dict.fromkeys(names, pl.String),
                             truncate_ragged_lines=True)
            total = pl.sum_horizontal([pl.col(c).str.count_matches(sep, literal=True).sum() for c in strings])
            in_values = int(lf.select(total).collect().item() or 0)
    return data.count(sep.encode()) == (len(names) - 1) * rows + in_values


def _may_underflow(data: bytes) -> bool:
    """Whether a range may hold number text a double makes 0 though it is not: a negative exponent or a run of
    300 zeros (one without an exponent has 323 after the point). Byte searches at C speed."""
    return b"e-" in data or b"E-" in data or b"0" * 300 in data


def _sink_lazy(lf: pl.LazyFrame, path: Path, fmt: str) -> pl.LazyFrame:
    if fmt == "parquet":
        return lf.sink_parquet(path, compression="zstd", lazy=True)
    if fmt == "csv":
        return lf.sink_csv(path, lazy=True)
    return finite_floats_only(lf).sink_ndjson(path, lazy=True)  # NaN, an infinity: the careful path


def try_fast_chunk(
    spec: ChunkSpec,
    output_dir: Path,
    *,
    transform: Any,
    schema: Schema,
    output_format: str,
    apply_transform: Any,
) -> dict[str, Any] | None:
    """Run the chunk on the fast path; return its counts, or None (nothing written) to use the careful path."""
    started = time.perf_counter()
    part = spec.files[0]
    names = list(file_columns(part, infer=False)[0])
    reserved = any(c in RESERVED_COLUMNS for c in names)
    if len(names) < 2 or reserved or any(c not in names for c in [*schema.columns, *schema.not_null]):
        return None  # one column (blank-line ambiguity), unknown or reserved columns: the careful path says why
    data = _range_bytes(part)
    if _blank(data):
        return None
    sep = "\t" if part.format == "tsv" else ","
    types = {c: schema.columns.get(c, "str").strip().lower() for c in names}
    read_schema = {c: _NATIVE.get(t, pl.String()) for c, t in types.items()}
    try:
        lf = pl.scan_csv(
            data, has_header=False, separator=sep, schema=read_schema, raise_if_empty=False,
            truncate_ragged_lines=False, encoding="utf8",
        )
        need_sample = any(t == "datetime" for t in types.values())
        sample = pl.read_csv(data[: 1 << 20], has_header=False, separator=sep, schema=dict.fromkeys(names, pl.String),
                             n_rows=50, truncate_ragged_lines=True) if need_sample else None
    except pl.exceptions.PolarsError:
        return None
    casts: list[pl.Expr] = []
    bad: list[pl.Expr] = []
    zeros: list[pl.Expr] = []
    for c, t in types.items():
        col = pl.col(c)
        if t in _NATIVE:  # read typed by polars; str keeps a quoted "" as "" and an empty field as null
            if t == "float64":  # past 2**53 the text may be an integer the double changed, an infinity or a 0 a
                bad.append(col.is_infinite() | col.is_finite() & (col.abs() >= FLOAT_EXACT))  # past the range
                zeros.append(col.eq(0).sum())
            continue
        if t == "datetime":
            assert sample is not None
            fmt = _datetime_format(sample[c])
            if fmt is None:
                return None
            cast = pl.when(_finer_than_micros(col)).then(None).otherwise(  # careful path: a reject
                col.str.strptime(pl.Datetime("us"), fmt, strict=False))
        elif t == "date":
            cast = col.str.strptime(pl.Date, "%Y-%m-%d", strict=False)
        else:
            cast = _cast_string(col, polars_dtype(schema.columns[c]))
        casts.append(cast.alias(c))
        bad.append(col.is_not_null() & (col != "") & cast.is_null())
    flag = "\x00bad"
    typed = lf.with_columns(*casts, (pl.sum_horizontal(bad) if bad else pl.lit(0)).cast(pl.Int64).alias(flag))
    counters: list[pl.Expr] = [pl.len().cast(pl.Int64).alias("rows"), pl.col(flag).sum().alias("bad")]
    counters.append(
        pl.sum_horizontal([pl.col(c).null_count() for c in schema.not_null]).alias("nulls")
        if schema.not_null else pl.lit(0).alias("nulls")
    )
    counters.append(pl.col(names[-1]).null_count().alias("last_nulls"))
    counters.append((pl.sum_horizontal(zeros) if zeros else pl.lit(0)).alias("float_zeros"))
    final = output_dir / part_name(spec.index, output_format)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(final)
    try:
        out = apply_transform(typed.drop(flag), transform)
        _, stats = pl.collect_all([_sink_lazy(out, tmp, output_format), typed.select(counters)])
        row = stats.row(0, named=True)
        rows = int(row["rows"])
        ok = int(row["bad"] or 0) == 0 and int(row["nulls"] or 0) == 0
        if ok and row["float_zeros"] and _may_underflow(data):
            ok = False  # a 0.0 may be a non-zero number below the double's range: the careful path checks the text
        if ok and row["last_nulls"]:  # a short row or a blank line would show as a null in the last column
            ok = _separators_add_up(data, sep, names, types, rows)
        if not ok:
            return None
        _commit(tmp, final)
    except pl.exceptions.PolarsError:
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"rows_in": rows, "paths": [final], "duration_s": time.perf_counter() - started}


__all__ = ["fast_path_possible", "try_fast_chunk"]
