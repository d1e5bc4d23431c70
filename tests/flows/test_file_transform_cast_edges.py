"""file_transform end to end: casts that would change a value, names and types the run cannot keep, NaN in JSON
lines, a transform that raises. Real files in tmp_path, the real flow."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.file_transform import FileTransformParams, file_transform
from tasks.core.errors import ConfigError
from tasks.files.schema import Schema
from tests.flows.test_file_transform import counts_add_up


def test_parquet_casts_reject_what_they_would_change(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    ts = pl.Series([1704067200123456789, 1704067200000000000, 1704067200000000000]).cast(pl.Datetime("ns"))
    pl.DataFrame({"id": [1, 2, 3], "qty": [1.0, 1.5, 2.0], "flag": [0, 1, 2], "ts": ts}).write_parquet(
        tmp_path / "in" / "a.parquet")
    s = file_transform(tmp_path / "in", tmp_path / "out", output_format="csv", raise_on_failure=False,
                       schema={"qty": "int64", "flag": "bool", "ts": "datetime"})
    counts_add_up(s)
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (0, 3)
    reasons = pl.read_parquet(tmp_path / "out" / "_rejects" / "part-00000.parquet")["_reject_reason"].to_list()
    assert reasons == ["ts: '2024-01-01 00:00:00.123456789' has digits past the microseconds; datetime keeps "
                       "microseconds and would drop them", "qty: '1.5' is not int64", "flag: '2' is not bool"]


@pytest.mark.parametrize("schema", [{"id": "int64", "ts": "datetime"}, {"id": "int64", "ts": "datetime[UTC]"}, None])
def test_datetimes_past_microseconds_are_rejected_or_kept_as_text_never_truncated(tmp_path: Path, schema: dict | None) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,ts\n1,2024-01-01T10:00:00.123456789\n2,2024-01-01T10:00:00.5\n")
    s = file_transform(tmp_path / "in", tmp_path / "out", output_format="csv", schema=schema, raise_on_failure=False)
    counts_add_up(s)
    if schema is None:  # inferred: a column whose sampled values have digits past the microseconds stays text
        assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (2, 0)
        assert (tmp_path / "out" / "part-00000.csv").read_text().splitlines()[1:] == [
            "1,2024-01-01T10:00:00.123456789", "2,2024-01-01T10:00:00.5"]
        return
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (1, 1)
    assert (tmp_path / "out" / "part-00000.csv").read_text().splitlines()[1].startswith("2,2024-01-01T10:00:00.5")
    rejects = (tmp_path / "out" / "_rejects" / "part-00000.csv").read_text()
    assert "ts: '2024-01-01T10:00:00.123456789' has digits past the microseconds" in rejects


@pytest.mark.parametrize(("name", "text", "column"), [
    ("a.csv", "id,_line,_source_file,_raw\n1,L-100,origin-A.txt,raw1\n", "_line"),
    ("a.jsonl", '{"id":1,"_raw":"keep me"}\n', "_raw")])
@pytest.mark.parametrize("schema", [None, {"id": "int64"}])
def test_a_reserved_column_name_is_refused_before_any_work(
        tmp_path: Path, name: str, text: str, column: str, schema: dict | None) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(text)
    with pytest.raises(ConfigError, match=rf"column '{column}' of .*{name} has a name file_transform uses"):
        file_transform(tmp_path / "in", tmp_path / "out", output_format="csv", schema=schema)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("fmt", "named"), [("csv", r"'tags' \(List\(String\)\), 'blob' \(Binary\)"),
                                             ("jsonl", r"'blob' \(Binary\)")])
def test_nested_or_binary_columns_an_output_format_cannot_hold_are_refused(
        tmp_path: Path, fmt: str, named: str) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        pl.DataFrame({"id": [i], "tags": [["a", "b"]], "blob": [b"\x00\xff"]}).write_parquet(
            tmp_path / "in" / f"p{i}.parquet")
    with pytest.raises(ConfigError, match=rf"output_format '{fmt}' cannot hold column\(s\) {named}; use output_format"):
        file_transform(tmp_path / "in", tmp_path / "out", output_format=fmt, chunk_bytes=1)
    s = file_transform(tmp_path / "in", tmp_path / "out", output_format=fmt, chunk_bytes=1,
                       transform="SELECT id, ARRAY_TO_STRING(tags, '|') AS tags FROM df")
    assert s.state == "Completed" and s.extra["rows_out"] == 3


def test_jsonl_output_writes_nan_and_infinities_not_null(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,v\n1,NaN\n2,inf\n3,-inf\n4,1.5\n5,\n")
    s = file_transform(tmp_path / "in", tmp_path / "out", output_format="jsonl", schema={"id": "int64", "v": "float64"})
    counts_add_up(s)
    assert s.state == "Completed" and s.extra["rows_out"] == 5
    text = (tmp_path / "out" / "part-00000.jsonl").read_text()
    assert text == ('{"id":1,"v":NaN}\n{"id":2,"v":Infinity}\n{"id":3,"v":-Infinity}\n{"id":4,"v":1.5}\n'
                    '{"id":5,"v":null}\n')
    assert [json.loads(line)["v"] for line in text.splitlines()][1:] == [float("inf"), float("-inf"), 1.5, None]


def typo_transform(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.with_column(pl.col("amount") * 0.92)  # type: ignore[attr-defined]  # the user's bug: with_columns


def test_a_transform_that_raises_is_named_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,amount\n1,2.5\n")
    with pytest.raises(ConfigError, match=(
            rf"transform '{__name__}:typo_transform' raised AttributeError: 'LazyFrame' object has no attribute "
            r"'with_column' \(given df with columns \['id', 'amount'\]\); fix the transform")):
        file_transform(tmp_path / "in", tmp_path / "out", transform=f"{__name__}:typo_transform")


CALLS: list[int] = []


def fails_after_the_plan_check(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Passes the plan check (its first call), then raises in every chunk."""
    CALLS.append(1)
    if len(CALLS) > 1:
        raise RuntimeError("lookup table missing")
    return lf


def test_a_transform_that_raises_in_a_chunk_stops_the_run(tmp_path: Path) -> None:
    CALLS.clear()
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"a{i}.csv").write_text(f"id,amount\n{i},2.5\n")
    s = file_transform(tmp_path / "in", tmp_path / "out", transform=fails_after_the_plan_check, chunk_bytes=1,
                       max_concurrency=1, chunk_retries=2, raise_on_failure=False)
    assert s.state == "Failed" and s.message.startswith("stopped by a fatal error: chunk 0 (")
    assert "raised RuntimeError: lookup table missing" in s.message and "a0.csv" in s.message
    assert s.extra["chunks_failed"] == 1 and len(CALLS) == 2  # no retry, no other chunk


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_local_time_a_dst_change_skips_or_repeats_is_rejected_from_text_and_parquet(tmp_path: Path, fmt: str) -> None:
    """Parquet failed the whole chunk on an ambiguous time (polars raised), text took the earlier offset."""
    (tmp_path / "in").mkdir()
    texts = ["2024-01-01 00:00:00", "2024-03-31 02:30:00", "2024-10-27 02:30:00", "2024-10-27 03:30:00"]
    df = pl.DataFrame({"n": [1, 2, 3, 4], "ts": texts})
    if fmt == "parquet":
        df.with_columns(pl.col("ts").str.to_datetime()).write_parquet(tmp_path / "in" / "a.parquet")
    else:
        df.write_csv(tmp_path / "in" / "a.csv")
    s = file_transform(tmp_path / "in", tmp_path / "out", schema={"n": "int64", "ts": "datetime[Europe/Paris]"},
                       run_key="dst", raise_on_failure=False)
    counts_add_up(s)
    assert (s.extra["rows_out"], s.extra["rows_rejected"], s.extra["chunks_failed"]) == (2, 2, 0)
    out = pl.read_parquet(tmp_path / "out" / "part-00000.parquet")
    assert out["ts"].dt.to_string("%Y-%m-%d %H:%M%z").to_list() == ["2024-01-01 00:00+0100", "2024-10-27 03:30+0100"]
    rejects = list(s.rejects())
    assert [int(r["n"]) for r in rejects] == [2, 3]
    for r, text in zip(rejects, texts[1:3], strict=True):
        assert r["_reject_reason"].startswith(f"ts: '{text}")
        assert "is a local time that Europe/Paris skips or repeats (a daylight-saving change)" in r["_reject_reason"]


@pytest.mark.parametrize("bad", ["1e400", "-1.8e308", "1e-400", "0." + "0" * 330 + "1"])
def test_float64_rejects_finite_text_past_its_range_and_keeps_inf_nan_and_zero(tmp_path: Path, bad: str) -> None:
    """``1e400`` became inf, ``1e-400`` 0.0, silently (fast and careful path alike)."""
    (tmp_path / "in").mkdir()
    good = ["1.5", "inf", "-Infinity", "0", "-0.0e-5", "5e-324", "2.5"]  # no value that sends it to the careful path
    (tmp_path / "in" / "a.csv").write_text("n,v\n" + "".join(f"{i},{v}\n" for i, v in enumerate([*good, bad])))
    s = file_transform(tmp_path / "in", tmp_path / "out", schema={"n": "int64", "v": "float64"}, run_key="fr",
                       raise_on_failure=False)
    counts_add_up(s)
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (len(good), 1)
    out = pl.read_parquet(tmp_path / "out" / "part-00000.parquet")
    assert out["v"].to_list() == [1.5, float("inf"), float("-inf"), 0.0, -0.0, 5e-324, 2.5]
    (reject,) = s.rejects()
    assert reject["_reject_reason"].startswith(f"v: '{bad}' is out of the range of float64 (it would be ")
    s = file_transform(tmp_path / "in", tmp_path / "inferred", run_key="fr-inferred", raise_on_failure=False)
    assert s.ok and s.extra["rows_out"] == len(good) + 1  # inferred as text: no value the inference saw is rejected
    assert pl.read_parquet(tmp_path / "inferred" / "part-00000.parquet")["v"].to_list()[-1] == bad


def test_the_run_form_says_unique_key_is_checked_within_each_chunk_only() -> None:
    """Duplicates across chunks or files pass: the form and the schema's own description said nothing of it."""
    assert "unique_key is checked within each chunk only" in \
        FileTransformParams.model_json_schema()["properties"]["schema"]["description"]
    assert "unique within each chunk" in Schema.model_json_schema()["properties"]["unique_key"]["description"]
