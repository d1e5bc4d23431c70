"""One live run per run key on object storage: a lease object written with conditional PUTs.

``flock`` (tasks.core.runlock) needs one kernel to see every holder; machines that share only object
storage use a lease instead, ``runs/<flow>/<run_key>/lease`` in the state bucket, holding who holds it
(host, pid, flow run, start) and whether it was released:

* **take**: ``PUT If-None-Match: *`` creates it; when it exists, it is free if released or *expired*
  (not renewed for ``lease_s`` by the server's clock: its Last-Modified against the server's Date, so
  the machines' clocks do not matter) and is then taken with ``PUT If-Match: <its ETag>``. Of two
  takers, one PUT wins; the other gets 412 and is refused like a live holder.
* **renew**: a daemon thread re-PUTs it with ``If-Match`` every ``lease_s / 3``; a renewal that finds the
  ETag changed (someone took the lease after this process stalled past ``lease_s``) means the lease is
  lost: ``on_lost`` is called (the run stops submitting) and nothing more is written to the lease.
* **release**: ``PUT If-Match`` with ``released: true``.

A holder SIGKILLed stops renewing, so its key is free ``lease_s`` after its last renewal; the next run
finds it expired but not released, says the previous run died and marks its flow run Crashed, as the
flock version does. A live holder (renewing) is never taken over.

:class:`OutputLease` is the same lease for an output folder (``outputs/<hash>.lease`` in the state bucket),
which :class:`tasks.core.runlock.OutputLock` holds instead of its flock when the state is in object storage:
the flock lives in each machine's cache, where the other machines never see it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.core.objstore import ObjectStore, PreconditionFailed
from tasks.core.runlock import Holder, RunLocked, output_refusal

log = logging.getLogger("batchflows.lease")


def _holder(data: bytes) -> Holder | None:
    try:
        raw = json.loads(data.decode() or "null")
        return Holder(**{k: raw[k] for k in ("host", "pid", "flow_run_id", "started", "released") if k in raw})
    except (ValueError, TypeError, KeyError):
        return None


def _info(data: bytes) -> dict[str, Any]:
    """The lease's contents as a dict ({} if unreadable)."""
    try:
        raw = json.loads(data.decode() or "null")
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


def lease_live(store: ObjectStore, rel: str, default_lease_s: float = 60.0) -> bool:
    """Whether the lease object ``rel`` is held by a live run (there, not released, renewed within its lease)."""
    current = store.get(rel)
    if current is None:
        return False
    holder = _holder(current.data)
    if holder is not None and holder.released:
        return False
    try:
        limit = float(json.loads(current.data.decode()).get("lease_s", default_lease_s))
    except (ValueError, TypeError, AttributeError):
        limit = default_lease_s
    return (current.server_now - current.last_modified).total_seconds() < limit


class LeaseLock:
    """Same face as :class:`tasks.core.runlock.RunLock` (``acquire``, ``release``, ``held``, ``previous``)."""

    def __init__(self, store: ObjectStore, rel: str, *, flow: str, run_key: str, flow_run_id: str | None,
                 lease_s: float = 60.0, on_lost: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.rel = rel
        self.flow = flow
        self.run_key = run_key
        self.flow_run_id = flow_run_id
        self.lease_s = lease_s
        self.on_lost = on_lost
        self.extra: dict[str, Any] = {}  # written beside the holder's fields
        self.previous: Holder | None = None
        self.lost: str | None = None
        self._etag: str | None = None
        self._me: Holder | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return self.store.where(self.rel)

    def _body(self, *, released: bool = False) -> bytes:
        assert self._me is not None
        return json.dumps({**self.extra, **self._me.__dict__, "released": released, "lease_s": self.lease_s,
                           "renewed": time.time()}).encode()

    def _refuse(self, holder: Holder | None, left: float | None, info: dict[str, Any]) -> RunLocked:
        who = holder.describe() if holder else "a process whose lease is unreadable"
        if holder is not None and _gone_from_this_host(holder):
            wait = f"in {left:.0f} s" if left is not None else "when its lease expires"
            msg = (f"{self.flow} run_key {self.run_key!r} is still leased to a run of this machine that is no longer "
                   f"running ({who}): the lease {self.path} lets no other run take the key before it expires, since "
                   f"machines cannot see each other's processes. Rerun with the same run_key {wait} (a shorter "
                   "BATCHFLOWS_STATE_LEASE_S shortens this wait after a crash)")
            return RunLocked(msg)
        until = f"; its lease expires in {left:.0f} s unless it renews it" if left is not None else ""
        msg = (f"{self.flow} run_key {self.run_key!r} is held by a live run ({who}) through the lease "
               f"{self.path}{until}; two runs of one key would both process its unfinished chunks. Wait for that run "
               "to finish, cancel it (prefect flow-run cancel <id>), or start this one with another run_key")
        return RunLocked(msg)

    def acquire(self) -> LeaseLock:
        self._renewed = time.monotonic()  # before the PUT: the server's lease cannot start earlier
        self._me = Holder(host=socket.gethostname(), pid=os.getpid(), flow_run_id=self.flow_run_id,
                          started=time.time())
        current = self.store.get(self.rel)
        try:
            if current is None:
                self._etag = self.store.put(self.rel, self._body(), if_none_match=True)
            else:
                holder = _holder(current.data)
                age = (current.server_now - current.last_modified).total_seconds()
                limit = self._lease_of(current.data)
                if not (holder is not None and holder.released) and age < limit:
                    raise self._refuse(holder, limit - age, _info(current.data))
                self._etag = self.store.put(self.rel, self._body(), if_match=current.etag)
                if holder is not None and not holder.released:
                    self.previous = holder
        except PreconditionFailed:  # another taker's PUT won between our read and our write
            now = self.store.get(self.rel)
            raise self._refuse(_holder(now.data) if now else None, None, _info(now.data) if now else {}) from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="batchflows-lease", daemon=True)
        self._thread.start()
        return self

    def _lease_of(self, data: bytes) -> float:
        try:
            return float(json.loads(data.decode()).get("lease_s", self.lease_s))
        except (ValueError, TypeError, AttributeError):
            return self.lease_s

    def renew(self) -> bool:
        """Renew now (the thread does this every ``lease_s / 3``); False once the lease is lost."""
        with self._mutex:
            if self._etag is None or self.lost is not None:
                return False
            try:
                sent = time.monotonic()
                self._etag = self.store.put(self.rel, self._body(), if_match=self._etag)
                self._renewed = sent
                return True
            except PreconditionFailed:
                self._lose("another run took the lease over (this process stalled past the lease)")
                return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # storage briefly unreachable: try again next tick, give up past the lease
                log.warning("%s run_key %r: lease renewal failed (%s); retrying", self.flow, self.run_key,
                            type(exc).__name__)
                if time.monotonic() - self._renewed > self.lease_s:
                    with self._mutex:
                        self._lose(f"the lease could not be renewed for {self.lease_s:g} s ({type(exc).__name__})")
                    return

    def _lost_message(self, why: str) -> str:
        return (f"{self.flow} run_key {self.run_key!r} lost its lease {self.path}: {why}. This run stops "
                "submitting chunks; rerun with the same run_key when no other run holds it")

    def _lose(self, why: str) -> None:
        self.lost = self._lost_message(why)
        self._etag = None
        log.error(self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def release(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with self._mutex:
            etag, self._etag = self._etag, None
            if etag is None:
                return
            with contextlib.suppress(Exception):  # not released = expires after lease_s anyway
                self.store.put(self.rel, self._body(released=True), if_match=etag)

    @property
    def held(self) -> bool:
        return self._etag is not None

    def confirmed(self) -> bool:
        """Whether this holder may still write what the lease guards: held, and renewed (by this process's
        monotonic clock, from before the renewal's PUT) within the last half lease; past that, a renewal now
        decides. Called right before each write, so a holder that was frozen past its lease and taken over
        learns it before it writes anything, whichever of its threads wakes first. A lease that cannot be
        confirmed (storage unreachable) counts as lost for that write."""
        if not self.held:
            return False
        if time.monotonic() - self._renewed < self.lease_s / 2:
            return True
        try:
            return self.renew()
        except Exception:  # unreachable: not confirmed (the renewal thread decides when it is lost for good)
            return False

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class OutputLease(LeaseLock):
    """The lease on an output folder (``output``: its :func:`tasks.core.runlock.output_identity`); refusals
    are :class:`tasks.core.runlock.OutputInUse` naming the run that writes to it."""

    def __init__(self, store: ObjectStore, rel: str, *, output: str, flow: str, run_key: str,
                 flow_run_id: str | None, lease_s: float = 60.0, on_lost: Callable[[str], None] | None = None) -> None:
        super().__init__(store, rel, flow=flow, run_key=run_key, flow_run_id=flow_run_id, lease_s=lease_s,
                         on_lost=on_lost)
        self.output = output
        self.extra = {"flow": flow, "run_key": run_key, "output": output}

    def _refuse(self, holder: Holder | None, left: float | None, info: dict[str, Any]) -> RunLocked:
        until = f"; its lease expires in {left:.0f} s unless it renews it" if left is not None else ""
        return output_refusal(self.output, holder, info, flow=self.flow, run_key=self.run_key,
                              held_by=f"the lease {self.path}{until}")

    def _lost_message(self, why: str) -> str:
        return (f"{self.flow} run_key {self.run_key!r} lost its hold on output {self.output!r} (lease {self.path}): "
                f"{why}. This run stops submitting chunks, since another run may now write to that folder")


def _gone_from_this_host(holder: Holder) -> bool:
    """The holder ran on this machine (same host name) and its process no longer exists."""
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


__all__ = ["LeaseLock", "OutputLease", "lease_live"]
