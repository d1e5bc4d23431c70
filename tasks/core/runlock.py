"""One live run per run key: a lock file in the run's state directory.

Two runs with the same run key would both process every unfinished chunk and write the same dead
letters. The lock is an exclusive ``flock`` on ``<run dir>/lock``, held for the whole run. The kernel
drops it when the holder's process ends, however it ends (SIGKILL included), so a dead holder never
blocks the next run and a live one is never taken over. The file also says who holds it (host, pid,
flow run, start time) for the refusal message, and whether that holder let go cleanly: a new holder
that finds "not released" knows the previous run died, says so, and marks its flow run Crashed on
the Prefect server (otherwise it would show as Running forever).

``flock`` works across processes on one machine and, on Linux, over NFS (emulated with byte-range
locks); with state in object storage a run also holds the run key's lease there (tasks.core.lease), which
holds across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import BatchflowsError

log = logging.getLogger("batchflows.runlock")


class RunLocked(BatchflowsError):
    """Another live run holds this run key."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    flow_run_id: str | None
    started: float
    released: bool = False

    def describe(self) -> str:
        run = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}{run}, started {since}"


def _read_holder(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode() or "null")
        return Holder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    """``with RunLock(path, flow=..., run_key=..., flow_run_id=...) as lock:`` (see the module docstring)."""

    def __init__(self, path: Path, *, flow: str, run_key: str, flow_run_id: str | None) -> None:
        self.path = path
        self.flow = flow
        self.run_key = run_key
        self.flow_run_id = flow_run_id
        self.previous: Holder | None = None  # a holder that died without releasing
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "a process that has not written its name yet"
            msg = (f"{self.flow} run_key {self.run_key!r} is held by a live run ({who}); two runs of one key would "
                   "both process its unfinished chunks. Wait for that run to finish, cancel it (prefect flow-run "
                   "cancel <id>), or start this one with another run_key")
            raise RunLocked(msg) from None
        previous = _read_holder(fd)
        if previous is not None and not previous.released:
            self.previous = previous
        me = Holder(host=socket.gethostname(), pid=os.getpid(), flow_run_id=self.flow_run_id, started=time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            holder = _read_holder(fd)
            if holder is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({**holder.__dict__, "released": True}).encode(), 0)
        os.close(fd)  # drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a run object dropped without finish(): never keep the key locked
        self.release()


def mark_crashed(holder: Holder, *, flow: str, run_key: str, new_flow_run_id: str | None, timeout_s: float = 10.0
                 ) -> str | None:
    """Set the dead holder's flow run to Crashed if the server still shows it running; returns a note."""
    if not holder.flow_run_id or holder.flow_run_id == new_flow_run_id:
        return None
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            run: Any = client.read_flow_run(holder.flow_run_id)
            if run.state is None or run.state.is_final():
                return None
            by = f"flow run {new_flow_run_id}" if new_flow_run_id else "a new run"
            message = (f"{flow} run_key {run_key!r}: this run's process ended without finishing ({holder.describe()}); "
                       f"{by} took the run key over and resumes its work")
            client.set_flow_run_state(holder.flow_run_id, Crashed(message=message), force=True)
            return f"marked flow run {holder.flow_run_id} Crashed"
    except Exception as exc:  # cosmetic for the server's view: the run itself goes on
        log.warning("could not mark the dead holder's flow run %s Crashed: %s", holder.flow_run_id,
                    type(exc).__name__)
        return None


__all__ = ["Holder", "RunLock", "RunLocked", "mark_crashed"]
