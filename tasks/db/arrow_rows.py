"""A MySQL/MariaDB range's rows as canonical values, read through connectorx (Arrow) instead of PyMySQL.

Why: verify reads every row of both sides, and PyMySQL's pure-Python protocol parsing was most of the
source side's time (a 100k-row range of 9 mixed columns: ~1.7 s, against ~0.4 s here). The range is the
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
from tasks.db.schema import KeyRange, SourceSchema
from tasks.db.typemap import ColumnInfo
from tasks.db.values import JsonText, _to_bytes, coerce

_SLICE = 10_000  # rows turned into Python objects at a time
_AS_IS = frozenset({"smallint", "integer", "bigint", "double", "text", "varchar", "char"})


class NotReadable(ValueError):
    """The range is read through PyMySQL instead."""


def readable(db: Db, schema: SourceSchema) -> bool:
    """Whether this range can be read here (MySQL/MariaDB, connectorx installed, every column selectable)."""
    return db.dialect == "mysql" and available() and all(_expr(db, c) is not None for c in schema.columns)


def _timestamptz(v: str) -> dt.datetime:
    return dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC)  # the session's zone is UTC (the select's check)


# MySQL's text of these kinds, parsed by the same rules as tasks.db.values.coerce (C functions: no dispatch;
# bytes come as "\\x..." hex, as the select writes them)
_FROM_TEXT: dict[str, Callable[[Any], Any]] = {
    "numeric": Decimal, "date": dt.date.fromisoformat, "time": dt.time.fromisoformat,
    "timestamp": dt.datetime.fromisoformat, "timestamptz": _timestamptz, "uuid": uuid.UUID, "bytes": _to_bytes,
    "json": JsonText, "jsonb": JsonText,
}


def _decoder(col: ColumnInfo) -> Callable[[Any], Any] | None:
    """Arrow value (int, float, str) -> the canonical value the row path yields (None: as it is)."""
    if col.cast_text or col.kind in _AS_IS:
        return None
    if col.kind in ("boolean", "real"):
        return mysql_decoder(col)
    return _FROM_TEXT.get(col.kind) or (lambda v: coerce(col, v))


def iter_rows(db: Db, schema: SourceSchema, rng: KeyRange) -> Iterator[tuple[Any, ...]]:
    """The range's rows in key order; the Arrow table is held, Python objects are made 10,000 rows at a time."""
    import connectorx as cx

    table = cx.read_sql(_url(db), select_sql(db, schema, rng), return_type="arrow", protocol="binary")
    decoders = [_decoder(c) for c in schema.columns]
    for start in range(0, table.num_rows, _SLICE):
        part = table.slice(start, _SLICE)
        columns = []
        for i, dec in enumerate(decoders):
            values = part.column(i).to_pylist()
            columns.append(values if dec is None else [None if v is None else dec(v) for v in values])
        yield from zip(*columns, strict=True)


__all__ = ["NotReadable", "iter_rows", "readable"]
