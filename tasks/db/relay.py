"""Reading a running ``COPY ... TO STDOUT`` straight from libpq, in blocks (the PG -> PG relay, range digests)."""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import psycopg

from tasks.db.conn import Db

_RELAY_BLOCK = 256 * 1024


def _readable(fd: int) -> Callable[[], Any]:
    """A wait until ``fd`` is readable (poll where there is one: select is limited to fds below 1024)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return poller.poll
    return lambda: select.select([fd], [], [])


def relay(src: Db, write: Callable[[bytes], None]) -> int:
    """Relay a running ``COPY ... TO STDOUT`` of ``src`` to ``write`` in blocks of ~256 KB.

    The source sends one CopyData message per row; writing each one would cost a libpq call (and often a
    send) per row, so rows are gathered into blocks (3x faster for 1M small rows, measured). They are taken
    straight from libpq (``PQgetCopyData``, waiting on the socket only when none is buffered): psycopg's
    ``for data in copy`` runs a generator and a wait per row, 0.8 us of CPU per row against 0.35 (a 100k-row
    range relayed in 0.13 s instead of 0.28 s, measured). Call it inside psycopg's ``cursor.copy()`` block:
    the final result is read here too, so that block ends as it does after psycopg's own last read (an error
    raised midway leaves the COPY running, and the block's exit cancels it as before); a failure of the COPY
    raises its psycopg error. Returns the rows the COPY sent (its command tag)."""
    pg = src.raw.pgconn
    get = pg.get_copy_data
    wait = _readable(pg.socket)
    block = bytearray()
    while True:
        size, data = get(1)  # 1: do not block; 0 = nothing buffered yet, -1 = done (-2 raises OperationalError)
        if size > 0:
            block += data
            if len(block) >= _RELAY_BLOCK:
                write(bytes(block))
                block.clear()
        elif size == 0:
            wait()
            pg.consume_input()
        else:
            break
    error = None
    rows = 0
    while True:  # every result up to the end of the statement, so the connection is ready for the next one
        while pg.is_busy():
            wait()
            pg.consume_input()
        if (res := pg.get_result()) is None:
            break
        if res.status != psycopg.pq.ExecStatus.COMMAND_OK and error is None:
            error = psycopg.errors.error_from_result(res, encoding=src.raw.info.encoding)
        elif res.command_tuples is not None:
            rows = res.command_tuples
    if error is not None:
        raise error
    if block:  # after the source's statement ended: a target refusing it leaves the source ready for the row path
        write(bytes(block))
    return rows


__all__ = ["relay"]
