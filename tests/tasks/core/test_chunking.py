from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.chunking import Adaptive, Bytes, Chunk, Fixed, PlanLog, Weighted, cut_chunks, make_strategy
from tasks.core.errors import ConfigError


def sizes(chunks: list[Chunk]) -> list[int]:
    return [len(c) for c in chunks]


def test_fixed_chunks_stream_every_item_once() -> None:
    chunks = list(cut_chunks(iter(range(10)), Fixed(3)))
    assert sizes(chunks) == [3, 3, 3, 1]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [x for c in chunks for x in c.items] == list(range(10))


def test_bytes_chunks_respect_the_budget_and_keep_oversized_items() -> None:
    items = ["a" * 10] * 6 + ["b" * 100]
    chunks = list(cut_chunks(items, Bytes(max_bytes=30)))
    assert sizes(chunks) == [2, 2, 2, 1]
    assert chunks[-1].items == ["b" * 100]


def test_weighted_chunks_use_the_weight_function() -> None:
    chunks = list(cut_chunks([5, 5, 1, 1, 1, 9, 2], Weighted(max_weight=10, weight_fn=float)))
    assert sizes(chunks) == [2, 3, 1, 1]


def test_adaptive_moves_toward_the_target_by_at_most_a_factor_two() -> None:
    strategy = Adaptive(target_seconds=1.0, size=100)
    strategy.observe(100, 0.01)  # 0.1 ms per item -> ideal 10,000, capped at x2
    assert strategy.size == 200
    strategy.observe(200, 10.0)  # far too slow -> halve
    assert strategy.size == 100
    strategy.observe(100, 1.0)
    assert strategy.size == 100


def test_adaptive_chunks_take_the_size_in_force_when_each_is_cut(tmp_path: Path) -> None:
    """Cut by count like fixed chunks; a size observed between two chunks applies to the next one, and the
    sizes cut are what the plan records."""
    strategy = Adaptive(target_seconds=1.0, size=2, max_size=5)
    plan = PlanLog(tmp_path / "plan.log")
    chunks = cut_chunks(iter(range(20)), strategy, plan)
    got = []
    for chunk in chunks:
        got.append(chunk)
        strategy.observe(len(chunk), 0.001)  # fast: doubles, up to max_size
    plan.close()
    assert sizes(got) == [2, 4, 5, 5, 4]
    assert [x for c in got for x in c.items] == list(range(20))
    assert [c.start for c in got] == [0, 2, 6, 11, 16]
    assert PlanLog(tmp_path / "plan.log").recorded == [2, 4, 5, 5, 4]


def test_plan_log_replays_recorded_sizes_so_resumed_chunks_match(tmp_path: Path) -> None:
    plan = PlanLog(tmp_path / "plan.log")
    first = list(cut_chunks(range(20), Fixed(7), plan))
    plan.close()
    replay = PlanLog(tmp_path / "plan.log")
    second = list(cut_chunks(range(20), Fixed(3), replay))  # a different strategy after a restart
    assert sizes(second) == sizes(first) == [7, 7, 6]
    assert [(c.index, c.start, c.items) for c in second] == [(c.index, c.start, c.items) for c in first]


def test_chunks_know_their_place_in_the_source() -> None:
    """Identical chunks are still distinct chunks: a chunk is its position (index, start) plus its content."""
    chunks = list(cut_chunks([{"sku": "A"}] * 8, Fixed(2)))
    assert [(c.index, c.start) for c in chunks] == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert chunks[2].describe() == "chunk 2 (items 4-5 of the source)"


def test_weighted_without_weight_fn_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="weight_fn"):
        make_strategy("weighted", chunk_size=10)
