"""Read one keyset range and write it to the target in one transaction (COPY fast path, upsert, replace).

Why one transaction per range: a killed or retried range then leaves nothing half-written; and the
range's ledger row (tasks.db.ledger) commits in the same transaction, so a range committed by an
earlier attempt is never written again, whatever the mode (``upsert`` overwrites, ``replace`` deletes
the range first, ``append`` inserts). PostgreSQL -> PostgreSQL without a
transform streams COPY bytes straight from source to target (binary when the column types are identical,
text otherwise); MySQL/MariaDB and SQLite -> PostgreSQL without a transform read the range as Arrow columns
and COPY them as CSV (tasks.db.columnar), falling back to the row path for a range it cannot write exactly;
every other combination decodes rows into canonical Python values (tasks.db.typemap).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import pymysql
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.datetime import TimeBinaryLoader
from pydantic import BaseModel

from tasks.core import ConfigError, FatalError, ItemError, RetryableError, SourceError, failpoint, redact_text
from tasks.db import columnar
from tasks.db.conn import Db, TableName, UrlLike, parse_table_name
from tasks.db.ledger import LedgerEntry, committed, record_range
from tasks.db.mysql import check_upsert_target, write_mysql
from tasks.db.mysql import iter_rows as _mysql_rows
from tasks.db.mysql_types import mysql_encoder
from tasks.db.physical import require_key
from tasks.db.refusals import refuse_array_bounds, undecodable
from tasks.db.relay import relay
from tasks.db.schema import KeyRange, SourceSchema, order_by, range_predicate, reflect
from tasks.db.session import connect
from tasks.db.typemap import ColumnInfo
from tasks.db.unchanged import identical_types, unchanged_rows
from tasks.db.values import (
    _COERCE as _COERCE_BY_KIND,
)
from tasks.db.values import (
    END_OF_DAY,
    coerce,
    frame_value,
    pg_decoder,
    pg_encoder,
    polars_dtype,
    sqlite_decoder,
    sqlite_encoder,
    unstorable,
)

if TYPE_CHECKING:
    import polars as pl

Mode = Literal["append", "upsert", "replace"]
CopyFormat = Literal["auto", "binary", "text", "rows"]
Transform = Callable[["pl.DataFrame"], "pl.DataFrame"]
MODES: tuple[str, ...] = ("append", "upsert", "replace")
_TEXT_OID = 25
_FETCH = 5_000
_log = logging.getLogger(__name__)


class RangeResult(BaseModel):
    """What one range did: rows read and written and the path taken; ``recovered`` when an earlier attempt
    had committed it (the counts are the ledger's, nothing was written now)."""

    index: int
    rows_read: int
    rows_written: int
    seconds: float
    path: str
    recovered: bool = False


OnCommit = Callable[[Db, int], None]  # (target connection, rows written) inside the open transaction


# ---------------------------------------------------------------- reading


def _select(db: Db, schema: SourceSchema, rng: KeyRange) -> tuple[str, list[Any]]:
    cols = ", ".join(f"{db.q(c.name)}::text" if c.cast_text else db.q(c.name) for c in schema.columns)
    where, params = range_predicate(db, schema.key_columns(), rng)
    rel = rng.part if rng.part and db.dialect == "postgresql" else schema.relation(db.dialect)
    return f"SELECT {cols} FROM {rel} WHERE {where}{order_by(db, schema)}", params


# Types psycopg has no binary dumper or loader for, whose binary wire format is text's (their recv/send
# functions read and write the string's bytes, the server applies the type's length): char(n) is bpchar.
_AS_TEXT_OIDS = frozenset({1042, 19})  # bpchar, name


def _pg_oids(cols: Sequence[ColumnInfo]) -> list[int]:
    return [_TEXT_OID if c.cast_text or c.pg_oid is None or c.pg_oid in _AS_TEXT_OIDS else c.pg_oid for c in cols]


_TIME_OID = 1083
_END_OF_DAY_US = (86_400_000_000).to_bytes(8, "big")  # time '24:00:00' on PostgreSQL's binary wire


class _TimeOrEndOfDay(Loader):
    """PostgreSQL's binary ``time``, and '24:00:00' (a valid time, a day's end) as :data:`END_OF_DAY`, which
    psycopg's own loader refuses ("time not supported by Python"). A Python loader costs ~0.7 us a value more
    than psycopg's C one, so a range takes it only when that one refused a value (:func:`read_with_times`)."""

    format = Format.BINARY

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._time = TimeBinaryLoader(oid, context)

    def load(self, data: Any) -> Any:
        return END_OF_DAY if data == _END_OF_DAY_US else self._time.load(data)


def has_times(schema: SourceSchema) -> bool:
    """Whether a PostgreSQL source's rows hold ``time`` values psycopg loads (see :class:`_TimeOrEndOfDay`)."""
    return any(c.kind == "time" and not c.cast_text for c in schema.columns)


def read_with_times(read: Callable[[bool], Any], schema: SourceSchema) -> Any:
    """``read(False)``; ``read(True)`` (times loaded by :class:`_TimeOrEndOfDay`) when psycopg refused a value
    and the rows hold times: a '24:00:00' costs one more read of its range, the others none."""
    try:
        return read(False)
    except psycopg.DataError:
        if not has_times(schema):
            raise
    return read(True)


def iter_rows(db: Db, schema: SourceSchema, rng: KeyRange, *, end_of_day: bool = False) -> Iterator[tuple[Any, ...]]:
    """Rows of ``rng`` in key order as canonical Python values (PostgreSQL: binary COPY; SQLite, MySQL: cursor).
    ``end_of_day``: PostgreSQL times through :class:`_TimeOrEndOfDay` (see :func:`read_with_times`)."""
    if db.dialect == "mysql":
        yield from _mysql_rows(db, schema, rng, lambda row, exc: _mysql_decode_error(schema, rng, row, exc))
        return
    sql, params = _select(db, schema, rng)
    if db.dialect == "postgresql":
        decoders = [pg_decoder(c) for c in schema.columns]
        fix = [(i, f) for i, f in enumerate(decoders) if f is not None]
        cur = db.raw.cursor()
        if end_of_day:
            cur.adapters.register_loader(_TIME_OID, _TimeOrEndOfDay)
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy:
            copy.set_types(_pg_oids(schema.columns))
            for row in copy.rows():
                if fix:
                    row = list(row)
                    for i, f in fix:
                        row[i] = f(row[i])
                    row = tuple(row)
                yield row
        return
    decs = [sqlite_decoder(c) for c in schema.columns]
    fast = [_sqlite_column_decoder(c) for c in schema.columns]
    cur = db.raw.execute(sql, params)
    while batch := cur.fetchmany(_FETCH):
        try:
            yield from _decode_columns(batch, fast)
        except (ValueError, TypeError, ArithmeticError):
            for row in batch:  # find the row and column that failed, for the message
                try:
                    tuple(d(v) for d, v in zip(decs, row, strict=True))
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise _decode_error(schema, rng, row, decs, exc) from None
            raise


# SQLite storage classes that already are the canonical value of these kinds (no per-value call needed)
_NATIVE: dict[str, tuple[type, ...]] = {
    "smallint": (int,), "integer": (int,), "bigint": (int,), "double": (float,), "text": (str,),
    "varchar": (str,), "char": (str,),
}


def _sqlite_column_decoder(col: ColumnInfo) -> Callable[[list[Any]], list[Any]]:
    """A whole-column decoder: columns whose stored values already have the canonical type pass
    through after one type scan; others map their decoder over the non-NULL values."""
    one = sqlite_decoder(col)
    native = _NATIVE.get(col.kind)
    if col.kind != "array" and col.kind not in ("json", "jsonb", "text", "varchar", "char") and native is None:
        conv = _COERCE_BY_KIND.get(col.kind)
        if conv is not None:
            one = conv

    def decode(values: list[Any]) -> list[Any]:
        if native is not None and all(v is None or type(v) in native for v in values):
            return values
        return [None if v is None else one(v) for v in values]

    return decode


def _decode_columns(batch: list[tuple[Any, ...]], fast: Sequence[Callable[[list[Any]], list[Any]]]
                    ) -> list[tuple[Any, ...]]:
    cols = [f(list(c)) for f, c in zip(fast, zip(*batch, strict=True), strict=True)]
    return list(zip(*cols, strict=True))


def _decode_error(schema: SourceSchema, rng: KeyRange, row: Sequence[Any], decs: Sequence[Callable[[Any], Any]],
                  exc: Exception) -> ItemError:
    names = schema.names
    for name, dec, value in zip(names, decs, row, strict=True):
        try:
            dec(value)
        except (ValueError, TypeError, ArithmeticError) as err:
            col = schema.column(name)
            return _row_error(rng, names, schema.key, row, name, f"{value!r} is not a valid {col.type_label()}: {err}")
    return _row_error(rng, names, schema.key, row, "?", str(exc))


def _mysql_decode_error(schema: SourceSchema, rng: KeyRange, row: Sequence[Any], exc: Exception) -> ItemError:
    from tasks.db.mysql_types import mysql_decoder

    for col, value in zip(schema.columns, row, strict=True):
        dec = mysql_decoder(col)
        try:
            if dec is not None and value is not None:
                dec(value)
        except (ValueError, TypeError, ArithmeticError) as err:
            return _row_error(rng, schema.names, schema.key, row, col.name,
                              f"{value!r} is not a valid {col.type_label()}: {err}")
    return _row_error(rng, schema.names, schema.key, row, "?", str(exc))


def _to_frame(cols: Sequence[ColumnInfo], rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    data = {c.name: [frame_value(c, r[i]) for r in rows] for i, c in enumerate(cols)}
    import polars as pl  # only a transform needs it: a run without one does not import polars

    return pl.DataFrame(data, schema={c.name: polars_dtype(c) for c in cols})


def read_range(source_url: UrlLike, table: str | None, rng: KeyRange, *, query: str | None = None,
               key: str | Sequence[str] | None = None) -> pl.DataFrame:
    """The rows of one range as a polars DataFrame, exactly as a transform receives them (JSON, uuids and
    arrays as text; numeric as Decimal; timestamptz in UTC)."""
    schema = reflect(source_url, table, query=query, key=key)
    with connect(source_url, "source") as db:
        rows = list(iter_rows(db, schema, rng))
    return _to_frame(schema.columns, rows)


def resolve_transform(transform: Transform | str | None) -> Transform | None:
    """A callable, or ``"pkg.mod:fn"`` imported here (so deployments can pass it as a string)."""
    if transform is None or callable(transform):
        return transform
    mod, _, attr = str(transform).partition(":")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        msg = f"transform {transform!r} cannot be imported ({exc}); use 'package.module:function'"
        raise ConfigError(msg) from None
    if not callable(fn):
        msg = f"transform {transform!r} is not callable"
        raise ConfigError(msg)
    return fn


# ---------------------------------------------------------------- converting


def _row_error(rng: KeyRange, names: Sequence[str], keys: Sequence[str], row: Sequence[Any], column: str,
               reason: str) -> ItemError:
    key_val = {k: row[names.index(k)] for k in keys if k in names}
    which = f"with key {key_val}" if keys else f"{dict(zip(names[:3], row[:3], strict=False))}"  # no key: its first values
    msg = (f"range {rng.index}: row {which} cannot be written: column {column!r}: "
           f"{redact_text(reason)}. Fix the value in the source or map it in a transform.")
    return ItemError(msg, category="conversion")


def _convert(rows: list[tuple[Any, ...]], names: Sequence[str], funcs: Sequence[Callable[[Any], Any] | None],
             keys: Sequence[str], rng: KeyRange) -> list[tuple[Any, ...]]:
    active = [(i, f) for i, f in enumerate(funcs) if f is not None]
    if not active:
        return rows
    out = []
    for row in rows:
        vals = list(row)
        for i, f in active:
            try:
                vals[i] = f(vals[i])
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise _row_error(rng, names, keys, row, names[i], f"{vals[i]!r}: {exc}") from None
        out.append(tuple(vals))
    return out


def _converters(src: Sequence[ColumnInfo] | None, tgt: Sequence[ColumnInfo], dialect: str
                ) -> list[Callable[[Any], Any] | None]:
    """Per column: canonical source value (or DataFrame value when ``src`` is None) -> target storage."""
    funcs: list[Callable[[Any], Any] | None] = []
    for i, t in enumerate(tgt):
        s = src[i] if src is not None else None
        same = s is not None and s.kind == t.kind and s.element == t.element and not s.cast_text
        conv = None if same else (lambda v, t=t: None if v is None else coerce(t, v))
        enc = sqlite_encoder(t) if dialect == "sqlite" else mysql_encoder(t) if dialect == "mysql" else pg_encoder(t)
        if conv and enc:
            funcs.append(lambda v, c=conv, e=enc: e(c(v)))
        elif dialect == "sqlite" and not conv and t.kind in ("smallint", "integer", "bigint", "real", "double",
                                                            "text", "varchar", "char", "bytes"):
            funcs.append(None)
        else:
            funcs.append(conv or enc)
    return funcs


# ---------------------------------------------------------------- writing


def _stage_or_target(db: Db, target: TableName, mode: Mode, tgt_keys: Sequence[ColumnInfo], rng: KeyRange
                     ) -> tuple[str, bool]:
    """Where a range's COPY goes, and whether that is the staging table an upsert then merges from.

    An upsert into a key range the target holds no row of (a first load, the default mode) cannot
    conflict: it is COPYed straight into the target, without the staging table and ``ON CONFLICT`` (which
    cost 2x the COPY, measured). Should another writer insert keys of the range meanwhile, the COPY fails
    with a unique violation, nothing is written, and the retry finds the range not empty (see
    :func:`_direct_conflict`)."""
    if mode != "upsert" or db.dialect != "postgresql":
        return target.sql(db.dialect), False
    where, params = range_predicate(db, tgt_keys, rng.model_copy(update={"window": None}))
    if not db.all(f"SELECT 1 FROM {target.sql('postgresql')} WHERE {where} LIMIT 1", params):
        return target.sql(db.dialect), False
    db.raw.execute(f"CREATE TEMP TABLE _bf_stage (LIKE {target.sql('postgresql')} INCLUDING DEFAULTS) ON COMMIT DROP")
    return "_bf_stage", True


def _direct_conflict(exc: Exception, rng: KeyRange, mode: Mode, staged: bool) -> RetryableError | None:
    """A unique violation of an upsert COPYed straight into a range that was empty: someone else wrote keys
    of the range meanwhile. Retryable: nothing was written, and the retry merges (the range is not empty)."""
    if mode == "upsert" and not staged and isinstance(exc, psycopg.errors.UniqueViolation):
        return RetryableError(f"range {rng.index}: keys of this range were inserted by another writer while it "
                              "was copied; nothing was written, the retry upserts it", category="concurrent_write")
    return None


def _upsert_sql(db: Db, target: TableName, names: Sequence[str], keys: Sequence[str], source: str) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE``; in PostgreSQL only rows that differ byte for byte from the
    row they would replace are updated (``*=``, record image equality of the whole rows: ``1.0`` and ``1.00``
    differ, NULL equals NULL, json compares as its text; a target column the source lacks holds its default
    in ``excluded``, so such a row is always updated, as before). A row already there as the source has it
    is left alone instead of rewritten with its index entries (an upsert over an existing copy)."""
    cols = ", ".join(db.q(n) for n in names)
    sets = ", ".join(f"{db.q(n)} = excluded.{db.q(n)}" for n in names if n not in keys)
    action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
    conflict = ", ".join(db.q(k) for k in keys)
    into = target.sql(db.dialect)
    if db.dialect == "postgresql" and sets:
        into += " AS _bf_t"
        action += " WHERE NOT (_bf_t *= excluded)"
    return f"INSERT INTO {into} ({cols}) {source} ON CONFLICT ({conflict}) {action}"


def _merge_staged(db: Db, target: TableName, names: Sequence[str], tgt_keys: Sequence[ColumnInfo],
                  rng: KeyRange) -> None:
    """Upsert the staged range into the target: only the staged rows that are new, or differ byte for byte
    from the target's row (``*=``), go through ``INSERT ... ON CONFLICT``. The target's rows of the range are
    read once (a hash join on the key) instead of each staged row being looked up, locked and compared there:
    an upsert over an existing copy writes nothing for its unchanged rows (0.22 s instead of 0.79 s for a
    100k-row range over an identical copy, measured; ON CONFLICT alone with the same filter 0.37 s).

    Not for an incremental run's range (its staged rows are the changed few of a wide key range, which the
    join would read whole) nor text keys compared as bytes (``COLLATE "C"``, which the key's index may not
    serve): there each staged row is looked up by ON CONFLICT, with the same filter."""
    cols = ", ".join(db.q(n) for n in names)
    keys = [k.name for k in tgt_keys]
    if rng.window is not None or any(k.collate_c for k in tgt_keys):
        db.raw.execute(_upsert_sql(db, target, names, keys, f"SELECT {cols} FROM _bf_stage"))
        return
    where, params = range_predicate(db, tgt_keys, rng.model_copy(update={"window": None}))
    on = " AND ".join(f"_bf_old.{db.q(k.name)} = _bf_new.{db.q(k.name)}" for k in tgt_keys)
    source = (f"SELECT _bf_new.* FROM (SELECT {cols} FROM _bf_stage) AS _bf_new LEFT JOIN (SELECT {cols} FROM "
              f"{target.sql('postgresql')} WHERE {where}) AS _bf_old ON {on} "
              f"WHERE _bf_old.{db.q(tgt_keys[0].name)} IS NULL OR NOT (_bf_old *= _bf_new)")
    db.raw.execute(_upsert_sql(db, target, names, keys, source), params)


def _prepare(db: Db, target: TableName, tgt_keys: Sequence[ColumnInfo], rng: KeyRange, mode: Mode) -> None:
    """Run the mode's first step inside the open transaction (replace: delete the range's rows)."""
    if mode == "replace":
        where, params = range_predicate(db, tgt_keys, rng)
        db.raw.execute(f"DELETE FROM {target.sql(db.dialect)} WHERE {where}", params)


def _pg_error(exc: psycopg.Error, rng: KeyRange, names: Sequence[str], keys: Sequence[str],
              rows: list[tuple[Any, ...]] | None) -> Exception:
    text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if isinstance(exc, psycopg.errors.InvalidColumnReference | psycopg.errors.UndefinedColumn):
        return ConfigError(f"range {rng.index}: the target rejected the statement: {text}; upsert needs a primary "
                           f"key or unique index on {list(keys)} in the target")
    if isinstance(exc, psycopg.ProgrammingError) and re.search(r"cannot find a (dumper|loader)", text):
        return FatalError(f"range {rng.index}: batchflows cannot encode a column type for PostgreSQL's binary COPY "
                          f"({text}): a limitation of batchflows with that type, not a problem of the target or of "
                          "the data, and every range would fail the same way; please report the type")
    if isinstance(exc, psycopg.errors.CardinalityViolation):
        return ItemError(f"range {rng.index}: key {list(keys)} is not unique in the source rows of this range "
                         f"({text}); choose a unique key", category="bad_key")
    ctx = (exc.diag.context or "") if hasattr(exc, "diag") else ""
    line = re.search(r"line (\d+)", ctx)
    col = re.search(r"column (\w+)", ctx)
    if isinstance(exc, psycopg.IntegrityError):
        where = ""
        if rows is not None and line and int(line.group(1)) <= len(rows):
            row = rows[int(line.group(1)) - 1]
            where = f" at the row with key { {k: row[names.index(k)] for k in keys if k in names} }"
        constraint = exc.diag.constraint_name or "?"
        return ItemError(
            f"range {rng.index}: the target's constraint {constraint!r} refused the rows{where}: {text}; nothing of "
            "this range was written. Fix those rows in the source, relax the constraint, or filter them out with "
            "query= or a transform", category="constraint")
    if isinstance(exc, psycopg.OperationalError):
        return RetryableError(f"range {rng.index}: the target connection failed: {text}; nothing of this range was "
                              "committed, so a retry or a rerun with the same run_key writes it whole",
                              category="connection_lost")
    if rows is not None and line and int(line.group(1)) <= len(rows):
        row = rows[int(line.group(1)) - 1]
        return _row_error(rng, names, keys, row, col.group(1) if col else "?", text)
    return ItemError(f"range {rng.index}: the target rejected the rows: {text}", category="write_error")


def _copy_in(db: Db, target: TableName, dest: str, staged: bool, names: Sequence[str], tgt_keys: Sequence[ColumnInfo],
             rng: KeyRange, fmt: str, feed: Callable[[Any], None], on_commit: OnCommit | None) -> int:
    """One ``COPY dest FROM STDIN (FORMAT fmt)`` fed by ``feed(copy)``, the merge when ``dest`` is the staging
    table, the ledger row, COMMIT; returns the rows written. psycopg errors propagate (caller rolls back)."""
    cols = ", ".join(db.q(n) for n in names)
    cur = db.raw.cursor()
    with cur.copy(f"COPY {dest} ({cols}) FROM STDIN (FORMAT {fmt})") as copy:
        feed(copy)
    written = cur.rowcount  # an upsert's rows: each one is in the target as the source has it (see _upsert_sql)
    if staged:
        _merge_staged(db, target, names, tgt_keys, rng)
    if on_commit is not None:
        on_commit(db, written)
    db.raw.commit()
    failpoint("db.after_commit")
    return written


def _write_pg(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
              keys: Sequence[str], rows: list[tuple[Any, ...]], rng: KeyRange, mode: Mode,
              on_commit: OnCommit | None = None) -> int:
    names = [c.name for c in tgt_cols]
    oids = _pg_oids(tgt_cols)
    ends = _end_of_day_columns(tgt_cols, rows)
    if ends:  # psycopg's binary time dumper has no '24:00:00': those columns go as text, parsed by the target
        rows = [tuple(v.isoformat() if i in ends and isinstance(v, dt.time) else v for i, v in enumerate(r))
                for r in rows]
        oids = [_TEXT_OID if i in ends else oid for i, oid in enumerate(oids)]
    fmt = "TEXT" if ends or any(c.cast_text for c in tgt_cols) else "BINARY"

    def feed(copy: Any) -> None:
        copy.set_types(oids)
        for row in rows:
            copy.write_row(row)

    staged = False
    try:
        _prepare(db, target, tgt_keys, rng, mode)
        dest, staged = _stage_or_target(db, target, mode, tgt_keys, rng)
        return _copy_in(db, target, dest, staged, names, tgt_keys, rng, fmt, feed, on_commit)
    except psycopg.Error as exc:
        _rollback_quietly(db)
        raise (_direct_conflict(exc, rng, mode, staged) or _pg_error(exc, rng, names, keys, rows)) from None


def _end_of_day_columns(tgt_cols: Sequence[ColumnInfo], rows: list[tuple[Any, ...]]) -> frozenset[int]:
    """The time columns holding :data:`END_OF_DAY` (a text among ``datetime.time`` values) in these rows."""
    times = [i for i, c in enumerate(tgt_cols) if c.kind == "time" and not c.cast_text]
    return frozenset(i for i in times if str in set(map(type, map(itemgetter(i), rows))))  # C loops, no Python per row


class _StreamBroke(Exception):
    """The columnar path's source stream failed midway through a COPY."""


def _write_pg_csv(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
                  keys: Sequence[str], blocks: Iterator[bytes], rng: KeyRange, mode: Mode,
                  on_commit: OnCommit | None) -> int | None:
    """COPY the columnar path's CSV blocks (tasks.db.columnar) in one transaction; None (rolled back) when
    the source's stream broke or the target refused a value or a key: the row path then writes the range, or
    names the row and column."""
    names = [c.name for c in tgt_cols]

    def feed(copy: Any) -> None:
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            except BaseException as exc:  # connectorx (a Rust panic is a BaseException) or Arrow: nothing commits
                if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                    raise
                raise _StreamBroke(exc) from exc
            copy.write(block)

    try:
        _prepare(db, target, tgt_keys, rng, mode)
        dest, staged = _stage_or_target(db, target, mode, tgt_keys, rng)
        return _copy_in(db, target, dest, staged, names, tgt_keys, rng, "CSV", feed, on_commit)
    except (psycopg.DataError, psycopg.IntegrityError, _StreamBroke) as exc:
        _rollback_quietly(db)
        _log.debug("range %s: the columnar copy was not used (%s); writing rows", rng.index,
                   redact_text(str(exc).strip())[:300])
        return None
    except psycopg.Error as exc:
        _rollback_quietly(db)
        raise _pg_error(exc, rng, names, keys, None) from None


def _rollback_quietly(*dbs: Db) -> None:
    """Roll back after a failed statement; a connection that is gone (killed backend) has nothing to roll
    back, and its rollback error must not hide the error that says what happened."""
    for db in dbs:
        with contextlib.suppress(psycopg.Error):
            db.raw.rollback()


def _write_sqlite(db: Db, target: TableName, tgt_cols: Sequence[ColumnInfo], tgt_keys: Sequence[ColumnInfo],
                  keys: Sequence[str], rows: list[tuple[Any, ...]], rng: KeyRange, mode: Mode,
                  on_commit: OnCommit | None = None) -> int:
    names = [c.name for c in tgt_cols]
    marks = ", ".join("?" * len(names))
    if mode == "upsert":
        sql = _upsert_sql(db, target, names, keys, f"VALUES ({marks})")
    else:
        sql = f"INSERT INTO {target.sql('sqlite')} ({', '.join(db.q(n) for n in names)}) VALUES ({marks})"
    db.raw.execute("BEGIN IMMEDIATE")
    try:
        _prepare(db, target, tgt_keys, rng, mode)
        db.raw.executemany(sql, rows)
        if on_commit is not None:
            on_commit(db, len(rows))
        db.raw.execute("COMMIT")
    except sqlite3.Error as exc:
        db.raw.execute("ROLLBACK")
        if "ON CONFLICT clause does not match" in str(exc):
            msg = f"range {rng.index}: upsert needs a primary key or unique index on {list(keys)} in the target ({exc})"
            raise ConfigError(msg) from None
        msg = f"range {rng.index}: the target rejected the rows: {exc}"
        raise ItemError(msg, category="write_error") from None
    failpoint("db.after_commit")
    return len(rows)


def _raw_pg_copy(src: Db, tgt: Db, schema: SourceSchema, target: TableName, tgt_cols: Sequence[ColumnInfo],
                 rng: KeyRange, mode: Mode, fmt: str, on_commit: OnCommit | None = None) -> tuple[int, str]:
    """Stream COPY bytes source -> target without decoding (the physical ceiling); (rows, path). An upsert
    range the target holds already as the source has it writes nothing (path ``unchanged``, see
    tasks.db.unchanged)."""
    tgt_keys = [next(c for c in tgt_cols if c.name == k) for k in schema.key]
    names = [c.name for c in schema.columns]
    sql, params = _select(src, schema, rng)
    _prepare(tgt, target, tgt_keys, rng, mode)
    dest, staged = _stage_or_target(tgt, target, mode, tgt_keys, rng)
    held = unchanged_rows(src, tgt, schema, target, list(tgt_cols), tgt_keys, rng, same_types=fmt == "BINARY") \
        if staged and rng.window is None else None
    if held:  # the target holds the range as the source has it: only the ledger row commits
        written, path = held, "unchanged"
    else:
        out = tgt.raw.cursor()
        try:
            with src.raw.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT {fmt})", params), \
                    out.copy(f"COPY {dest} ({', '.join(tgt.q(n) for n in names)}) FROM STDIN (FORMAT {fmt})") as cout:
                relay(src, cout.write)
        except psycopg.Error as exc:
            conflict = _direct_conflict(exc, rng, mode, staged)
            if conflict is None:
                raise
            _rollback_quietly(tgt, src)
            raise conflict from None
        # an upsert's rows: each one is in the target as the source has it (see _upsert_sql)
        written, path = out.rowcount, f"copy-{fmt.lower()}"
        if staged:
            _merge_staged(tgt, target, names, tgt_keys, rng)
    if on_commit is not None:
        on_commit(tgt, written)
    tgt.raw.commit()
    failpoint("db.after_commit")
    src.raw.rollback()
    return written, path


def copy_range(source_url: UrlLike, target_url: UrlLike, table: str | None, rng: KeyRange, *,
               target_table: str | None = None, query: str | None = None, key: str | Sequence[str] | None = None,
               mode: Mode = "upsert", transform: Transform | str | None = None,
               copy_format: CopyFormat = "auto", source_schema: SourceSchema | None = None,
               target_schema: SourceSchema | None = None, ledger: LedgerEntry | None = None) -> RangeResult:
    """Copy one keyset range from source to target in ONE target transaction; return what happened.

    ``transform`` gets the range as a polars DataFrame (see :func:`read_range`) and returns the rows
    to write; its column names must exist in the target. A value that does not fit its target column
    raises ItemError naming the row key and column (the other ranges are unaffected). ``copy_format``
    only matters for PostgreSQL -> PostgreSQL without transform ("auto": binary when column types are
    identical, else text; "rows" forces the decoding path). ``source_schema``/``target_schema`` (from
    :func:`reflect`, JSON-able) skip the per-range reflection when the caller planned once. ``ledger``
    (see tasks.db.ledger) makes the range exactly once: a range already in the ledger writes nothing and
    returns the recorded counts; otherwise its ledger row commits with its rows.
    """
    if mode not in MODES:
        msg = f"mode {mode!r} is not one of {list(MODES)}"
        raise ConfigError(msg)
    started = time.perf_counter()
    fn = resolve_transform(transform)
    schema = source_schema or reflect(source_url, table, query=query, key=key)
    require_key(schema, mode)
    tname = parse_table_name(target_table or table or "")
    tgt_schema = target_schema or reflect(target_url, tname, key=schema.key, role="target")
    out_names = schema.names
    if mode == "upsert":
        check_upsert_target(tgt_schema, schema.key)
    with connect(source_url, "source") as src, connect(target_url, "target", write=True) as tgt:
        prior = committed(tgt, ledger) if ledger is not None else None
        if prior is not None:
            if tgt.dialect == "postgresql":
                _rollback_quietly(tgt)
            return RangeResult(index=rng.index, rows_read=prior[0], rows_written=prior[1],
                               seconds=time.perf_counter() - started, path="ledger", recovered=True)
        read: list[int] = [0]

        def on_commit(db: Db, written: int) -> None:
            if ledger is not None:
                record_range(db, ledger, rng.index, read[0] if read[0] else written, written)

        if fn is None and src.dialect == tgt.dialect == "postgresql" and copy_format != "rows":
            tgt_cols = [_target_column(tgt_schema, n) for n in out_names]
            same = identical_types(schema.columns, tgt_cols)
            fmt = "BINARY" if (copy_format == "binary" or (copy_format == "auto" and same)) else "TEXT"
            try:
                written, path = _raw_pg_copy(src, tgt, schema, tname, tgt_cols, rng, mode, fmt, on_commit)
                return RangeResult(index=rng.index, rows_read=written, rows_written=written,
                                   seconds=time.perf_counter() - started, path=path)
            except psycopg.errors.DataError:
                _rollback_quietly(tgt, src)
            except psycopg.Error as exc:
                _rollback_quietly(tgt, src)
                raise _pg_error(exc, rng, out_names, schema.key, None) from None
        if fn is None and copy_format != "rows" and tgt.dialect == "postgresql":
            done = _columnar(src, tgt, schema, tgt_schema, tname, rng, mode, on_commit, read)
            if done is not None:
                return RangeResult(index=rng.index, rows_read=read[0], rows_written=done,
                                   seconds=time.perf_counter() - started, path="columnar-csv")
        refuse_array_bounds(src, schema, rng)  # psycopg's lists start at 1: '[0:2]={5,6,7}' would be renumbered
        rows = _read_source(src, schema, rng)
        n_read = read[0] = len(rows)
        src_cols: list[ColumnInfo] | None = list(schema.columns)
        if fn is not None:
            _refuse_end_of_day(schema, rows, rng)
            frame = _apply(fn, _to_frame(schema.columns, rows), rng)
            _refuse_duplicate_keys(frame, schema.key, rng, fn)
            out_names, rows, src_cols = list(frame.columns), list(frame.iter_rows()), None
        tgt_cols = [_target_column(tgt_schema, n) for n in out_names]
        rows = _convert(rows, out_names, _converters(src_cols, tgt_cols, tgt.dialect), schema.key, rng)
        tgt_keys = [_target_column(tgt_schema, k) for k in schema.key]
        if (bad := unstorable(tgt.dialect, tgt_cols, rows)) is not None:  # NaN into SQLite, -0.0 into MySQL, ...
            raise _row_error(rng, out_names, schema.key, rows[bad[0]], out_names[bad[1]], bad[2])
        writer = _write_pg if tgt.dialect == "postgresql" else _write_sqlite
        if tgt.dialect == "mysql":
            writer = write_mysql  # type: ignore[assignment]
        written = writer(tgt, tname, tgt_cols, tgt_keys, schema.key, rows, rng, mode, on_commit)
    return RangeResult(index=rng.index, rows_read=n_read, rows_written=written,
                       seconds=time.perf_counter() - started, path="rows")


def _read_source(src: Db, schema: SourceSchema, rng: KeyRange) -> list[tuple[Any, ...]]:
    """The range's rows as canonical values (the row path), read once (twice for a time '24:00:00')."""
    def read(end_of_day: bool) -> list[tuple[Any, ...]]:
        if end_of_day:
            _rollback_quietly(src)
        return list(iter_rows(src, schema, rng, end_of_day=end_of_day))

    try:
        rows: list[tuple[Any, ...]] = read_with_times(read, schema)
    except (psycopg.Error, pymysql.MySQLError) as exc:
        if isinstance(exc, psycopg.DataError) and (err := undecodable(src, schema, rng)) is not None:
            raise err from None
        msg = f"range {rng.index}: reading the source failed: {redact_text(str(exc).strip())}"
        raise SourceError(msg) from None
    if src.dialect == "postgresql":
        src.raw.rollback()
    return rows


def _refuse_end_of_day(schema: SourceSchema, rows: list[tuple[Any, ...]], rng: KeyRange) -> None:
    """A transform gets polars values, and polars has no time '24:00:00': its range is refused, naming the row."""
    for i, col in enumerate(schema.columns):
        if col.kind == "time":
            row = next((r for r in rows if isinstance(r[i], str)), None)
            if row is not None:
                raise _row_error(rng, schema.names, schema.key, row, col.name,
                                 f"time {row[i]!r} (the end of a day) has no polars Time value, so a transform "
                                 "cannot receive it (a query= selecting the column as text can)")


def _columnar(src: Db, tgt: Db, schema: SourceSchema, tgt_schema: SourceSchema, target: TableName, rng: KeyRange,
              mode: Mode, on_commit: OnCommit, read: list[int]) -> int | None:
    """The columnar fast path (tasks.db.columnar); None when the range must take the row path instead."""
    tgt_cols = [_target_column(tgt_schema, n) for n in schema.names]
    if not columnar.eligible(src, schema, tgt_cols):
        return None
    try:
        blocks = columnar.csv_batches(src, schema, rng, read)
    except Exception as exc:  # connectorx, Arrow, a JSON text: the row path reads the range and names a bad value
        _log.debug("range %s: columnar read not used (%s); reading rows", rng.index, redact_text(str(exc))[:300])
        return None
    tgt_keys = [_target_column(tgt_schema, k) for k in schema.key]
    return _write_pg_csv(tgt, target, tgt_cols, tgt_keys, schema.key, blocks, rng, mode, on_commit)


def _target_column(tgt_schema: SourceSchema, name: str) -> ColumnInfo:
    try:
        return tgt_schema.column(name)
    except ConfigError:
        msg = f"column {name!r} not in target {tgt_schema.label()}; target columns are {tgt_schema.names}"
        raise ConfigError(msg) from None


def _apply(fn: Transform, frame: pl.DataFrame, rng: KeyRange) -> pl.DataFrame:
    import polars as pl

    try:
        out = fn(frame)
    except Exception as exc:
        msg = f"range {rng.index}: transform {getattr(fn, '__name__', fn)!r} failed: {type(exc).__name__}: {exc}"
        raise ItemError(redact_text(msg), category="transform") from exc
    if isinstance(out, pl.LazyFrame):
        out = out.collect()
    if not isinstance(out, pl.DataFrame):
        msg = f"transform must return a polars DataFrame or LazyFrame, got {type(out).__name__}"
        raise ConfigError(msg)
    return out


def _refuse_duplicate_keys(frame: pl.DataFrame, keys: Sequence[str], rng: KeyRange, fn: Transform) -> None:
    """A transform's rows must have one row per key (ranges, upserts and verify match rows by key): two rows
    with one key fail the range, naming the key (one vectorized ``is_duplicated`` over the key columns)."""
    if not keys or not all(k in frame.columns for k in keys) or frame.height < 2:
        return
    dup = frame.select(keys).is_duplicated()
    if not dup.any():
        return
    first = frame.filter(dup).row(0, named=True)
    key_val = {k: first[k] for k in keys}
    msg = (f"range {rng.index}: transform {getattr(fn, '__name__', fn)!r} returned more than one row with key "
           f"{key_val} ({int(dup.sum())} of its {frame.height} rows share their key with another); a transform must "
           f"return at most one row per key {list(keys)}")
    raise ItemError(redact_text(msg), category="transform")


__all__ = [
    "MODES",
    "CopyFormat",
    "Mode",
    "RangeResult",
    "Transform",
    "copy_range",
    "iter_rows",
    "read_range",
    "resolve_transform",
]
