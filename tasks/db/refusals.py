"""PostgreSQL values the row path cannot carry exactly, found by SQL and refused naming the row and column.

Why SQL: psycopg decodes a range into Python values, and two kinds of PostgreSQL values do not survive that:
dates and times Python has none for ('infinity', '-infinity', BC, years past 9999: psycopg raises while
decoding, without naming the row), and arrays whose lower bound is not 1 (``'[0:2]={5,6,7}'``: psycopg's list
is ``[5, 6, 7]``, which SQLite, MySQL/MariaDB or a transform would then hold renumbered from 1). A predicate
over the range finds the first such row in the server, only when a range failed to decode (dates) or when the
range has array columns (bounds), so ranges without them pay nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from tasks.core import ItemError, redact_text
from tasks.db.conn import Db
from tasks.db.schema import KeyRange, SourceSchema, order_by, range_predicate
from tasks.db.typemap import ColumnInfo

_PY_TIMES = frozenset({"date", "timestamp", "timestamptz"})


def _shifted_bounds(q: str) -> str:
    """True for an array with a dimension whose lower bound is not 1 (``array_dims`` is then ``[0:2]``...)."""
    return f"array_dims({q}) ~ '[[](?!1:)'"


def _no_python_time(q: str) -> str:
    return f"(NOT isfinite({q}) OR extract(year FROM {q}) NOT BETWEEN 1 AND 9999)"


def first_row(db: Db, schema: SourceSchema, rng: KeyRange, col: ColumnInfo, cond: str
              ) -> tuple[dict[str, Any], str] | None:
    """(the row's key, or its first three values for a table without a key; the column's text) of the range's
    first row where ``cond`` holds, or None (PostgreSQL)."""
    where, params = range_predicate(db, schema.key_columns(), rng)
    named = schema.key_columns() or schema.columns[:3]
    shown = ", ".join(db.q(c.name) + ("::text" if c.kind in _PY_TIMES or c.kind == "array" else "") for c in named)
    try:
        found = db.all(f"SELECT {shown}, {db.q(col.name)}::text FROM {schema.relation('postgresql')} "
                       f"WHERE ({where}) AND {cond}{order_by(db, schema)} LIMIT 1", params)
    finally:
        with contextlib.suppress(psycopg.Error):
            db.raw.rollback()
    if not found:
        return None
    *key, value = found[0]
    return dict(zip([c.name for c in named], key, strict=True)), value


def _error(schema: SourceSchema, rng: KeyRange, which: dict[str, Any], col: ColumnInfo, what: str) -> ItemError:
    row = f"row with key {which}" if schema.key else f"row {which}"
    return ItemError(redact_text(f"range {rng.index}: {row} cannot be copied: column {col.name!r}: {what}"),
                     category="conversion")


def undecodable(src: Db, schema: SourceSchema, rng: KeyRange) -> ItemError | None:
    """After psycopg failed to decode a range: the first row holding a date or time Python has no value for,
    as an ItemError naming its key and column (no retry can read it); None when there is none (the caller
    reports the driver's error)."""
    if src.dialect != "postgresql":
        return None
    with contextlib.suppress(psycopg.Error):
        src.raw.rollback()
    for col in schema.columns:
        if col.kind in _PY_TIMES and not col.cast_text:
            q = src.q(col.name)
            if (hit := first_row(src, schema, rng, col, _no_python_time(q))) is not None:
                return _error(schema, rng, hit[0], col, (
                    f"{col.kind} {hit[1]!r} has no Python value (years 1-9999 only), so it cannot be copied to "
                    "another database or through a transform; map it in a query= (e.g. NULLIF or a CASE), or copy "
                    "PostgreSQL -> PostgreSQL without a transform"))
    return None


def refuse_array_bounds(src: Db, schema: SourceSchema, rng: KeyRange) -> None:
    """Raise ItemError naming the first row of the range holding an array whose lower bound is not 1 (the
    row path's lists would renumber it from 1); one query per array column, PostgreSQL sources only."""
    if src.dialect != "postgresql":
        return
    for col in _arrays(schema):
        if (hit := first_row(src, schema, rng, col, _shifted_bounds(src.q(col.name)))) is not None:
            raise _error(schema, rng, hit[0], col, (
                f"array {hit[1]!r} has lower bounds other than 1, which only PostgreSQL keeps (here it would be "
                "renumbered from 1); copy PostgreSQL -> PostgreSQL without a transform, or select it renumbered "
                "or as text in a query="))


def shifted_array_key(db: Db, schema: SourceSchema, rng: KeyRange) -> dict[str, Any] | None:
    """The key of the range's first row with an array whose lower bound is not 1 (PostgreSQL), else None:
    verify against a database without such arrays counts that row as different."""
    if db.dialect != "postgresql":
        return None
    for col in _arrays(schema):
        if (hit := first_row(db, schema, rng, col, _shifted_bounds(db.q(col.name)))) is not None:
            return hit[0]
    return None


def _arrays(schema: SourceSchema) -> list[ColumnInfo]:
    return [c for c in schema.columns if c.kind == "array" and not c.cast_text]


__all__ = ["first_row", "refuse_array_bounds", "shifted_array_key", "undecodable"]
