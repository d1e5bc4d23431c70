"""Load first, build the primary key after: PostgreSQL tables db_migrate creates for an append.

Why: PostgreSQL maintains a primary key's index row by row during COPY; building it once after the load
sorts the keys in one pass. Measured on the MariaDB benchmark's rows (9 mixed columns): COPY of 100k rows
241 ms into a table with its bigint key, 174 ms without; ``ADD PRIMARY KEY`` over 1M rows 0.22 s.
pgloader loads the same way.

Safety: the table is created without its key and, in the same transaction, marked by a comment naming the
run that builds it (``COMMENT ON TABLE`` ..., visible in ``\\d+``). The key is not what makes an append
exactly once: every range commits with its ledger row (tasks.db.ledger). When the run has copied its
ranges (failed ones included: a rerun copies them with the key in place), the key and the comment's removal
commit together, before verify. A run killed in between leaves the mark: the rerun with the same run key
copies what is left and builds the key then; any other run into the table builds the key first, so it
has the key's protection (rows appended twice fail instead of being stored twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial

import psycopg
from psycopg import sql

from tasks.core import ConfigError
from tasks.db.conn import Db, TableName, UrlLike, parse_db_url, quote
from tasks.db.session import connect

_MARK = "batchflows: primary key pending "


def add_key_sql(table: TableName, key: Sequence[str]) -> str:
    return f"ALTER TABLE {table.sql('postgresql')} ADD PRIMARY KEY ({', '.join(quote(k, 'postgresql') for k in key)})"


def mark(db: Db, table: TableName, key: Sequence[str], run_key: str) -> None:
    """Mark ``table`` (created in the open transaction) as waiting for its key, built by run ``run_key``."""
    text = _MARK + json.dumps({"key": list(key), "run_key": run_key}, ensure_ascii=False)
    db.raw.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.SQL(table.sql("postgresql")), sql.Literal(text)))


def pending_key(url: UrlLike, table: TableName) -> tuple[str, list[str]] | None:
    """(the run key that is to build it, the key's columns) of ``table``'s pending primary key, or None (no
    key pending, or not PostgreSQL)."""
    if parse_db_url(url).dialect != "postgresql":
        return None
    with connect(url, "target") as db:
        rows = db.all("SELECT obj_description(to_regclass(%s), 'pg_class')", [table.sql("postgresql")])
        db.raw.rollback()
    text = rows[0][0] if rows else None
    if not isinstance(text, str) or not text.startswith(_MARK):
        return None
    found = json.loads(text.removeprefix(_MARK))
    return str(found["run_key"]), [str(k) for k in found["key"]]


def build_key(url: UrlLike, table: TableName, key: Sequence[str]) -> float:
    """Add the pending primary key and remove the mark, in one transaction; seconds taken. Duplicate keys
    (rows appended twice, a source key that is not unique) raise ConfigError naming one of them."""
    started = time.perf_counter()
    with connect(url, "target", write=True) as db:
        try:
            db.raw.execute(add_key_sql(table, key))
            db.raw.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(sql.SQL(table.sql("postgresql"))))
            db.raw.commit()
        except (psycopg.errors.UniqueViolation, psycopg.errors.NotNullViolation) as exc:
            db.raw.rollback()
            cols = ", ".join(quote(k, "postgresql") for k in key)
            dup = db.all(f"SELECT {cols}, count(*) FROM {table.sql('postgresql')} GROUP BY {cols} "
                         "HAVING count(*) > 1 LIMIT 1")
            db.raw.rollback()
            found = f"key {list(dup[0][:-1])} is there {dup[0][-1]} times" if dup else str(exc).splitlines()[0]
            msg = (f"target table {table}: its primary key {list(key)}, built after the load, cannot be added: "
                   f"{found}. Remove the duplicate rows (or choose a unique key), then rerun: the key is built "
                   "before anything else is written")
            raise ConfigError(msg) from None
    return time.perf_counter() - started


def key_builder(url: UrlLike, table: TableName, run_key: str, *, created: bool, key: Sequence[str]
                ) -> Callable[[], float] | None:
    """What a run does about ``table``'s pending primary key, before writing: None when none is pending
    (or another run left it pending: it is built now, first), else the function that builds it after this
    run's load (``created``: this run just created the table without it)."""
    if created:
        return partial(build_key, url, table, list(key))
    found = pending_key(url, table)
    if found is None:
        return None
    owner, cols = found
    if owner != run_key:
        took = build_key(url, table, cols)
        print(f"target table {table}: built the primary key {cols} that run {owner!r} left pending after its load "
              f"({took:.1f}s)")
        return None
    return partial(build_key, url, table, cols)


__all__ = ["add_key_sql", "build_key", "key_builder", "mark", "pending_key"]
