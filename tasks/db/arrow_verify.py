"""Verify between different databases column by column on Arrow arrays: Python only for columns that differ.

Pairs of MySQL/MariaDB, PostgreSQL and SQLite (SQLite through the columnar copy's reader, SQLite dates and
timestamps compared as their ISO text).

Why: verify read both sides of a MySQL/MariaDB <-> PostgreSQL range as Python values, canonicalized and
hashed each one (a 100k-row range of 9 mixed columns: ~2.5 s for ~0.3 s of reading), so a verified
migration took ~6x the copy. A faithful copy mostly reads back as the same Arrow arrays on both sides:
integers (any width or sign), doubles bit for bit, text, numerics and dates as the same text. So both ranges
are read through connectorx (:func:`tasks.db.arrow_rows.read_table`) at once, and each column is first
compared as arrays, after lossless normalizations only (integers widened to int64, booleans as 0/1, a
PostgreSQL ``timestamptz`` text without the ``+00`` of its UTC session, trailing zeros of a fraction of a
second dropped, hex bytes in small letters, ``char(n)`` without its padding, floats compared by their bits). Equal arrays are equal columns; a column whose arrays differ
is decoded and canonicalized by the rules the row-by-row verify applies (:mod:`tasks.db.values`), on both
sides, and compared by digest. So the answer is the row-by-row verify's; only the time differs.

Checksums: a column equal as arrays contributes the digest of the source's array to both sides; any other
column its canonical digest per side. They are comparable only between the two sides of one check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tasks.db.arrow_rows import _decoder, read_table, readable
from tasks.db.columnar import NotExact, _sqlite_ok, _sqlite_table, available
from tasks.db.conn import Db, UrlLike
from tasks.db.schema import KeyRange, SourceSchema, range_predicate
from tasks.db.session import connect
from tasks.db.typemap import ColumnInfo
from tasks.db.values import _CHECKSUM_BATCH, _canon_funcs, _canon_json_dumps, coerce, sqlite_decoder

_INTEGER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_TEMPORAL = frozenset({"time", "timestamp", "timestamptz"})


def read_side(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str) -> tuple[str, Any] | None:
    """(dialect, Arrow table) of the range, or None when connectorx cannot read it exactly there (SQLite: the
    columnar copy's reader, which refuses a range holding a value of another storage class than its kind's)."""
    with connect(url, role) as db:  # type: ignore[arg-type]
        if db.dialect == "sqlite":
            if not (available() and all(_sqlite_ok(c) for c in schema.columns)) or _inexact_numerics(db, schema, rng):
                return None
            try:
                return "sqlite", _sqlite_table(db, schema, rng)
            except NotExact:
                return None
        if not readable(db, schema):
            return None
        table = read_table(db, schema, rng)
        if db.dialect == "postgresql":
            db.raw.rollback()
        return db.dialect, table


def _inexact_numerics(db: Db, schema: SourceSchema, rng: KeyRange) -> bool:
    """Whether a SQLite NUMERIC column of the range holds text or an integer past 2^53: connectorx would read
    it as the nearest double, the row path as its digits (a copy's reader may round it; verify may not)."""
    numeric = [db.q(c.name) for c in schema.columns if c.kind == "numeric"]
    if not numeric:
        return False
    where, params = range_predicate(db, schema.key_columns(), rng)
    cond = " OR ".join(f"typeof({q}) = 'text' OR (typeof({q}) = 'integer' AND abs({q}) > 9007199254740992)"
                       for q in numeric)
    sql = f"SELECT EXISTS (SELECT 1 FROM {schema.relation('sqlite')} WHERE ({where}) AND ({cond}))"
    return bool(db.raw.execute(sql, params).fetchone()[0])


def _normalized(array: Any, col: ColumnInfo, dialect: str) -> Any:
    """A lossless comparable form of one column's array (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = str(array.type)
    if kind in ("date32[day]", "timestamp[us]"):  # SQLite's dates and timestamps: as the ISO text the others read
        array, kind = pc.cast(array, pa.string()), "string"
    if kind == "bool":
        return pc.cast(array, pa.int64())
    if kind in _INTEGER_TYPES:
        return array if kind == "int64" else pc.cast(array, pa.int64())  # refuses (raises) past int64, never wraps
    if kind in ("double", "float"):
        return array.view(pa.int64() if kind == "double" else pa.int32())  # the bits: -0.0 and NaNs as they are
    if kind in ("string", "large_string"):
        if col.kind in _TEMPORAL and not col.cast_text:
            if dialect == "postgresql" and col.kind == "timestamptz":
                array = pc.replace_substring_regex(array, r"\+00$", "")  # the session's zone is UTC
            array = pc.replace_substring_regex(array, r"(\.[0-9]*?)0+$", r"\1")
            array = pc.replace_substring_regex(array, r"\.$", "")
        elif col.kind == "bytes":  # "\\x" and hex digits, which MySQL writes in capitals
            array = pc.utf8_lower(array)
        elif col.kind == "char":  # char(n)'s padding, which the canonical value drops too
            array = pc.utf8_rtrim(array, characters=" ")
        return array.cast(pa.string()) if kind == "large_string" else array
    return array


def _side_decoder(col: ColumnInfo, dialect: str) -> Callable[[Any], Any] | None:
    """Arrow value -> the row path's value: SQLite's as its reader decodes what sqlite3 returns (Arrow's ints,
    floats, text, booleans, dates and timestamps are what that makes of them), the others as arrow_rows."""
    if dialect == "sqlite":
        return sqlite_decoder(col)
    return _decoder(col, dialect)


def _same(a: Any, b: Any) -> bool:
    return bool(a.type == b.type and a.equals(b))


def _as_doubles(ca: ColumnInfo, cb: ColumnInfo, a: Any, b: Any) -> bool:
    """Whether a numeric column is compared as doubles: one side holds doubles (SQLite), and both columns'
    precision is at most 15 digits, so two of their values are equal exactly when their doubles are (distinct
    decimals of <= 15 significant digits never share a double, and a double's shortest text, which the row
    path takes as its decimal, is the one such decimal that reads as it)."""
    return (ca.kind == "numeric" and all(c.precision is not None and c.precision <= 15 for c in (ca, cb))
            and "double" in (str(a.type), str(b.type)))


def _doubles(array: Any) -> Any:
    import pyarrow as pa

    return array if str(array.type) == "double" else array.cast(pa.float64())  # text: read correctly rounded


def _array_digest(array: Any) -> bytes:
    h = hashlib.md5(usedforsecurity=False)
    h.update(f"{len(array)}:{array.null_count}:".encode())
    for buffer in array.buffers():
        if buffer is not None:
            h.update(buffer)
    return h.digest()


def _canonical_digest(values: list[Any], decode: Callable[[Any], Any] | None, as_col: ColumnInfo | None,
                      canon: Callable[[Any], Any]) -> bytes:
    """The row-by-row verify's canonical values of one column (decoded as arrow_rows does, converted to the
    source's kind when the target's differs), hashed in batches."""
    if decode is not None:
        values = [None if v is None else decode(v) for v in values]
    if as_col is not None:
        values = [None if v is None else coerce(as_col, v) for v in values]
    h = hashlib.md5(usedforsecurity=False)
    for start in range(0, len(values), _CHECKSUM_BATCH):
        h.update(_canon_json_dumps([canon(v) for v in values[start:start + _CHECKSUM_BATCH]]).encode())
    return h.digest()


def compare(source: SourceSchema, src: tuple[str, Any], target: SourceSchema, tgt: tuple[str, Any]
            ) -> tuple[int, str, int, str, bool, list[str]]:
    """(count_src, checksum_src, count_tgt, checksum_tgt, ok, columns compared in Python) of two read ranges;
    ``target``'s columns are the source's, in the same order."""
    (dia_a, ta), (dia_b, tb) = src, tgt
    ha, hb = hashlib.md5(usedforsecurity=False), hashlib.md5(usedforsecurity=False)
    n_a, n_b = ta.num_rows, tb.num_rows
    slow: list[str] = []
    if n_a == n_b:
        canon = _canon_funcs(source.columns)
        for i, (ca, cb) in enumerate(zip(source.columns, target.columns, strict=True)):
            a, b = ta.column(i).combine_chunks(), tb.column(i).combine_chunks()
            same_kind = ca.kind == cb.kind and ca.element == cb.element
            try:
                if same_kind and _as_doubles(ca, cb, a, b):  # SQLite's NUMERIC doubles beside a decimal text
                    fast_a, fast_b = _normalized(_doubles(a), ca, dia_a), _normalized(_doubles(b), cb, dia_b)
                else:
                    fast_a, fast_b = _normalized(a, ca, dia_a), _normalized(b, cb, dia_b)
            except Exception:  # an integer past int64, a cast Arrow refuses: the canonical comparison decides
                fast_a = fast_b = None
            if same_kind and fast_a is not None and _same(fast_a, fast_b):
                digest = _array_digest(fast_a)
                ha.update(digest)
                hb.update(digest)
                continue
            slow.append(ca.name)
            ha.update(_canonical_digest(a.to_pylist(), _side_decoder(ca, dia_a), None, canon[i]))
            hb.update(_canonical_digest(b.to_pylist(), _side_decoder(cb, dia_b), None if same_kind else ca, canon[i]))
    da, db_ = ha.hexdigest(), hb.hexdigest()
    return n_a, da, n_b, db_, n_a == n_b and da == db_, slow


__all__ = ["compare", "read_side"]
