"""Importable handlers and sources for tests (subprocesses and process pools import them by path)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.errors import FatalError, ItemError, SkipItem


def numbers() -> Iterator[int]:
    """A generator source of BF_N integers (default 1000)."""
    yield from range(int(os.environ.get("BF_N", "1000")))


def double(x: int) -> int:
    return x * 2


def mixed(x: int) -> int:
    """Fails for x % 10 == 3 (a transient error: retried, then dead-lettered), ItemError for x % 10 == 7, skips
    x % 10 == 5."""
    if x % 10 == 3:
        raise ConnectionResetError(f"connection reset while handling {x}")
    if x % 10 == 7:
        raise ItemError(f"item {x} is invalid", category="bad_item")
    if x % 10 == 5:
        raise SkipItem(f"{x} skipped")
    return x * 2


async def async_mixed(x: int) -> int:
    await asyncio.sleep(0.001)
    return mixed(x)


def fatal_at_37(x: int) -> int:
    if x == 37:
        raise FatalError("credentials were refused by the API (HTTP 401); set a valid token and rerun")
    return x


def weight(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else 1.0


_flaky_lock = threading.Lock()
_flaky_seen: dict[Any, int] = {}


def flaky_once(x: int) -> int:
    """Fails the first attempt of every item, succeeds on the second (same process)."""
    with _flaky_lock:
        _flaky_seen[x] = _flaky_seen.get(x, 0) + 1
        first = _flaky_seen[x] == 1
    if first:
        raise ConnectionError(f"transient failure for {x}")
    return x


def side_effect(x: int) -> int:
    """Appends the item to $BF_SIDE_EFFECT_LOG (one line each), sleeping $BF_SLEEP seconds first."""
    time.sleep(float(os.environ.get("BF_SLEEP", "0")))
    path = Path(os.environ["BF_SIDE_EFFECT_LOG"])
    with path.open("a") as fh:
        fh.write(f"{x}\n")
        fh.flush()
    return x


def concurrency_probe(x: int) -> int:
    """Marks itself present in $BF_PROBE_DIR while it runs and records how many were present."""
    probe = Path(os.environ["BF_PROBE_DIR"])
    me = probe / f"{os.getpid()}-{uuid.uuid4().hex}.active"
    me.touch()
    try:
        present = len(list(probe.glob("*.active")))
        with (probe / "observed.log").open("a") as fh:
            fh.write(f"{present}\n")
        time.sleep(float(os.environ.get("BF_SLEEP", "0.05")))
    finally:
        me.unlink()
    return x


def mixed_record(record: dict[str, Any]) -> int:
    """``mixed`` over a CSV/Parquet record ``{"x": ...}``."""
    return mixed(int(record["x"]))


FAST_NOT_CALLABLE = 42


def flaky_then_probe(x: int) -> int:
    """First attempt of each item fails (per process), then concurrency_probe, then "<x> <pid>" to $BF_SIDE_EFFECT_LOG."""
    flaky_once(x)
    concurrency_probe(x)
    with Path(os.environ["BF_SIDE_EFFECT_LOG"]).open("a") as fh:
        fh.write(f"{x} {os.getpid()}\n")
    return x



def set_stage_limit(directory: Path, limit: int) -> None:
    """Let items below ``limit`` through ``staged_record`` (written atomically: the handler polls it)."""
    tmp = directory / "limit.tmp"
    tmp.write_text(str(limit))
    os.replace(tmp, directory / "limit")


def held_items(directory: Path, at_least: int = 0) -> int:
    """How many items >= ``at_least`` have waited at the ``staged_record`` gate so far."""
    held = directory / "held.log"
    return len({x for x in map(int, held.read_text().split()) if x >= at_least}) if held.exists() else 0


def staged_record(x: int) -> int:
    """A gate with a movable limit, then a recorded call: event-driven stop points for the crash tests.

    Item ``x`` waits while ``x >= int($BF_STAGE_DIR/limit)`` (noted once in ``held.log``), then appends
    itself to ``$BF_STAGE_DIR/calls.log``: every call that ran is in the log exactly once. By item, not
    by call order: with fixed chunks of a list, a limit of k * chunk_size lets exactly chunks 0..k-1
    finish. Like ``mixed``: x % 10 == 3 fails (ItemError, dead-lettered), x % 10 == 5 is skipped;
    returns 3 * x.
    """
    directory = Path(os.environ["BF_STAGE_DIR"])
    if x >= int((directory / "limit").read_text()):
        with (directory / "held.log").open("a") as fh:
            fh.write(f"{x}\n")
        while x >= int((directory / "limit").read_text()):
            time.sleep(0.02)
    with (directory / "calls.log").open("a") as fh:
        fh.write(f"{x}\n")
    if x % 10 == 3:
        raise ItemError(f"item {x} is invalid", category="bad_item")
    if x % 10 == 5:
        raise SkipItem(f"{x} skipped")
    return 3 * x


def timed(x: int) -> int:
    """Appends "<time> <pid>" to $BF_TIMES: when and where each call ran (rate-limit checks)."""
    with Path(os.environ["BF_TIMES"]).open("a") as fh:
        fh.write(f"{time.time()} {os.getpid()}\n")
    return x


def busiest_second(path: Path) -> tuple[int, int]:
    """(the most calls in any sliding second, how many processes made calls) from a $BF_TIMES file."""
    rows = [line.split() for line in path.read_text().splitlines()]
    times = sorted(float(t) for t, _ in rows)
    most = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    return most, len({pid for _, pid in rows})
