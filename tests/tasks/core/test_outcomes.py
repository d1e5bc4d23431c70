from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.errors import ItemError, SourceError
from tasks.core.outcomes import ChunkReport, DeadLetterWriter, FailedItem, SummaryBuilder, read_dead_letters
from tasks.core.redact import register_secret


def test_summary_folds_reports_and_keeps_the_invariant() -> None:
    builder = SummaryBuilder("batch-map", "k")
    fail = FailedItem.from_exception({"id": 1}, ItemError("bad", category="bad_item"), chunk=0, position=0, attempts=1)
    builder.add(ChunkReport(index=0, size=10, succeeded=8, failed=1, skipped=1, failures=[fail], duration_s=0.5))
    builder.add(ChunkReport(index=1, size=5, succeeded=5, resumed=True))
    s = builder.finish(2.0)
    assert (s.total, s.succeeded, s.failed, s.skipped, s.chunks_total, s.chunks_resumed) == (15, 13, 1, 1, 2, 1)
    assert s.top_errors[0].category == "bad_item" and s.top_errors[0].count == 1
    assert "15 items: 13 succeeded, 1 failed, 1 skipped" in s.render_text()


def test_chunk_report_check_catches_lost_items() -> None:
    with pytest.raises(AssertionError, match="lost items"):
        ChunkReport(index=3, size=4, succeeded=2).check()


def test_dead_letters_keep_the_item_exact_and_redact_the_message(tmp_path: Path) -> None:
    """The item is the user's data (replay feeds it back); the message is batchflows' text about it."""
    register_secret("tok-abcdef-123")
    path = tmp_path / "dl.jsonl"
    writer = DeadLetterWriter(path, flow="batch-map", run_key="k", handler="m:f")
    exc = ValueError("call with tok-abcdef-123 to https://u:pw@host/x failed")
    item = {"token": "the", "plan": "Basic monthly subscription", "dsn": "postgresql://u:pw@h/db", "id": 1}
    writer.write([FailedItem.from_exception(item, exc, chunk=2, position=0, attempts=3)])
    writer.close()
    [record] = list(read_dead_letters(path))
    assert record["item"] == item
    assert "tok-abcdef-123" not in record["message"] and ":pw@" not in record["message"]
    assert record["chunk"] == 2 and record["attempts"] == 3 and record["handler"] == "m:f"
    assert record["error_type"] == "ValueError"


def test_not_reached_items_count_apart_from_the_total() -> None:
    builder = SummaryBuilder("batch-map", "k")
    builder.add(ChunkReport(index=0, size=10, succeeded=6, failed=1, not_reached=3, complete=False))
    s = builder.finish(1.0)
    assert (s.total, s.succeeded, s.failed, builder.not_reached) == (7, 6, 1, 3)


def test_empty_dead_letter_file_is_removed_and_bad_files_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    DeadLetterWriter(path, flow="f", run_key="k", handler=None).close()
    assert not path.exists()
    with pytest.raises(SourceError, match="does not exist"):
        list(read_dead_letters(path))
    path.write_text(json.dumps({"item": 1}) + "\nnot json\n")
    with pytest.raises(SourceError, match=r"dl.jsonl:2"):
        list(read_dead_letters(path))


def test_an_item_with_non_str_dict_keys_is_dead_lettered_as_its_repr(tmp_path: Path) -> None:
    """JSON writes {2024: 12.5, "2024": "text"} with the key twice (12.5 lost on reading) and {1: "a"} as
    {"1": "a"}: such an item is written as its repr, and item_written_as says so."""
    path = tmp_path / "dl.jsonl"
    writer = DeadLetterWriter(path, flow="batch-map", run_key="k", handler="m:f")
    items = [{2024: 12.5, "2024": "text"}, {"nested": [{1: "a"}]}, {True: "yes", None: "none"}, {"2024": "fine"}]
    writer.write([FailedItem.from_exception(item, ItemError("no"), chunk=0, position=i, attempts=1)
                  for i, item in enumerate(items)])
    writer.close()
    records = list(read_dead_letters(path))
    assert [r["item"] for r in records] == [repr(i) for i in items[:3]] + [{"2024": "fine"}]
    assert [r.get("item_written_as", "")[:5] for r in records] == ["repr:", "repr:", "repr:", ""]
    assert "dict key 2024 (int) is not a str" in records[0]["item_written_as"]


def test_dead_letters_give_back_the_types_json_has_none_for(tmp_path: Path) -> None:
    """A Decimal, dates and times, a UUID, bytes and bytearrays, tuples and sets come back as they were: "item" shows them as
    JSON (a Decimal as its text), "item_typed" keeps them, and reading decodes it (no pickle, no code run)."""
    import datetime as dt
    import uuid
    import zoneinfo
    from decimal import Decimal

    item = {"amount": Decimal("15.50"), "big": Decimal("1E+30"), "day": dt.date(2024, 2, 29),
            "naive": dt.datetime(2024, 1, 1, 12, 0, 0, 5), "utc": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "paris": dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=1),
            "at": dt.time(10, 5, 1, 7), "took": dt.timedelta(days=-1, seconds=5), "id": uuid.UUID(int=7),
            "raw": b"\x00\xff", "buf": bytearray(b"\x00\xff"), "text_buf": bytearray(b"ba"), "pair": (1, ("a", Decimal("-0.00"))), "tags": {"x", 2}, "frozen": frozenset({3}),
            "$ref": [{"$decimal": "not a tag"}], "plain": [1, 2.5, None, "s"]}
    path = tmp_path / "dl.jsonl"
    writer = DeadLetterWriter(path, flow="batch-map", run_key="k", handler="m:f")
    writer.write([FailedItem.from_exception(item, ItemError("no"), chunk=0, position=0, attempts=1),
                  FailedItem.from_exception({"plain": [1, "x"]}, ItemError("no"), chunk=0, position=1, attempts=1)])
    writer.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["item"]["amount"] == "15.50" and first["item"]["day"] == "2024-02-29"  # readable as before
    assert "item_typed" in first and "item_typed" not in second  # only when JSON has no type for a value
    typed, plain = list(read_dead_letters(path))
    assert typed["item"] == item and "item_typed" not in typed
    assert {k: type(v) for k, v in typed["item"].items()} == {k: type(v) for k, v in item.items()}
    assert typed["item"]["paris"].tzinfo == zoneinfo.ZoneInfo("Europe/Paris") and typed["item"]["paris"].fold == 1
    assert str(typed["item"]["pair"][1][1]) == "-0.00" and plain["item"] == {"plain": [1, "x"]}

    path.write_text(json.dumps({"item": "x", "item_typed": {"$pickle": "gASV"}}) + "\n")
    with pytest.raises(SourceError, match=r"dl.jsonl:1: 'item_typed' is not a typed item .*'\$pickle'"):
        list(read_dead_letters(path))


def test_what_the_summary_writes_about_a_run_has_no_credential_of_its_urls(tmp_path: Path) -> None:
    """render_text (the log), summary.json and every dump mask a credential in a path or an extra value;
    the summary itself keeps the real path, so results() still reads the parts."""
    from tasks.core.outcomes import RunSummary

    secret, other = "Sup3rSecretPW-q1", "Xpw-4455-zz"
    summary = RunSummary(flow="batch-map", run_key="k", failed=1, output_path=f"s3://b/out?token={secret}",
                         dead_letter_path=f"https://u:{other}@host/dl.jsonl", run_dir=f"s3://b/state?sig={secret}",
                         extra={"url": f"https://api.example.com/v1?api_key={other}"},
                         message=f"Failed: output https://u:{other}@h/x missing")
    (tmp_path / "summary.json").write_text(summary.model_dump_json(indent=2))
    written = [summary.render_text(), (tmp_path / "summary.json").read_text(), json.dumps(summary.model_dump())]
    for text in written:
        assert secret not in text and other not in text
    assert "s3://b/out?token=***" in written[0] and '"output_path": "s3://b/out?token=***"' in written[1]
    assert summary.output_path == f"s3://b/out?token={secret}"


def _never_called(x: object) -> object:
    raise AssertionError("an item ran although the output URL is refused")


def test_an_output_url_with_a_query_is_refused_before_any_item(s3_server: str, state_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 keys have no query: it was dropped (parts went to out8/) and the token logged with the summary."""
    import boto3

    from flows.batch_map import batch_map
    from tasks.core.errors import ConfigError
    from tests.fixtures.s3 import CREDENTIALS

    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="bf-query-out")
    secret = "Sup3rSecretPW-q1"
    for url in (f"s3://bf-query-out/out8?token={secret}", "s3://bf-query-out/out8#part"):
        with pytest.raises(ConfigError, match="query string or fragment") as info:
            batch_map([1, 2], _never_called, output=url, run_key="query-out")
        assert secret not in str(info.value) and "s3://bucket/prefix" in str(info.value)
    assert client.list_objects_v2(Bucket="bf-query-out").get("KeyCount") == 0
    leaked = [p for p in state_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as api:  # what Prefect stored for the refused runs (UI, flow-run inspect)
        runs = api.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=2)  # this test's two
        stored = json.dumps([r.parameters for r in runs], default=str)
    assert secret not in stored and "out8?***" in stored
