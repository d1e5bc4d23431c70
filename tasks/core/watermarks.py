"""Watermarks of incremental runs kept in the state dir (api_extract, file_transform).

``<state dir>/watermarks/<flow>/<stream>.json`` holds what the last *complete* run of a stream reached (a
record field's maximum, or the files it processed), written atomically when the run ends complete; a
failed or killed run leaves it as it was, so the next run covers what that one did not. A stream is what
is extracted to where (a hash of URL, parameters, output...), so two extractions never share a watermark.
db_migrate keeps its watermarks in the target database instead (tasks.db.incremental). With state in object
storage the record is one object (``watermarks/<flow>/<stream>.json``, one PUT), read from there at every
run; the local copy is only this machine's cache.

Start over from the command line::

    python -m tasks.core.state reset-incremental --flow api-extract [--stream <id>]
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tasks.core.settings import EngineSettings
from tasks.core.state import write_text_atomic


def stream_id(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def _root(state_dir: Path | None = None) -> Path:
    base = state_dir.expanduser().resolve() if state_dir is not None else EngineSettings().resolved_state_dir()
    return base / "watermarks"


def watermark_path(flow: str, stream: str, state_dir: Path | None = None) -> Path:
    return _root(state_dir) / flow / f"{stream}.json"


def _store(state_dir: Path | None) -> Any:
    return EngineSettings().object_store() if state_dir is None else None


def read_watermark(flow: str, stream: str, state_dir: Path | None = None) -> dict[str, Any] | None:
    """The stored record (``value`` and what the flow kept with it), or None before the first complete run."""
    store = _store(state_dir)
    if store is not None:
        obj = store.get(f"watermarks/{flow}/{stream}.json")
        return None if obj is None else json.loads(obj.data)
    path = watermark_path(flow, stream, state_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def save_watermark(flow: str, stream: str, data: dict[str, Any], *, run_key: str,
                   state_dir: Path | None = None) -> Path:
    path = watermark_path(flow, stream, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**data, "run_key": run_key, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(record, default=str, sort_keys=True)
    write_text_atomic(path, text)
    store = _store(state_dir)
    if store is not None:
        store.put(f"watermarks/{flow}/{stream}.json", text.encode())
    return path


def reset_watermarks(flow: str | None = None, stream: str | None = None, state_dir: Path | None = None,
                     ) -> list[Path | str]:
    """Delete stored watermarks (of one flow, one stream, or all): the next runs start over."""
    root = _root(state_dir)
    pattern = f"{flow or '*'}/{stream or '*'}.json"
    gone = sorted(root.glob(pattern)) if root.exists() else []
    for path in gone:
        path.unlink(missing_ok=True)
    store = _store(state_dir)
    if store is None:
        return list(gone)
    removed: list[Path | str] = []
    for name in store.list("watermarks"):
        if fnmatch.fnmatchcase(name, pattern):
            store.delete(f"watermarks/{name}")
            removed.append(store.where(f"watermarks/{name}"))
    return removed


def _as_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _order(value: Any) -> tuple[int, Any]:
    when = _as_time(value)
    if when is not None:
        return (1, when)
    if isinstance(value, bool):
        return (0, str(value))
    if isinstance(value, int | float):
        return (2, value)
    return (0, str(value))


def later(a: Any, b: Any) -> Any:
    """The later of two watermark values (None is earliest): ISO times as instants, numbers as numbers."""
    if a is None:
        return b
    if b is None:
        return a
    ka, kb = _order(a), _order(b)
    if ka[0] != kb[0]:
        return b if kb[0] > ka[0] else a
    return b if kb[1] > ka[1] else a


def lag_seconds(value: Any) -> float | None:
    """Now minus ``value`` when it is an ISO date-time (naive ones taken as UTC), else None."""
    when = _as_time(value)
    return None if when is None else round((dt.datetime.now(dt.UTC) - when).total_seconds(), 3)


__all__ = [
    "lag_seconds",
    "later",
    "read_watermark",
    "reset_watermarks",
    "save_watermark",
    "stream_id",
    "watermark_path",
]
