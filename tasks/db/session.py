"""Connections reused within a run: one per database and role for each step running at once, instead of
one per step.

Why: opening a PostgreSQL connection costs ~10-20 ms (a backend is forked, authenticated, configured), and a
db_migrate run opened one for every step: reflection, the target check, the ledger, the watermark, planning
and two per range, 12-16 before the first row moved. Inside :func:`shared_connections` (db_migrate wraps its
run in it) :func:`connect` hands a step a connection an earlier step left idle for the same URL and role (in
any thread: planning in the flow's thread, then each range in a task runner's thread, share one);
outside it, it is :func:`tasks.db.conn.connect`. What keeps that safe:

* a connection serves one step at a time (taken out of the pool while in use; a nested ``connect`` to the
  same database, or a step running at the same time in another thread, opens its own), and only the thread
  of that step uses it until the step ends;
* a step ends its transaction as before (commit or rollback); one left open is rolled back when the step
  ends, as closing the connection used to do, so no lock or snapshot outlives its step;
* a step that raised closes its connection (a killed backend, an aborted transaction are never handed out
  again: a retried range gets a new one), and so does a connection idle for more than ``_MAX_IDLE_S``;
* every connection is closed when the run ends. PostgreSQL only: SQLite opens in microseconds, and MySQL's
  sessions are left as they were.

``read_only=True`` (PostgreSQL, pooled or not): a step of single-statement reads runs them in autocommit, so
each is one round trip instead of three (psycopg sends its own ``BEGIN`` before the first statement, and the
step's ``ROLLBACK`` is another). Under READ COMMITTED every statement takes its own snapshot either way; not
for steps that need a transaction (``SET LOCAL``, a named cursor, locks held across statements).
Bookkeeping tables a step found or created are remembered for the rest of the run (:func:`known_table`), so
later steps do not ask again.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from psycopg.pq import TransactionStatus

from tasks.db.conn import Db, Endpoint, Role, UrlLike, parse_db_url
from tasks.db.conn import connect as _open

T = TypeVar("T")

_MAX_IDLE_S = 30.0  # older idle connections are closed, not reused (servers and proxies drop idle sessions)
_MAX_IDLE_PER_KEY = 16  # more steps at once than this: the extra connections close when their step ends
_Key = tuple[str, int | None, str, str | None, str, tuple[tuple[str, str], ...], str]


class _Pool:
    """Idle connections of one run by (endpoint, role), newest last, with the context that closes each."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[tuple[Db, AbstractContextManager[Db], float]]] = {}
        self._lock = threading.Lock()
        self.opened = 0
        self.known: set[tuple[_Key, str]] = set()  # (endpoint, table) of bookkeeping tables found or made

    def take(self, key: _Key) -> tuple[Db, AbstractContextManager[Db]] | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                db, ctx, since = idle.pop()
            if time.monotonic() - since <= _MAX_IDLE_S:
                return db, ctx
            _close(ctx)

    def give(self, key: _Key, db: Db, ctx: AbstractContextManager[Db]) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            full = len(idle) >= _MAX_IDLE_PER_KEY
            if not full:
                idle.append((db, ctx, time.monotonic()))
        if full:
            _close(ctx)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = [c for cs in self._idle.values() for c in cs], {}
        for _, ctx, _ in idle:
            _close(ctx)


def _close(ctx: AbstractContextManager[Db]) -> None:
    try:
        ctx.__exit__(None, None, None)
    except Exception:  # a dead connection has nothing left to close
        return


_pool: ContextVar[_Pool | None] = ContextVar("batchflows_db_pool", default=None)


@contextmanager
def shared_connections() -> Iterator[_Pool]:
    """Reuse connections (see the module doc) until the block ends, then close them all. Nested: the
    outer pool serves."""
    current = _pool.get()
    if current is not None:
        yield current
        return
    pool = _Pool()
    token = _pool.set(pool)
    try:
        yield pool
    finally:
        _pool.reset(token)
        pool.close()


def _key(ep: Endpoint, role: Role) -> _Key:
    pw = ep.password.get_secret_value() if ep.password is not None else None
    return (ep.host or "", ep.port, ep.database, ep.user, pw or "", ep.options, role)


def _reusable(db: Db) -> bool:
    raw: Any = db.raw
    if raw.closed or raw.broken:
        return False
    status = raw.info.transaction_status
    if status == TransactionStatus.INTRANS:
        raw.rollback()  # what closing it did: nothing a step left uncommitted survives the step
        return True
    return status == TransactionStatus.IDLE


@contextmanager
def connect(url: UrlLike | Endpoint, role: Role, *, write: bool = False, read_only: bool = False) -> Iterator[Db]:
    """:func:`tasks.db.conn.connect`, reusing an idle connection of this thread inside
    :func:`shared_connections` (PostgreSQL). ``read_only``: the step's statements run in autocommit (see the
    module doc)."""
    pool = _pool.get()
    ep = url if isinstance(url, Endpoint) else parse_db_url(url)
    if pool is None or ep.dialect != "postgresql":
        with _open(ep, role, write=write) as db:
            if read_only and ep.dialect == "postgresql":
                db.raw.autocommit = True
            yield db
        return
    key = _key(ep, role)
    found = pool.take(key)
    if found is None:
        ctx = _open(ep, role, write=write)
        db = ctx.__enter__()
        pool.opened += 1
    else:
        db, ctx = found
    db.raw.autocommit = read_only  # idle here: set on the client, no round trip
    try:
        yield db
    except BaseException:
        _close(ctx)
        raise
    try:
        ok = _reusable(db)
        db.raw.autocommit = False
    except Exception:
        ok = False
    if ok:
        pool.give(key, db, ctx)
    else:
        _close(ctx)


def known_table(url: UrlLike | Endpoint, table: str) -> bool:
    """Whether a step of this run found or created bookkeeping table ``table`` (SQL name) in that database."""
    pool = _pool.get()
    return pool is not None and (_table_key(url), table) in pool.known


def note_table(url: UrlLike | Endpoint, table: str) -> None:
    """Remember for the rest of the run that ``table`` exists (no-op outside :func:`shared_connections`)."""
    pool = _pool.get()
    if pool is not None:
        with pool._lock:
            pool.known.add((_table_key(url), table))


def _table_key(url: UrlLike | Endpoint) -> _Key:
    return _key(url if isinstance(url, Endpoint) else parse_db_url(url), "target")


def submit_in_run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """``pool.submit`` in a copy of this thread's context: a step run on another thread (one side of a
    comparison) takes the run's idle connections instead of opening its own."""
    return pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)


__all__ = ["connect", "known_table", "note_table", "shared_connections", "submit_in_run"]
