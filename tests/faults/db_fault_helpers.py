"""db_migrate transforms for the database fault tests (loaded as "tests.faults.db_fault_helpers:fn").

``hold_nth`` makes a fault point exact: every call claims the next number from a counter in
``$BF_DBFAULT_DIR``; call number ``$BF_DBFAULT_CALL`` (0-based) writes the marker file
``$BF_DBFAULT_DIR/held`` (the frame's first and last id, as JSON) and waits until the test removes it.
The range's source rows are read and its target connection is open while it waits; the test then
sets up the fault and removes the marker to let the range go on into its write.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

MARKER = "held"


def claim(directory: Path) -> int:
    """The next call number (0, 1, 2, ...), atomically across threads and processes."""
    with (directory / "calls").open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        number = len(fh.read().splitlines())
        fh.write(f"{number}\n")
        fh.flush()
    return number


def calls(directory: Path) -> int:
    path = directory / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def hold_nth(frame: Any) -> Any:
    """Identity transform on a polars DataFrame; the configured call waits for the test (at most 120 s)."""
    directory = os.environ.get("BF_DBFAULT_DIR")
    if not directory:
        return frame
    number = claim(Path(directory))
    if number == int(os.environ.get("BF_DBFAULT_CALL", "-1")) and frame.height:
        marker = Path(directory) / MARKER
        ids = frame["id"].to_list()
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"call": number, "first": min(ids), "last": max(ids), "rows": len(ids)}))
        tmp.rename(marker)
        deadline = time.monotonic() + 120
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return frame


__all__ = ["MARKER", "calls", "claim", "hold_nth"]
