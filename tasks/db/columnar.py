"""Columnar fast path into PostgreSQL: a MySQL/MariaDB or SQLite range becomes Arrow columns, then CSV for COPY.

Why: the row path spends most of its CPU in PyMySQL's pure-Python row parsing and in decoding every value
into a Python object that psycopg then encodes again (profile of a 100k-row range: parsing ~55 %, JSON ~19 %,
datetimes ~10 %). Here the range is one ``SELECT`` read by connectorx into Arrow batches, each written as CSV
by Arrow's C++ writer and fed to ``COPY ... FROM STDIN (FORMAT csv)`` on the range's own target transaction
while connectorx reads the next (MySQL/MariaDB; a SQLite range is read whole), so the ledger row still
commits with the rows.

Exactness: PostgreSQL must store what the row path stores, so every value travels as text PostgreSQL parses
to the same value: numerics, dates, times and timestamps are selected as MySQL's own text (no rounding
through Arrow's decimal128(38, 10) or its zero-date handling), floats as the double the row path reads,
bytes as ``\\x`` hex, JSON as the document's own text (as the row path writes it). NULL is an
unquoted empty field, every other value is quoted (``""`` is the empty string). Values the row path refuses
(zero dates, a TIME outside a day, TINYINT(1) other than 0/1) are sent as text PostgreSQL rejects, so the
range falls back to the row path, which names the row and column. Only columns whose target kind equals the
source kind are eligible; anything else (arrays, BIT, a transform, connection options connectorx would not
honour, connectorx missing) takes the row path.

SQLite: connectorx reads the range too (no Python object per value). SQLite is dynamically typed, so one
``count(*)`` query over the range first looks for values connectorx would convert differently from the row
path (a TEXT in an INTEGER column, an integer other than 0/1 in a boolean, a timestamp not in the plain ISO
form both Python and PostgreSQL read alike): if there is one, the range takes the row path, which converts or
refuses each value as before. Kinds: integers, double, numeric(p <= 15), text, boolean, date, timestamp; a
table with a column of another kind (json, bytes, uuid, timestamptz, arrays...) takes the row path.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote as _urlquote

from tasks.core import DbSettings, register_secret
from tasks.db.conn import Db
from tasks.db.schema import KeyRange, SourceSchema, order_by, range_predicate
from tasks.db.typemap import ColumnInfo

_OK_OPTIONS = frozenset({"local_infile", "connect_timeout"})
_UTC_SESSION = ("(@@session.time_zone IN ('+00:00', 'UTC') OR "
                "(@@session.time_zone = 'SYSTEM' AND @@system_time_zone IN ('UTC', 'GMT', 'Etc/UTC')))")
_REFUSED = "'batchflows: not representable'"  # PostgreSQL rejects it for every eligible kind but text
_TEXT_KINDS = ("text", "varchar", "char")


def available() -> bool:
    try:
        import connectorx  # noqa: F401
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _expr(db: Db, col: ColumnInfo) -> str | None:
    """The select expression that sends ``col`` as PostgreSQL input text of the same value, or None."""
    q, k, declared = db.q(col.name), col.kind, col.declared.lower()
    if k in ("array",) or declared.startswith("mysql:bit"):
        return None
    if col.cast_text or k in ("numeric", "date", "timestamp", "uuid", "json", "jsonb"):
        return f"CAST({q} AS CHAR)"
    if k == "timestamptz":  # MySQL's TIMESTAMP text is in the session's zone: UTC only
        return f"IF({_UTC_SESSION}, CAST({q} AS CHAR), {_REFUSED})"
    if k == "time":  # MySQL's TIME is a duration; the row path takes a time of day only
        return f"IF({q} IS NULL OR ({q} >= TIME'00:00:00' AND {q} < TIME'24:00:00'), CAST({q} AS CHAR), {_REFUSED})"
    if k == "real":
        return f"CAST({q} AS DOUBLE)"
    if k == "bytes":
        return f"CONCAT(_utf8mb4 X'5C78', HEX({q}))"
    if k in ("smallint", "integer", "bigint", "double", "boolean", *_TEXT_KINDS):
        return q
    return None


class NotExact(ValueError):
    """A range whose values the columnar path cannot write exactly as the row path does."""


def eligible(src: Db, schema: SourceSchema, tgt_cols: Sequence[ColumnInfo]) -> bool:
    """Whether a range of ``schema`` can take the fast path into these target columns."""
    if not DbSettings().columnar:
        return False
    if src.dialect == "mysql":
        if any(k not in _OK_OPTIONS for k, _ in src.ep.options) or not available():
            return False
        ok = [_expr(src, s) is not None for s in schema.columns]
    elif src.dialect == "sqlite":
        if not available():
            return False
        ok = [_sqlite_ok(s) for s in schema.columns]
    else:
        return False
    return all(ok) and all(s.kind == t.kind and s.element == t.element and not t.cast_text
                           for s, t in zip(schema.columns, tgt_cols, strict=True))


def _url(db: Db) -> str:
    ep = db.ep
    pw = ep.password.get_secret_value() if ep.password else ""
    register_secret(_urlquote(pw, safe=""))  # an error text may quote the URL: its encoded password is masked too
    scheme, port = ("postgresql", 5432) if db.dialect == "postgresql" else ("mysql", 3306)
    return (f"{scheme}://{_urlquote(ep.user or '', safe='')}:{_urlquote(pw, safe='')}@{ep.host}:{ep.port or port}/"
            f"{_urlquote(ep.database, safe='')}")


def select_sql(db: Db, schema: SourceSchema, rng: KeyRange) -> str:
    """The range's SELECT with its bounds as literals (connectorx takes no parameters), quoted by PyMySQL."""
    cols = ", ".join(f"{_expr(db, c)} AS {db.q(c.name)}" for c in schema.columns)
    where, params = range_predicate(db, schema.key_columns(), rng)
    sql = f"SELECT {cols} FROM {schema.relation('mysql')} WHERE {where}{order_by(db, schema)}"
    cur = db.raw.cursor()
    try:
        return str(cur.mogrify(sql, tuple(params)))
    finally:
        cur.close()


def csv_batches(db: Db, schema: SourceSchema, rng: KeyRange, rows: list[int]) -> Iterator[bytes]:
    """The range as CSV for ``COPY ... (FORMAT csv)``, a block per Arrow batch of ``_BATCH_ROWS`` rows, counted
    into ``rows[0]``. The query runs when this is called (a refusal raises here, before anything is written);
    connectorx fetches the next batches while the caller sends the last one, so the source's read and the
    target's COPY overlap (a 100k-row MariaDB range read and converted in 0.13 s instead of 0.15 s, and
    no longer before the COPY but during it, measured). Raises NotExact, or whatever connectorx or Arrow
    raise, here or while iterating: the caller then rolls back and takes the row path."""
    import pyarrow.csv as pcsv

    reader: Any
    if db.dialect == "sqlite":  # read whole: a value connectorx refuses midway would panic in its stream's thread
        reader = _sqlite_table(db, schema, rng).to_batches(max_chunksize=_BATCH_ROWS)
    else:
        import connectorx as cx

        # JSON is the document's text: PostgreSQL checks it (an invalid one fails the COPY, and the row path
        # then names its row)
        reader = cx.read_sql(_url(db), select_sql(db, schema, rng), return_type="arrow_stream", protocol="binary",
                             batch_size=_BATCH_ROWS)
    options = pcsv.WriteOptions(include_header=False, quoting_style="all_valid")

    def blocks() -> Iterator[bytes]:
        for batch in reader:
            buf = io.BytesIO()
            pcsv.write_csv(batch, buf, options)
            rows[0] += batch.num_rows
            yield buf.getvalue()

    return blocks()


_BATCH_ROWS = 20_000


# ---------------------------------------------------------------- SQLite

_D, _T = "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]", "[0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
_GLOBS = {"date": [_D], "timestamp": [f"{_D}[ T]{_T}", f"{_D}[ T]{_T}.[0-9][0-9][0-9]",
                                      f"{_D}[ T]{_T}.[0-9][0-9][0-9][0-9][0-9][0-9]"]}
# per kind: the Arrow types connectorx may give (numeric: the text as stored for batchflows' DECIMAL_TEXT; for a
# NUMERIC column connectorx takes the type of the range's first value and refuses other storage classes after
# it, and a NULL first value: the row path then)
_SQLITE: dict[str, tuple[str, ...]] = {
    "smallint": ("int64",), "integer": ("int64",), "bigint": ("int64",), "double": ("double",),
    "numeric": ("double", "string", "int64"), "text": ("string",), "varchar": ("string",), "char": ("string",),
    "boolean": ("bool",), "date": ("date32[day]",), "timestamp": ("timestamp[us]",),
}


def _sqlite_ok(col: ColumnInfo) -> bool:
    # numeric(p <= 15): every value the column can hold is a double exactly, so connectorx's int -> double and
    # the double's shortest digits round to the same numeric as the row path's Decimal(repr(value))
    return col.kind in _SQLITE and (col.kind != "numeric" or (col.precision is not None and col.precision <= 15))


def _sqlite_misfit(db: Db, col: ColumnInfo) -> str | None:
    """SQL true for a value of ``col`` that connectorx would read differently from the row path (it refuses
    other storage classes in integer, real, boolean, date and timestamp columns by itself, so those cost
    nothing here): a non-text value in a text column, a blob in a numeric one, a boolean other than 0/1, a
    date or timestamp not in the plain ISO form both Python and PostgreSQL read alike."""
    q = db.q(col.name)
    if col.kind in ("text", "varchar", "char"):
        return f"typeof({q}) NOT IN ('text', 'null')"
    if col.kind == "numeric":
        return f"typeof({q}) = 'blob'"
    if col.kind == "boolean":
        return f"NOT ({q} IS NULL OR (typeof({q}) = 'integer' AND {q} IN (0, 1)))"
    if col.kind in _GLOBS:
        return f"NOT ({q} IS NULL OR " + " OR ".join(f"{q} GLOB '{g}'" for g in _GLOBS[col.kind]) + ")"
    return None


def _sqlite_table(db: Db, schema: SourceSchema, rng: KeyRange) -> Any:
    import connectorx as cx

    where, params = range_predicate(db, schema.key_columns(), rng)
    misfits = " OR ".join(m for c in schema.columns if (m := _sqlite_misfit(db, c)) is not None)
    bad = misfits and db.raw.execute(
        f"SELECT count(*) FROM {schema.relation('sqlite')} WHERE ({where}) AND ({misfits})", params).fetchone()[0]
    if bad:
        raise NotExact(f"{bad} rows hold values of another storage class or text form than their column's kind")
    if where.count("?") != len(params):
        raise NotExact("a name in the range predicate holds a '?'")
    literal = where
    for p in params:  # connectorx takes no parameters: bounds as SQLite literals
        literal = literal.replace("?", _sqlite_literal(p), 1)
    cols = ", ".join(db.q(c.name) for c in schema.columns)
    sql = f"SELECT {cols} FROM {schema.relation('sqlite')} WHERE {literal}{order_by(db, schema)}"
    table = cx.read_sql(f"sqlite://{Path(db.ep.database).resolve()}", sql, return_type="arrow")
    for c, t in zip(schema.columns, table.schema.types, strict=True):
        if str(t) not in (*_SQLITE[c.kind], "null"):
            raise NotExact(f"connectorx read column {c.name!r} as {t}")
    return table


def _sqlite_literal(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise NotExact(f"a {type(v).__name__} range bound")
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


__all__ = ["NotExact", "available", "csv_batches", "eligible", "select_sql"]
