from __future__ import annotations

from pathlib import Path

import pytest

from flows.batch_map import batch_map
from flows.replay import replay_dead_letters
from tasks.core.errors import ConfigError, ItemError, SourceError
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


def test_dead_letters_and_outputs_keep_json_items_numbers_as_the_file_wrote_them(tmp_path: Path) -> None:
    """An items file's 12.50, 1e400, NaN and 20-digit fraction reach the dead letters as written (they became
    12.5 and null before); the handler sees floats; a replay feeds the same values back and writes the same text."""
    lines = ['{"id": 1, "amount": 12.50, "plan": "Basic monthly"}', '{"id": 2, "amount": 1e400}',
             '{"id": 3, "amount": NaN, "rate": 0.12345678901234567891}', '{"id": 4, "amount": 2.5, "n": [1.10, -0.0]}']
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    seen: list[object] = []

    def refuse_all(item: dict[str, object]) -> None:
        seen.append(item["amount"])
        refuse(item)

    first = batch_map(str(source), refuse_all, chunk_size=3, raise_on_failure=False)
    assert first.failed == 4
    assert all(type(a) is not str and isinstance(a, float) for a in seen) and 12.5 in seen  # floats to the handler
    written = sorted(Path(first.dead_letter_path).read_text().splitlines())
    assert [line.split(', "chunk": ')[0] for line in written] == [f'{{"item": {line}' for line in lines]

    again = replay_dead_letters(first.dead_letter_path, handler=refuse_all, raise_on_failure=False)
    rewritten = sorted(Path(again.dead_letter_path).read_text().splitlines())
    assert [line.split(', "chunk": ')[0] for line in rewritten] == [f'{{"item": {line}' for line in lines]

    out = tmp_path / "out"
    echoed = batch_map(str(source), lambda item: {"echo": item, "twice": item["amount"] * 2}, output=out)
    rows = [line for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert echoed.ok  # the item and the handler's row as written; the handler's arithmetic gives plain floats
    assert rows[0] == f'{{"item": {lines[0]}, "result": {{"echo": {lines[0]}, "twice": 25.0}}}}'


def test_a_python_items_nan_and_infinity_reach_the_dead_letters_not_null() -> None:
    items = [{"x": float("nan")}, {"x": float("inf")}, {"x": -float("inf")}]
    first = batch_map(items, refuse, chunk_size=5, raise_on_failure=False)
    text = Path(first.dead_letter_path).read_text()
    assert '{"item": {"x": NaN}' in text and '{"item": {"x": Infinity}' in text and '{"item": {"x": -Infinity}' in text
    assert "null" not in text.split('"status"')[0]


def test_items_and_results_with_non_str_keys_are_never_rewritten(tmp_path: Path) -> None:
    """JSON would write {2024: 12.5, "2024": "text"} with the key twice (12.5 lost on reading) and {1: "a"} as
    {"1": "a"}: such an item is dead-lettered as its repr (item_written_as), and a row holding one fails its item
    (unwritable_output) instead of reaching the output changed."""
    items = [{2024: 12.5, "2024": "text"}, {1: "a"}, {True: "yes", None: "none"}]
    first = batch_map(items, refuse, chunk_size=10, raise_on_failure=False)
    dead = list(first.dead_letters())
    assert [d["item"] for d in dead] == [repr(i) for i in items]
    assert all(d["item_written_as"].startswith("repr: the item is not JSON (TypeError: dict key") for d in dead)

    out = tmp_path / "out"
    echoed = batch_map([*items, {"id": 1}], lambda item: {1: "a"} if "id" in item else "ok", chunk_size=10,
                       output=out, raise_on_failure=False)
    assert echoed.failed == 4 and echoed.succeeded == 0
    assert {d["category"] for d in echoed.dead_letters()} == {"unwritable_output"}
    assert [d["item"] for d in echoed.dead_letters()][-1] == {"id": 1}
    assert not [line for part in out.glob("part-*.jsonl") for line in part.read_text().splitlines()]


def test_replay_gives_the_handler_a_database_querys_typed_values_back(pg_items: str) -> None:
    """A query's rows hold Decimal, dates, datetimes, bytes, UUIDs: the replayed item is the original item (the
    handler got "15.50" * 2 == "15.5015.50" before, and the replay reported Completed)."""
    seen: list[dict[str, object]] = []

    def price(row: dict[str, object]) -> object:
        seen.append(row)
        if row["id"] % 5 == 0:
            raise ItemError(f"downstream refused row {row['id']}")
        return str(row["price"])

    query = "SELECT id, name, price, big, flag, born, seen, at, blob, uid, tags, nums FROM items WHERE id <= 30"
    first = batch_map(pg_items, price, query=query, query_key="id", chunk_size=10, raise_on_failure=False)
    assert first.failed == 6
    originals = {row["id"]: row for row in seen if row["id"] % 5 == 0}
    assert {type(r["price"]).__name__ for r in originals.values()} == {"Decimal"}
    assert {d["item"]["id"]: d["item"] for d in first.dead_letters()} == originals

    replayed: list[dict[str, object]] = []
    again = replay_dead_letters(first.dead_letter_path, handler=replayed.append)
    assert again.ok and sorted(replayed, key=lambda r: r["id"]) == [originals[k] for k in sorted(originals)]
    for row in replayed:
        assert {k: type(v) for k, v in row.items()} == {k: type(v) for k, v in originals[row["id"]].items()}


def test_replay_chunk_size_defaults_to_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI names the BATCHFLOWS_CHUNK_SIZE setting (500) as the default; the replay used 100 whatever it said."""
    first = batch_map(list(range(250)), refuse, chunk_size=250, raise_on_failure=False)
    assert replay_dead_letters(first.dead_letter_path, handler=handlers.double, run_key="a").chunks_total == 1
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "60")  # new run keys: the same file's replay would resume its plan
    assert replay_dead_letters(first.dead_letter_path, handler=handlers.double, run_key="b").chunks_total == 5
    assert replay_dead_letters(first.dead_letter_path, handler=handlers.double, chunk_size=125,
                               run_key="c").chunks_total == 2


def test_replaying_the_same_dead_letters_again_resumes_instead_of_running_every_item_twice(tmp_path: Path,
                                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a run_key a replay's key comes from the file's bytes: a second replay of the same file (a
    schedule, a second click) resumes the first; a file with other contents is a new replay."""
    log = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    first = batch_map(list(range(30)), refuse, chunk_size=10, raise_on_failure=False)
    once = replay_dead_letters(first.dead_letter_path, handler="tests.handlers:side_effect", chunk_size=10)
    twice = replay_dead_letters(first.dead_letter_path, handler="tests.handlers:side_effect", chunk_size=10)
    assert once.succeeded == twice.succeeded == 30 and twice.chunks_resumed == 3
    assert sorted(map(int, log.read_text().split())) == list(range(30))  # each item's effect once
    other = batch_map(list(range(30, 35)), refuse, chunk_size=10, raise_on_failure=False)
    assert replay_dead_letters(other.dead_letter_path, handler="tests.handlers:side_effect").chunks_resumed == 0
    assert len(log.read_text().split()) == 35


def test_replaying_with_collect_resumes_too_and_collects_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """collect=True chose a random run_key before the content key applied: each replay ran every item again."""
    log = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    first = batch_map(list(range(6)), refuse, chunk_size=3, raise_on_failure=False)
    once = replay_dead_letters(first.dead_letter_path, handler="tests.handlers:side_effect", collect=True)
    twice = replay_dead_letters(dead_letter_path=first.dead_letter_path, handler="tests.handlers:side_effect",
                                collect=True)
    assert once.run_dir == twice.run_dir and Path(once.run_dir or "").name.startswith("replay-")
    assert twice.chunks_resumed == twice.chunks_total and sorted(map(int, log.read_text().split())) == list(range(6))
    assert sorted(r["item"] for r in twice.collected) == list(range(6)) and twice.collected == once.collected
    chosen = replay_dead_letters(first.dead_letter_path, handler="tests.handlers:side_effect", collect=True,
                                 run_key="mine")
    assert Path(chosen.run_dir or "").name == "mine" and chosen.chunks_resumed == 0


def test_a_dead_letter_path_under_home_may_start_with_a_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = batch_map(list(range(4)), refuse, chunk_size=2, raise_on_failure=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "dl.jsonl").write_bytes(Path(first.dead_letter_path).read_bytes())
    assert replay_dead_letters("~/dl.jsonl", handler=handlers.double).succeeded == 4
