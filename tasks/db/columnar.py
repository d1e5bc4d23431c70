"""Columnar fast path for MySQL/MariaDB -> PostgreSQL: read a range with connectorx (Rust, Arrow), write CSV.

Why: the row path spends most of its CPU in PyMySQL's pure-Python row parsing and in decoding every value
into a Python object that psycopg then encodes again (profile of a 100k-row range: parsing ~55 %, JSON ~19 %,
datetimes ~10 %). Here the range is one ``SELECT`` read by connectorx into Arrow columns, written as CSV by
Arrow's C++ writer and fed to ``COPY ... FROM STDIN (FORMAT csv)`` on the range's own target transaction,
so the ledger row still commits with the rows.

Exactness: PostgreSQL must store what the row path stores, so every value travels as text PostgreSQL parses
to the same value: numerics, dates, times and timestamps are selected as MySQL's own text (no rounding
through Arrow's decimal128(38, 10) or its zero-date handling), floats as the double the row path reads,
bytes as ``\\x`` hex, JSON re-serialized with ``json.dumps`` as psycopg's JSON dumper does. NULL is an
unquoted empty field, every other value is quoted (``""`` is the empty string). Values the row path refuses
(zero dates, a TIME outside a day, TINYINT(1) other than 0/1) are sent as text PostgreSQL rejects, so the
range falls back to the row path, which names the row and column. Only columns whose target kind equals the
source kind are eligible; anything else (arrays, BIT, a transform, connection options connectorx would not
honour, connectorx missing) takes the row path.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote as _urlquote

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


def eligible(src: Db, schema: SourceSchema, tgt_cols: Sequence[ColumnInfo]) -> bool:
    """Whether a range of ``schema`` can take the fast path into these target columns."""
    if src.dialect != "mysql" or any(k not in _OK_OPTIONS for k, _ in src.ep.options) or not available():
        return False
    for s, t in zip(schema.columns, tgt_cols, strict=True):
        if s.kind != t.kind or s.element != t.element or t.cast_text or _expr(src, s) is None:
            return False
    return True


def _url(db: Db) -> str:
    ep = db.ep
    pw = ep.password.get_secret_value() if ep.password else ""
    return (f"mysql://{_urlquote(ep.user or '', safe='')}:{_urlquote(pw, safe='')}@{ep.host}:{ep.port or 3306}/"
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


def _json_texts(values: list[Any]) -> list[str | None]:
    dumps, loads = json.dumps, json.loads  # psycopg's JSON dumper writes json.dumps(value)
    return [None if v is None else dumps(loads(v)) for v in values]


def read_csv(db: Db, schema: SourceSchema, rng: KeyRange) -> tuple[bytes, int]:
    """The range as CSV for ``COPY ... (FORMAT csv)`` and its row count. Raises whatever connectorx or
    Arrow raise (the caller falls back to the row path); json texts that do not parse raise ValueError."""
    import connectorx as cx
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = cx.read_sql(_url(db), select_sql(db, schema, rng), return_type="arrow", protocol="binary")
    for i, c in enumerate(schema.columns):
        if c.kind in ("json", "jsonb"):
            table = table.set_column(i, c.name, pa.array(_json_texts(table.column(i).to_pylist()), pa.string()))
    buf = io.BytesIO()
    pcsv.write_csv(table, buf, pcsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return buf.getvalue(), table.num_rows


__all__ = ["available", "eligible", "read_csv", "select_sql"]
