"""The state directory: documented layout, run keys, atomic writes, and cleanup.

Layout (``BATCHFLOWS_STATE_DIR``, default ``<PREFECT_HOME>/batchflows``)::

    runs/<flow>/<run_key>/
        lock                held (flock) by the live run of this key; says who holds it
        chunks/             Prefect result records of finished chunks (the resume cache), by position
        journal/            finished items of chunks still running or stopped (deleted once recorded)
        plan.log            chunk sizes as cut, replayed on resume
        identity            hash of the run's identity (cache_version, handler, ...) at its last attempt
        dead_letter.jsonl   failed items, one JSON line each (only when some failed)
        summary.json        the last RunSummary of this run key
        checkpoint.json     flow-specific progress (e.g. the pagination cursor)
    outputs/<hash>.lock     held (flock) by the live run that writes to an output folder; says which run
    outputs/<hash>.lease    the same in object storage: a lease in the bucket (machines see each other's)

Remove old runs with ``python -m tasks.core.state cleanup --older-than-days 30`` or :func:`cleanup_state`
(by age, it also removes the output locks and leases no run has taken or released since).

With ``BATCHFLOWS_STATE_DIR=s3://bucket/prefix`` the same layout lives in object storage (plus
``runs/<flow>/<run_key>/lease``) and the directories above are this machine's working copy: see
tasks.core.objstore for what is pushed when, tasks.core.lease for the lease.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tasks.core.errors import ConfigError, FatalError
from tasks.core.journal import MAGIC, ChunkJournal, journal_content
from tasks.core.settings import EngineSettings

if TYPE_CHECKING:
    from tasks.core.objstore import ObjectStore

RUN_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_run_key(run_key: str) -> str:
    if not RUN_KEY_RE.match(run_key):
        msg = (
            f"run_key {run_key!r} is not allowed; use 1-128 letters, digits, '.', '_' or '-' "
            "(it names a directory under the state dir)"
        )
        raise ConfigError(msg)
    return run_key


def new_run_key() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class RunDir:
    """Paths of one run key of one flow. With state in object storage (``store``), ``root`` is this
    machine's working copy and :meth:`push` makes a finished file durable there (see tasks.core.objstore).
    Every write there goes through :meth:`writable`: ``guard`` (the run key's lease still held) is asked right
    before each PUT and DELETE, so a run that lost its key changes nothing of the run that holds it now."""

    root: Path
    store: ObjectStore | None = field(default=None, compare=False)
    rel: str = ""  # the run's key prefix in the store: runs/<flow>/<run_key>
    _pushed: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    guard: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_run(cls, flow: str, run_key: str, state_dir: Path | None = None, *,
                store: ObjectStore | None = None, guard: Callable[[], bool] | None = None) -> RunDir:
        base = state_dir.expanduser().resolve() if state_dir is not None else EngineSettings().resolved_state_dir()
        rel = f"runs/{flow}/{validate_run_key(run_key)}"
        root = base / rel
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            what = "state cache" if store is not None else "state dir"
            setting = "BATCHFLOWS_STATE_CACHE" if store is not None else "BATCHFLOWS_STATE_DIR"
            msg = f"{unwritable(f'{what} {str(base)!r}', exc)}; or set {setting} to a writable directory"
            raise ConfigError(msg) from None
        return cls(root, store, rel, guard=guard)

    @property
    def location(self) -> str:
        """Where the run's state is durable: the object storage URL, else the local directory."""
        return self.store.where(self.rel) if self.store is not None else str(self.root)

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def plan(self) -> Path:
        return self.root / "plan.log"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def dead_letter(self) -> Path:
        return self.root / "dead_letter.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    def read_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint.exists():
            return None
        return json.loads(self.checkpoint.read_text())

    def write_checkpoint(self, data: dict[str, Any]) -> None:
        write_text_atomic(self.checkpoint, json.dumps(data, default=str))
        self.push(self.checkpoint)

    # ------------------------------------------------------------------ object storage

    def writable(self) -> bool:
        """Whether this run may write its state in object storage now (False for local state, and once
        ``guard`` says the run no longer holds its key)."""
        return self.store is not None and (self.guard is None or self.guard())

    def put(self, name: str, data: bytes) -> bool:
        """PUT ``data`` as the run's object ``name`` if :meth:`writable`; whether it was written."""
        if not self.writable():
            return False
        assert self.store is not None
        self.store.put(f"{self.rel}/{name}", data)
        return True

    def delete(self, name: str) -> bool:
        """DELETE the run's object ``name`` if :meth:`writable`; whether it was deleted."""
        if not self.writable():
            return False
        assert self.store is not None
        self.store.delete(f"{self.rel}/{name}")
        return True

    def push(self, path: Path, *, min_interval_s: float = 0.0) -> None:
        """Mirror one finished local file of this run to object storage: one PUT of its bytes, or a DELETE
        when the file is gone. ``min_interval_s``: skip if this file was pushed less than that ago (a file
        that is rebuilt on resume anyway, like the dead letters). No-op for local state, and once the run
        is not :meth:`writable`."""
        if self.store is None:
            return
        name = path.relative_to(self.root).as_posix()
        now = time.monotonic()
        if min_interval_s and now - self._pushed.get(name, -1e9) < min_interval_s:
            return
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.delete(name)
            return
        if self.put(name, data):
            self._pushed[name] = now

    def discard(self, path: Path) -> None:
        """Delete a file of this run here and in object storage (a chunk record that must not be reused)."""
        path.unlink(missing_ok=True)
        self.push(path)

    def pull(self) -> dict[str, str]:
        """Bring this machine's copy up to date from object storage (call it holding the run key's lease);
        returns the stored objects of the run (name -> ETag).

        Object storage wins, except where this machine cut as far or further: when its local ``plan.log``
        extends or equals the stored one, its plan and chunk records stay (its records are pushed) and each
        of its journals is merged with the stored one of the same chunk, which another machine may have
        carried on since; otherwise local records and journals not in storage are dropped (their chunks may
        have been cut differently since)."""
        if self.store is None:
            return {}
        remote = self.store.list(self.rel)
        stored_plan = self.store.get(f"{self.rel}/plan.log")
        remote_plan = stored_plan.data if stored_plan is not None else b""
        local_plan = self.plan.read_bytes() if self.plan.is_file() else b""
        keep_local = local_plan.startswith(remote_plan)
        local_records = {p.name for p in self.chunks.glob("*") if p.is_file() and not p.name.startswith(".")}
        remote_records = {n.removeprefix("chunks/") for n in remote if n.startswith("chunks/")}
        if not keep_local:
            for name in local_records - remote_records:
                (self.chunks / name).unlink(missing_ok=True)
            shutil.rmtree(self.journal, ignore_errors=True)
        skip = ("lease", "plan.log") if keep_local else ("lease",)
        self.store.pull(self.rel, self.root, skip=skip, keep=("journal/",) if keep_local else ())
        if keep_local:
            self._merge_journals(remote)
            if local_plan != remote_plan:
                self.push(self.plan)
            for name in sorted(local_records - remote_records):
                self.push(self.chunks / name)
        return remote

    def _merge_journals(self, remote: dict[str, str]) -> None:
        """Each journal held both here and in storage with other bytes holds what either holds after this
        (see :func:`_merge_journal`): the newer one can be either machine's."""
        assert self.store is not None
        for name, etag in sorted(remote.items()):
            path = self.root / name
            if not name.startswith("journal/") or not path.is_file():
                continue
            if hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() == etag.strip('"'):
                continue
            stored = self.store.get(f"{self.rel}/{name}")
            if stored is not None:
                _merge_journal(path, stored.data)


def _merge_journal(path: Path, stored: bytes) -> None:
    """Make the journal at ``path`` (this machine's) hold every item finished in it or in ``stored`` (the
    same chunk's journal as object storage holds it).

    A journal only grows, and a machine that takes a run over starts from the stored one, so usually one
    holds the other and the larger is kept: this machine's when it finished more since its last push, the
    stored one when another machine continued the chunk after this one died. When each holds items the other
    lacks, every one of those handler calls happened: the union is kept, and an item in both keeps the stored
    outcome (the later call). A stored journal of other content (the source changed) replaces this one."""
    copy = path.with_name(f".{path.name}.stored")
    with atomic_write(copy, "wb") as fh:
        fh.write(stored)
    try:
        content, stored_content = journal_content(path), journal_content(copy)
        if stored_content is None:
            return
        if content != stored_content:
            os.replace(copy, path)
            return
        here, there = ChunkJournal(path, content).load(), ChunkJournal(copy, content).load()
        merged = here | there
        if merged == there:
            os.replace(copy, path)
        elif merged != here:
            lines = [f"{MAGIC} {content}\n"] + [ChunkJournal.line(p, e.kind, e.payload) for p, e in sorted(merged.items())]
            with atomic_write(path, "wb") as fh:
                fh.write("".join(lines).encode("utf-8", "surrogateescape"))
    finally:
        copy.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``, fsync, then rename over it; nothing half-written remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


# --------------------------------------------------------------------------- outputs that cannot be written

_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # never raised by reading
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}
_HINTS = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "free space or raise the disk quota",
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write or write somewhere else",
    errno.EACCES: "grant write permission on it or write somewhere else",
    errno.EPERM: "grant write permission on it or write somewhere else",
    errno.ENOTDIR: "a part of that path is a regular file, not a directory: choose another path",
    errno.EEXIST: "a regular file is in the way of that directory: choose another path",
    errno.EISDIR: "a directory is in the way of that file: choose another path",
}
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of an I/O error polars wrapped in its own exception ("(os error 28)")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = _OS_ERROR_RE.search(str(exc))
    return int(found[1]) if found else None


def unwritable(what: str, exc: BaseException) -> str:
    """``<what> cannot be written: <reason> (<file>); <what to do>``."""
    code = os_errno(exc)
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or (
        os.strerror(code) if code else str(exc))
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    return f"{what} cannot be written: {reason}{where}; {_HINTS.get(code or 0, 'make it writable')}"


class OutputWriteError(FatalError):
    """A chunk's output could not be written (read-only filesystem, disk full, no permission, a file in
    the way). Fatal for the run: every later chunk would run its items and then fail the same way."""


def output_write_error(exc: BaseException, output_dir: str | Path, *, writing: bool = False) -> OutputWriteError | None:
    """``exc`` as an OutputWriteError if it is a failure to write under ``output_dir``, else None.

    ``writing=True`` when ``exc`` comes from code that only writes there (any OSError counts); otherwise
    (a polars sink also reads the input) only errors that writing alone raises, or that name the output.
    """
    code = os_errno(exc)
    if code is None and not (writing and isinstance(exc, OSError)):
        return None
    named = str(Path(output_dir)) in str(exc) or str(getattr(exc, "filename", "") or "").startswith(str(output_dir))
    if not (writing and isinstance(exc, OSError)) and code not in _WRITE_ONLY_ERRNOS and not (
            code in _PATH_ERRNOS and named):
        return None
    msg = (
        f"{unwritable(f'output directory {str(output_dir)!r}', exc)}. The run stopped here (every later chunk "
        "would fail the same way); the chunks written so far are complete. Fix it, then rerun with the same "
        "run_key: finished chunks are reused, the others run"
    )
    return OutputWriteError(msg)


_COLLAPSED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/[^/]")


def check_writable_dir(path: str | Path, *, what: str = "output directory") -> None:
    """Prove before any work that files can be created in ``path`` (ConfigError naming it if not).

    Creates nothing that stays: a hidden probe file goes into ``path``, or into its nearest existing
    ancestor when ``path`` does not exist yet. A real write is the only test that holds for root
    (permission bits do not stop root) and read-only mounts; a full disk shows at the chunk's write.
    """
    from tasks.core.objstore import is_url

    if is_url(str(path)):  # object storage: the bucket must answer to these credentials
        from tasks.core.objoutput import check_output_url

        check_output_url(str(path))
        return
    if _COLLAPSED_URL.match(str(path)):  # a URL that went through Path(): "s3://b/p" became "s3:/b/p"
        msg = (f"{what} {str(path)!r} looks like an object storage URL, and this flow writes to local folders "
               "only: give a local path (output='s3://...' works for batch_map, api_bulk and api_extract)")
        raise ConfigError(msg)
    target = Path(path).expanduser().absolute()
    probe_dir = target
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_dir))
        fd, probe = tempfile.mkstemp(prefix=".batchflows-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        shown = OSError(exc.errno, exc.strerror, str(probe_dir))  # not the probe's random name
        msg = f"{unwritable(f'{what} {str(target)!r}', shown)}. Nothing was run"
        raise ConfigError(msg) from None


FLOWS = ("api-bulk", "api-extract", "batch-map", "db-migrate", "etl-demo", "file-transform", "replay-dead-letters")
"""The flows' names (``runs/<flow>/``): the deployments' names, with ``-``, not the Python functions'."""


def cleanup_state(
    *, older_than_days: float | None = None, flow: str | None = None, run_key: str | None = None,
    state_dir: Path | None = None, dry_run: bool = False, on_skip: Callable[[Path | str], None] | None = None,
) -> list[Path | str]:
    """Delete run directories by age (of their newest file) and/or flow and run key. Returns what went.

    Without ``older_than_days`` and ``run_key`` the age is ``BATCHFLOWS_STATE_RETENTION_DAYS`` (30).
    A run directory whose key is held by a live run is never removed: ``on_skip`` is called with it. A
    ``flow`` that is neither one of :data:`FLOWS` nor has run directories is a ConfigError naming them.
    With state in object storage (and no ``state_dir`` given) the run prefixes there go by the same rules
    (a live lease keeps one), then this machine's cache.
    """
    if older_than_days is not None and not older_than_days >= 0:  # NaN too
        msg = f"older_than_days must be 0 or more (days since a run's newest file), not {older_than_days!r}"
        raise ConfigError(msg)
    if older_than_days is None and run_key is None:
        older_than_days = EngineSettings().state_retention_days
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed: list[Path | str] = []
    skip = on_skip or (lambda _: None)
    store = EngineSettings().object_store() if state_dir is None else None
    base = (state_dir.expanduser().resolve() if state_dir is not None else EngineSettings().resolved_state_dir()) / "runs"
    if flow is not None:
        _check_flow(flow, base, store)
    if store is not None:
        removed.extend(_cleanup_stored(store, cutoff=cutoff, flow=flow, run_key=run_key, dry_run=dry_run,
                                       on_skip=skip))
    for flow_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if flow is not None and flow_dir.name != flow:
            continue
        for run_dir in sorted(p for p in flow_dir.iterdir() if p.is_dir()):
            if run_key is not None and run_dir.name != run_key:
                continue
            if cutoff is not None:
                newest = max((f.stat().st_mtime for f in run_dir.rglob("*")), default=run_dir.stat().st_mtime)
                if newest > cutoff:
                    continue
            with _unheld(run_dir / "lock") as free:  # held through the removal: no run starts in it meanwhile
                if not free:
                    skip(run_dir)
                    continue
                removed.append(run_dir)
                if not dry_run:
                    shutil.rmtree(run_dir, ignore_errors=True)
    if cutoff is not None and flow is None and run_key is None:
        removed.extend(_cleanup_output_locks(base.parent / "outputs", cutoff=cutoff, dry_run=dry_run))
    return removed


def _check_flow(flow: str, base: Path, store: ObjectStore | None) -> None:
    """A flow name that can be meant: one of FLOWS or a flow with run directories (a flow of your own)."""
    stored = {p.name for p in base.iterdir() if p.is_dir()} if base.is_dir() else set()
    if store is not None:
        stored |= {name.split("/", 1)[0] for name in store.entries("runs") if "/" in name}
    if flow in FLOWS or flow in stored:
        return
    hint = f" (did you mean {flow.replace('_', '-')!r}?)" if flow.replace("_", "-") in FLOWS else ""
    msg = (f"unknown flow {flow!r}{hint}: the flows are {', '.join(FLOWS)}; flows with run directories: "
           f"{', '.join(sorted(stored)) or 'none'}")
    raise ConfigError(msg)


def _cleanup_output_locks(outputs: Path, *, cutoff: float, dry_run: bool) -> list[Path]:
    """The output folders' lock files (``outputs/<hash>.lock``, one per output folder ever written) last
    taken or released before ``cutoff`` and held by no live run."""
    removed: list[Path] = []
    for lock in sorted(outputs.glob("*.lock")) if outputs.is_dir() else []:
        with contextlib.suppress(FileNotFoundError), _unheld(lock) as free:
            if not free or lock.stat().st_mtime > cutoff:
                continue
            removed.append(lock)
            if not dry_run:
                lock.unlink()
    return removed


def _cleanup_stored(store: ObjectStore, *, cutoff: float | None, flow: str | None, run_key: str | None,
                    dry_run: bool, on_skip: Callable[[Path | str], None]) -> list[str]:
    """:func:`cleanup_state` for the run prefixes in object storage (``runs/<flow>/<run_key>/``)."""
    from tasks.core.lease import lease_live

    runs: dict[str, list[tuple[str, float]]] = {}
    for name, (_, changed) in store.entries("runs").items():
        parts = name.split("/", 2)
        if len(parts) == 3 and (flow is None or parts[0] == flow) and (run_key is None or parts[1] == run_key):
            runs.setdefault(f"runs/{parts[0]}/{parts[1]}", []).append((name, changed.timestamp()))
    removed: list[str] = []
    for prefix, objects in sorted(runs.items()):
        if cutoff is not None and max(t for _, t in objects) > cutoff:
            continue
        if lease_live(store, f"{prefix}/lease"):
            on_skip(store.where(prefix))
            continue
        removed.append(store.where(prefix))
        if not dry_run:
            store.delete_many([f"runs/{name}" for name, _ in objects])
    if cutoff is not None and flow is None and run_key is None:
        removed.extend(_cleanup_output_leases(store, cutoff=cutoff, dry_run=dry_run))
    return removed


def _cleanup_output_leases(store: ObjectStore, *, cutoff: float, dry_run: bool) -> list[str]:
    """The output folders' leases in the bucket (``outputs/<hash>.lease``) last renewed or released before
    ``cutoff`` and held by no live run; each deleted only if unchanged since it was listed (If-Match)."""
    from tasks.core.lease import lease_live
    from tasks.core.objstore import PreconditionFailed

    removed: list[str] = []
    for name, (etag, changed) in sorted(store.entries("outputs").items()):
        rel = f"outputs/{name}"
        if not name.endswith(".lease") or changed.timestamp() > cutoff or lease_live(store, rel):
            continue
        if not dry_run:
            try:
                store.delete(rel, if_match=etag)
            except PreconditionFailed:  # a run took it meanwhile
                continue
        removed.append(store.where(rel))
    return removed


@contextmanager
def _unheld(lock: Path) -> Iterator[bool]:
    """Whether no live run holds this lock file (see tasks.core.runlock); when free (or absent), it stays
    locked by this process until the block ends, so a run starting meanwhile waits for the removal and then
    locks a new file (RunLock.acquire checks that its path still names the file it locked)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.core.state", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    clean = sub.add_parser("cleanup", help="delete old run directories")
    clean.add_argument("--older-than-days", type=float, default=None)
    clean.add_argument("--flow", default=None)
    clean.add_argument("--run-key", default=None)
    clean.add_argument("--dry-run", action="store_true")
    reset = sub.add_parser("reset-incremental", help="forget incremental watermarks: the next runs start over")
    reset.add_argument("--flow", default=None, help="api-extract or file-transform (default: both)")
    reset.add_argument("--stream", default=None, help="one stream id (see the run's summary)")
    args = parser.parse_args(argv)
    if args.cmd == "reset-incremental":
        from tasks.core.watermarks import reset_watermarks

        try:
            gone = reset_watermarks(args.flow, args.stream)
        except ConfigError as exc:
            parser.error(str(exc))
        for path in gone:
            print(f"removed {path}")
        print(f"removed {len(gone)} watermark(s); db_migrate keeps its own in the target database "
              "(run it with reset_incremental=True)")
        return 0
    skipped: list[Path | str] = []
    try:
        removed = cleanup_state(older_than_days=args.older_than_days, flow=args.flow, run_key=args.run_key,
                                dry_run=args.dry_run, on_skip=skipped.append)
    except ConfigError as exc:
        parser.error(str(exc))
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    for path in skipped:
        print(f"skipped {path}: a live run holds its run_key")
    kept = f"; skipped {len(skipped)} held by a live run" if skipped else ""
    print(f"{verb} {len(removed)} run directories{kept}")
    return 0


# ``python -m tasks.core.state``: importing the package tasks.core imports this module first (its flows and
# engine use it), so runpy would warn that it is in sys.modules already and run a second copy as __main__.
# That import is expected: the warning is silenced for this module only, and the CLI runs in the imported copy.
warnings.filterwarnings("ignore", message=r"'tasks\.core\.state' found in sys\.modules", category=RuntimeWarning)

if __name__ == "__main__":
    from tasks.core.state import _main as _imported_main

    raise SystemExit(_imported_main())

__all__ = [
    "FLOWS",
    "OutputWriteError",
    "RunDir",
    "atomic_write",
    "check_writable_dir",
    "cleanup_state",
    "new_run_key",
    "os_errno",
    "output_write_error",
    "unwritable",
    "validate_run_key",
    "write_text_atomic",
]
