"""Chunking strategies: fixed | bytes | weighted | adaptive, as small values.

A strategy decides when a chunk is full; :func:`cut_chunks` streams items into chunks without ever
holding more than one chunk. Chunk boundaries must be reproducible for resume (a chunk is found again
by its position, then checked against its content), which adaptive sizing is not: so the sizes
actually cut are recorded in the run's plan log and replayed on a rerun before the strategy takes
over again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

from tasks.core.errors import ConfigError

ChunkingName = Literal["fixed", "bytes", "weighted", "adaptive"]


class Chunk:
    """A chunk of items: its index, its items, and the position of its first item in the source.

    Deliberately not a collection, so Prefect does not walk its items.
    """

    __slots__ = ("index", "items", "start")

    def __init__(self, index: int, items: list[Any], start: int = 0) -> None:
        self.index = index
        self.items = items
        self.start = start

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> tuple[int, list[Any], int]:
        return self.index, self.items, self.start

    def __setstate__(self, state: tuple[int, list[Any], int]) -> None:
        self.index, self.items, self.start = state

    def __repr__(self) -> str:
        return f"Chunk(index={self.index}, items={len(self.items)})"

    def describe(self) -> str:
        """``chunk 17 (items 8500-8999 of the source)``, for messages."""
        return f"chunk {self.index} (items {self.start}-{self.start + len(self.items) - 1} of the source)"


class Strategy(Protocol):
    def budget(self) -> float: ...
    def measure(self, item: Any) -> float: ...
    def observe(self, size: int, duration_s: float) -> None: ...


@dataclass
class Fixed:
    """``size`` items per chunk."""

    size: int = 500

    def budget(self) -> float:
        return self.size

    def measure(self, item: Any) -> float:
        return 1.0

    def observe(self, size: int, duration_s: float) -> None:
        return None


def json_size(item: Any) -> float:
    return float(len(json.dumps(item, default=str, separators=(",", ":")).encode()))


@dataclass
class Bytes(Fixed):
    """Chunks of about ``max_bytes`` of serialized JSON (at most ``size`` items)."""

    max_bytes: int = 1 << 20
    size: int = 1_000_000

    def budget(self) -> float:
        return float(self.max_bytes)

    def measure(self, item: Any) -> float:
        return json_size(item)


@dataclass
class Weighted(Fixed):
    """Chunks whose ``weight_fn(item)`` add up to about ``max_weight``."""

    max_weight: float = 500.0
    weight_fn: Callable[[Any], float] = field(default=lambda _item: 1.0)

    def budget(self) -> float:
        return self.max_weight

    def measure(self, item: Any) -> float:
        return float(self.weight_fn(item))


@dataclass
class Adaptive(Fixed):
    """Grows or shrinks the chunk size so a chunk takes about ``target_seconds``.

    After each finished chunk the size moves toward ``target_seconds / seconds_per_item``, at most
    doubling or halving per step, within [min_size, max_size].
    """

    target_seconds: float = 5.0
    size: int = 100
    min_size: int = 1
    max_size: int = 100_000

    def observe(self, size: int, duration_s: float) -> None:
        if size <= 0 or duration_s <= 0:
            return
        ideal = self.target_seconds / (duration_s / size)
        bounded = min(max(ideal, self.size / 2), self.size * 2)
        self.size = int(min(max(bounded, self.min_size), self.max_size))


def make_strategy(
    name: ChunkingName,
    *,
    chunk_size: int,
    target_chunk_seconds: float = 5.0,
    chunk_bytes: int | None = None,
    weight_fn: Callable[[Any], float] | None = None,
) -> Strategy:
    if name == "fixed":
        return Fixed(size=chunk_size)
    if name == "bytes":
        return Bytes(max_bytes=chunk_bytes or 1 << 20)
    if name == "weighted":
        if weight_fn is None:
            msg = "chunking='weighted' needs weight_fn ('pkg.mod:fn' or a callable returning a number per item)"
            raise ConfigError(msg)
        return Weighted(max_weight=float(chunk_size), weight_fn=weight_fn)
    if name == "adaptive":
        return Adaptive(target_seconds=target_chunk_seconds, size=min(chunk_size, 100))
    msg = f"chunking {name!r} is not one of fixed, bytes, weighted, adaptive"
    raise ConfigError(msg)


class PlanLog:
    """Append-only record of chunk sizes (one per line), replayed on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.recorded: list[int] = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip().isdigit():
                    self.recorded.append(int(line))
        self._fh = None

    def append(self, size: int) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a")
        self._fh.write(f"{size}\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def cut_chunks(items: Iterable[Any], strategy: Strategy, plan: PlanLog | None = None) -> Iterator[Chunk]:
    """Stream items into chunks. Replays recorded sizes first, records new ones."""
    iterator = iter(items)
    index = 0
    start = 0
    replay = list(plan.recorded) if plan else []
    pending: Any = _MISSING
    while True:
        if index < len(replay):
            want = replay[index]
            batch: list[Any] = []
            if pending is not _MISSING:
                batch.append(pending)
                pending = _MISSING
            batch.extend(islice(iterator, max(want - len(batch), 0)))
            if not batch:
                return
            yield Chunk(index, batch, start)
            index += 1
            start += len(batch)
            continue
        if pending is _MISSING and _counts_items(strategy):  # a count: no weighing item by item
            batch = list(islice(iterator, max(int(strategy.size), 1)))
            if not batch:
                return
            if plan is not None:
                plan.append(len(batch))
            yield Chunk(index, batch, start)
            index += 1
            start += len(batch)
            continue
        budget = strategy.budget()
        batch = []
        used = 0.0
        if pending is not _MISSING:
            batch.append(pending)
            used += strategy.measure(pending)
            pending = _MISSING
        for item in iterator:
            weight = strategy.measure(item)
            if batch and used + weight > budget:
                pending = item
                break
            batch.append(item)
            used += weight
            if used >= budget:
                break
        if not batch:
            return
        if plan is not None:
            plan.append(len(batch))
        yield Chunk(index, batch, start)
        index += 1
        start += len(batch)


def _counts_items(strategy: Strategy) -> bool:
    """The strategy fills a chunk with ``size`` items (fixed, adaptive): cut by count, not item by item."""
    kind = type(strategy)
    return isinstance(strategy, Fixed) and kind.measure is Fixed.measure and kind.budget is Fixed.budget


class _Missing:
    pass


_MISSING = _Missing()

__all__ = [
    "Adaptive",
    "Bytes",
    "Chunk",
    "ChunkingName",
    "Fixed",
    "PlanLog",
    "Strategy",
    "Weighted",
    "cut_chunks",
    "make_strategy",
]
