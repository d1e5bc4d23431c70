"""batch_map end to end on the session's real Prefect server: outcomes, policies, resume, limits."""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import httpx
import polars as pl
import pytest
from prefect.client.orchestration import get_client

from flows.batch_map import batch_map, batch_map_flow
from tasks.core.errors import ConfigError, ItemError, SourceError
from tasks.core.outcomes import read_dead_letters
from tests import handlers

FAST = {"retries": 1, "retry_backoff_s": 0.001}


def flow_run_artifacts(flow_run_id: str) -> list[dict]:
    """Artifacts of a flow run, read over the REST API (the 3.8 client sends nulls this server refuses)."""
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 50, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(os.environ["PREFECT_API_URL"] + "/artifacts/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def expected_mixed(items: range) -> tuple[int, int, int]:
    failed = sum(1 for x in items if x % 10 in (3, 7))
    skipped = sum(1 for x in items if x % 10 == 5)
    return len(items) - failed - skipped, failed, skipped


def assert_counts(summary, items: range) -> None:
    ok, failed, skipped = expected_mixed(items)
    assert (summary.succeeded, summary.failed, summary.skipped) == (ok, failed, skipped)
    assert summary.succeeded + summary.failed + summary.skipped == summary.total == len(items)


def test_list_source_counts_dead_letters_and_outputs(tmp_path: Path) -> None:
    items = range(1000)
    out = tmp_path / "out"
    s = batch_map(list(items), handlers.mixed, chunk_size=64, min_success_ratio=0.5, output=out, **FAST)
    assert s.ok, s.message
    assert_counts(s, items)
    assert s.chunks_total == 16
    records = list(read_dead_letters(s.dead_letter_path))
    assert sorted(r["item"] for r in records) == [x for x in items if x % 10 in (3, 7)]
    retried = {r["item"]: r for r in records}
    assert retried[3]["attempts"] == 2 and retried[3]["category"] == "exception"
    assert retried[7]["attempts"] == 1 and retried[7]["category"] == "bad_item"
    rows = [json.loads(line) for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(r["item"] for r in rows) == [x for x in items if x % 10 not in (3, 5, 7)]
    assert all(r["result"] == 2 * r["item"] for r in rows)


def test_generator_source_is_streamed_and_async_handler_runs_concurrently() -> None:
    items = range(500)
    s = batch_map((x for x in items), handlers.async_mixed, chunk_size=100, item_concurrency=16,
                  min_success_ratio=0.5, **FAST)
    assert_counts(s, items)
    assert s.ok


@pytest.mark.parametrize("kind", ["jsonl.gz", "csv", "parquet"])
def test_file_sources(tmp_path: Path, kind: str) -> None:
    items = range(300)
    path = tmp_path / f"items.{kind}"
    if kind == "jsonl.gz":
        with gzip.open(path, "wt") as fh:
            fh.writelines(json.dumps(x) + "\n" for x in items)
        handler = "tests.handlers:mixed"
    else:
        frame = pl.DataFrame({"x": list(items)})
        frame.write_csv(path) if kind == "csv" else frame.write_parquet(path)
        handler = "tests.handlers:mixed_record"
    s = batch_map(str(path), handler, chunk_size=50, min_success_ratio=0.5, **FAST)
    assert_counts(s, items)


def test_items_file_values_reach_outputs_and_dead_letters_as_written(tmp_path: Path) -> None:
    """An items file is user data: -0 stays -0, 12.50 stays 12.50, 1e400 stays 1e400 (the handler gets the int 0
    and floats), and credential-like text is never rewritten, in output rows and dead letters alike."""
    path = tmp_path / "items.jsonl"
    lines = [f'{{"x": {x}, "z": -0, "p": 12.50, "big": 1e400, "plan": "Basic monthly", "d": "2024-01-05"}}'
             for x in range(20)]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    s = batch_map(str(path), "tests.handlers:mixed_record", chunk_size=8, output=out, min_success_ratio=0.5, **FAST)
    assert_counts(s, range(20))
    written = [line for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    dead = Path(s.dead_letter_path).read_text().splitlines() if s.dead_letter_path else []
    assert len(written) + len(dead) == 20 - s.skipped
    for line in written + dead:
        item = line.split('"item": ')[1]
        assert any(item.startswith(original) for original in lines), line


def test_fatal_error_stops_the_run_with_the_reason() -> None:
    s = batch_map(list(range(10_000)), handlers.fatal_at_37, chunk_size=10, max_concurrency=2, **FAST, raise_on_failure=False)
    assert s.state == "Failed"
    assert "credentials were refused" in s.message
    assert s.total < 10_000 and s.remaining == 10_000 - s.total
    assert s.succeeded + s.failed + s.skipped == s.total


def test_fail_fast_stops_submitting(tmp_path: Path) -> None:
    s = batch_map(list(range(5000)), handlers.mixed, chunk_size=10, max_concurrency=2, on_error="fail_fast", **FAST, raise_on_failure=False)
    assert s.state == "Failed" and "fail_fast" in s.message
    assert s.total <= 40  # the first failing chunk plus at most the window in flight
    assert s.remaining == 5000 - s.total


def test_min_success_ratio_decides_the_final_state() -> None:
    items = list(range(100))  # 80 % succeed among attempted (20 failed, 10 skipped)
    assert batch_map(items, handlers.mixed, chunk_size=25, min_success_ratio=0.7, **FAST).state == "Completed"
    failed = batch_map(items, handlers.mixed, chunk_size=25, min_success_ratio=0.9, **FAST, raise_on_failure=False)
    assert failed.state == "Failed" and "below min_success_ratio 0.9" in failed.message


def test_flow_state_is_failed_with_counts_in_the_message() -> None:
    state = batch_map_flow(source=list(range(20)), handler="tests.handlers:mixed", retries=0, return_state=True)
    assert state.is_failed()
    assert "20 items: 14 succeeded, 4 failed, 2 skipped" in state.message


def test_rerun_with_the_same_run_key_reuses_chunks_and_cache_version_forces_work(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    first = batch_map(list(range(100)), handlers.side_effect, chunk_size=10, run_key="same")
    assert first.chunks_resumed == 0 and len(log.read_text().split()) == 100
    again = batch_map(list(range(100)), handlers.side_effect, chunk_size=10, run_key="same")
    assert again.chunks_resumed == 10 and again.succeeded == 100
    assert len(log.read_text().split()) == 100  # nothing done twice
    forced = batch_map(list(range(100)), handlers.side_effect, chunk_size=10, run_key="same", cache_version="2")
    assert forced.chunks_resumed == 0 and len(log.read_text().split()) == 200


def test_an_output_part_deleted_between_runs_is_reported_not_silently_missing(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log, out = tmp_path / "effects.log", tmp_path / "out"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    assert batch_map(list(range(50)), handlers.side_effect, chunk_size=10, run_key="gone", output=out).ok
    (out / "part-000002.jsonl").unlink()
    again = batch_map(list(range(50)), handlers.side_effect, chunk_size=10, run_key="gone", output=out, raise_on_failure=False)
    assert not again.ok and again.state == "Failed"
    assert "1 output file(s) of chunks finished in an earlier attempt are missing" in again.message
    assert "part-000002.jsonl" in again.message and "new cache_version" in again.message
    assert len(log.read_text().split()) == 50  # nothing was run again behind the user's back
    redo = batch_map(list(range(50)), handlers.side_effect, chunk_size=10, run_key="gone", output=out,
                     cache_version="2")
    assert redo.ok and len(list(out.glob("part-*.jsonl"))) == 5
    rows = [json.loads(line) for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(r["item"] for r in rows) == list(range(50))


def test_item_retries_recover_transient_failures() -> None:
    s = batch_map(list(range(50)), handlers.flaky_once, chunk_size=10, retries=2, retry_backoff_s=0.001)
    assert s.ok and s.succeeded == 50 and s.failed == 0


def test_weighted_and_adaptive_chunking() -> None:
    weighted = batch_map(list(range(1, 21)), handlers.double, chunking="weighted", weight_fn=handlers.weight,
                         chunk_size=50)
    assert weighted.ok and weighted.total == 20 and weighted.chunks_total > 3
    adaptive = batch_map(list(range(3000)), handlers.double, chunking="adaptive", target_chunk_seconds=0.05)
    assert adaptive.ok and adaptive.total == 3000


def test_processes_task_runner() -> None:
    items = range(200)
    s = batch_map(list(items), "tests.handlers:mixed", chunk_size=50, max_concurrency=2, task_runner="processes",
                  min_success_ratio=0.5, **FAST)
    assert_counts(s, items)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"min_success_ratio": 1.5}, "min_success_ratio"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"on_error": "explode"}, "on_error"),
        ({"run_key": "../../etc"}, "run_key"),
    ],
)
def test_bad_parameters_fail_before_any_work(kwargs: dict, match: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(tmp_path / "never.log"))
    with pytest.raises(ConfigError, match=match):
        batch_map([1, 2, 3], handlers.side_effect, **kwargs)
    assert not (tmp_path / "never.log").exists()


def test_bad_handlers_and_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be imported"):
        batch_map([1], "nowhere.mod:fn")
    with pytest.raises(ConfigError, match="not a callable"):
        batch_map([1], "tests.handlers:FAST_NOT_CALLABLE")
    with pytest.raises(SourceError, match="does not exist"):
        batch_map(str(tmp_path / "missing.jsonl"), handlers.double)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("1\n2\n{oops\n")
    with pytest.raises(SourceError, match=r"bad\.jsonl:3"):
        batch_map(str(bad), handlers.double)


def test_concurrency_limit_is_created_and_never_exceeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("BF_PROBE_DIR", str(probe))
    monkeypatch.setenv("BF_SLEEP", "0.02")
    s = batch_map(list(range(8)), handlers.double, chunk_size=2, max_concurrency=2,
                  concurrency_limit="bf-test-gcl-created")
    assert s.ok and s.succeeded == 8
    with get_client(sync_client=True) as client:  # created with one slot per chunk in flight
        assert client.read_global_concurrency_limit_by_name("bf-test-gcl-created").limit == 2
    # an existing limit is used as it is: 6 chunks could run at once, its 2 slots allow 2
    s = batch_map(list(range(60)), handlers.concurrency_probe, chunk_size=2, max_concurrency=6,
                  concurrency_limit="bf-test-gcl-created")
    assert s.ok and s.succeeded == 60
    observed = [int(x) for x in (probe / "observed.log").read_text().split()]
    assert max(observed) <= 2  # the window alone would allow 6


def test_progress_and_summary_artifacts_are_published() -> None:
    summary = batch_map(list(range(30)), "tests.handlers:double", chunk_size=10, run_key="artifacts-a")
    other = batch_map(list(range(30)), "tests.handlers:double", chunk_size=10, run_key="artifacts-b")
    assert summary.ok and summary.flow_run_id and other.flow_run_id
    by_type = {a["type"]: a for a in flow_run_artifacts(summary.flow_run_id)}
    # keyed per run: two runs of the flow never overwrite each other's artifacts in the UI
    assert by_type["progress"]["key"] == "batch-map-artifacts-a-progress"
    assert by_type["table"]["key"] == "batch-map-artifacts-a-summary"
    assert {a["key"] for a in flow_run_artifacts(other.flow_run_id)} >= {"batch-map-artifacts-b-progress"}
    assert float(by_type["progress"]["data"]) == 100.0
    table = {row["metric"]: row["value"] for row in json.loads(by_type["table"]["data"])}
    assert table["succeeded"] == 30 and table["state"] == "Completed"
    assert "Completed" in by_type["markdown"]["data"]


def test_identical_chunks_all_run_on_a_first_run(tmp_path: Path) -> None:
    """A chunk is its position plus its content: a source repeating itself is processed in full."""
    calls: list[dict] = []
    s = batch_map([{"sku": "A"}] * 8, calls.append, chunk_size=2, output=tmp_path / "out")
    assert len(calls) == 8 and s.chunks_total == 4 and s.chunks_resumed == 0 and s.succeeded == 8
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"part-{i:06d}.jsonl" for i in range(4)]


def scale(x: int, rate: int) -> int:
    return x * rate


def test_a_handler_bound_to_other_arguments_is_another_run(tmp_path: Path) -> None:
    """Same run_key, partial(f, rate=2) then partial(f, rate=3): nothing of the first is reused for the second."""
    first = batch_map(list(range(6)), functools.partial(scale, rate=2), run_key="bound", output=tmp_path / "a")
    again = batch_map(list(range(6)), functools.partial(scale, rate=2), run_key="bound", output=tmp_path / "a")
    other = batch_map(list(range(6)), functools.partial(scale, rate=3), run_key="bound", output=tmp_path / "a")
    assert (first.chunks_resumed, again.chunks_resumed, other.chunks_resumed) == (0, 1, 0)
    rows = [json.loads(line) for line in (tmp_path / "a" / "part-000000.jsonl").read_text().splitlines()]
    assert [r["result"] for r in rows] == [3 * x for x in range(6)]


def test_a_changed_source_under_the_same_run_key_is_refused_naming_the_chunk() -> None:
    batch_map(list(range(10)), handlers.double, chunk_size=5, run_key="moving")
    with pytest.raises(SourceError, match=r"source changed .* chunk 1 \(items 5-9 of the source\)"):
        batch_map([*range(5), 50, 6, 7, 8, 9], handlers.double, chunk_size=5, run_key="moving")


def test_a_run_recorded_by_batchflows_0_11_resumes_under_its_recorded_hashes(tmp_path: Path, monkeypatch) -> None:
    """0.12 hashes chunks of plain ints and strings from packed values; a run_key that 0.11 started (every chunk
    hashed canonically) is still recognized: its finished chunks resume, a changed one is still refused."""
    from prefect._internal.result_records import ResultRecord

    from tasks.core import identity

    log = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(log))
    with identity.legacy_chunk_hashes():
        legacy = {identity.chunk_hash(list(range(10))), identity.chunk_hash(list(range(10, 20)))}
    assert not legacy & {identity.chunk_hash(list(range(10))), identity.chunk_hash(list(range(10, 20)))}
    with monkeypatch.context() as old:
        old.setattr(identity, "_packed", lambda keys: None)  # 0.11: no packed inputs
        first = batch_map(list(range(20)), handlers.side_effect, chunk_size=10, run_key="upgraded")
    records = {ResultRecord.deserialize(p.read_bytes()).result.content_hash
               for p in Path(first.run_dir, "chunks").iterdir()}
    assert records == legacy
    again = batch_map(list(range(20)), handlers.side_effect, chunk_size=10, run_key="upgraded")
    assert (again.chunks_resumed, again.succeeded) == (2, 20)
    assert sorted(map(int, log.read_text().split())) == list(range(20))  # nothing ran twice
    with pytest.raises(SourceError, match=r"source changed .* chunk 1"):
        batch_map([*range(10), 99, *range(11, 20)], handlers.side_effect, chunk_size=10, run_key="upgraded")


def _times_ten_but_short_for_5(batch: list[int]) -> list[int]:
    """per='batch': the call holding item 5 returns one entry too few (the chunk fails as a whole)."""
    return batch[:-1] if 5 in batch else [x * 10 for x in batch]


def test_a_chunk_that_fails_as_a_whole_keeps_the_rows_of_the_items_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = batch_map(list(range(1, 9)), _times_ten_but_short_for_5, per="batch", max_batch_items=4, chunk_size=8,
                  chunk_retries=0, min_success_ratio=0.4, output=out, **FAST)
    assert (s.succeeded, s.failed) == (4, 4), s.render_text()
    assert list(s.results()) == [{"item": x, "result": 10 * x} for x in range(1, 5)]  # counted and written


def _times_ten_but_none_for_chunk_1(batch: list[int]) -> list[int]:
    return [] if any(110 <= x < 120 for x in batch) else [x * 10 for x in batch]


def test_a_new_run_key_replaces_the_parts_another_run_left_in_its_output(tmp_path: Path) -> None:
    """Parts are named by chunk index: run B's results() must never hand back run A's rows, neither where B's
    chunk failed as a whole nor where B stopped before a chunk. A rerun of B's own key keeps B's parts."""
    out = tmp_path / "out"
    a = batch_map(list(range(30)), _times_ten_but_none_for_chunk_1, per="batch", chunk_size=10, output=out,
                  run_key="run-a", **FAST)
    assert a.ok and len(list(out.glob("part-*.jsonl"))) == 3
    b = batch_map(list(range(100, 130)), _times_ten_but_none_for_chunk_1, per="batch", chunk_size=10,
                  chunk_retries=0, output=out, run_key="run-b", raise_on_failure=False, **FAST)
    assert (b.succeeded, b.failed) == (20, 10)
    assert [r["item"] for r in b.results()] == [*range(100, 110), *range(120, 130)]
    again = batch_map(list(range(100, 130)), _times_ten_but_none_for_chunk_1, per="batch", chunk_size=10,
                      chunk_retries=0, output=out, run_key="run-b", raise_on_failure=False, **FAST)
    assert again.chunks_resumed == 2 and [r["item"] for r in again.results()] == [r["item"] for r in b.results()]


def _ok_unless_marked(x: object) -> str:
    if isinstance(x, dict) and x.get("fail"):
        raise ItemError("bad")
    return "ok"


def test_items_json_cannot_write_are_dead_lettered_not_a_crash(tmp_path: Path) -> None:
    """A dict with a tuple key hashes (canonically) but JSON cannot write it: its output row fails the item
    (the handler ran), and its dead letter holds the item's repr; the other items finish."""
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    items = [1, {(1, 2): "a"}, 3, {(3, 4): "b", "fail": True}]
    s = batch_map(items, _ok_unless_marked, chunk_size=1, output=tmp_path / "out", raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed, s.total) == (2, 2, 4), s.render_text()
    dead = {d["category"]: d for d in s.dead_letters()}
    assert "cannot be written as JSON" in dead["unwritable_output"]["message"]
    assert dead["unwritable_output"]["item"] == "{(1, 2): 'a'}" and "repr" in dead["unwritable_output"]["item_written_as"]
    assert dead["item_error"]["item"] == "{(3, 4): 'b', 'fail': True}"
    assert [r["item"] for r in s.results()] == [1, 3]


def test_collect_and_results_of_an_empty_source_are_empty(tmp_path: Path) -> None:
    assert batch_map([], handlers.double, collect=True).collected == []
    assert list(batch_map([], handlers.double, output=tmp_path / "never").results()) == []


class _NoStableEncoding:
    pass


def _record_call(path: Path, x: object) -> object:
    with path.open("a") as fh:
        fh.write(f"{x!r}\n")
    return x


def _identity(x: object) -> object:
    return x


def test_an_item_without_a_stable_encoding_stops_the_run_before_the_handler_sees_its_chunk(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    items = [1, _NoStableEncoding(), 3, 4, 5]
    s = batch_map(items, functools.partial(_record_call, calls), chunk_size=2, max_concurrency=1,
                  raise_on_failure=False, **FAST)
    assert s.state == "Failed" and "no stable encoding" in s.message and "item_key" in s.message
    assert s.remaining and s.total + s.remaining == 5  # no chunk started after it
    assert not calls.exists()  # its chunk (items 1 and the unencodable one) never reached the handler


def test_output_rows_write_values_json_has_no_type_for_as_dead_letters_do(tmp_path: Path) -> None:
    import datetime as dt
    from decimal import Decimal

    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    s = batch_map([{"when": when, "d": Decimal("12.50")}], _identity, output=tmp_path / "out", **FAST)
    assert [r["item"] for r in s.results()] == [{"when": "2026-01-02T03:04:05", "d": "12.50"}]
