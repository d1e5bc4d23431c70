"""file_transform end to end: real files in tmp_path, the real Prefect server, a real SIGKILL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.file_transform import file_transform
from tasks.core.errors import ConfigError, SourceError
from tasks.core.outcomes import RunSummary
from tasks.files.parse import raw_bytes
from tasks.files.process import plan_chunks, process_chunk, resolve_inputs
from tests.run_flow import finish, start_flow, summary_in

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"id": "int64", "label": "str", "amount": "float64", "day": "date"}


def add_total(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A "pkg.mod:fn" transform: filter + derived column."""
    return lf.filter(pl.col("amount") >= 3).with_columns((pl.col("amount") * 2).alias("double"))


def slow_identity(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Called once per chunk: slows each chunk so the SIGKILL test lands mid-run."""
    time.sleep(float(os.environ.get("BF_CHUNK_SLEEP", "0")))
    return lf


def big_csv(path: Path, rows: int, *, quoted_every: int = 7) -> Path:
    lines = ["id,label,amount,day"]
    for i in range(rows):
        label = f'"row {i}\nwith ""quotes"", and newline"' if quoted_every and i % quoted_every == 0 else f"plain-{i}-ü"
        lines.append(f"{i},{label},{i * 1.5},2024-01-{i % 28 + 1:02d}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_out(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(out.glob("part-*.parquet"))).sort("id")


def counts_add_up(s: RunSummary) -> None:
    e = s.extra
    assert e["rows_in"] == e["rows_out"] + e["rows_rejected"] + e["rows_filtered"], e
    assert s.succeeded + s.failed + s.skipped == s.total


def test_folder_of_mixed_files_with_a_corrupt_gzip(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("id,label,amount,day\n1,a,1.5,2024-01-01\n2,b,2.5,2024-01-02\n")
    (src / "b.tsv").write_text("id\tlabel\tamount\tday\n3\tc\t3.5\t2024-01-03\n")
    with gzip.open(src / "c.csv.gz", "wt") as fh:
        fh.write("id,label,amount,day\n4,d,4.5,2024-01-04\n5,e,5.5,2024-01-05\n")
    (src / "d.jsonl").write_text('{"id": 6, "label": "f", "amount": 6.5, "day": "2024-01-06"}\n')
    pl.DataFrame({"id": [7], "label": ["g"], "amount": [7.5], "day": ["2024-01-07"]}).write_parquet(src / "e.parquet")
    good = gzip.compress(b"id,label,amount,day\n" + b"".join(b"%d,x,1.0,2024-01-01\n" % i for i in range(5000)))
    (src / "f.csv.gz").write_bytes(good[: len(good) // 2])  # truncated: a corrupt gzip

    out = tmp_path / "out"
    s = file_transform(str(src), out, schema=SCHEMA, run_key="mixed", chunk_retries=0, raise_on_failure=False)
    assert not s.ok
    assert s.chunks_failed == 1 and s.extra["chunks_failed"] == 1
    assert "f.csv.gz" in s.top_errors[0].example and "corrupt or truncated gzip" in s.top_errors[0].example
    df = read_out(out)
    assert df["id"].to_list() == [1, 2, 3, 4, 5, 6, 7]
    assert df.schema["day"] == pl.Date and df.schema["amount"] == pl.Float64
    assert s.extra["rows_in"] == 7 and s.extra["rows_out"] == 7 and s.extra["rows_rejected"] == 0
    assert (s.total, s.succeeded, s.failed) == (8, 7, 1)  # the unreadable chunk is one failed item
    dead = [json.loads(x) for x in Path(s.dead_letter_path or "").read_text().splitlines()]
    assert dead[0]["item"]["files"][0]["path"].endswith("f.csv.gz")
    counts_add_up(s)


def test_split_csv_equals_whole_file(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "big.csv", 4000)
    split = file_transform(src, tmp_path / "split", schema=SCHEMA, chunk_bytes=16_000, max_concurrency=2)
    whole = file_transform(src, tmp_path / "whole", schema=SCHEMA, chunk_bytes=1 << 30)
    assert split.ok and whole.ok, split.message
    assert split.chunks_total >= 8 and whole.chunks_total == 1
    a, b = read_out(tmp_path / "split"), read_out(tmp_path / "whole")
    assert_frame_equal(a, b)
    assert a.height == 4000 and a.filter(pl.col("id") == 7)["label"].item() == 'row 7\nwith "quotes", and newline'
    assert split.extra["chunks_fast_path"] == split.chunks_total  # clean data: every range took the fast path
    # the careful path (no fast path) writes the same rows
    careful = [process_chunk(c, tmp_path / "careful", schema=SCHEMA, fast=False)
               for c in plan_chunks(resolve_inputs(str(src)), chunk_bytes=16_000)]
    assert not any(r.fast_path for r in careful)
    assert_frame_equal(read_out(tmp_path / "careful"), a)
    # a new plan into the same output_dir: the parts of the old plan are removed, no duplicated rows
    again = file_transform(src, tmp_path / "split", schema=SCHEMA, chunk_bytes=1 << 30)
    assert again.ok and len(list((tmp_path / "split").glob("part-*"))) == 1
    assert_frame_equal(read_out(tmp_path / "split"), a)


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ("3,z,1.0", "fields"),  # too few fields: polars pads them silently, the separator count catches it
        ("", None),  # blank line: skipped by both paths
        ("3,z,1.0,2024-01-01,extra", "fields"),  # too many fields: polars raises
        ("3,z,1.0,2024/01/03", "day"),  # polars' native date parser would accept this; the careful path not
        ('3,"un,closed,1.0,2024-01-01', None),  # bad quoting swallows the rest: same result both ways
    ],
)
def test_fast_path_equals_careful_path_or_steps_aside(tmp_path: Path, bad_line: str, why: str | None) -> None:
    lines = [f"{i},l{i},{i}.5,2024-01-{i % 28 + 1:02d}" for i in range(50)]
    lines.insert(20, bad_line)
    src = tmp_path / "in.csv"
    src.write_text("id,label,amount,day\n" + "\n".join(lines) + "\n")
    spec = plan_chunks(resolve_inputs(str(src)))[0]
    fast = process_chunk(spec, tmp_path / "fast", schema=SCHEMA)
    careful = process_chunk(spec, tmp_path / "careful", schema=SCHEMA, fast=False)
    assert not fast.fast_path or (why is None and careful.rows_rejected == 0)
    assert (fast.rows_in, fast.rows_out, fast.rows_rejected) == (careful.rows_in, careful.rows_out, careful.rows_rejected)
    assert_frame_equal(read_out(tmp_path / "fast"), read_out(tmp_path / "careful"))
    if why:
        rejects = pl.read_csv(careful.rejects_path or "")
        assert rejects["_line"].to_list() == [22] and why in rejects["_reject_reason"][0]


def test_schema_rejects_with_line_numbers(tmp_path: Path) -> None:
    src = tmp_path / "messy.csv"
    src.write_text(
        "id,label,amount,day\n"
        '1,"multi\nline",2.5,2024-01-01\n'  # lines 2-3
        "2,ok,x,2024-01-02\n"  # line 4: amount not a float
        "3,z\n"  # line 5: ragged (too few fields: polars would pad it)
        "4,w,1.0,2024-02-30\n"  # line 6: no such date
        "5,fine,3.0,2024-01-05\n"
    )
    out = tmp_path / "out"
    s = file_transform(src, out, schema=SCHEMA, min_success_ratio=0.3)
    assert s.ok, s.message
    assert (s.total, s.succeeded, s.failed) == (5, 2, 3)
    assert s.extra["rows_rejected"] == 3 and s.extra["chunks_fast_path"] == 0
    rejects = pl.read_csv(Path(s.extra["rejects_dir"]) / "part-00000.csv")
    assert rejects["_line"].to_list() == [4, 5, 6]
    reasons = rejects["_reject_reason"].to_list()
    assert "amount: 'x' is not float64" in reasons[0]
    assert "2 fields, expected 4" in reasons[1]
    assert "day" in reasons[2]
    assert read_out(out)["id"].to_list() == [1, 5]
    strict = file_transform(src, tmp_path / "strict", schema=SCHEMA, raise_on_failure=False)
    assert not strict.ok and "min_success_ratio" in strict.message
    counts_add_up(s)


def test_sql_import_path_and_callable_transforms(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "in.csv", 10, quoted_every=0)
    sql = file_transform(src, tmp_path / "sql", transform="SELECT id, amount * 10 AS a10 FROM df WHERE id < 4",
                         schema=SCHEMA)
    assert sql.ok, sql.message
    assert read_out(tmp_path / "sql").rows() == [(0, 0.0), (1, 15.0), (2, 30.0), (3, 45.0)]
    assert (sql.extra["rows_in"], sql.extra["rows_out"], sql.extra["rows_filtered"]) == (10, 4, 6)
    counts_add_up(sql)

    imp = file_transform(src, tmp_path / "imp", transform="tests.flows.test_file_transform:add_total",
                         schema=SCHEMA, output_format="jsonl")
    assert imp.ok, imp.message
    rows = [json.loads(x) for x in (tmp_path / "imp" / "part-00000.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(2, 10)) and rows[0]["double"] == 6.0

    fn = file_transform(src, tmp_path / "fn", transform=lambda lf: lf.select("id").head(3), schema=SCHEMA)
    assert fn.ok and read_out(tmp_path / "fn")["id"].to_list() == [0, 1, 2]


def test_inferred_schema_is_shared_by_all_parts(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "big.csv", 3000)
    s = file_transform(src, tmp_path / "out", chunk_bytes=20_000)
    assert s.ok and s.chunks_total > 3
    schemas = {str(pl.read_parquet_schema(p)) for p in (tmp_path / "out").glob("part-*.parquet")}
    assert len(schemas) == 1
    assert pl.read_parquet_schema(next((tmp_path / "out").glob("part-*.parquet")))["day"] == pl.Date


def test_bad_inputs_fail_before_any_work(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="does not exist"):
        file_transform(tmp_path / "missing.csv", out)
    with pytest.raises(SourceError, match="matched no files"):
        file_transform(str(tmp_path / "nothing-*.csv"), out)
    with pytest.raises(ConfigError, match=r"\['nope'\].*columns are"):
        file_transform(src, out, schema={"nope": "int64"})
    with pytest.raises(ConfigError, match=r"unknown column 'nope'.*columns of df"):
        file_transform(src, out, transform="SELECT nope FROM df", schema=SCHEMA)
    with pytest.raises(ConfigError, match="partition_by"):
        file_transform(src, out, schema=SCHEMA, partition_by=["nope"])
    with pytest.raises(ConfigError, match="output_format"):
        file_transform(src, out, output_format="xlsx")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown column type"):
        file_transform(src, out, schema={"id": "integer"})
    with pytest.raises(ConfigError, match="inside the input"):
        file_transform(str(tmp_path / "**" / "*.csv"), tmp_path / "sub" / "out")
    assert not out.exists()


# --- SIGKILL and resume in a subprocess --------------------------------------------------------------


def _start(params: dict, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_flow("flows.file_transform:file_transform", params, env)


def _summary_of(output: str) -> RunSummary:
    return summary_in(output, RunSummary)


@pytest.mark.slow
def test_sigkill_then_rerun_has_no_duplicate_and_no_missing_rows(tmp_path: Path) -> None:
    rows = 6000
    src = big_csv(tmp_path / "big.csv", rows)
    out = tmp_path / "out"
    params = {"source": str(src), "output_dir": str(out), "schema": SCHEMA, "chunk_bytes": 20_000,
              "max_concurrency": 2, "run_key": "killed", "transform": "tests.flows.test_file_transform:slow_identity"}
    n_chunks = len(plan_chunks(resolve_inputs(str(src)), chunk_bytes=20_000))
    assert n_chunks >= 10
    proc = _start(params, {"BF_CHUNK_SLEEP": "0.4"})
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < n_chunks // 2:
        assert proc.poll() is None, f"flow ended before the kill point:\n{proc.stdout.read() if proc.stdout else ''}"
        assert time.monotonic() < deadline, "no progress before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(list(out.glob("part-*.parquet")))
    assert done_before < n_chunks, "the run finished before it was killed; the test proves nothing"

    rerun = _start(params, {"BF_CHUNK_SLEEP": "0"})
    output = finish(rerun, timeout=300)
    assert rerun.returncode == 0, output
    s = _summary_of(output)
    assert s.chunks_total == n_chunks and s.chunks_resumed >= done_before - 2
    assert s.chunks_resumed < n_chunks
    assert (s.total, s.succeeded, s.failed) == (rows, rows, 0)
    df = read_out(out)
    assert df.height == rows and df["id"].to_list() == list(range(rows))  # no duplicate, no missing row
    assert not list(out.rglob(".tmp-*"))


def test_a_part_deleted_between_runs_is_rewritten_by_the_rerun(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "big.csv", 3000)
    out = tmp_path / "out"
    first = file_transform(src, out, schema=SCHEMA, chunk_bytes=16_000, run_key="gone")
    parts = sorted(out.glob("part-*.parquet"))
    assert first.ok and len(parts) > 3
    parts[2].unlink()
    again = file_transform(src, out, schema=SCHEMA, chunk_bytes=16_000, run_key="gone")
    assert again.ok and again.chunks_resumed == len(parts) - 1  # only the chunk whose part was gone ran again
    assert read_out(out)["id"].to_list() == list(range(3000))


def test_reject_line_numbers_in_a_late_byte_range(tmp_path: Path) -> None:
    src = big_csv(tmp_path / "big.csv", 3000)
    text = src.read_text(encoding="utf-8").replace("\n2500,plain-2500-ü,3750.0,", "\n2500,plain-2500-ü,x,")
    src.write_text(text, encoding="utf-8")
    line = text.split("\n").index(next(x for x in text.split("\n") if x.startswith("2500,"))) + 1
    chunks = plan_chunks(resolve_inputs(str(src)), chunk_bytes=16_000)
    assert len(chunks) > 5 and chunks[-1].files[0].first_line == 0  # line numbers not counted at planning
    results = [process_chunk(c, tmp_path / "out", schema=SCHEMA) for c in chunks]
    bad = [r for r in results if r.rows_rejected]
    assert len(bad) == 1 and sum(r.fast_path for r in results) == len(results) - 1
    assert pl.read_csv(bad[0].rejects_path or "")["_line"].to_list() == [line]


# --- bytes as they are: UTF-8, BOM, empty files, "" vs empty, whitespace ------------------------------


def test_a_row_that_is_not_utf8_is_rejected_with_its_bytes(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    data = b'id,name\n1,caf\xc3\xa9\n2,caf\xe9\n3,"multi\nline \xff"\n4,a\\b\xe9\n5,ok\n'
    (src / "a.csv").write_bytes(data)
    (src / "b.csv.gz").write_bytes(gzip.compress(data))
    s = file_transform(str(src), tmp_path / "out", schema={"id": "int64", "name": "str"}, output_format="csv",
                       min_success_ratio=0.3)
    assert (s.total, s.succeeded, s.failed) == (10, 4, 6)
    for part in ("part-00000.csv", "part-00001.csv"):
        assert (tmp_path / "out" / part).read_bytes() == b"id,name\n1,caf\xc3\xa9\n5,ok\n"
    rejects = pl.concat(pl.read_csv(p, infer_schema=False) for p in sorted((tmp_path / "out" / "_rejects").iterdir()))
    assert rejects["_line"].to_list() == ["3", "4", "6"] * 2
    assert all(r.startswith("not valid UTF-8") for r in rejects["_reject_reason"])
    got = [raw_bytes(raw, why) for raw, why in rejects.select("_raw", "_reject_reason").rows()]
    assert got == [b"2,caf\xe9", b'3,"multi\nline \xff"', b"4,a\\b\xe9"] * 2
    counts_add_up(s)


def test_an_empty_file_is_a_file_without_rows(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("id,label\n" + "".join(f"{i},a{i}\n" for i in range(30)))
    (src / "b.csv").write_bytes(b"")
    (src / "c.csv").write_text("id,label\n" + "".join(f"{i},c{i}\n" for i in range(30, 40)))
    (src / "d.csv.gz").write_bytes(gzip.compress(b""))
    out = tmp_path / "out"
    split = file_transform(str(src), out, chunk_bytes=64)  # b.csv and d.csv.gz are chunks of their own
    grouped = file_transform(str(src), out, chunk_bytes=1 << 20, schema={"id": "int64"})  # b.csv with a.csv, c.csv
    for s in (split, grouped):
        assert s.ok, s.message
        assert (s.total, s.succeeded, s.extra["rows_in"], s.extra["files_empty"]) == (40, 40, 40, 2)
        counts_add_up(s)
    assert grouped.chunks_total == 2 and split.chunks_total > 2
    assert read_out(out)["id"].to_list() == list(range(40))  # the earlier plan's part-00001 is gone


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_bytes(b"\xef\xbb\xbfid,name\n1,x\n")
    (src / "b.csv").write_bytes(b"id,name\n2,y\n")
    (src / "c.csv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfid,name\n3,z\n"))
    inferred = file_transform(str(src), tmp_path / "inferred")
    typed = file_transform(str(src), tmp_path / "typed", schema={"id": "int64"})
    fast = file_transform(src / "a.csv", tmp_path / "fast", schema={"id": "int64"})
    careful = process_chunk(plan_chunks(resolve_inputs(str(src / "a.csv")))[0], tmp_path / "careful",
                            schema={"id": "int64"}, fast=False)
    assert inferred.ok and typed.ok and fast.ok and fast.extra["chunks_fast_path"] == 1, typed.message
    expected = pl.DataFrame({"id": [1, 2, 3], "name": ["x", "y", "z"]})
    assert_frame_equal(read_out(tmp_path / "inferred"), expected)
    assert_frame_equal(read_out(tmp_path / "typed"), expected)
    assert_frame_equal(read_out(tmp_path / "fast"), expected.head(1))
    assert_frame_equal(pl.read_parquet(careful.output_paths[0]), expected.head(1))


def test_a_quoted_empty_string_is_not_null(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,name,day\n1,"",2024-01-01\n2,,""\n"",x,\n')
    schema = {"id": "int64", "name": "str", "day": "date"}
    s = file_transform(src, tmp_path / "fast", schema=schema, output_format="csv")
    spec = plan_chunks(resolve_inputs(str(src)))[0]
    careful = process_chunk(spec, tmp_path / "careful", schema=schema, output_format="csv", fast=False)
    assert s.ok and s.extra["chunks_fast_path"] == 1 and careful.rows_rejected == 0
    expected = b'id,name,day\n1,"",2024-01-01\n2,,\n,x,\n'  # "" is a value of a str column, null of the others
    assert (tmp_path / "fast" / "part-00000.csv").read_bytes() == expected
    assert Path(careful.output_paths[0]).read_bytes() == expected


def test_a_value_of_spaces_in_a_one_column_file_is_a_row(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b'name\nx\n   \n\n""\ny\n')
    s = file_transform(src, tmp_path / "out", schema={"name": "str"}, output_format="csv")
    assert s.ok and (s.total, s.extra["rows_in"]) == (4, 4)  # only the empty line is skipped
    assert (tmp_path / "out" / "part-00000.csv").read_bytes() == b'name\nx\n   \n""\ny\n'
