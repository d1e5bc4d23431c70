"""The range ledger: a row in the target, committed in the same transaction as the range's data.

A range's rows and the record that the range is done must commit together, or a crash between the
target's COMMIT and the run's own record (a file in the state dir) would make the rerun copy the range
again: harmless for upsert and replace, duplicated rows for append. So every range transaction also
inserts its key into ``_batchflows_ranges`` (in the target table's schema) just before COMMIT, and a
range first looks there: found means committed by an earlier attempt of this run, and the rerun takes
the recorded counts instead of writing anything. The ledger, not the state dir, decides what a rerun skips:
a range the state dir records as done but the ledger lacks (a target recreated since) is copied again. The
table holds one small row per range and run; it can be dropped when no run is to be resumed.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from tasks.db.conn import Db, TableName, UrlLike, creating
from tasks.db.session import connect, known_table, note_table

LEDGER_TABLE = "_batchflows_ranges"


class LedgerEntry(BaseModel):
    """Where one range's ledger row goes, and its key (the range's cache key: run identity + position)."""

    model_config = ConfigDict(frozen=True)

    table: TableName
    key: str
    run_key: str
    target_table: str


def ledger_table(target: TableName) -> TableName:
    return TableName(schema_name=target.schema_name, name=LEDGER_TABLE)


def create_if_missing(url: UrlLike, table: TableName, columns: str) -> TableName:
    """``CREATE TABLE IF NOT EXISTS table (columns)`` in the target, committed (bookkeeping tables). An existing
    table is not created again: a user without the right to create tables (PostgreSQL and MySQL check it before
    ``IF NOT EXISTS``) runs once someone made the table. Found or made once, a run does not ask again."""
    name = table.sql("postgresql")
    if known_table(url, name):
        return table
    with connect(url, "target", write=True, read_only=True) as db:  # PostgreSQL: the check is one round trip
        found = _exists(db, table)
    if not found:
        with connect(url, "target", write=True) as db, creating(db, table):
            db.raw.execute(f"CREATE TABLE IF NOT EXISTS {table.sql(db.dialect)} ({columns})")
            if db.dialect == "postgresql":
                db.raw.commit()
    note_table(url, name)
    return table


def _exists(db: Db, table: TableName) -> bool:
    if db.dialect == "postgresql":
        found = bool(db.all("SELECT to_regclass(%s) IS NOT NULL", [table.sql("postgresql")])[0][0])
        db.raw.rollback()
        return found
    if db.dialect == "mysql":
        from tasks.db.mysql import table_exists

        return table_exists(db, table)
    return False  # SQLite: no rights to check, IF NOT EXISTS decides


def ensure_ledger(url: UrlLike, target: TableName) -> TableName:
    """Create the ledger table beside ``target`` when missing (once per run, before any range)."""
    return create_if_missing(url, ledger_table(target), (
        "range_key VARCHAR(64) PRIMARY KEY, run_key VARCHAR(128) NOT NULL, target_table VARCHAR(512) NOT NULL, "
        "range_index INTEGER NOT NULL, rows_read BIGINT NOT NULL, rows_written BIGINT NOT NULL, "
        "committed_at VARCHAR(40) NOT NULL"))


def committed(db: Db, entry: LedgerEntry) -> tuple[int, int] | None:
    """(rows read, rows written) of a range an earlier attempt committed, else None."""
    rows = db.all(f"SELECT rows_read, rows_written FROM {entry.table.sql(db.dialect)} WHERE range_key = {db.ph}",
                  [entry.key])
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def committed_keys(url: UrlLike, table: TableName, run_key: str) -> set[str]:
    """The range keys of ``run_key`` the target's ledger holds (one query for a whole run): what a rerun may
    take from its state dir's records without copying again."""
    with connect(url, "target", read_only=True) as db:
        rows = db.all(f"SELECT range_key FROM {table.sql(db.dialect)} WHERE run_key = {db.ph}", [run_key])
    return {str(r[0]) for r in rows}


def record_range(db: Db, entry: LedgerEntry, index: int, rows_read: int, rows_written: int) -> None:
    """Insert the range's ledger row inside the range's open transaction (just before its COMMIT)."""
    ph = db.ph
    db.raw.execute(
        f"INSERT INTO {entry.table.sql(db.dialect)} (range_key, run_key, target_table, range_index, rows_read, "
        f"rows_written, committed_at) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})",
        (entry.key, entry.run_key, entry.target_table, index, rows_read, rows_written,
         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))


__all__ = ["LEDGER_TABLE", "LedgerEntry", "committed", "committed_keys", "create_if_missing", "ensure_ledger",
           "ledger_table", "record_range"]
