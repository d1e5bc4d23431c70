"""A MySQL/MariaDB or PostgreSQL range's rows as canonical values, read through connectorx (Arrow) instead of
PyMySQL or psycopg.

Why: verify reads every row of both sides, and PyMySQL's pure-Python protocol parsing was most of the
source side's time (a 100k-row range of 9 mixed columns: ~1.7 s, against ~0.4 s here); psycopg's
per-row parsing was most of a PostgreSQL side's. PostgreSQL: integers, floats, text and booleans as
connectorx reads them, every other kind the row path decodes here as its text (numeric, dates and times,
uuid, bytea, json) in a session set to UTC and ISO dates; other kinds (arrays, intervals...) take psycopg. The range is the
columnar path's SELECT (tasks.db.columnar: numerics, dates, times and timestamps as MySQL's own text, bytes
as ``\\x`` hex, a value the row path refuses as a text PostgreSQL-style parsing refuses too), and each
column is decoded from that text with the rules the row path applies (tasks.db.values.coerce, the MySQL
decoders for booleans and FLOAT), so the values are the ones :func:`tasks.db.copier.iter_rows` yields.

Anything unexpected (connectorx missing, a type it cannot read, a refused value) raises, possibly after
some rows were produced: the caller starts the range over with PyMySQL, which names the row when a value
is bad.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from tasks.db.columnar import _expr, _url, available, select_sql
from tasks.db.conn import Db
from tasks.db.mysql_types import mysql_decoder
from tasks.db.schema import KeyRange, SourceSchema, order_by, range_predicate
from tasks.db.typemap import ColumnInfo
from tasks.db.values import JsonText, _to_bytes, coerce

_SLICE = 10_000  # rows turned into Python objects at a time
_AS_IS = frozenset({"smallint", "integer", "bigint", "double", "text", "varchar", "char"})


class NotReadable(ValueError):
    """The range is read through PyMySQL instead."""


def readable(db: Db, schema: SourceSchema) -> bool:
    """Whether this range can be read here (MySQL/MariaDB or PostgreSQL without connection options, connectorx
    installed, every column selectable)."""
    if not available():
        return False
    if db.dialect == "postgresql":
        return not db.ep.options and all(c.cast_text or c.kind in _PG_AS_IS or c.kind in _FROM_TEXT
                                         for c in schema.columns)
    return db.dialect == "mysql" and all(_expr(db, c) is not None for c in schema.columns)


def _timestamptz(v: str) -> dt.datetime:
    return dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC)  # the session's zone is UTC (the select's check)


# MySQL's text of these kinds, parsed by the same rules as tasks.db.values.coerce (C functions: no dispatch;
# bytes come as "\\x..." hex, as the select writes them)
_FROM_TEXT: dict[str, Callable[[Any], Any]] = {
    "numeric": Decimal, "date": dt.date.fromisoformat, "time": dt.time.fromisoformat,
    "timestamp": dt.datetime.fromisoformat, "timestamptz": _timestamptz, "uuid": uuid.UUID, "bytes": _to_bytes,
    "json": JsonText, "jsonb": JsonText,
}


# PostgreSQL: read as connectorx gives them (the values psycopg gives); the rest of _FROM_TEXT as their text
_PG_AS_IS = frozenset({*_AS_IS, "real", "boolean"})
# the text forms _FROM_TEXT reads, whatever the server's or the database's defaults
_PG_SESSION = ["SET TIME ZONE 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET bytea_output = 'hex'",
               "SET extra_float_digits = 1"]


def _pg_select(db: Db, schema: SourceSchema, rng: KeyRange) -> str:
    """The range's SELECT for connectorx (bounds as literals, quoted by psycopg)."""
    import psycopg

    cols = ", ".join(db.q(c.name) if c.kind in _PG_AS_IS and not c.cast_text else f"{db.q(c.name)}::text"
                     for c in schema.columns)
    where, params = range_predicate(db, schema.key_columns(), rng)
    sql = f"SELECT {cols} FROM {schema.relation('postgresql')} WHERE {where}{order_by(db, schema)}"
    return psycopg.ClientCursor(db.raw).mogrify(sql, params)


def _decoder(col: ColumnInfo, dialect: str = "mysql") -> Callable[[Any], Any] | None:
    """Arrow value (int, float, str) -> the canonical value the row path yields (None: as it is)."""
    if col.cast_text or col.kind in (_PG_AS_IS if dialect == "postgresql" else _AS_IS):
        return None
    if col.kind in ("boolean", "real"):
        return mysql_decoder(col)
    return _FROM_TEXT.get(col.kind) or (lambda v: coerce(col, v))


def read_table(db: Db, schema: SourceSchema, rng: KeyRange) -> Any:
    """The range in key order as one Arrow table (connectorx): integers, floats and booleans as such, the
    other kinds as the text :func:`_decoder` reads."""
    import connectorx as cx

    if db.dialect == "postgresql":
        return cx.read_sql(_url(db), _pg_select(db, schema, rng), return_type="arrow", protocol="binary",
                           pre_execution_query=_PG_SESSION)
    return cx.read_sql(_url(db), select_sql(db, schema, rng), return_type="arrow", protocol="binary")


def iter_rows(db: Db, schema: SourceSchema, rng: KeyRange) -> Iterator[tuple[Any, ...]]:
    """The range's rows in key order; the Arrow table is held, Python objects are made 10,000 rows at a time."""
    table = read_table(db, schema, rng)
    decoders = [_decoder(c, db.dialect) for c in schema.columns]
    for start in range(0, table.num_rows, _SLICE):
        part = table.slice(start, _SLICE)
        columns = []
        for i, dec in enumerate(decoders):
            values = part.column(i).to_pylist()
            columns.append(values if dec is None else [None if v is None else dec(v) for v in values])
        yield from zip(*columns, strict=True)


__all__ = ["NotReadable", "iter_rows", "read_table", "readable"]
