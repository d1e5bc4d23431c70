"""Connections reused within a run: one per database, role and thread, instead of one per step.

Why: opening a PostgreSQL connection costs ~20 ms (a backend is forked, authenticated, configured), and a
db_migrate run opened one for every step: reflection, the target check, the ledger, the watermark, planning
and two per range, 12-16 before the first row moved. Inside :func:`shared_connections` (db_migrate wraps its
run in it) :func:`connect` hands a step the connection an earlier step of the same thread left idle for the
same URL and role; outside it, it is :func:`tasks.db.conn.connect`. What keeps that safe:

* a connection serves one step at a time (taken out of the pool while in use; a nested ``connect`` to the
  same database opens its own), and only the thread that takes it uses it;
* a step ends its transaction as before (commit or rollback); one left open is rolled back when the step
  ends, as closing the connection used to do, so no lock or snapshot outlives its step;
* a step that raised closes its connection (a killed backend, an aborted transaction are never handed out
  again: a retried range gets a new one), and so does a connection idle for more than ``_MAX_IDLE_S``;
* every connection is closed when the run ends. PostgreSQL only: SQLite opens in microseconds, and MySQL's
  sessions are left as they were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

from psycopg.pq import TransactionStatus

from tasks.db.conn import Db, Endpoint, Role, UrlLike, parse_db_url
from tasks.db.conn import connect as _open

_MAX_IDLE_S = 30.0  # older idle connections are closed, not reused (servers and proxies drop idle sessions)
_Key = tuple[int, str, int | None, str, str | None, str, tuple[tuple[str, str], ...], str]


class _Pool:
    """Idle connections of one run by (thread, endpoint, role), with the context that closes each."""

    def __init__(self) -> None:
        self._idle: dict[_Key, tuple[Db, AbstractContextManager[Db], float]] = {}
        self._lock = threading.Lock()
        self.opened = 0

    def take(self, key: _Key) -> tuple[Db, AbstractContextManager[Db]] | None:
        with self._lock:
            found = self._idle.pop(key, None)
        if found is None:
            return None
        db, ctx, since = found
        if time.monotonic() - since > _MAX_IDLE_S:
            _close(ctx)
            return None
        return db, ctx

    def give(self, key: _Key, db: Db, ctx: AbstractContextManager[Db]) -> None:
        with self._lock:
            other = self._idle.get(key)
            self._idle[key] = (db, ctx, time.monotonic())
        if other is not None:  # a nested step's connection came back first: keep one
            _close(other[1])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
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
    return (threading.get_ident(), ep.host or "", ep.port, ep.database, ep.user, pw or "", ep.options, role)


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
def connect(url: UrlLike | Endpoint, role: Role, *, write: bool = False) -> Iterator[Db]:
    """:func:`tasks.db.conn.connect`, reusing an idle connection of this thread inside
    :func:`shared_connections` (PostgreSQL)."""
    pool = _pool.get()
    ep = url if isinstance(url, Endpoint) else parse_db_url(url)
    if pool is None or ep.dialect != "postgresql":
        with _open(ep, role, write=write) as db:
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
    try:
        yield db
    except BaseException:
        _close(ctx)
        raise
    try:
        ok = _reusable(db)
    except Exception:
        ok = False
    if ok:
        pool.give(key, db, ctx)
    else:
        _close(ctx)


__all__ = ["connect", "shared_connections"]
