"""Watermarks of incremental runs kept in the state dir (api_extract, file_transform).

``<state dir>/watermarks/<flow>/<stream>.json`` holds what the last *complete* run of a stream reached (a
record field's maximum, or the files it processed), written atomically when the run ends complete; a
failed or killed run leaves it as it was, so the next run covers what that one did not. A stream is what
is extracted to where (a hash of URL, parameters, output...), so two extractions never share a watermark.
db_migrate keeps its watermarks in the target database instead (tasks.db.incremental). With state in object
storage the record is one object (``watermarks/<flow>/<stream>.json``, one PUT), read from there at every
run; the local copy is only this machine's cache. A reset deletes a watermark, but keeps file_transform's
manifest marked ``reset``: it lists the parts earlier runs wrote, which the next run replaces.

Start over from the command line::

    python -m tasks.core.state reset-incremental --flow api-extract [--stream <id>]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tasks.core.errors import ConfigError
from tasks.core.exactjson import JsonNumber, dumps_exact, loads_exact
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
        return None if obj is None else loads_exact(obj.data)
    path = watermark_path(flow, stream, state_dir)
    try:
        return loads_exact(path.read_text())
    except FileNotFoundError:
        return None


def save_watermark(flow: str, stream: str, data: dict[str, Any], *, run_key: str,
                   state_dir: Path | None = None) -> Path:
    record = {**data, "run_key": run_key, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return _write(flow, stream, record, state_dir)


def _write(flow: str, stream: str, record: dict[str, Any], state_dir: Path | None) -> Path:
    path = watermark_path(flow, stream, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(record)
    write_text_atomic(path, text)
    store = _store(state_dir)
    if store is not None:
        store.put(f"watermarks/{flow}/{stream}.json", text.encode())
    return path


def _dumps(record: dict[str, Any]) -> str:
    """The record as JSON; a number kept as its text (a JsonNumber watermark) is written as that text."""
    if any(type(v) is JsonNumber for v in record.values()):
        return dumps_exact(dict(sorted(record.items())))
    return json.dumps(record, default=str, sort_keys=True)


KNOWN_FLOWS = ("api-extract", "file-transform")
"""The flows that keep watermarks in the state dir (db-migrate keeps its own in the target database)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_name(value: str, what: str) -> None:
    if not _NAME.fullmatch(value):
        msg = (f"{what} {value!r} is not a {what} name: letters, digits, '-' and '_' only "
               "(no path, '..' or glob pattern)")
        raise ConfigError(msg)


def _local(root: Path) -> set[str]:
    """``<flow>/<stream>.json`` of every watermark in the local state dir (or cache)."""
    return {p.relative_to(root).as_posix() for p in root.glob("*/*.json")} if root.exists() else set()


def _select(names: list[str], flow: str | None, stream: str | None) -> list[str]:
    """The names to delete; a flow or stream that cannot be meant is an error, never "removed 0"."""
    for value, what in ((flow, "flow"), (stream, "stream")):
        if value is not None:
            _check_name(value, what)
    stored_flows = sorted({n.split("/", 1)[0] for n in names})
    if flow == "db-migrate":
        raise ConfigError("db-migrate keeps its watermarks in the target database: run it with reset_incremental=True")
    if flow is not None and flow not in KNOWN_FLOWS and flow not in stored_flows:
        msg = (f"unknown flow {flow!r}: the incremental flows are {', '.join(KNOWN_FLOWS)}; "
               f"flows with stored watermarks: {', '.join(stored_flows) or 'none'}")
        raise ConfigError(msg)
    chosen = [n for n in names if flow in (None, n.split("/", 1)[0]) and stream in (None, n[n.index("/") + 1:-5])]
    if stream is not None and not chosen:
        where = f" of flow {flow!r}" if flow is not None else ""
        msg = f"no stored watermark{where} has stream {stream!r} (the stream id is in the run's summary)"
        raise ConfigError(msg)
    return chosen


def reset_watermarks(flow: str | None = None, stream: str | None = None, state_dir: Path | None = None,
                     ) -> list[Path | str]:
    """Reset stored watermarks (of one flow, one stream, or all): the next runs start over.

    A watermark is deleted, except a record that owns output parts (file_transform's manifest, with its
    ``files``): it is the only list of those parts, so it is kept marked ``reset`` and the next run reads
    every file again and replaces each file's parts once its new ones are written (see
    tasks.files.incremental). ``flow`` and ``stream`` are names, not patterns; an unknown flow or a stream
    with no stored watermark raises ConfigError."""
    root = _root(state_dir)
    store = _store(state_dir)
    remote = {n for n in store.list("watermarks") if n.count("/") == 1} if store is not None else set()
    chosen = _select(sorted(_local(root) | remote), flow, stream)
    reset: list[Path | str] = []
    for name in chosen:
        flow_name, stream_name = name[:-5].split("/", 1)
        record = read_watermark(flow_name, stream_name, state_dir)
        if record is not None and "files" in record:
            path = _write(flow_name, stream_name, {**record, "reset": True}, state_dir)
            reset.append(path if store is None else store.where(f"watermarks/{name}"))
            continue
        (root / name).unlink(missing_ok=True)
        if store is None:
            reset.append(root / name)
        elif name in remote:
            store.delete(f"watermarks/{name}")
            reset.append(store.where(f"watermarks/{name}"))
    return reset


def _as_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _ranked(value: Any) -> tuple[str, Any] | None:
    """``(kind, key)`` of a watermark value, None for None. Kinds: ``number`` (compared exactly: a number kept
    as its text by its digits), ``date-time`` (an ISO string, as an instant), ``text`` (anything else, as text).
    The key is None for a value that is never the newest (NaN)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", value if value == value else None)
    if type(value) is JsonNumber:
        number = Decimal(value.text)
        return ("number", None if number.is_nan() else number)
    when = _as_time(value)
    return ("text", str(value)) if when is None else ("date-time", when)


def kind_of(value: Any) -> str | None:
    """``number``, ``date-time`` or ``text`` (see :func:`later`); None for None."""
    ranked = _ranked(value)
    return None if ranked is None else ranked[0]


def later(a: Any, b: Any) -> Any:
    """The later of two watermark values (None is earliest): ISO date-times as instants, numbers as numbers
    (exactly), other text as text. Values of different kinds do not compare (a date-time and a ``0`` "never"
    sentinel): ``b`` of another kind than ``a`` is not a candidate, ``a`` stays."""
    ra, rb = _ranked(a), _ranked(b)
    if ra is None or rb is None:
        return a if rb is None else b
    if ra[0] != rb[0] or rb[1] is None:
        return a
    return b if ra[1] is None or rb[1] > ra[1] else a


@dataclass
class Newest:
    """The newest value of each kind among many (a record field over a run) and how many values had each kind.

    A watermark is the newest value of one kind (the stored watermark's, else the kind most values have): an
    ISO date-time and a ``0`` sentinel do not compare, and ranking kinds would make one outrank every other."""

    best: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # in the order the kinds were first seen
    _keys: dict[str, Any] = field(default_factory=dict, repr=False)

    def add(self, value: Any) -> None:
        ranked = _ranked(value)
        if ranked is None:
            return
        kind, key = ranked
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if key is not None and (kind not in self._keys or key > self._keys[kind]):
            self.best[kind], self._keys[kind] = value, key

    def merge(self, other: Newest | None) -> None:
        if other is None:
            return
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        for kind, value in other.best.items():
            self.best[kind] = later(self.best.get(kind), value)
            self._keys[kind] = _ranked(self.best[kind])[1]  # type: ignore[index]

    def kind(self, stored: Any = None) -> str | None:
        """The watermark's kind: the stored watermark's, else the one most values have (the first of a tie)."""
        return kind_of(stored) if stored is not None else max(self.counts, key=self.counts.__getitem__, default=None)

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "best": {k: to_json_value(v) for k, v in self.best.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Newest:
        seen = cls()
        seen.merge(cls(best={k: from_json_value(v) for k, v in data.get("best", {}).items()}))
        seen.counts = dict(data.get("counts", {}))
        return seen


def to_json_value(value: Any) -> Any:
    """A watermark value for a JSON checkpoint: a number kept as its text as ``{"$number": text}``."""
    return {"$number": value.text} if type(value) is JsonNumber else value


def from_json_value(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["$number"]:
        return JsonNumber(value["$number"])
    return value


def lag_seconds(value: Any) -> float | None:
    """Now minus ``value`` when it is an ISO date-time (naive ones taken as UTC), else None."""
    when = _as_time(value)
    return None if when is None else round((dt.datetime.now(dt.UTC) - when).total_seconds(), 3)


__all__ = [
    "KNOWN_FLOWS",
    "Newest",
    "from_json_value",
    "kind_of",
    "lag_seconds",
    "later",
    "read_watermark",
    "reset_watermarks",
    "save_watermark",
    "stream_id",
    "to_json_value",
    "watermark_path",
]
