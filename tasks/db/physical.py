"""Tables without a primary key: append-only copies in physical ranges, and what a rerun can promise.

Why physical ranges: without a key there is no stable order to cut keyset ranges on, but each database
has a row address that a range scan can use. PostgreSQL: heap pages by ``ctid`` (``ctid >= '(a,0)'::tid
AND ctid < '(b,0)'::tid``, a TID range scan since PostgreSQL 14; the page count from ``pg_relation_size``
over the block size; a partitioned table, which has no heap of its own, is cut per leaf partition, each
range reading its partition). SQLite: ``rowid`` ranges (a table without a primary key always has a rowid).
MySQL/MariaDB: InnoDB's hidden row id cannot be addressed in SQL, and LIMIT/OFFSET without an order is not
repeatable, so the table is one range (one transaction; its rows are held in memory while written).

Each range's rows and its ledger row commit in one target transaction as for keyed tables, so a rerun
never copies a committed range again. What it cannot promise: the ranges are cut once per run key (and
checkpointed), but a row updated or inserted in the source between the crash and the rerun can move
between physical ranges (PostgreSQL writes a new row version elsewhere; SQLite's VACUUM can renumber
rowids), so it may be copied twice or not at all. Exactness needs an unmodified source, or ``key=``
naming unique columns (a stable order). Only ``append`` works without a key: ``upsert``, ``replace``,
incremental runs and ``compare_keys`` deletes all match target rows to source rows by key.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from tasks.core import ConfigError
from tasks.db.conn import Db, UrlLike
from tasks.db.schema import KeyRange, SourceSchema, chain_ranges, cut_points
from tasks.db.session import connect

_TID_RANGE_SCAN = 140_000  # server_version_num of the first PostgreSQL with TID range scans


def scan_label(ranges: list[KeyRange]) -> str:
    """``10 ctid page ranges`` (``over 3 partitions``), ``4 rowid ranges`` or ``1 range (the whole table)``."""
    what = {"ctid": "ctid page ranges", "rowid": "rowid ranges"}.get(ranges[0].scan if ranges else "all")
    parts = len({r.part for r in ranges if r.part})
    over = f" over {parts} partitions" if parts else ""
    return f"{len(ranges)} {what}{over}" if what else f"{len(ranges)} range (the whole table)"


def resume_note(schema: SourceSchema, ranges: list[KeyRange]) -> str:
    """The log/summary line saying what a rerun of a keyless copy can and cannot promise."""
    return (f"{schema.label()} has no primary key: copied append-only in {scan_label(ranges)}; a "
            "rerun with the same run_key skips the committed ranges, which is exact only if the source is not "
            "modified between the crash and the rerun (an updated row can move between physical ranges); pass "
            "key='column' naming unique columns for a stable order")


def require_key(schema: SourceSchema, mode: str, *, incremental: str | None = None) -> None:
    """ConfigError, before anything is written, for what a table without a key cannot do."""
    if schema.key:
        return
    fix = ("pass key='column' (or 'a,b') naming unique, non-null columns" if schema.table is not None
           else "pass key=")
    if incremental is not None:
        msg = (f"{schema.label()} has no primary key: incremental runs (and their compare_keys deletes) match "
               f"changed rows to target rows by key; {fix}, or copy it whole with mode='append' and no incremental")
        raise ConfigError(msg)
    if mode != "append":
        msg = (f"{schema.label()} has no primary key, so mode={mode!r} cannot match source rows to target rows: "
               f"use mode='append' to copy it append-only, or {fix}")
        raise ConfigError(msg)


def plan_physical(url: UrlLike, schema: SourceSchema, chunk_rows: int) -> list[KeyRange]:
    """Ranges of about ``chunk_rows`` rows of a table without a key (see the module docstring)."""
    if schema.table is None:
        msg = "a query source needs key= (the unique column(s) ranges are cut on)"
        raise ConfigError(msg)
    with connect(url, "source") as db:
        if db.dialect == "postgresql":
            return _plan_ctid(db, schema, chunk_rows)
        rel = schema.relation(db.dialect)
        if db.dialect == "sqlite" and "rowid" not in {n.lower() for n in schema.names}:  # else a column shadows it
            bounds, total = cut_points(db, rel, ["rowid"], "rowid", "1 = 1", [], chunk_rows)
            return chain_ranges([[int(b[0])] for b in bounds], total, chunk_rows, scan="rowid")
        total = int(db.all(f"SELECT count(*) FROM {rel}")[0][0])
        if db.dialect == "mysql":
            db.raw.rollback()
    return [KeyRange(index=0, estimated_rows=total, scan="all")]


_HEAP_SQL = ("SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::int, "
             "current_setting('server_version_num')::int FROM pg_class c WHERE c.oid = to_regclass(%s)")


def _plan_ctid(db: Db, schema: SourceSchema, chunk_rows: int) -> list[KeyRange]:
    """Heap page ranges; a partitioned table's per leaf partition (each read from the partition itself)."""
    rel = schema.relation("postgresql")
    kind, pages, version = db.all(_HEAP_SQL, [rel])[0]
    total = int(db.all(f"SELECT count(*) FROM {rel}")[0][0])
    leaves: list[str] = []
    if kind == "p":  # relid::regclass prints the leaf's name quoted (and schema-qualified) as SQL needs it
        leaves = [str(r[0]) for r in db.all("SELECT relid::regclass::text FROM pg_partition_tree(to_regclass(%s)) "
                                            "WHERE isleaf ORDER BY relid::regclass::text", [rel])]
    heaps = [(leaf, *db.all(_HEAP_SQL, [leaf])[0][:2], int(db.all(f"SELECT count(*) FROM {leaf}")[0][0]))
             for leaf in leaves]
    db.raw.rollback()
    if kind == "p" and int(version) >= _TID_RANGE_SCAN and heaps and all(k in ("r", "m") for _, k, _, _ in heaps):
        ranges: list[KeyRange] = []
        for leaf, _, leaf_pages, leaf_rows in heaps:  # an empty leaf still gets its (unbounded) range
            ranges += _page_ranges(int(leaf_pages), leaf_rows, chunk_rows, len(ranges), part=leaf)
        return ranges
    if kind not in ("r", "m") or int(version) < _TID_RANGE_SCAN or not total or not pages:
        # views and foreign tables have no heap of their own (nor a partitioned table with a foreign leaf);
        # before 14 every range is a full scan
        return [KeyRange(index=0, estimated_rows=total, scan="all")]
    return _page_ranges(int(pages), total, chunk_rows, 0)


def _page_ranges(pages: int, total: int, chunk_rows: int, first: int, part: str | None = None) -> list[KeyRange]:
    if not pages or not total:
        return [KeyRange(index=first, scan="ctid", part=part)]
    per = max(1, -(-chunk_rows * pages // total))  # pages per range
    bounds: list[list[int] | None] = [None, *([c] for c in range(per, pages, per)), None]
    rows_per_page = total / pages
    return [KeyRange(index=first + i, lower=lo, upper=hi, scan="ctid", part=part,
                     estimated_rows=round(((hi[0] if hi else pages) - (lo[0] if lo else 0)) * rows_per_page))
            for i, (lo, hi) in enumerate(pairwise(bounds))]


def verify_scope(ranges: Sequence[KeyRange]) -> list[KeyRange]:
    """What verify compares: the key ranges, or for a table without a key the whole table (a physical range
    of the source has no counterpart in the target: its rows sit elsewhere there)."""
    if not ranges or ranges[0].scan == "key":
        return list(ranges)
    return [KeyRange(index=0, estimated_rows=sum(r.estimated_rows for r in ranges), scan="all")]


__all__ = ["plan_physical", "require_key", "resume_note", "scan_label", "verify_scope"]
