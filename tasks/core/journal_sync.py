"""Item journals of in-flight chunks, copied to object storage every few seconds.

A chunk's journal (tasks.core.journal) is written per item through a memory map: a PUT per item would
cost more than most items. With state in object storage, a run instead pushes every journal that changed
since its last push each ``BATCHFLOWS_STATE_JOURNAL_PUSH_S`` seconds (and once more when the run ends),
one PUT of the file's current bytes each. A journal read back tolerates what a snapshot can hold (a
range taken but not written yet: zero bytes, a line without its newline), so every snapshot is a valid
journal of the items finished when it was taken. The plan the chunks were cut by is pushed first, so a
journal in storage always belongs to the chunks its plan describes.

What this gives failover: a machine that takes a killed run over restores every item the dead machine
finished before its last push; only the items finished in the last interval, and those in flight, run
again. A chunk's journal is deleted (here and in storage) once its record is written.

Every PUT and DELETE goes through the run dir's gate (:meth:`tasks.core.state.RunDir.writable`): a run that
lost its key's lease pushes nothing more, so it never overwrites the journals of the run that holds the key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tasks.core.state import RunDir

log = logging.getLogger("batchflows.journal_sync")


class JournalPusher:
    """Pushes the changed journals of one run every ``interval_s`` from a daemon thread (see the module)."""

    def __init__(self, run_dir: RunDir, interval_s: float, *, before_push: Callable[[], None],
                 stored: Iterable[str] = ()) -> None:
        assert run_dir.store is not None
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.before_push = before_push
        self._stored = set(stored)  # journal names in storage (pulled, or pushed by this run)
        self._sent: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchflows-journal-push", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push_changed()
            except Exception as exc:  # storage briefly unreachable: the next tick tries again
                log.warning("journals not pushed to %s: %s", self.run_dir.location, exc)

    def push_changed(self) -> int:
        """Push every journal whose bytes changed since its last push; returns how many were pushed."""
        pushed = 0
        for path in sorted(self.run_dir.journal.glob("*.jsonl")):
            with self._lock:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # recorded meanwhile
                    continue
                digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
                if self._sent.get(path.name) == digest:
                    continue
                self.before_push()
                if not self.run_dir.put(f"journal/{path.name}", data):  # the key is another run's now
                    break
                self._sent[path.name] = digest
                self._stored.add(path.name)
                pushed += 1
        return pushed

    def drop(self, path: Path) -> None:
        """A chunk's journal is no longer needed (its record is written): delete it here and in storage."""
        with self._lock:
            path.unlink(missing_ok=True)
            self._sent.pop(path.name, None)
            if path.name in self._stored and self.run_dir.delete(f"journal/{path.name}"):
                self._stored.discard(path.name)

    def stop(self) -> None:
        """Stop the thread (then :meth:`push_changed` once more: a run that ends leaves its unfinished
        chunks' journals whole in storage)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(30)


__all__ = ["JournalPusher"]
