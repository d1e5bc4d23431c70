"""Part files in object storage: ``output="s3://bucket/prefix"`` for batch_map, api_bulk and api_extract.

A part is one PUT of its finished bytes (built in memory: a part is one chunk's rows), so a reader never
sees half a part and a rerun that writes the same part replaces it whole, as temp + rename does locally.
Credentials and endpoint come from the same AWS variables as state in object storage (tasks.core.objstore).

A run with state in object storage guards its output folder (:func:`guard_output`): every part written or
deleted under it in this process first asks the run whether it still holds its run key's lease, so a run
frozen past its lease and taken over never replaces or deletes a part the run that holds the key now wrote.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

from tasks.core.errors import FatalError
from tasks.core.objstore import ObjectStore, is_url

_guards: dict[str, Callable[[], bool]] = {}
_guards_lock = threading.Lock()


class OutputNotHeld(FatalError):
    """A part was not written or deleted: the run writing it no longer holds its run key (another run does)."""


@functools.lru_cache(maxsize=16)
def _store(url: str) -> ObjectStore:
    return ObjectStore.from_url(url, role="output")


def output_store(url: str) -> ObjectStore:
    """The store of an output URL (one client per URL and process)."""
    return _store(url.rstrip("/"))


def check_output_url(url: str) -> None:
    """Prove before any work that the bucket of an output URL is reachable (ConfigError naming it if not)."""
    output_store(url).check()


def guard_output(output_dir: str, writable: Callable[[], bool] | None) -> None:
    """From now on, a part written or deleted under ``output_dir`` in this process first asks ``writable()``
    (raising :class:`OutputNotHeld` when it says no); ``None`` removes the guard."""
    folder = output_dir.rstrip("/")
    with _guards_lock:
        if writable is None:
            _guards.pop(folder, None)
        else:
            _guards[folder] = writable


def _check_guard(url: str) -> None:
    url = url.rstrip("/")
    with _guards_lock:
        guards = [(folder, ok) for folder, ok in _guards.items() if url == folder or url.startswith(folder + "/")]
    for folder, writable in guards:
        if not writable():
            msg = (f"{url} was not written or deleted: the run writing to {folder} no longer holds its run key's "
                   "lease (it stalled past it and another run took the key over, and with it this output folder)")
            raise OutputNotHeld(msg)


def put_part(output_dir: str, name: str, data: bytes) -> str:
    """PUT one finished part under ``output_dir``; its URL."""
    _check_guard(f"{output_dir.rstrip('/')}/{name}")
    store = output_store(output_dir)
    store.put(name, data)
    return store.where(name)


def _split(url: str) -> tuple[ObjectStore, str]:
    """The store of a part's folder and the part's name in it."""
    folder, name = url.rstrip("/").rsplit("/", 1)
    return output_store(folder), name


def part_exists(url: str) -> bool:
    store, name = _split(url)
    return store.get(name) is not None


def read_part(url: str) -> bytes:
    store, name = _split(url)
    obj = store.get(name)
    if obj is None:
        msg = f"output part {url!r} is gone"
        raise FileNotFoundError(msg)
    return obj.data


def list_parts(output_dir: str) -> list[str]:
    """URLs of every object under ``output_dir`` (partition folders included)."""
    store = output_store(output_dir)
    return [store.where(name) for name in sorted(store.list(""))]


def delete_parts(output_dir: str, names: list[str]) -> None:
    """Delete the objects ``names`` (relative to ``output_dir``)."""
    if names:
        _check_guard(output_dir)
    output_store(output_dir).delete_many(names)


def exists(path: str | Path) -> bool:
    """``Path.exists`` that also answers for part URLs."""
    return part_exists(str(path)) if is_url(str(path)) else Path(path).exists()


__all__ = ["OutputNotHeld", "check_output_url", "delete_parts", "exists", "guard_output", "list_parts", "output_store",
           "part_exists", "put_part", "read_part"]
