"""Results back in Python: summary.results(), dead_letters(), rejects() and collect=True, on real runs of
every flow that writes outputs (real files, the loopback API, the session's Prefect server)."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.api_bulk import api_bulk
from flows.api_extract import api_extract
from flows.batch_map import batch_map
from flows.db_migrate import db_migrate
from flows.file_transform import file_transform
from tasks.core import results as results_mod
from tasks.core.errors import ConfigError, FatalError, ItemError, RunFailed, TooManyToCollect
from tasks.core.results import part_files, read_rows
from tests.fixtures.api_server import DATASET_SIZE, ApiServer

ITEMS: list[Any] = ["Basic monthly", {"a": 1}, "Basic monthly", [1, 2], None, 7, "use token x", {"a": 1}]


def shout(item: Any) -> Any:
    return {"seen": item}


def refuse_all(item: Any) -> Any:
    raise ItemError("the API said no")


_stopped = threading.Event()


def fatal_once_at_five(item: int) -> int:
    """Stops the whole run once at item 5 (as a revoked token would); the rerun goes through."""
    if item == 5 and not _stopped.is_set():
        _stopped.set()
        raise FatalError("stop here once")
    return item * 10


def test_the_errors_a_user_catches_come_from_tasks_core_errors() -> None:
    """README imports from tasks.core.errors; RunFailed was only in tasks.core.flowdef (an ImportError there)."""
    import tasks.core
    from tasks.core import flowdef

    assert RunFailed is flowdef.RunFailed is tasks.core.RunFailed and TooManyToCollect is results_mod.TooManyToCollect
    with pytest.raises(RunFailed) as failed:
        batch_map([1, 2], refuse_all, retries=0)
    assert failed.value.summary.failed == 2
    assert pickle.loads(pickle.dumps(failed.value)).summary.failed == 2  # a persisted Failed state keeps it


def test_part_files_in_chunk_order_without_stale_temp_reject_or_foreign_parts(tmp_path: Path) -> None:
    """Only the names each layout writes, and subfolders only as file_transform's partition folders."""
    for name in ["part-000010.jsonl", "part-000002.jsonl", "part-000003.jsonl", ".part-000004.jsonl.tmp",
                 "notes.txt", "_rejects/part-000001.jsonl", "k=b/part-000001.jsonl", "k=a/part-000001.jsonl",
                 "part-1.jsonl", "part-000001.jsonl.bak", "run-b/part-000001.jsonl", "part-1234567.jsonl",
                 "part-00001.parquet", "k=a/part-00001.parquet", "k=a/j=2/part-00000-1.csv", "k=a/sub/part-00000.csv",
                 "_rejects/part-00001.tsv", "run-b/part-00000.parquet", "part-0000001.parquet"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    names = [p.relative_to(tmp_path).as_posix() for p in part_files(tmp_path, below=4)]
    assert names == ["part-000002.jsonl", "part-000003.jsonl"]
    assert [p.relative_to(tmp_path).as_posix() for p in part_files(tmp_path)][-1] == "part-1234567.jsonl"
    names = [p.relative_to(tmp_path).as_posix() for p in part_files(tmp_path, layout="files")]
    assert names == ["k=a/j=2/part-00000-1.csv", "k=a/part-00001.parquet", "part-00001.parquet",
                     "part-1234567.jsonl"]  # %05d of chunk 1234567
    names = [p.relative_to(tmp_path).as_posix() for p in part_files(tmp_path / "_rejects", layout="rejects")]
    assert names == ["_rejects/part-00001.tsv"]


def test_results_of_a_run_read_none_of_a_run_nested_in_its_output(tmp_path: Path) -> None:
    """Run B's output inside run A's: A.results() handed back B's rows among its own (and failed on a file of
    the user's in a subfolder)."""
    a = batch_map([{"run": "A", "i": i} for i in range(4)], shout, chunk_size=2, output=tmp_path / "out")
    b = batch_map([{"run": "B", "i": i} for i in range(3)], shout, chunk_size=2, output=tmp_path / "out" / "run-b")
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "part-000000.jsonl").write_text("mine\n")
    assert [r["item"] for r in a.results()] == [{"run": "A", "i": i} for i in range(4)]
    assert [r["item"] for r in b.results()] == [{"run": "B", "i": i} for i in range(3)]


def test_a_new_run_key_removes_only_the_parts_batchflows_writes(tmp_path: Path) -> None:
    """``part-7.jsonl`` is not a name batchflows writes (``part-%06d``): a new run_key deleted it."""
    out = tmp_path / "out"
    batch_map(list(range(10)), shout, chunk_size=5, output=out)
    mine = ["notes.txt", "part-final-report.jsonl", "part-000099.jsonl.bak", "part-7.jsonl", "part-00001.parquet"]
    for name in mine:
        (out / name).write_text("mine\n")
    (out / "sub").mkdir()
    (out / "sub" / "part-000000.jsonl").write_text("mine\n")
    again = batch_map(list(range(3)), shout, chunk_size=5, output=out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*mine, "part-000000.jsonl", "sub"])
    assert all((out / name).read_text() == "mine\n" for name in mine)
    assert [r["item"] for r in again.results()] == [0, 1, 2]


def test_file_transform_results_read_its_partition_folders_only(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,k\n1,a\n2,b\n3,a\n")
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    pl.DataFrame({"id": [99]}).write_parquet(out / "other" / "part-00000.parquet")  # not a partition folder
    summary = file_transform(src, out, partition_by=["k"], output_format="parquet")
    assert {p.relative_to(out).as_posix() for p in out.rglob("part-*")} >= {"k=a/part-00000.parquet",
                                                                            "k=b/part-00000.parquet"}
    assert sorted(r["id"] for r in summary.results()) == [1, 2, 3]


def test_read_rows_keeps_jsonl_exact_parquet_types_and_reject_text(tmp_path: Path) -> None:
    rows = [{"id": 1, "note": "Basic monthly", "n": None}, {"id": 2, "note": "x", "n": 2.5}]
    (tmp_path / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pl.DataFrame(rows).write_parquet(tmp_path / "part-2.parquet")
    (tmp_path / "part-3.csv").write_text("code,amount\n007,1.50\n")
    assert list(read_rows(tmp_path / "part-1.jsonl")) == rows
    assert list(read_rows(tmp_path / "part-2.parquet")) == rows
    assert list(read_rows(tmp_path / "part-3.csv", typed=False)) == [{"code": "007", "amount": "1.50"}]
    assert list(read_rows(tmp_path / "part-3.csv")) == [{"code": 7, "amount": 1.5}]


def test_batch_map_collect_gives_rows_in_input_order_and_results_match(tmp_path: Path) -> None:
    summary = batch_map(ITEMS, shout, chunk_size=3, max_concurrency=3, collect=True)
    expected = [{"item": i, "result": {"seen": i}} for i in ITEMS]
    assert summary.collected == expected
    assert list(summary.results()) == expected  # the parts stay in the run's state folder
    assert Path(summary.output_path or "").is_relative_to(Path(summary.run_dir or "/"))
    assert list(summary.dead_letters()) == []


def test_results_without_output_say_how_to_get_them() -> None:
    summary = batch_map([1, 2], shout)
    with pytest.raises(ConfigError, match="output=<folder>"):
        summary.results()
    with pytest.raises(ConfigError, match="collect=True"):
        _ = summary.collected


def test_results_and_dead_letters_after_a_stop_and_resume(tmp_path: Path) -> None:
    _stopped.clear()
    items = list(range(20))
    kwargs: dict[str, Any] = {"chunk_size": 4, "max_concurrency": 1, "item_concurrency": 1, "run_key": "res-resume"}
    with pytest.raises(RunFailed) as stopped:
        batch_map(items, fatal_once_at_five, collect=True, **kwargs)
    first = stopped.value.summary
    assert first.collected == [{"item": i, "result": i * 10} for i in range(5)]  # what was done, nothing more
    again = batch_map(items, fatal_once_at_five, collect=True, **kwargs)
    assert again.ok and again.chunks_resumed == 1
    assert again.collected == [{"item": i, "result": i * 10} for i in items]
    assert again.output_path == first.output_path


def test_dead_letters_hold_the_items_exactly() -> None:
    items = ["Basic monthly", {"password": "x"}, 3]
    summary = batch_map(items, refuse_all, retries=0, raise_on_failure=False)
    assert sorted(map(repr, (d["item"] for d in summary.dead_letters()))) == sorted(map(repr, items))


def test_collect_is_refused_above_the_cap_up_front_or_after_the_run(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(results_mod, "COLLECT_MAX_ROWS", 10)
    with pytest.raises(ConfigError, match=r"at most 10 rows.*source has 11 items.*output=<folder>"):
        batch_map(list(range(11)), shout, collect=True)
    with pytest.raises(TooManyToCollect, match=r"summary\.results") as err:
        batch_map((i for i in range(11)), shout, collect=True, output=tmp_path / "out")
    assert err.value.summary.ok and len(list(err.value.summary.results())) == 11
    with pytest.raises(ConfigError, match="db-migrate writes no part files"):
        db_migrate("sqlite:///nowhere.db", "sqlite:///also.db", tables=["t"], collect=True)


def test_api_bulk_results_and_dead_letters(api_server: ApiServer, tmp_path: Path) -> None:
    items = [{"path": f"/ok/{i}"} for i in range(9)]
    items[4] = {"path": "/fail/4?times=9&status=400"}
    summary = api_bulk(items, base_url=api_server.url, output=tmp_path / "out", chunk_size=3, retry_backoff_s=0.01,
                       min_success_ratio=0.5)
    rows = list(summary.results())
    assert [r["item"]["path"] for r in rows] == [f"/ok/{i}" for i in range(9) if i != 4]
    assert [d["item"] for d in summary.dead_letters()] == [items[4]]


def test_api_extract_results_in_page_order(api_server: ApiServer, tmp_path: Path) -> None:
    summary = api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "out", page_size=10, pages_per_part=3,
                          collect=True)
    assert [r["id"] for r in summary.collected] == list(range(DATASET_SIZE))
    capped = api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "out", page_size=10, pages_per_part=3,
                         max_pages=4, run_key="capped-results")
    assert [r["id"] for r in capped.results()] == list(range(40))  # the longer earlier run's parts are not read


def test_file_transform_results_and_rejects_as_they_were(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,label,amount\n1,a,1.5\n2,b,x\n3,007,2.5\n4,c,1e400x\n5,e,3\n")
    schema = {"id": "int64", "label": "str", "amount": "float64"}
    summary = file_transform(src, tmp_path / "out", schema=schema, chunk_bytes=20, min_success_ratio=0.5,
                             output_format="parquet", collect=True)
    assert summary.chunks_total > 1 and summary.collected == list(summary.results())
    assert list(summary.results()) == [{"id": 1, "label": "a", "amount": 1.5}, {"id": 3, "label": "007", "amount": 2.5},
                                       {"id": 5, "label": "e", "amount": 3.0}]
    rejects = list(summary.rejects())
    assert [(r["id"], r["amount"], r["_line"]) for r in rejects] == [("2", "x", "3"), ("4", "1e400x", "5")]
    assert all(r["_reject_reason"] for r in rejects)


def test_parquet_parts_typed_differently_are_read_as_their_common_type_where_exact(tmp_path: Path) -> None:
    """int64 + double -> double, null + text -> text; an integer a double would change stays an integer."""
    pl.DataFrame({"amt": [3, 5], "note": [None, None], "id": [2**53 + 1, 1]}).write_parquet(
        tmp_path / "part-000000.parquet")
    pl.DataFrame({"amt": [12.5], "note": ["x"], "id": [1.5]}).write_parquet(tmp_path / "part-000001.parquet")
    rows = list(results_mod.iter_results(str(tmp_path), flow="api-extract", chunks_total=2))
    assert rows == [{"amt": 3.0, "note": None, "id": 2**53 + 1}, {"amt": 5.0, "note": None, "id": 1.0},
                    {"amt": 12.5, "note": "x", "id": 1.5}]
    assert [type(r["amt"]) for r in rows] == [float] * 3 and type(rows[0]["id"]) is int
