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

:class:`OutputLock` is the same lock for an output folder (``<state dir>/outputs/<hash>.lock``): two runs
cannot share one, since their part files have the same names (``part-000017`` of each). With state in object
storage that path is in each machine's local cache, so there it is a lease in the state bucket instead
(``outputs/<hash>.lease``, tasks.core.lease.OutputLease): refused across machines, and a dead holder's folder
is free once its lease expires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.errors import BatchflowsError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.core.lease import OutputLease
    from tasks.core.objstore import ObjectStore

log = logging.getLogger("batchflows.runlock")


class RunLocked(BatchflowsError):
    """Another live run holds this run key."""


class OutputInUse(RunLocked):
    """Another live run writes to this output folder."""


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


_HOLDER_FIELDS = tuple(f.name for f in dataclasses.fields(Holder))


def _read_info(fd: int) -> dict[str, Any]:
    """What the lock file says (the holder's fields, and what it holds for an output lock); {} if unreadable."""
    try:
        data = json.loads(os.pread(fd, 8192, 0).decode() or "null")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_holder(fd: int) -> Holder | None:
    return _holder(_read_info(fd))


def _holder(data: dict[str, Any]) -> Holder | None:
    """The holder's fields of a lock file's contents (None when they are not all there)."""
    try:
        return Holder(**{k: data[k] for k in _HOLDER_FIELDS if k in data}) if data else None
    except TypeError:
        return None


class RunLock:
    """``with RunLock(path, flow=..., run_key=..., flow_run_id=...) as lock:`` (see the module docstring)."""

    def __init__(self, path: Path, *, flow: str, run_key: str, flow_run_id: str | None) -> None:
        self.path = path
        self.flow = flow
        self.run_key = run_key
        self.flow_run_id = flow_run_id
        self.extra: dict[str, Any] = {}  # written beside the holder's fields
        self.previous: Holder | None = None  # a holder that died without releasing
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise self._refusal(_holder(info), info) from None
            if names_file(self.path, fd):
                break
            os.close(fd)  # `state cleanup` removed the file between our open and our lock: lock the new one
        previous = _read_holder(fd)
        if previous is not None and not previous.released:
            self.previous = previous
        me = Holder(host=socket.gethostname(), pid=os.getpid(), flow_run_id=self.flow_run_id, started=time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**me.__dict__, **self.extra}).encode(), 0)
        self._fd = fd
        return self

    def _refusal(self, holder: Holder | None, info: dict[str, Any]) -> RunLocked:
        who = holder.describe() if holder else "a process that has not written its name yet"
        msg = (f"{self.flow} run_key {self.run_key!r} is held by a live run ({who}); two runs of one key would "
               "both process its unfinished chunks. Wait for that run to finish, cancel it (prefect flow-run "
               "cancel <id>), or start this one with another run_key")
        return RunLocked(msg)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            info = _read_info(fd)
            if info:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({**info, "released": True}).encode(), 0)
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


class OutputLock(RunLock):
    """One live run per output folder, among the runs that share a state dir (see the module docstring).
    ``store``: the state dir's object storage, when it is there (the lock is then a lease in it)."""

    def __init__(self, output: str, *, state_dir: Path, flow: str, run_key: str, flow_run_id: str | None,
                 store: ObjectStore | None = None, lease_s: float = 60.0,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self._lease: OutputLease | None = None
        self.output = output_identity(output)
        digest = hashlib.blake2b(self.output.encode(), digest_size=16).hexdigest()
        super().__init__(state_dir / "outputs" / f"{digest}.lock", flow=flow, run_key=run_key,
                         flow_run_id=flow_run_id)
        self.extra = {"flow": flow, "run_key": run_key, "output": self.output}
        if store is not None:
            from tasks.core.lease import OutputLease

            self._lease = OutputLease(store, f"outputs/{digest}.lease", output=self.output, flow=flow,
                                      run_key=run_key, flow_run_id=flow_run_id, lease_s=lease_s, on_lost=on_lost)

    def acquire(self) -> OutputLock:
        if self._lease is None:
            super().acquire()
        else:
            self.previous = self._lease.acquire().previous
        return self

    def _refusal(self, holder: Holder | None, info: dict[str, Any]) -> RunLocked:
        return output_refusal(self.output, holder, info, flow=self.flow, run_key=self.run_key)

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
        super().release()

    @property
    def held(self) -> bool:
        return self._lease.held if self._lease is not None else super().held


def output_refusal(output: str, holder: Holder | None, info: dict[str, Any], *, flow: str, run_key: str,
                   held_by: str = "") -> OutputInUse:
    """The refusal of a run into ``output`` while another live run (``holder``, ``info``: its lock's contents)
    writes to it; ``held_by``: how it holds it (a lease, and when that expires)."""
    who = holder.describe() if holder else "a process that has not written its name yet"
    other = f"{info.get('flow', 'a')} run_key {info.get('run_key', '?')!r}"
    through = f" through {held_by}" if held_by else ""
    msg = (f"output {output!r} is in use by a live run: {other} ({who}){through}. Two runs cannot share an output "
           f"folder: their part files have the same names (part-000017 of each), so one would overwrite or "
           f"delete the other's results. Nothing was run for {flow} run_key {run_key!r}: give each run "
           "its own output folder (e.g. one per run_key or scheduled time), or start it when that run is done")
    return OutputInUse(msg)


def names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced since it was opened)."""
    try:
        here, opened = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


def output_identity(output: str) -> str:
    """An output folder as one string whatever way it was written: an absolute path, or the URL."""
    from tasks.core.objstore import is_url

    return output.rstrip("/") if is_url(output) else str(Path(output).expanduser().resolve())


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


__all__ = ["Holder", "OutputInUse", "OutputLock", "RunLock", "RunLocked", "mark_crashed", "names_file", "output_identity",
           "output_refusal"]
