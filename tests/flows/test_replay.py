from __future__ import annotations

from pathlib import Path

import pytest

from flows.batch_map import batch_map
from flows.replay import replay_dead_letters
from tasks.core.errors import ConfigError, SourceError
from tasks.core.outcomes import read_dead_letters
from tests import handlers


def test_replay_reprocesses_only_the_dead_letters_with_a_fixed_handler() -> None:
    first = batch_map(list(range(100)), "tests.handlers:mixed", chunk_size=20, retries=0, min_success_ratio=0)
    assert first.failed == 20 and first.dead_letter_path
    again = replay_dead_letters(first.dead_letter_path, retries=0, min_success_ratio=0)
    assert again.total == 20 and again.failed == 20  # same handler, same failures
    assert len(list(read_dead_letters(again.dead_letter_path))) == 20
    fixed = replay_dead_letters(first.dead_letter_path, handler=handlers.double)
    assert fixed.ok and fixed.total == fixed.succeeded == 20


def test_replay_needs_an_importable_handler_and_an_existing_file(tmp_path: Path) -> None:
    first = batch_map(list(range(10)), lambda x: 1 / 0, chunk_size=5, retries=0, min_success_ratio=0)
    with pytest.raises(ConfigError, match="pass handler="):
        replay_dead_letters(first.dead_letter_path)
    with pytest.raises(SourceError, match="does not exist"):
        replay_dead_letters(tmp_path / "missing.jsonl")


def refuse(item: object) -> object:
    from tasks.core.errors import ItemError

    raise ItemError("the API said no")


def test_replay_feeds_the_original_items_back_byte_for_byte() -> None:
    """Dead letters hold the user's data: words like token, basic or password and URLs with passwords are kept."""
    items = ["Basic monthly subscription", "use token abcdefgh", {"token": "the", "note": "Bearer abcdefghijkl"},
             "postgresql://app:hunter2pass@db/prod", {"password": "x", "plan": ["basic", 1, 2.5, None]}]
    first = batch_map(items, refuse, chunk_size=2, raise_on_failure=False)
    assert first.failed == len(items)
    seen: list[object] = []
    replayed = replay_dead_letters(first.dead_letter_path, handler=seen.append)
    # chunks finish in any order, so dead letters (and the replay) follow completion order
    assert replayed.ok and sorted(map(repr, seen)) == sorted(map(repr, items))
