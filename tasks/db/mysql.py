"""MySQL/MariaDB as a source and a target: reflection, reading a range, writing a range (PyMySQL).

Why ``LOAD DATA LOCAL INFILE`` first: measured here (200k rows x 8 mixed columns into MariaDB 10.11), it loads
110k rows/s against 43k for batched multi-row ``INSERT`` statements (PyMySQL renders every literal in pure
Python). But with LOCAL the server turns data errors and duplicate keys into warnings and goes on, so a load
with any warning is rolled back and the range is written again with multi-row INSERTs, which fail in strict
mode naming the row (its position in the statement) and column: the fast path can never store a cut or
skipped value. ``upsert`` loads into a temporary table and then runs ``INSERT ... SELECT ... ON DUPLICATE KEY
UPDATE``. A range's rows, its ``replace`` delete and its ledger row commit in one InnoDB transaction, as for
the other targets. A server that refuses LOCAL INFILE (MySQL 8's default) gets the INSERT path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pymysql
from pymysql.converters import escape_item

from tasks.core import ConfigError, ItemError, RetryableError, SourceError, failpoint, redact_text
from tasks.db.conn import Db, TableName
from tasks.db.mysql_types import column_from_field, column_from_mysql, mysql_decoder
from tasks.db.schema import KeyRange, SourceSchema, order_by, range_predicate
from tasks.db.typemap import ColumnInfo

OnCommit = Callable[[Db, int], None]
_FETCH = 5_000
_STATEMENT_BYTES = 4 * 1024 * 1024
_ROW_AT = re.compile(r"at row (\d+)")
_COLUMN = re.compile(r"column [`'](.+?)[`']")
_RETRYABLE = frozenset({1205, 1213, 2006, 2013, 2055})  # lock wait timeout, deadlock, server gone, lost


def is_mariadb(db: Db) -> bool:
    return "mariadb" in str(db.raw.get_server_info()).lower()


def _error_text(exc: pymysql.MySQLError) -> str:
    return redact_text(str(exc.args[-1]) if exc.args else type(exc).__name__)


# ---------------------------------------------------------------- reflection


def reflect_mysql(db: Db, table: TableName | None, query: str | None) -> SourceSchema:
    """Columns, primary key and unique keys of a table (information_schema), or the columns of a query."""
    if table is None:
        return _reflect_query(db, query or "")
    schema_arg = [table.schema_name, table.name]
    try:
        rows = db.all(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, NUMERIC_PRECISION, NUMERIC_SCALE, "
            "CHARACTER_MAXIMUM_LENGTH, COLLATION_NAME, COLUMN_COMMENT FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            schema_arg)
        if not rows:
            known = [r[0] for r in db.all(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) "
                "ORDER BY 1 LIMIT 30", [table.schema_name])]
            msg = f"table {table} not found in {db.ep.describe()}; tables there: {known or 'none'}"
            raise SourceError(msg)
        json_cols: set[str] = set()
        if is_mariadb(db):  # MariaDB's JSON is LONGTEXT with a json_valid() check
            for (clause,) in db.all(
                    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = "
                    "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", schema_arg):
                m = re.fullmatch(r"json_valid\(`((?:[^`]|``)+)`\)", str(clause).strip())
                if m:
                    json_cols.add(m.group(1).replace("``", "`"))
        idx = db.all(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            schema_arg)
        db.raw.rollback()
    except pymysql.MySQLError as exc:
        msg = f"cannot read table {table} in {db.ep.describe()}: {_error_text(exc)}"
        raise SourceError(msg) from None
    cols = [column_from_mysql(name, dtype, _members(db, table, name, ctype), nullable=nullable == "YES",
                              precision=prec, scale=scale, length=length, collation=coll, comment=comment or "",
                              json_check=name in json_cols)
            for name, dtype, ctype, nullable, prec, scale, length, coll, comment in rows]
    keys: dict[str, list[str]] = {}
    for name, col in idx:
        keys.setdefault(name, []).append(col)
    return SourceSchema(dialect="mysql", table=table, columns=cols, primary_key=keys.get("PRIMARY", []),
                        unique_keys=list(keys.values()))


_MEMBER = re.compile(r"'((?:[^']|'')*)'")


def _members(db: Db, table: TableName, name: str, ctype: str) -> str:
    """An ENUM/SET's type with its members as stored: information_schema and SHOW CREATE TABLE print them in
    utf8mb3, a 4-byte character (an emoji) as '?'. The members are read back from a temporary table of the
    column (ENUM values by index, SET values by bit); without the right to create one, the type as printed."""
    kind = ctype.split("(", 1)[0].lower()
    if kind not in ("enum", "set") or "?" not in ctype:
        return ctype
    n = len(_MEMBER.findall(ctype[len(kind):]))
    numbers = [1 << i for i in range(n)] if kind == "set" else list(range(1, n + 1))
    cur = db.raw.cursor()
    try:
        cur.execute("DROP TEMPORARY TABLE IF EXISTS _bf_members")
        cur.execute(f"CREATE TEMPORARY TABLE _bf_members AS SELECT {db.q(name)} AS m FROM "
                    f"{table.sql('mysql')} LIMIT 0")
        cur.executemany("INSERT INTO _bf_members (m) VALUES (%s)", numbers)
        cur.execute("SELECT m FROM _bf_members ORDER BY m + 0")
        members = [str(r[0]) for r in cur.fetchall()]
        cur.execute("DROP TEMPORARY TABLE _bf_members")
    except pymysql.MySQLError:
        return ctype
    finally:
        cur.close()
    return f"{kind}(" + ",".join("'" + m.replace("'", "''") + "'" for m in members) + ")"


def _reflect_query(db: Db, query: str) -> SourceSchema:
    from pymysql.constants import FLAG

    cur = db.raw.cursor()
    try:
        cur.execute(f"SELECT * FROM ({query}) AS _bf_src LIMIT 0")
        fields = cur._result.fields if cur._result else []
    except pymysql.MySQLError as exc:
        msg = f"the source query failed in {db.ep.describe()}: {_error_text(exc)}"
        raise SourceError(msg) from None
    finally:
        cur.close()
        db.raw.rollback()
    cols = [column_from_field(f.name, f.type_code, unsigned=bool(f.flags & FLAG.UNSIGNED),
                              binary=f.charsetnr == 63, length=f.length, decimals=f.scale,
                              nullable=not f.flags & FLAG.NOT_NULL) for f in fields]
    return SourceSchema(dialect="mysql", query=query, columns=cols)


def table_exists(db: Db, table: TableName) -> bool:
    found = db.all("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) "
                   "AND TABLE_NAME = %s", [table.schema_name, table.name])
    db.raw.rollback()
    return bool(found)


# ---------------------------------------------------------------- reading


def _select_expr(db: Db, col: ColumnInfo) -> str:
    if col.cast_text:
        return f"CAST({db.q(col.name)} AS CHAR)"
    if col.kind == "real":  # FLOAT's text form has 6 digits (1.0000001 -> '1'): send the double it holds
        return f"CAST({db.q(col.name)} AS DOUBLE)"
    return db.q(col.name)


def select_sql(db: Db, schema: SourceSchema, rng: KeyRange) -> tuple[str, list[Any]]:
    cols = ", ".join(_select_expr(db, c) for c in schema.columns)
    where, params = range_predicate(db, schema.key_columns(), rng)
    return f"SELECT {cols} FROM {schema.relation('mysql')} WHERE {where}{order_by(db, schema)}", params


def iter_rows(db: Db, schema: SourceSchema, rng: KeyRange,
              on_error: Callable[[Sequence[Any], Exception], Exception]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``rng`` in key order as canonical values, streamed (unbuffered cursor, batches of 5,000).
    ``on_error(row, exc)`` builds the error naming the row and column when a value cannot be decoded."""
    sql, params = select_sql(db, schema, rng)
    decs = [(i, d) for i, c in enumerate(schema.columns) if (d := mysql_decoder(c)) is not None]
    cur = db.raw.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(sql, params)
        while batch := cur.fetchmany(_FETCH):
            if not decs:
                yield from batch
                continue
            for row in batch:
                vals = list(row)
                try:
                    for i, d in decs:
                        if vals[i] is not None:
                            vals[i] = d(vals[i])
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise on_error(row, exc) from None
                yield tuple(vals)
    finally:
        with contextlib.suppress(pymysql.MySQLError):
            cur.close()
        with contextlib.suppress(pymysql.MySQLError):
            db.raw.rollback()


# ---------------------------------------------------------------- writing


def _escaper(col: ColumnInfo, conn: Any) -> Callable[[Any], str]:
    """Value -> SQL literal; integers skip PyMySQL's generic dispatch (the hot path)."""
    if col.kind in ("smallint", "integer", "bigint"):
        return lambda v: "NULL" if v is None else str(int(v))
    charset, mapping = conn.charset, conn.encoders
    return lambda v: escape_item(v, charset, mapping)


def _write_error(exc: pymysql.MySQLError, rng: KeyRange, names: Sequence[str], keys: Sequence[str],
                 rows: Sequence[Sequence[Any]], first_row: int) -> Exception:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    text = _error_text(exc)
    if code in _RETRYABLE or (isinstance(exc, pymysql.OperationalError) and code >= 2000):
        return RetryableError(f"range {rng.index}: the target connection failed or a lock timed out: {text}; "
                              "nothing of this range was committed, so a retry or a rerun with the same run_key "
                              "writes it whole", category="connection_lost")
    if code in (1054, 1146):
        return ConfigError(f"range {rng.index}: the target rejected the statement: {text}")
    where = ""
    at = _ROW_AT.search(text)
    if at and 0 < first_row + int(at.group(1)) <= len(rows):
        row = rows[first_row + int(at.group(1)) - 1]
        key = {k: row[names.index(k)] for k in keys if k in names}
        where = f" at the row with key {key}"
    col = _COLUMN.search(text)
    column = f" column {col.group(1)!r}:" if col else ""
    if isinstance(exc, pymysql.IntegrityError):
        return ItemError(f"range {rng.index}: the target refused the rows{where}:{column} {text}; nothing of this "
                         "range was written. Fix those rows in the source, relax the constraint, or filter them "
                         "out with query= or a transform", category="constraint")
    if code == 1406:  # data too long: strict mode refuses it, never cuts it
        return ItemError(f"range {rng.index}: a value is longer than the target column holds{where}:{column} {text}; "
                         "nothing of this range was written. Widen the target column (a created table's text key "
                         "columns share InnoDB's 3072-byte key: create the table yourself with the lengths you need) "
                         "or shorten the value in a transform.", category="conversion")
    return ItemError(f"range {rng.index}: the target rejected a value{where}:{column} {text}; nothing of this range "
                     "was written. Fix the value in the source or map it in a transform.", category="conversion")


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\\0"})
_NO_LOCAL_INFILE = frozenset({1148, 3948, 2068, 1235})  # LOCAL INFILE disabled / refused by server or client


def _tsv_field(v: Any) -> str:
    if v is None:
        return "\\N"
    if type(v) is str:
        return v.translate(_TSV_ESCAPES)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    return str(v).translate(_TSV_ESCAPES)


class _LocalInfileRefused(Exception):
    pass


def _load_data(db: Db, dest: str, tgt_cols: Sequence[ColumnInfo], rows: list[tuple[Any, ...]]) -> None:
    """LOAD DATA LOCAL INFILE the rows into ``dest`` (inside the open transaction); raise _LocalInfileRefused
    when the server will not, ValueError when the load had warnings (a value cut, a duplicate key skipped)."""
    fields, sets = [], []
    for i, c in enumerate(tgt_cols):
        if c.kind == "bytes":
            fields.append(f"@_bf{i}")
            sets.append(f"{db.q(c.name)} = UNHEX(@_bf{i})")
        else:
            fields.append(db.q(c.name))
    fd, path = tempfile.mkstemp(prefix="batchflows-", suffix=".tsv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write("\t".join([_tsv_field(v) for v in row]))
                f.write("\n")
        sql = (f"LOAD DATA LOCAL INFILE {db.raw.escape(path)} INTO TABLE {dest} CHARACTER SET utf8mb4 "
               "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
               f"({', '.join(fields)})" + (f" SET {', '.join(sets)}" if sets else ""))
        try:
            db.raw.execute(sql)
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in _NO_LOCAL_INFILE:
                raise _LocalInfileRefused from None
            raise
        if int(db.all("SHOW COUNT(*) WARNINGS")[0][0]):
            raise ValueError("LOAD DATA had warnings")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _write_load(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
                keys: Sequence[str], rows: list[tuple[Any, ...]], rng: KeyRange, mode: str,
                on_commit: OnCommit | None) -> bool:
    """The fast path; False (everything rolled back) when the INSERT path must write the range instead."""
    names = ", ".join(db.q(c.name) for c in tgt_cols)
    try:
        db.raw.begin()
        if mode == "replace":
            where, params = range_predicate(db, tgt_keys, rng)
            db.raw.execute(f"DELETE FROM {target.sql('mysql')} WHERE {where}", params)
        if mode == "upsert":
            db.raw.execute("DROP TEMPORARY TABLE IF EXISTS _bf_stage")
            db.raw.execute(f"CREATE TEMPORARY TABLE _bf_stage LIKE {target.sql('mysql')}")
            _load_data(db, "_bf_stage", tgt_cols, rows)
            db.raw.execute(f"INSERT INTO {target.sql('mysql')} ({names}) SELECT {names} FROM _bf_stage"
                           + _upsert_tail(db, [c.name for c in tgt_cols], keys))
            db.raw.execute("DROP TEMPORARY TABLE _bf_stage")
        else:
            _load_data(db, target.sql("mysql"), tgt_cols, rows)
        if on_commit is not None:
            on_commit(db, len(rows))
        db.raw.commit()
    except (_LocalInfileRefused, ValueError, pymysql.MySQLError):
        with contextlib.suppress(pymysql.MySQLError):
            db.raw.rollback()
            db.raw.execute("DROP TEMPORARY TABLE IF EXISTS _bf_stage")
        return False
    failpoint("db.after_commit")
    return True


def _upsert_tail(db: Db, names: Sequence[str], keys: Sequence[str]) -> str:
    sets = [f"{db.q(n)} = VALUES({db.q(n)})" for n in names if n not in keys] or [f"{db.q(keys[0])} = {db.q(keys[0])}"]
    return " ON DUPLICATE KEY UPDATE " + ", ".join(sets)


def write_mysql(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
                keys: Sequence[str], rows: list[tuple[Any, ...]], rng: KeyRange, mode: str,
                on_commit: OnCommit | None = None, *, fast: bool = True) -> int:
    """Write converted rows in ONE transaction: ``replace`` deletes the range first, ``upsert`` updates rows
    whose key exists (``ON DUPLICATE KEY UPDATE``), ``append`` inserts; the ledger row goes in before COMMIT.
    ``LOAD DATA LOCAL INFILE`` first (``fast``), multi-row INSERTs when it is refused or not clean."""
    if fast and rows and _write_load(db, target, tgt_cols, tgt_keys, keys, rows, rng, mode, on_commit):
        return len(rows)
    return _write_inserts(db, target, tgt_cols, tgt_keys, keys, rows, rng, mode, on_commit)


def _write_inserts(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
                   keys: Sequence[str], rows: list[tuple[Any, ...]], rng: KeyRange, mode: str,
                   on_commit: OnCommit | None = None) -> int:
    names = [c.name for c in tgt_cols]
    head = f"INSERT INTO {target.sql('mysql')} ({', '.join(db.q(n) for n in names)}) VALUES "
    tail = _upsert_tail(db, names, keys) if mode == "upsert" else ""
    escapers = [_escaper(c, db.raw) for c in tgt_cols]
    first = 0
    cur = db.raw.cursor()
    try:
        db.raw.begin()
        if mode == "replace":
            where, params = range_predicate(db, tgt_keys, rng)
            cur.execute(f"DELETE FROM {target.sql('mysql')} WHERE {where}", params)
        parts: list[str] = []
        size = 0
        for i, row in enumerate(rows):
            lit = "(" + ",".join([e(v) for e, v in zip(escapers, row, strict=True)]) + ")"
            parts.append(lit)
            size += len(lit) + 1
            if size >= _STATEMENT_BYTES:
                cur.execute(head + ",".join(parts) + tail)
                parts, size, first = [], 0, i + 1
        if parts:
            cur.execute(head + ",".join(parts) + tail)
        if on_commit is not None:
            on_commit(db, len(rows))
        db.raw.commit()
    except pymysql.MySQLError as exc:
        with contextlib.suppress(pymysql.MySQLError):
            db.raw.rollback()
        raise _write_error(exc, rng, names, keys, rows, first) from None
    finally:
        with contextlib.suppress(pymysql.MySQLError):
            cur.close()
    failpoint("db.after_commit")
    return len(rows)


def check_upsert_target(tgt_schema: SourceSchema, keys: Sequence[str]) -> None:
    """An upsert without a unique key on the key columns would append (MySQL's ON DUPLICATE KEY, and a
    PostgreSQL range copied straight in because it was empty) or fail later: refuse it up front."""
    if not (sorted(keys) == sorted(tgt_schema.primary_key) or sorted(keys) in map(sorted, tgt_schema.unique_keys)):
        msg = (f"{tgt_schema.label()}: upsert needs a primary key or unique index on {list(keys)} in the target "
               f"(it has primary key {tgt_schema.primary_key or 'none'}); add one or use mode='append'/'replace'")
        raise ConfigError(msg)


__all__ = ["check_upsert_target", "is_mariadb", "iter_rows", "reflect_mysql", "select_sql", "table_exists",
           "write_mysql"]
