"""Incremental loads for db_migrate: each scheduled run copies only what changed since the last one.

How: the source has a column that grows with every insert and update (an updated-at timestamp or an
increasing id). A run reads the watermark the last complete run left, takes the source's current maximum
as its upper bound, and copies the rows in between (upsert, in keyset ranges like a full copy, each range
once). Only when every range has committed (and verify passed) does the watermark move, in the target
database, in its own transaction: a crashed, failed or partial run leaves it where it was, so the next run
covers what this one did not. The watermark lives beside the target table (``_batchflows_watermarks``),
keyed by source, query or table, target table and column, so any worker that reaches the target sees it.

Late rows (committed with a value below the upper bound after the run read it, e.g. a long transaction
with an old ``updated_at``) are covered by ``lookback``: each run starts that much below the watermark
(seconds for dates and times, units for integers); upsert makes the overlap harmless. Rows where the column
is NULL cannot be placed, so every run takes them. Deletes: ``ignore`` (the target keeps them),
``soft_column`` (rows whose ``soft_delete_column`` is set, i.e. not NULL and not false, are deleted from the
target after the copy) or ``compare_keys`` (key sets compared range by range; what the source no longer has
is deleted from the target).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel

from tasks.core import ConfigError, redact_text
from tasks.core.watermarks import lag_seconds, stream_id
from tasks.db.conn import TableName, UrlLike
from tasks.db.ledger import create_if_missing
from tasks.db.physical import require_key
from tasks.db.schema import (
    KeyRange,
    SourceSchema,
    Window,
    bind_key,
    decode_key,
    plan_ranges,
    range_predicate,
    watermark_order,
)
from tasks.db.session import connect, submit_in_run
from tasks.db.typemap import ColumnInfo
from tasks.db.values import coerce, key_to_json

Deletes = Literal["ignore", "soft_column", "compare_keys"]
WATERMARK_TABLE = "_batchflows_watermarks"
WATERMARK_KINDS = frozenset({"smallint", "integer", "bigint", "date", "timestamp", "timestamptz"})
_TEMPORAL = frozenset({"date", "timestamp", "timestamptz"})


class IncrementalState(BaseModel):
    """What an incremental run starts from and moves to (JSON values, as the summary shows them)."""

    column: str
    stream: str
    before: Any = None
    low: Any = None
    high: Any = None
    reset: bool = False

    @classmethod
    def of(cls, window: Window, stream: str, *, reset: bool) -> IncrementalState:
        """The state of a planned (possibly checkpointed) window."""
        return cls(column=window.column.name, stream=stream, before=window.before, low=window.low,
                   high=window.high, reset=reset)


def _wm_table(target: TableName) -> TableName:
    return TableName(schema_name=target.schema_name, name=WATERMARK_TABLE)


def stream_key(source: str, table: str | None, query: str | None, target_table: str, column: str) -> str:
    """The watermark's key: which source rows go to which target table, by which column (no password)."""
    return stream_id(source, table or "", query or "", target_table, column)


def watermark_column(schema: SourceSchema, column: str, target: SourceSchema | None = None) -> ColumnInfo:
    """The source's watermark column, validated: it must exist (in the target too) and be a date, time or
    integer type; ConfigError saying what to pass otherwise."""
    if column not in schema.names:
        msg = f"incremental column {column!r} is not a column of {schema.label()}; columns: {schema.names}"
        raise ConfigError(msg)
    col = schema.column(column)
    if col.kind not in WATERMARK_KINDS:
        msg = (f"incremental column {column!r} of {schema.label()} is {col.type_label()}; it must be a date/time "
               "(an updated-at column) or an integer that grows with every insert and update")
        raise ConfigError(msg)
    if target is not None and column not in target.names:
        msg = (f"incremental column {column!r} is missing from the target table; a transform must keep it (the "
               "watermark and verify compare it on both sides)")
        raise ConfigError(msg)
    return col


def soft_column(schema: SourceSchema, column: str | None) -> ColumnInfo:
    if not column:
        msg = "deletes='soft_column' needs soft_delete_column (e.g. 'deleted_at' or 'is_deleted')"
        raise ConfigError(msg)
    if column not in schema.names:
        msg = f"soft_delete_column {column!r} is not a column of {schema.label()}; columns: {schema.names}"
        raise ConfigError(msg)
    return schema.column(column)


# ---------------------------------------------------------------- the watermark store (in the target)


def ensure_watermarks(url: UrlLike, target: TableName) -> TableName:
    return create_if_missing(url, _wm_table(target), (
        "stream_key VARCHAR(64) PRIMARY KEY, target_table VARCHAR(512) NOT NULL, column_name VARCHAR(128) NOT NULL, "
        "watermark TEXT, run_key VARCHAR(128) NOT NULL, updated_at VARCHAR(40) NOT NULL"))


def read_watermark(url: UrlLike, target: TableName, stream: str) -> Any:
    """The stored watermark (JSON value), or None when no run completed yet (or the table is absent)."""
    table = ensure_watermarks(url, target)
    with connect(url, "target", read_only=True) as db:
        rows = db.all(f"SELECT watermark FROM {table.sql(db.dialect)} WHERE stream_key = {db.ph}", [stream])
        if db.dialect != "sqlite":
            db.raw.rollback()
    return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None


def save_watermark(url: UrlLike, target: TableName, state: IncrementalState, value: Any, run_key: str, *,
                   column: ColumnInfo) -> tuple[Any, Any]:
    """Store ``value`` as the stream's watermark in one transaction (replacing the old one), unless the stored
    one is newer: the watermark never moves back (a resumed run's window may end below what a later run
    stored), except with ``state.reset``. ``column`` (the watermark column) compares the values. Returns
    (the watermark stored before, the one stored now). The table is made when missing: a rerun that replays
    its saved plan never read the watermark (the target may be new)."""
    table = ensure_watermarks(url, target)
    with connect(url, "target", write=True) as db:
        ph = db.ph
        if db.dialect == "sqlite":
            db.raw.execute("BEGIN IMMEDIATE")
        lock = "" if db.dialect == "sqlite" else " FOR UPDATE"
        rows = db.all(f"SELECT watermark FROM {table.sql(db.dialect)} WHERE stream_key = {ph}{lock}", [state.stream])
        stored = json.loads(rows[0][0]) if rows and rows[0][0] is not None else None
        if not state.reset and _newer(column, stored, value):
            db.raw.execute("COMMIT") if db.dialect == "sqlite" else db.raw.commit()
            return stored, stored
        values = (str(target), state.column, json.dumps(value), run_key, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()), state.stream)
        if rows:  # one statement either way: the row locked above is updated, or the first one inserted
            db.raw.execute(f"UPDATE {table.sql(db.dialect)} SET target_table = {ph}, column_name = {ph}, watermark = "
                           f"{ph}, run_key = {ph}, updated_at = {ph} WHERE stream_key = {ph}", values)
        else:
            db.raw.execute(
                f"INSERT INTO {table.sql(db.dialect)} (target_table, column_name, watermark, run_key, updated_at, "
                f"stream_key) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph})", values)
        db.raw.execute("COMMIT") if db.dialect == "sqlite" else db.raw.commit()
    return stored, value


def _newer(col: ColumnInfo, stored: Any, value: Any) -> bool:
    """Whether the stored watermark is past ``value`` (then it stays)."""
    if stored is None or value is None:
        return stored is not None
    return bool(coerce(col, stored) > coerce(col, value))


def clear_watermark(url: UrlLike, target: TableName, stream: str) -> None:
    table = ensure_watermarks(url, target)
    with connect(url, "target", write=True) as db:
        db.raw.execute(f"DELETE FROM {table.sql(db.dialect)} WHERE stream_key = {db.ph}", (stream,))
        if db.dialect != "sqlite":
            db.raw.commit()


def index_watermark(url: UrlLike, target: TableName, column: str) -> None:
    """Index the watermark column of a target table batchflows created (each run's verify reads its slice
    there by that column); tables the user made are left as they are."""
    with connect(url, "target", write=True) as db:
        name = "_bf_wm_" + hashlib.blake2b(f"{target}.{column}".encode(), digest_size=6).hexdigest()
        db.raw.execute(f"CREATE INDEX IF NOT EXISTS {db.q(name)} ON {target.sql(db.dialect)} ({db.q(column)})")
        if db.dialect != "sqlite":
            db.raw.commit()


# ---------------------------------------------------------------- planning a run's window


def source_high(url: UrlLike, schema: SourceSchema, col: ColumnInfo) -> Any:
    """The source's current maximum of the watermark column (JSON value; None for no non-NULL value)."""
    with connect(url, "source", read_only=True) as db:
        order = ", ".join(f"{e} DESC" for e in watermark_order(db, col))
        rows = db.all(f"SELECT {db.q(col.name)} FROM {schema.relation(db.dialect)} WHERE {db.q(col.name)} IS NOT "
                      f"NULL ORDER BY {order} LIMIT 1")
        if db.dialect != "sqlite":
            db.raw.rollback()
        return decode_key(db, col, rows[0][0]) if rows else None


def shifted(col: ColumnInfo, value: Any, lookback: float) -> Any:
    """``value`` moved ``lookback`` down (seconds for dates and times, units for integers)."""
    if value is None:
        return None
    typed = coerce(col, value)
    if col.kind in _TEMPORAL:
        delta = dt.timedelta(seconds=lookback)
        if not delta:
            return value
        if col.kind == "date":
            days = delta.days + (1 if delta.seconds or delta.microseconds else 0)
            return key_to_json(col, typed - dt.timedelta(days=days))
        return key_to_json(col, typed - delta)
    return key_to_json(col, typed - int(lookback)) if lookback else value


def plan_window(source: UrlLike, target: UrlLike, target_table: TableName, schema: SourceSchema, col: ColumnInfo,
                stream: str, *, lookback: float, reset: bool) -> Window:
    """Read the stored watermark (unless ``reset``) and the source's maximum (both at once): this run's slice."""
    with ThreadPoolExecutor(1) as pool:
        stored = None if reset else submit_in_run(pool, read_watermark, target, target_table, stream)
        high = source_high(source, schema, col)
        before = None if stored is None else stored.result()
    return Window(column=col, low=shifted(col, before, lookback), high=high, before=before)


# ---------------------------------------------------------------- deletes


def delete_soft(url: UrlLike, target: TableName, col: ColumnInfo) -> int:
    """Delete the target rows whose soft-delete column is set (copied with it by this or an earlier run)."""
    with connect(url, "target", write=True) as db:
        q = db.q(col.name)
        where = f"{q} IS NOT NULL"
        params: list[Any] = []
        if col.kind == "boolean":
            where += f" AND {q} <> {db.ph}"
            params.append(bind_key(db, col, False))
        n = db.raw.execute(f"DELETE FROM {target.sql(db.dialect)} WHERE {where}", params).rowcount
        if db.dialect != "sqlite":
            db.raw.commit()
    return max(int(n), 0)


_INT_KINDS = frozenset({"smallint", "integer", "bigint"})


def _keys(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str) -> set[tuple[Any, ...]]:
    """The keys of a range as tuples of JSON values (equal on both sides for equal keys)."""
    cols = schema.key_columns()
    with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
        where, params = range_predicate(db, cols, rng)
        relation = schema.relation(db.dialect)
        rows = db.all(f"SELECT {', '.join(db.q(c.name) for c in cols)} FROM {relation} WHERE {where}", params)
        if db.dialect != "sqlite":
            db.raw.rollback()
        if all(c.kind in _INT_KINDS for c in cols):
            return set(rows)  # integers are integers on every side
        return {tuple(decode_key(db, c, v) for c, v in zip(cols, row, strict=True)) for row in rows}


def _int_keys(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str) -> list[int]:
    """The keys of a range whose key is one integer column, in order (PostgreSQL: one array, not a row each)."""
    (col,) = schema.key_columns()
    with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
        where, params = range_predicate(db, [col], rng)
        name, relation = db.q(col.name), schema.relation(db.dialect)
        if db.dialect == "postgresql":
            (keys,) = db.all(f"SELECT coalesce(array_agg({name} ORDER BY {name}), '{{}}') FROM {relation} "
                             f"WHERE {where}", params)[0]
            db.raw.rollback()
            return list(keys)
        rows = db.all(f"SELECT {name} FROM {relation} WHERE {where} ORDER BY {name}", params)
        if db.dialect != "sqlite":
            db.raw.rollback()
        return [r[0] for r in rows]


def _missing(source: UrlLike, target: UrlLike, schema: SourceSchema, tgt: SourceSchema, rng: KeyRange,
             pool: ThreadPoolExecutor) -> set[tuple[Any, ...]]:
    """The target's keys of ``rng`` that the source no longer has (both sides read at once)."""
    cols = schema.key_columns()
    if len(cols) == 1 and cols[0].kind in _INT_KINDS:
        theirs = submit_in_run(pool, _int_keys, source, schema, rng, "source")
        mine, source_keys = _int_keys(target, tgt, rng, "target"), theirs.result()
        if mine == source_keys:  # the common case: nothing deleted (equal in order, no set built)
            return set()
        return set(zip(mine)) - set(zip(source_keys))
    others = submit_in_run(pool, _keys, source, schema, rng, "source")
    return _keys(target, tgt, rng, "target") - others.result()


def _delete_keys(target: UrlLike, target_table: TableName, tgt: SourceSchema, gone: set[tuple[Any, ...]]) -> int:
    """Delete the rows of these keys from the target in one transaction."""
    cols = tgt.key_columns()
    with connect(target, "target", write=True) as db:
        cond = " AND ".join(f"{db.q(c.name)} = {db.ph}" for c in cols)
        rows = [[bind_key(db, c, v) for c, v in zip(cols, k, strict=True)] for k in sorted(gone)]
        if db.dialect == "sqlite":
            db.raw.execute("BEGIN IMMEDIATE")
        cur = db.raw.cursor()
        cur.executemany(f"DELETE FROM {target_table.sql(db.dialect)} WHERE {cond}", rows)
        db.raw.execute("COMMIT") if db.dialect == "sqlite" else db.raw.commit()
    return len(gone)


def delete_missing(source: UrlLike, target: UrlLike, schema: SourceSchema, tgt_schema: SourceSchema,
                   target_table: TableName, *, chunk_rows: int) -> int:
    """Compare key sets range by range (ranges cut on the target) and delete from the target what the
    source no longer has, one transaction per range. Idempotent: a rerun deletes what is still missing."""
    tgt = tgt_schema.model_copy(update={"key": schema.key})
    deleted = 0
    with ThreadPoolExecutor(2) as pool:  # both sides at once: the waiting is in the databases
        for rng in plan_ranges(target, target_table, key=schema.key, chunk_rows=chunk_rows, verify_key=False):
            gone = _missing(source, target, schema, tgt, rng, pool)
            if gone:
                deleted += _delete_keys(target, target_table, tgt, gone)
    return deleted


@dataclass(frozen=True)
class IncrementalJob:
    """An incremental run: its slice (planned once, checkpointed with the ranges), the deletes after the
    copy and the watermark after verify. ``state`` is set by :meth:`started` from the planned ranges."""

    source: UrlLike
    target: UrlLike
    schema: SourceSchema
    column: ColumnInfo
    target_table: TableName
    stream: str
    chunk_rows: int
    lookback: float = 0
    reset: bool = False
    deletes: Deletes = "ignore"
    soft: ColumnInfo | None = None
    state: IncrementalState | None = None

    def plan(self) -> Window:
        return plan_window(self.source, self.target, self.target_table, self.schema, self.column, self.stream,
                           lookback=self.lookback, reset=self.reset)

    def started(self, ranges: list[KeyRange]) -> IncrementalJob:
        """This job with the state of the planned (or checkpointed) ranges' window; prints it."""
        window = ranges[0].window if ranges else None
        if window is None:
            msg = "incremental run: the planned ranges carry no window; start over with a new run_key"
            raise ConfigError(msg)
        job = replace(self, state=IncrementalState.of(window, self.stream, reset=self.reset))
        print(describe(job.state))  # type: ignore[arg-type]
        return job

    def after_copy(self, summary: Any, source: UrlLike, target: UrlLike, schema: SourceSchema,
                   tgt_schema: SourceSchema) -> None:
        """Deletes (all ranges committed): soft-deleted rows, or keys the source no longer has."""
        if self.deletes == "soft_column" and self.soft is not None:
            summary.rows_deleted = delete_soft(target, self.target_table, self.soft)
        elif self.deletes == "compare_keys":
            summary.rows_deleted = delete_missing(source, target, schema, tgt_schema, self.target_table,
                                                  chunk_rows=self.chunk_rows)
        if self.deletes != "ignore":
            print(f"deletes ({self.deletes}): {summary.rows_deleted} rows deleted from the target")

    def complete(self, summary: Any, target: UrlLike, run_key: str, *, moved: bool) -> None:
        """Fill the summary's incremental facts; store the new watermark when ``moved`` (every range
        committed and verified); otherwise it stays where it was and the next run covers this one."""
        st = self.state
        if st is None:
            return
        summary.incremental_column = st.column
        summary.incremental_reset = st.reset
        summary.lag_s = lag_seconds(st.high)  # JSON ISO times; None for integers
        after = st.high if st.high is not None else st.before
        if moved:  # the stored watermark as it is now: a resumed run's plan may predate a later run's
            before, summary.watermark_after = save_watermark(target, self.target_table, st, after, run_key,
                                                             column=self.column)
        else:
            before = summary.watermark_after = self._stored(target)
        summary.watermark_before = None if st.reset else before
        summary.extra.update({"watermark_before": summary.watermark_before, "watermark_after": summary.watermark_after,
                              "lag_s": summary.lag_s, "rows_deleted": summary.rows_deleted})
        lag = f", lag {summary.lag_s:.0f} s" if summary.lag_s is not None else ""
        kept = "" if moved else " (kept: not every range committed and verified; the next run covers this one)"
        if moved and summary.watermark_after != after:
            kept = f" (kept: a later run stored it; this run's window ended at {after!r})"
        print(redact_text(f"watermark {st.column!r}: {summary.watermark_before!r} -> {summary.watermark_after!r}"
                          f"{kept}{lag}"))

    def _stored(self, target: UrlLike) -> Any:
        """The stored watermark of a run that does not move it (the plan's when the target cannot be read:
        the run failed already, and its reason must not be hidden by this read)."""
        try:
            return read_watermark(target, self.target_table, self.stream)
        except Exception:  # reporting only
            return self.state.before if self.state is not None else None


def incremental_job(source: UrlLike, target: UrlLike, schema: SourceSchema, tgt_schema: SourceSchema, *,
                    column: str, source_label: str, table: str | None, query: str | None, target_table: TableName,
                    chunk_rows: int, lookback: float, reset: bool, deletes: Deletes,
                    soft_delete_column: str | None) -> IncrementalJob:
    """Validate an incremental run's columns (ConfigError naming what to change) and build its job."""
    require_key(schema, "upsert", incremental=column)  # a table without a primary key: refused, saying why
    col = watermark_column(schema, column, tgt_schema)
    soft = soft_column(schema, soft_delete_column) if deletes == "soft_column" else None
    stream = stream_key(source_label, table, query, str(target_table), col.name)
    return IncrementalJob(source=source, target=target, schema=schema, column=col, target_table=target_table,
                          stream=stream, chunk_rows=chunk_rows, lookback=lookback, reset=reset, deletes=deletes,
                          soft=soft)


def describe(state: IncrementalState) -> str:
    frm = "the start (first run)" if state.before is None else repr(state.before)
    if state.reset:
        frm = "the start (reset_incremental)"
    return redact_text(f"incremental on {state.column!r}: from {frm} to {state.high!r}")


__all__ = [
    "WATERMARK_KINDS",
    "WATERMARK_TABLE",
    "Deletes",
    "IncrementalJob",
    "IncrementalState",
    "clear_watermark",
    "delete_missing",
    "delete_soft",
    "describe",
    "ensure_watermarks",
    "incremental_job",
    "index_watermark",
    "plan_window",
    "read_watermark",
    "save_watermark",
    "shifted",
    "soft_column",
    "source_high",
    "stream_key",
    "watermark_column",
]
