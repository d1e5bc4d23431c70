"""Importable pieces for the fault-injection suite (subprocesses import them as "tests.faults.helpers:fn").

The gate makes kill points deterministic: every gated call claims the next number from a counter
in ``$BF_GATE_DIR``; calls numbered ``$BF_GATE_OPEN`` and above block until the file
``$BF_GATE_DIR/open`` exists (or the process is killed). So exactly ``BF_GATE_OPEN`` calls complete
before the test pulls the trigger, whatever the machine's load. Without ``BF_GATE_DIR`` (the rerun)
the gate is open.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from tasks.core.errors import ItemError, SkipItem
from tests.run_flow import finish

# The staged batch_map runs of test_disk and test_server_restart (handler tests.handlers:staged_record):
# items, chunk size, chunks in flight, the items that fail and skip, and "no stage limit".
N, CHUNK, WINDOW = 200, 10, 2
FAILING = {x for x in range(N) if x % 10 == 3}
SKIPPED = {x for x in range(N) if x % 10 == 5}
OPEN = 10**9


def gate(key: str | None = None, *, env: str = "BF_GATE") -> int:
    """Claim the next call number (a ``key`` seen before keeps its number); block while it is past
    ``$BF_GATE_OPEN``. Returns the number (-1 without a gate). ``env`` names another gate (``BF_FP_GATE``)."""
    directory = os.environ.get(f"{env}_DIR")
    if not directory:
        return -1
    counter = Path(directory) / "calls"
    with counter.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        claimed = fh.read().splitlines()
        if key is not None and key in claimed:
            number = claimed.index(key)
        else:
            number = len(claimed)
            fh.write(f"{key if key is not None else number}\n")
            fh.flush()
    if number >= int(os.environ[f"{env}_OPEN"]):
        while not (Path(directory) / "open").exists():
            time.sleep(0.02)
    return number


def failpoint(name: str) -> None:
    """The BATCHFLOWS_FAILPOINTS hook: the failpoint named by ``$BF_FAILPOINT`` goes through the BF_FP gate,
    so a test can hold a run right after a chunk's output (or a range's COMMIT) and before its record."""
    if name == os.environ.get("BF_FAILPOINT"):
        gate(env="BF_FP_GATE")


def passed(directory: Path) -> int:
    """How many gate numbers have been claimed so far (those past the limit are blocked)."""
    counter = directory / "calls"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def effect(x: int) -> int:
    """batch_map handler: gated, records its side effect, then fails/skips like tests.handlers:mixed."""
    gate()
    with Path(os.environ["BF_EFFECTS"]).open("a") as fh:
        fh.write(f"{x}\n")
    if x % 10 == 3:
        raise ItemError(f"item {x} is invalid", category="bad_item")
    if x % 10 == 5:
        raise SkipItem(f"{x} skipped")
    return x * 2


@dataclasses.dataclass(frozen=True)
class Sku:
    """A non-JSON item (a dataclass): hashed by its fields, written to outputs by str()."""

    code: str
    qty: int


def seeded_items() -> list[Any]:
    """``$BF_N`` items from ``$BF_SEED``: many exact duplicates (whole duplicate chunks among them), and
    non-JSON values (tuples, dates, Decimal, a dataclass). The same list in every process."""
    rng = random.Random(int(os.environ["BF_SEED"]))
    pool: list[Any] = [{"sku": "A"}, {"sku": "A", "n": 1}, 7, "Basic monthly subscription", ("t", 1),
                       dt.date(2024, 2, 29), Decimal("1.10"), Sku("X", 2), {"when": dt.datetime(2024, 1, 1, 12)},
                       [1, {"b": None}], {"token": "the"}, 3]
    return [pool[rng.randrange(len(pool) if rng.random() < 0.5 else 2)] for _ in range(int(os.environ["BF_N"]))]


def outcome_of(item: Any) -> str:
    """What :func:`recorded_effect` does with an item: ok, fail or skip (by its canonical form)."""
    from tasks.core.identity import value_hash

    digit = int(value_hash(item)[-1], 16) % 8
    return "fail" if digit == 0 else "skip" if digit == 1 else "ok"


def recorded_effect(item: Any) -> Any:
    """batch_map handler: gated, appends the item's canonical form to $BF_EFFECTS (its side effect), then
    fails, skips or returns the item as :func:`outcome_of` says."""
    from tasks.core.identity import canonical

    gate()
    with Path(os.environ["BF_EFFECTS"]).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(canonical(item)) + "\n")
    kind = outcome_of(item)
    if kind == "fail":
        raise ItemError(f"item {canonical(item)[:40]} is invalid", category="bad_item")
    if kind == "skip":
        raise SkipItem("skipped")
    return item


def recorded_batch_effect(items: list[Any]) -> list[Any]:
    """per='batch' handler: :func:`recorded_effect` for each item of the call, its outcome as the entry."""
    out: list[Any] = []
    for item in items:
        try:
            out.append(recorded_effect(item))
        except (ItemError, SkipItem) as exc:
            out.append(exc)
    return out


def probe_and_record(x: int) -> int:
    """tests.handlers:concurrency_probe, then "<x> <parent pid> <pid>" to $BF_SIDE_EFFECT_LOG (who ran it)."""
    from tests.handlers import concurrency_probe

    concurrency_probe(x)
    with Path(os.environ["BF_SIDE_EFFECT_LOG"]).open("a") as fh:
        fh.write(f"{x} {os.getppid()} {os.getpid()}\n")
    return x


def gated_frame(frame: Any) -> Any:
    """db_migrate transform (a DataFrame per range): gated identity."""
    gate()
    return frame


def gated_chunk(lf: pl.LazyFrame) -> pl.LazyFrame:
    """file_transform transform: gated identity, one gate number per chunk.

    The flow also calls it once on an empty frame to check the plan, and a chunk with bad rows
    runs it again on its careful path, without the rejected rows. So a chunk is named by its first
    id in tens: the suite's bad ids end in 7 (test_sigkill.write_csv), and dropping one keeps the tens.
    """
    first = lf.select(pl.col("id").first()).collect()
    if first.height == 0 or first["id"][0] is None:
        return lf
    gate(f"chunk-from-{int(first['id'][0]) // 10}x")
    return lf


def wait_until(predicate: Any, proc: subprocess.Popen[str], *, what: str, timeout: float = 120) -> None:
    """Poll ``predicate()`` until true; fail with the flow's output if the flow died first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the flow ended before {what}:\n{out[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


__all__ = [
    "CHUNK",
    "FAILING",
    "OPEN",
    "SKIPPED",
    "WINDOW",
    "N",
    "Sku",
    "effect",
    "failpoint",
    "finish",
    "gate",
    "gated_chunk",
    "gated_frame",
    "kill",
    "outcome_of",
    "passed",
    "probe_and_record",
    "recorded_effect",
    "seeded_items",
    "wait_until",
]
