"""The state directory: documented layout, run keys, atomic writes, and cleanup.

Layout (``BATCHFLOWS_STATE_DIR``, default ``./.batchflows``)::

    runs/<flow>/<run_key>/
        chunks/             Prefect result records of finished chunks (the resume cache)
        plan.log            chunk sizes as cut, replayed on resume
        dead_letter.jsonl   failed items, one JSON line each (only when some failed)
        summary.json        the last RunSummary of this run key
        checkpoint.json     flow-specific progress (e.g. the pagination cursor)

Remove old runs with ``python -m tasks.state cleanup --older-than-days 30`` or :func:`cleanup_state`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tasks.errors import ConfigError
from tasks.settings import EngineSettings

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
    """Paths of one run key of one flow."""

    root: Path

    @classmethod
    def for_run(cls, flow: str, run_key: str, state_dir: Path | None = None) -> RunDir:
        base = (state_dir or EngineSettings().state_dir).expanduser().resolve()
        root = base / "runs" / flow / validate_run_key(run_key)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def plan(self) -> Path:
        return self.root / "plan.log"

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


def cleanup_state(
    *, older_than_days: float | None = None, flow: str | None = None, run_key: str | None = None,
    state_dir: Path | None = None, dry_run: bool = False,
) -> list[Path]:
    """Delete run directories by age (of their newest file) and/or flow and run key. Returns what went."""
    if older_than_days is None and run_key is None:
        msg = "cleanup_state needs older_than_days or run_key (refusing to delete every run)"
        raise ConfigError(msg)
    base = (state_dir or EngineSettings().state_dir).expanduser().resolve() / "runs"
    if not base.exists():
        return []
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed: list[Path] = []
    for flow_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if flow is not None and flow_dir.name != flow:
            continue
        for run_dir in sorted(p for p in flow_dir.iterdir() if p.is_dir()):
            if run_key is not None and run_dir.name != run_key:
                continue
            if cutoff is not None:
                newest = max((f.stat().st_mtime for f in run_dir.rglob("*")), default=run_dir.stat().st_mtime)
                if newest > cutoff:
                    continue
            removed.append(run_dir)
            if not dry_run:
                shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.state", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    clean = sub.add_parser("cleanup", help="delete old run directories")
    clean.add_argument("--older-than-days", type=float, default=None)
    clean.add_argument("--flow", default=None)
    clean.add_argument("--run-key", default=None)
    clean.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        removed = cleanup_state(
            older_than_days=args.older_than_days, flow=args.flow, run_key=args.run_key, dry_run=args.dry_run
        )
    except ConfigError as exc:
        parser.error(str(exc))
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} run directories")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

__all__ = ["RunDir", "atomic_write", "cleanup_state", "new_run_key", "validate_run_key", "write_text_atomic"]
