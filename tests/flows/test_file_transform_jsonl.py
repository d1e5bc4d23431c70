"""file_transform over JSON-lines files, end to end (real files, the real flow): no key is dropped silently, the
parts of a run share their columns, a reject is the line as written, inferred types hold what was seen."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import polars as pl

from flows.file_transform import file_transform
from tasks.core.outcomes import RunSummary
from tests.flows.test_file_transform import counts_add_up

REASON = "key 'email' not among the columns (the schema's and the keys in the first MiB of the first JSON-lines file)"


def _rejects(s: RunSummary) -> pl.DataFrame:
    return pl.concat([pl.read_ndjson(p) for p in sorted(Path(s.extra["rejects_dir"]).glob("part-*.jsonl"))])


def test_a_key_missing_from_the_first_file_is_rejected_then_kept_by_the_schema(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b'{"id": 1}\n')
    (src / "b.jsonl").write_bytes(b'{"id": 2, "email": "x@y.z"}\n')
    s = file_transform(src, tmp_path / "out", output_format="jsonl", run_key="late-1", raise_on_failure=False)
    assert not s.ok and (s.extra["rows_in"], s.extra["rows_out"], s.extra["rows_rejected"]) == (2, 1, 1)
    counts_add_up(s)
    assert (tmp_path / "out" / "part-00000.jsonl").read_bytes() == b'{"id":1}\n'
    rejects = _rejects(s)
    assert rejects["_raw"].to_list() == ['{"id": 2, "email": "x@y.z"}']
    assert rejects["_source_file"].to_list() == [str(src / "b.jsonl")] and rejects["_line"].to_list() == [1]
    assert rejects["_reject_reason"][0].startswith(REASON)
    # what the reason says to do: list the key in the schema
    kept = file_transform(src, tmp_path / "kept", schema={"id": "int64", "email": "str"}, output_format="jsonl",
                          run_key="late-2")
    assert kept.ok and kept.extra["rows_rejected"] == 0
    assert (tmp_path / "kept" / "part-00000.jsonl").read_bytes() == b'{"id":1,"email":null}\n{"id":2,"email":"x@y.z"}\n'


def test_every_parquet_part_has_the_columns_of_the_plan(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(200)))
    (src / "b.jsonl").write_text("".join(json.dumps({"name": f"m{i}", "id": 1000 + i}) + "\n" for i in range(200))
                                 + '{"id": 5000, "email": "late"}\n')
    s = file_transform(src, tmp_path / "out", chunk_bytes=2_000, run_key="parts", min_success_ratio=0.99)
    assert s.ok, s.message
    assert s.chunks_total > 4 and s.extra["rows_rejected"] == 1
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert {tuple(pl.read_parquet_schema(p).items()) for p in parts} == {(("id", pl.Int64), ("name", pl.String))}
    out = pl.read_parquet(parts)
    assert out.height == 400 and out["id"].sort().to_list() == [*range(200), *range(1000, 1200)]
    assert _rejects(s)["_raw"].to_list() == ['{"id": 5000, "email": "late"}']
    counts_add_up(s)


def test_a_schema_reject_is_the_line_byte_for_byte(tmp_path: Path) -> None:
    lines = [b'{"id": 1, "code": 7, "amt": 1.5, "ok": false, "extra": 1}',
             b'{"id": 3, "code": 9, "amt": "x", "ok": true, "extra": {"deep": [1.50, "\\u00e9"]}}',
             b'{"id":4,"amt":12.555,"code":1}']
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    s = file_transform(src, tmp_path / "out", schema={"id": "int64", "amt": "decimal(10,2)"}, output_format="jsonl",
                       run_key="raw", raise_on_failure=False)
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (1, 2)
    rejects = _rejects(s)
    assert rejects.columns == ["_raw", "_source_file", "_line", "_reject_reason"]
    assert [r.encode() for r in rejects["_raw"]] == lines[1:]
    assert rejects["_reject_reason"].to_list() == [
        "amt: 'x' is not decimal(10,2)",
        "amt: '12.555' has more than 2 digit(s) after the decimal point; decimal(10,2) would round it"]
    assert pl.read_ndjson(tmp_path / "out" / "part-00000.jsonl")["amt"].to_list() == ["1.50"]
    counts_add_up(s)


def test_inferred_types_take_integers_wider_than_int64_and_say_they_were_inferred(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b'{"id": 1, "big": 12345678901234567890, "neg": -12345678901234567890}\n'
                                  b'{"id": 2, "big": 5, "neg": 3}\n')
    (src / "b.jsonl").write_bytes(b'{"id": 3, "big": 7, "neg": 0}\n{"id": "four", "big": 8, "neg": 0}\n')
    s = file_transform(src, tmp_path / "out", chunk_bytes=1, run_key="wide", raise_on_failure=False)
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (3, 1) and s.chunks_total == 4
    out = pl.read_parquet(sorted((tmp_path / "out").glob("part-*.parquet")))
    assert out.schema["big"] == pl.UInt64 and out.schema["neg"] == pl.Decimal(38, 0)
    assert out["big"].to_list() == [12345678901234567890, 5, 7]
    assert out["neg"].to_list() == [Decimal(-12345678901234567890), Decimal(3), Decimal(0)]
    assert _rejects(s)["_reject_reason"].to_list() == [
        "id: 'four' is not int64 (type inferred from the first rows; pass a schema to set it)"]
