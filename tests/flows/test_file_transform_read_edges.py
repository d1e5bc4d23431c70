"""file_transform at the edges of reading: records longer than the reader's segments, fields longer than
Python's csv limit, headers and layouts that cannot make one output, an output_dir named another way than the
glob, a file deleted during the run. Real files in tmp_path, the real flow and Prefect server."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import polars as pl
import pytest

from flows.file_transform import file_transform
from tasks.core.errors import ConfigError
from tasks.core.outcomes import RunSummary
from tasks.files.parse import raw_bytes
from tasks.files.read import SEGMENT_BYTES
from tests.run_flow import finish, start_flow, summary_in


def counts_add_up(s: RunSummary) -> None:
    e = s.extra
    assert e["rows_in"] == e["rows_out"] + e["rows_rejected"] + e["rows_filtered"], e
    assert s.succeeded + s.failed + s.skipped == s.total


def delete_after_first_output(name: str) -> None:
    """BATCHFLOWS_FAILPOINTS hook: once the first chunk has written its output, delete ``$BF_DELETE``."""
    if name == "chunk.after_output" and os.path.exists(os.environ["BF_DELETE"]):
        os.remove(os.environ["BF_DELETE"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["long.csv.gz", "long.jsonl"])
def test_a_record_longer_than_four_segments_is_written_whole(tmp_path: Path, name: str) -> None:
    """It was cut at 4 segments (32 MiB): a CSV row came out short and good, a JSON line as two rejects."""
    blob = "A" * (4 * SEGMENT_BYTES + (2 << 20)) + "é"
    if name.endswith(".jsonl"):
        text = f'{{"id":1,"blob":"short"}}\n{{"id":2,"blob":"{blob}"}}\n{{"id":3,"blob":"end"}}\n'
    else:
        text = f"id,blob\n1,short\n2,{blob}\n3,end\n"
    src = tmp_path / "in" / name
    src.parent.mkdir()
    src.write_bytes(gzip.compress(text.encode(), compresslevel=1) if name.endswith(".gz") else text.encode())
    del text
    out = tmp_path / "out"
    s = file_transform(src, out, schema={"id": "int64"}, keep_lineage=True, run_key="long", raise_on_failure=False)
    assert s.ok and (s.total, s.succeeded, s.failed) == (3, 3, 0)
    counts_add_up(s)
    df = pl.read_parquet(out / "part-00000.parquet")
    assert df["id"].to_list() == [1, 2, 3] and df["_line"].to_list() == ([1, 2, 3] if name.endswith("l") else [2, 3, 4])
    assert df["blob"][1] == blob and df["blob"][2] == "end"
    assert not (out / "_rejects").exists() or not list((out / "_rejects").iterdir())


def test_a_field_longer_than_128_kib_beside_a_malformed_row_is_kept(tmp_path: Path) -> None:
    big = "B" * 200_000
    src = tmp_path / "a.csv"
    src.write_text(f'id,doc,x\n1,{big},ok\n2,"abc"def,bad quoting\n3,small,ok\n')
    out = tmp_path / "out"
    s = file_transform(src, out, schema={"id": "int64"}, output_format="csv", run_key="field",
                       raise_on_failure=False)
    assert (s.total, s.succeeded, s.failed) == (3, 2, 1)
    counts_add_up(s)
    assert (out / "part-00000.csv").read_text() == f"id,doc,x\n1,{big},ok\n3,small,ok\n"
    rejects = pl.read_csv(out / "_rejects" / "part-00000.csv", infer_schema=False)
    assert rejects["_line"].to_list() == ["3"] and rejects["_reject_reason"][0].startswith("bad quoting")


def test_a_column_name_twice_in_a_header_is_refused_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("id,amount\n1,2\n")
    (src / "b.csv").write_text("id,amount,amount\n1,2,3\n")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"b\.csv has the column name\(s\) \['amount'\] more than once.*name of its"):
        file_transform(src, out, output_format="csv")
    assert not out.exists()


@pytest.mark.parametrize("chunk_bytes", [10_000, 100])  # the files grouped in one chunk, or each in its own
def test_files_of_another_layout_are_refused_and_another_order_is_read_by_name(
    tmp_path: Path, chunk_bytes: int
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("id,x\n" + "".join(f"{k},v{k}\n" for k in range(30)))
    (src / "b.csv").write_text("x,id\n" + "".join(f"w{k},{100 + k}\n" for k in range(30)))
    out = tmp_path / "out"
    s = file_transform(src, out, schema={"id": "int64"}, chunk_bytes=chunk_bytes, run_key="order")
    assert s.ok and (s.total, s.succeeded) == (60, 60)
    df = pl.read_parquet(sorted(out.glob("part-*.parquet"))).sort("id")
    assert df["id"].to_list() == [*range(30), *range(100, 130)]
    assert df["x"].to_list() == [f"v{k}" for k in range(30)] + [f"w{k}" for k in range(30)]
    (src / "c.csv").write_text("x,id,extra\nw,1,e\n")
    with pytest.raises(ConfigError, match=r"c\.csv has columns \['x', 'id', 'extra'\] but .*a\.csv has \['id', 'x'\]"):
        file_transform(src, tmp_path / "out2", schema={"id": "int64"}, chunk_bytes=chunk_bytes)
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("how", ["symlink", "dotdot"])
def test_an_output_dir_inside_the_glob_is_refused_however_the_glob_names_it(tmp_path: Path, how: str) -> None:
    root = tmp_path / "data"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.csv").write_text("id,x\n1,a\n2,b\n")
    if how == "symlink":
        os.symlink(root, tmp_path / "link")
        glob = str(tmp_path / "link" / "**" / "*.csv")
    else:
        glob = str(root / "in" / ".." / "**" / "*.csv")
    with pytest.raises(ConfigError, match="inside the input"):
        file_transform(glob, root / "out", output_format="csv")
    assert not (root / "out").exists()


def test_a_split_file_deleted_during_the_run_fails_only_its_chunk(tmp_path: Path) -> None:
    """A file big enough to be split is planned while the run goes: gone by then, the whole run died."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.csv").write_text("id,x\n" + "".join(f"{i * 100 + k},v\n" for k in range(50)))
    out = tmp_path / "out"
    params = {"source": str(src), "output_dir": str(out), "output_format": "csv", "chunk_bytes": 300,
              "max_concurrency": 1, "schema": {"id": "int64"}, "run_key": "gone"}
    env = {"BATCHFLOWS_FAILPOINTS": "tests.flows.test_file_transform_read_edges:delete_after_first_output",
           "BF_DELETE": str(src / "f2.csv")}
    proc = start_flow("flows.file_transform:file_transform", params, env)
    output = finish(proc, timeout=300)
    assert proc.returncode == 1, output
    s = summary_in(output, RunSummary)
    assert s.chunks_failed == 1 and (s.total, s.succeeded, s.failed) == (151, 150, 1)
    counts_add_up(s)
    assert "f2.csv no longer exists" in s.top_errors[0].example
    dead = [json.loads(x) for x in Path(s.dead_letter_path or "").read_text().splitlines()]
    assert [f["path"] for d in dead for f in d["item"]["files"]] == [str(src / "f2.csv")]
    rows = pl.read_csv(sorted(out.glob("part-*.csv")))["id"].sort().to_list()
    assert rows == [i * 100 + k for i in (0, 1, 3) for k in range(50)]


def test_parquet_to_jsonl_keeps_nested_nan_and_rejects_an_integer_a_float_would_change(tmp_path: Path) -> None:
    """A NaN inside a list or a struct was written null; 9007199254740993 cast to float64 became ...992.0."""
    nan, big = float("nan"), 2**53 + 1
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": [1, 2, 3], "n": [big, 7, 2**53], "xs": [[1.5, nan], [float("inf"), nan, None], []],
                  "st": [{"a": -float("inf"), "b": "x"}, {"a": 0.25, "b": "y"}, None]}).write_parquet(src)
    out = tmp_path / "out"
    s = file_transform(src, out, schema={"n": "float64"}, output_format="jsonl", run_key="exact",
                       raise_on_failure=False)
    assert (s.total, s.succeeded, s.failed) == (3, 2, 1)
    counts_add_up(s)
    assert (out / "part-00000.jsonl").read_text().splitlines() == [
        '{"id":2,"n":7.0,"xs":[Infinity,NaN,null],"st":{"a":0.25,"b":"y"}}',
        '{"id":3,"n":9007199254740992.0,"xs":[],"st":null}']
    rejects = pl.read_parquet(out / "_rejects" / "part-00000.parquet")
    assert rejects.select("id", "n", "_line").rows() == [(1, big, 1)]
    assert rejects["_reject_reason"].item().startswith(f"n: '{big}' is an integer float64 cannot hold exactly")
    assert math.isnan(rejects["xs"][0][1])


@pytest.mark.parametrize("malformed", [False, True], ids=["polars", "python"])
def test_a_lone_surrogate_escape_in_a_json_line_is_rejected_and_a_pair_kept(tmp_path: Path, malformed: bool) -> None:
    """``"\\ud800"`` is valid JSON but no character: polars' reader wrote it as a NUL (silently), Python's path
    failed the chunk with a bare UnicodeEncodeError, the good rows lost."""
    lines = ['{"id": 1, "name": "a\\ud83d\\ude00"}', '{"id": 2, "name": "b"', '{"id": 3, "name": "ok\\ud800"}']
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines if malformed else lines[::2]) + "\n")
    out = tmp_path / "out"
    s = file_transform(src, out, output_format="jsonl", schema={"id": "int64", "name": "str"}, run_key="sur",
                       raise_on_failure=False)
    assert (s.total, s.succeeded, s.failed, s.chunks_failed) == (2 + malformed, 1, 1 + malformed, 0)
    counts_add_up(s)
    assert (out / "part-00000.jsonl").read_bytes() == '{"id":1,"name":"a\U0001f600"}\n'.encode()
    rejects = list(s.rejects())
    assert [(r["_raw"], r["_line"]) for r in rejects] == ([(lines[1], 2), (lines[2], 3)] if malformed
                                                          else [(lines[2], 2)])
    assert rejects[-1]["_source_file"] == str(src)
    assert rejects[-1]["_reject_reason"].startswith("name: holds the escape of a lone UTF-16 surrogate (\\ud800,")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("bad_quote", [False, True], ids=["polars", "python"])
def test_a_rejected_row_with_cr_lf_in_a_quoted_field_keeps_its_bytes(tmp_path: Path, eol: bytes, bad_quote: bool) -> None:
    """polars' lines drop each CR: the reject of ``2,"a\\r\\nb",extra`` came out as ``2,"a\\nb",extra``."""
    row = b'2,"a\r\nb",extra'
    tail = [b'4,"x"y,z'] if bad_quote else []  # bad quoting sends the segment to Python's csv
    src = tmp_path / "a.csv"
    src.write_bytes(eol.join([b"id,name", b"1,x", row, b"3,y", *tail]) + eol)
    out = tmp_path / "out"
    s = file_transform(src, out, output_format="csv", run_key="cr", raise_on_failure=False)
    assert (s.total, s.succeeded, s.failed) == (3 + bad_quote, 2, 1 + bad_quote)
    counts_add_up(s)
    rejects = list(s.rejects())
    assert [raw_bytes(r["_raw"], r["_reject_reason"]) for r in rejects] == [row, *tail]
    assert [int(r["_line"]) for r in rejects] == [3, 6][: 1 + bad_quote]
    written = pl.read_csv(out / "_rejects" / "part-00000.csv", infer_schema=False)["_raw"].to_list()
    assert [w.encode() for w in written] == [row, *tail]


def test_a_utf8_bom_starts_json_lines_and_a_bom_only_csv_is_an_empty_file(tmp_path: Path) -> None:
    """A BOM rejected the first JSON line (``invalid JSON``) and made every inferred type str; a CSV holding only
    a BOM (an empty file saved "with BOM") failed its chunk and the good file grouped with it."""
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"id": 1, "name": "x"}\n{"id": 2, "name": "y"}\n')
    s = file_transform(tmp_path / "j", tmp_path / "oj", run_key="bomj", raise_on_failure=False)
    assert s.ok and (s.total, s.succeeded, s.failed) == (2, 2, 0)
    out = pl.read_parquet(tmp_path / "oj" / "part-00000.parquet")
    assert out.schema["id"] == pl.Int64 and out["id"].to_list() == [1, 2] and out["name"].to_list() == ["x", "y"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.csv").write_bytes(b"\xef\xbb\xbf")
    (tmp_path / "c" / "b.csv").write_bytes(b"\xef\xbb\xbf\r\n")
    (tmp_path / "c" / "c.csv").write_bytes(b"id,v\n1,x\n2,y\n")
    s = file_transform(tmp_path / "c", tmp_path / "oc", run_key="bomc", raise_on_failure=False)
    assert s.ok and (s.total, s.succeeded, s.extra["chunks_failed"], s.extra["files_empty"]) == (2, 2, 0, 2)
    counts_add_up(s)
    assert pl.read_parquet(tmp_path / "oc" / "part-00000.parquet")["v"].to_list() == ["x", "y"]
