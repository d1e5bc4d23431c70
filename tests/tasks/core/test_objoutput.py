"""Part files in object storage (moto on loopback): written with one PUT, listed, read back, replaced, removed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.api_extract import api_extract
from tasks.api.outputs import remove_parts_from, write_part
from tasks.core.errors import ConfigError
from tasks.core.items import write_jsonl_part
from tasks.core.objoutput import exists
from tasks.core.results import part_files, read_rows
from tasks.core.state import check_writable_dir
from tests.fixtures.api_server import DATASET_SIZE, ApiServer
from tests.fixtures.s3 import CREDENTIALS, S3State


def test_parts_are_written_listed_read_and_removed(s3_state: S3State) -> None:
    out = f"s3://{s3_state.bucket}/parts"
    check_writable_dir(out)
    rows = [{"id": i, "name": f"n{i}", "body": {"nested": [i]}} for i in range(5)]
    first = write_part(out, 0, rows, "jsonl")
    second = write_part(out, 1, rows, "parquet", json_columns=("body",))
    third = write_jsonl_part(out, 2, ['{"item": 1}', '{"item": 2}'])
    assert (first, second, third) == (f"{out}/part-000000.jsonl", f"{out}/part-000001.parquet",
                                      f"{out}/part-000002.jsonl")
    assert s3_state.objects("parts/") == ["parts/part-000000.jsonl", "parts/part-000001.parquet",
                                          "parts/part-000002.jsonl"]
    assert part_files(out) == [first, second, third] and part_files(out, below=2) == [first, second]
    assert list(read_rows(first)) == rows
    assert [r["id"] for r in read_rows(second)] == list(range(5))
    assert list(read_rows(third)) == [{"item": 1}, {"item": 2}]
    write_part(out, 0, rows[:2], "jsonl")  # a rerun replaces a part whole
    assert list(read_rows(first)) == rows[:2]
    assert exists(first) and not exists(f"{out}/part-000009.jsonl")
    assert remove_parts_from(out, 1) == [second, third]
    assert part_files(out) == [first]


def test_removing_parts_after_a_checkpoint_keeps_files_batchflows_did_not_write(tmp_path: Path) -> None:
    """``part-7.jsonl`` and ``part-000009.jsonl.bak`` are the user's: only ``part-%06d`` parts are removed."""
    for name in ("part-7.jsonl", "part-000009.jsonl.bak", "part-000001.jsonl", "notes.txt"):
        (tmp_path / name).write_text("mine\n")
    written = write_part(tmp_path, 2, [{"id": 1}], "jsonl")
    assert remove_parts_from(tmp_path, 2) == [written]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "part-000001.jsonl", "part-000009.jsonl.bak",
                                                          "part-7.jsonl"]


def test_an_output_in_a_missing_bucket_is_a_config_error_naming_it(s3_state: S3State) -> None:
    with pytest.raises(ConfigError) as info:
        check_writable_dir("s3://no-such-output-bucket/x")
    text = str(info.value)
    assert "output 's3://no-such-output-bucket/x'" in text and "does not exist" in text
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text


def test_api_extract_writes_its_parts_to_object_storage(s3_state: S3State, api_server: ApiServer,
                                                        tmp_path: Path) -> None:
    out = f"s3://{s3_state.bucket}/extract"
    summary = api_extract(f"{api_server.url}/pages/offset", output=out, page_size=10, pages_per_part=5,
                          run_key="to-s3")
    assert summary.ok, summary.render_text()
    assert len(s3_state.objects("extract/")) == 5
    assert [r["id"] for r in summary.results()] == list(range(DATASET_SIZE))
    again = api_extract(f"{api_server.url}/pages/offset", output=out, page_size=10, pages_per_part=5,
                        run_key="to-s3")
    assert again.ok and again.succeeded == DATASET_SIZE  # resumed: the parts in S3 are found


def test_a_flow_that_writes_local_folders_only_refuses_a_url_that_went_through_path() -> None:
    with pytest.raises(ConfigError, match="looks like an object storage URL"):
        check_writable_dir(Path("s3://bucket/out"), what="output_dir")


def test_incremental_api_extract_keeps_each_runs_parts_under_its_own_prefix_and_its_watermark_in_s3(
        s3_state: S3State) -> None:
    from tests.flows.test_api_extract_incremental import BASE, INCREMENTAL, ChangesApi, serving

    with serving(ChangesApi()) as changes:
        changes.put(range(1, 31), BASE)
        out = f"s3://{s3_state.bucket}/inc"
        first = api_extract(changes.url, output=out, page_size=10, pages_per_part=2, incremental=INCREMENTAL)
        assert first.ok and first.total == 30, first.render_text()
        assert (first.output_path or "").startswith(f"{out}/run-")
        assert [r["id"] for r in first.results()] == list(range(1, 31))
        changes.put(range(31, 36), BASE + dt.timedelta(days=1))
        second = api_extract(changes.url, output=out, page_size=10, pages_per_part=2, incremental=INCREMENTAL)
        assert second.ok and {r["id"] for r in second.results()} == {30, *range(31, 36)}
        assert len({key.split("/")[1] for key in s3_state.objects("inc/")}) == 2  # one run-<key>/ prefix each
        assert any(key.startswith("state/watermarks/api-extract/") for key in s3_state.objects("state/"))
