"""tasks/files*: real files in tmp_path, no mocks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from tasks.core.errors import ConfigError, FatalError, SourceError
from tasks.files.process import (
    ChunkReader,
    ChunkSpec,
    TransformError,
    TransformFailed,
    apply_transform,
    plan_chunks,
    process_chunk,
    resolve_inputs,
    scan_chunk,
)
from tasks.files.split import split_byte_ranges

MESSY_CSV = (
    "id,name,amount\n"
    '1,"multi\nline",2.5\n'  # lines 2-3
    "2,é ünïcødé,x\n"  # line 4: amount not a float
    "\n"  # line 5: blank, skipped
    "3,z\n"  # line 6: too few fields
    "4,w,1,9\n"  # line 7: too many fields
    '5,"bad"q,3\n'  # line 8: bad quoting
    "6,ok,7\n"
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _big_csv(path: Path, rows: int = 3000) -> Path:
    lines = ["id,label,amount,day"]
    for i in range(rows):
        label = f'"row {i}\nwith ""quotes"", and newline"' if i % 7 == 0 else f"plain-{i}-ü"
        lines.append(f"{i},{label},{i * 1.5},2024-01-{i % 28 + 1:02d}")
    return _write(path, "\n".join(lines) + "\n")


def _run_all(chunks: list[ChunkSpec], out: Path, **kwargs) -> pl.DataFrame:
    results = [process_chunk(c, out, **kwargs) for c in chunks]
    return pl.concat([pl.read_parquet(p) for r in results for p in r.output_paths])


# --- resolve_inputs ---------------------------------------------------------------------------------


def test_resolve_glob_sorted_with_formats_from_suffix_and_magic(tmp_path: Path) -> None:
    _write(tmp_path / "b.csv", "a\n1\n")
    _write(tmp_path / "a.tsv", "a\tb\n1\t2\n")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n'))
    (tmp_path / "d.csv").write_bytes(gzip.compress(b"a\n1\n"))  # gzip without .gz suffix
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "e.data")  # parquet without suffix
    files = resolve_inputs(str(tmp_path / "*"))
    got = [(Path(f.path).name, f.format, f.compression) for f in files]
    assert got == [
        ("a.tsv", "tsv", "none"),
        ("b.csv", "csv", "none"),
        ("c.jsonl.gz", "jsonl", "gzip"),
        ("d.csv", "csv", "gzip"),
        ("e.data", "parquet", "none"),
    ]
    assert all(f.size > 0 for f in files)
    assert resolve_inputs(tmp_path / "b.csv", input_format="tsv")[0].format == "tsv"


def test_resolve_bad_inputs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv.*does not exist"):
        resolve_inputs(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match=r"matched no files"):
        resolve_inputs(str(tmp_path / "*.parquet"))
    _write(tmp_path / "x.csv", "a\n1\n")
    with pytest.raises(ConfigError, match=r"output_dir .* inside the input"):
        resolve_inputs(str(tmp_path / "**" / "*.csv"), output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"inside the input"):
        resolve_inputs(tmp_path, output_dir=tmp_path / "out")
    assert len(resolve_inputs(str(tmp_path / "*.csv"), output_dir=tmp_path / "out")) == 1
    _write(tmp_path / "fake.parquet", "not parquet")
    with pytest.raises(SourceError, match=r"PAR1"):
        resolve_inputs(tmp_path / "fake.parquet")


# --- planning and byte ranges ---------------------------------------------------------------------


def test_small_files_grouped_big_file_split(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / f"small{i}.csv", "id\n" + "\n".join(str(j) for j in range(10)) + "\n")
    _big_csv(tmp_path / "z_big.csv", rows=500)
    files = resolve_inputs(str(tmp_path / "*.csv"))
    chunks = plan_chunks(files, chunk_bytes=50)
    small = [c for c in chunks if Path(c.files[0].path).name.startswith("small")]
    assert [len(c.files) for c in small] == [2, 2, 1]
    big = [c for c in chunks if Path(c.files[0].path).name == "z_big.csv"]
    assert len(big) > 50
    assert [c.index for c in chunks] == list(range(len(chunks)))
    json.dumps([c.model_dump() for c in chunks])  # JSON-able: usable as a task parameter / cache key


def test_byte_ranges_never_cut_inside_quoted_field(tmp_path: Path) -> None:
    path = _big_csv(tmp_path / "q.csv", rows=400)
    data = path.read_bytes()
    ranges = split_byte_ranges(path, chunk_bytes=300, quote=b'"', start=data.index(b"\n") + 1, first_line=2)
    assert len(ranges) > 20
    assert ranges[-1][1] == len(data)
    for (start, end, line), nxt in zip(ranges, [*ranges[1:], None], strict=True):
        piece = data[start:end]
        assert piece.endswith(b"\n") and piece.count(b'"') % 2 == 0
        assert line == data.count(b"\n", 0, start) + 1
        if nxt is not None:
            assert nxt[0] == end


def test_split_file_equals_whole_file(tmp_path: Path) -> None:
    path = _big_csv(tmp_path / "big.csv", rows=3000)
    files = resolve_inputs(path)
    schema = {"id": "int64", "amount": "float64", "day": "date"}
    whole = _run_all(plan_chunks(files, chunk_bytes=10**9), tmp_path / "whole", schema=schema, keep_lineage=True)
    chunks = plan_chunks(files, chunk_bytes=8_000)
    assert len(chunks) > 10
    parts = _run_all(chunks, tmp_path / "parts", schema=schema, keep_lineage=True)
    assert whole.height == 3000
    assert_frame_equal(whole.sort("id"), parts.sort("id"))
    # _line points at the physical line where the row starts (header = line 1, quoted rows span 2 lines)
    lines = path.read_text(encoding="utf-8").split("\n")
    for row in parts.sample(50, seed=1).iter_rows(named=True):
        assert lines[row["_line"] - 1].startswith(f"{row['id']},")


def test_reader_segments_equal_one_segment(tmp_path: Path) -> None:
    path = _big_csv(tmp_path / "seg.csv", rows=800)
    spec = plan_chunks(resolve_inputs(path), chunk_bytes=10**9)[0]
    small = ChunkReader(spec, segment_bytes=512).lazy().collect()
    big = scan_chunk(spec).collect()
    assert_frame_equal(small, big)


# --- messy CSV, TSV, gzip, JSONL, Parquet ------------------------------------------------------


def test_messy_csv_rejects_with_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "messy.csv", MESSY_CSV)
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(spec, tmp_path / "out", schema={"id": "int64", "amount": "float64"})
    assert (result.rows_in, result.rows_out, result.rows_rejected, result.rows_filtered) == (6, 2, 4, 0)
    good = pl.read_parquet(result.output_paths[0])
    assert good.to_dict(as_series=False) == {"id": [1, 6], "name": ["multi\nline", "ok"], "amount": [2.5, 7.0]}
    assert result.rejects_path is not None and result.rejects_path.endswith("_rejects/part-00000.csv")
    rejects = pl.read_csv(result.rejects_path, infer_schema=False)
    assert rejects["_line"].to_list() == ["4", "6", "7", "8"]
    reasons = rejects["_reject_reason"].to_list()
    assert reasons[0] == "amount: 'x' is not float64"
    assert reasons[1:3] == ["line has 2 fields, expected 3", "line has 4 fields, expected 3"]
    assert reasons[3].startswith("bad quoting")
    assert rejects["name"][0] == "é ünïcødé"
    assert rejects["_raw"][3] == '5,"bad"q,3'
    assert set(rejects["_source_file"]) == {str(path)}


def test_tsv_and_gzip(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "t.tsv", "k\tv\n1\ta b\n2\t\n3\tc\td\n")
    (tmp_path / "g.csv.gz").write_bytes(gzip.compress(b"k,v\n1,x\n2,y\n"))
    files = resolve_inputs([tsv, tmp_path / "g.csv.gz"])
    chunks = plan_chunks(files, chunk_bytes=10_000)
    assert [c.files[0].format for c in chunks] == ["csv", "tsv"]
    gz, ts = (process_chunk(c, tmp_path / "out", schema={"k": "int64"}, output_format="csv") for c in chunks)
    assert pl.read_csv(gz.output_paths[0]).to_dict(as_series=False) == {"k": [1, 2], "v": ["x", "y"]}
    assert pl.read_csv(ts.output_paths[0])["k"].to_list() == [1, 2]
    assert ts.rows_rejected == 1 and ts.rejects_path is not None and ts.rejects_path.endswith(".tsv")
    assert pl.read_csv(ts.rejects_path, separator="\t")["_line"].to_list() == [4]


def test_corrupt_gzip_fails_its_chunk_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "a_good.csv.gz"
    good.write_bytes(gzip.compress(b"k\n1\n2\n"))
    bad = tmp_path / "b_bad.csv.gz"
    blob = gzip.compress(("k\n" + "\n".join(str(i) for i in range(20000)) + "\n").encode())
    bad.write_bytes(blob[: len(blob) // 2])  # truncated stream
    chunks = plan_chunks(resolve_inputs(str(tmp_path / "*.gz")), chunk_bytes=1)
    assert process_chunk(chunks[0], tmp_path / "out").rows_out == 2
    with pytest.raises(SourceError, match=r"b_bad\.csv\.gz is a corrupt or truncated gzip"):
        process_chunk(chunks[1], tmp_path / "out")
    assert not list((tmp_path / "out").glob(".tmp-*"))
    assert not (tmp_path / "out" / "part-00001.parquet").exists()


def test_jsonl_bad_lines_become_rejects(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "e.jsonl",
        '{"id": 1, "tags": [1, 2], "ok": true}\n'
        "not json\n"
        "\n"
        '{"id": "two", "ok": false}\n'
        "[1, 2]\n"
        '{"id": 3, "ok": null, "extra": 1}\n',
    )
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(spec, tmp_path / "out", schema={"id": "int64", "ok": "bool"}, keep_lineage=True)
    good = pl.read_parquet(result.output_paths[0])
    assert good.select("id", "tags", "ok", "_line").to_dict(as_series=False) == {
        "id": [1, 3],
        "tags": ["[1, 2]", None],
        "ok": [True, None],
        "_line": [1, 6],
    }
    assert result.rejects_path is not None and result.rejects_path.endswith(".jsonl")
    rejects = pl.read_ndjson(result.rejects_path)
    assert rejects["_line"].to_list() == [2, 4, 5]
    assert rejects["_reject_reason"][0].startswith("invalid JSON")
    assert rejects["_reject_reason"][1] == "id: 'two' is not int64"
    assert "expected an object" in rejects["_reject_reason"][2]
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (5, 2, 3)


def test_parquet_split_by_row_groups(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": range(1000), "v": [f"x{i}" for i in range(1000)]})
    path = tmp_path / "p.parquet"
    pq.write_table(df.to_arrow(), path, row_group_size=100)
    chunks = plan_chunks(resolve_inputs(path), chunk_bytes=2_000)
    assert len(chunks) > 1
    assert sorted(rg for c in chunks for rg in c.files[0].row_groups or []) == list(range(10))
    out = _run_all(chunks, tmp_path / "out", keep_lineage=True)
    assert_frame_equal(out.sort("id").select("id", "v"), df)
    assert (out["_line"] == out["id"] + 1).all()


def test_schema_types_constraints_and_unique_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "typed.csv",
        "id,price,flag,day,ts,ts_utc,note\n"
        "1,12.340,yes,2024-02-29,2024-01-02 03:04:05,2024-01-02T03:04:05+02:00,a\n"
        "2,1.5,false,2024-13-01,2024-01-02T03:04:05.250,2024-01-02T03:04:05,\n"
        "1,3,1,2024-01-01,2024-01-02,2024-01-02T03:04:05Z,dup\n"
        "3,123456789,no,2024-01-01,bad,2024-01-02T03:04:05Z,\n"
        "4,2,maybe,2024-01-01,2024-01-01,2024-01-01T00:00:00Z,\n",
    )
    schema = {
        "columns": {
            "id": "int64",
            "price": "decimal(8,2)",
            "flag": "bool",
            "day": "date",
            "ts": "datetime",
            "ts_utc": "datetime[UTC]",
        },
        "not_null": ["note"],
        "unique_key": ["id"],
    }
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(spec, tmp_path / "out", schema=schema)
    good = pl.read_parquet(result.output_paths[0])
    assert good["id"].to_list() == [1]
    assert good.schema["price"] == pl.Decimal(8, 2) and str(good["price"][0]) == "12.34"  # 12.340: no digit lost
    assert good.schema["ts_utc"] == pl.Datetime("us", "UTC")
    assert good["ts_utc"][0].hour == 1  # +02:00 converted to UTC
    rejects = pl.read_csv(result.rejects_path or "", infer_schema=False)
    reasons = dict(zip(rejects["_line"].to_list(), rejects["_reject_reason"].to_list(), strict=True))
    assert "day: '2024-13-01' is not date" in reasons["3"] and "note: null but listed in not_null" in reasons["3"]
    assert reasons["4"] == "duplicate unique_key (id)"
    assert "price: '123456789' is not decimal(8,2)" in reasons["5"] and "ts: 'bad' is not datetime" in reasons["5"]
    assert "flag: 'maybe' is not bool" in reasons["6"]


def test_schema_errors_name_the_problem(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "a,b\n1,2\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    with pytest.raises(ConfigError, match=r"unknown column type 'integer'.*allowed types are int64, uint64, float64"):
        process_chunk(spec, tmp_path / "out", schema={"a": "integer"})
    with pytest.raises(ConfigError, match=r"unknown time zone 'Mars/Base'"):
        process_chunk(spec, tmp_path / "out", schema={"a": "datetime[Mars/Base]"})
    with pytest.raises(ConfigError, match=r"schema column\(s\) \['zz'\] not in .*s\.csv; columns are \['a', 'b'\]"):
        process_chunk(spec, tmp_path / "out", schema={"columns": {"a": "int64"}, "not_null": ["zz"]})


# --- transform and writing ------------------------------------------------------------------------


def test_sql_transform_counts_filtered_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.csv", "id,v\n" + "".join(f"{i},{i * 10}\n" for i in range(10)) + "x,1\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(
        spec,
        tmp_path / "out",
        schema={"id": "int64", "v": "int64"},
        transform="SELECT id, v * 2 AS v2 FROM df WHERE id >= 4",
    )
    assert (result.rows_in, result.rows_out, result.rows_rejected, result.rows_filtered) == (11, 6, 1, 4)
    assert result.rows_in == result.rows_out + result.rows_rejected + result.rows_filtered
    assert pl.read_parquet(result.output_paths[0])["v2"].to_list() == [80, 100, 120, 140, 160, 180]
    limited = process_chunk(spec, tmp_path / "lim", schema={"id": "int64"}, transform="SELECT * FROM df LIMIT 2")
    assert (limited.rows_in, limited.rows_out, limited.rows_filtered) == (11, 2, 8)


def test_transform_errors_list_columns(tmp_path: Path) -> None:
    lf = pl.LazyFrame({"a": [1], "b": [2]})
    with pytest.raises(ConfigError, match=r"unknown column 'zz'; columns of df are \['a', 'b'\]"):
        apply_transform(lf, "SELECT a, zz FROM df")
    with pytest.raises(ConfigError, match=r"returned DataFrame|returned int"):
        apply_transform(lf, lambda _lf: 3)
    with pytest.raises(ConfigError, match=r"cannot be imported"):
        apply_transform(lf, "nosuchpkg.mod:fn")
    out = apply_transform(lf, lambda x: x.with_columns(c=pl.col("a") + pl.col("b")))
    assert out.collect()["c"].to_list() == [3]


def test_atomic_write_leaves_no_temp_files_even_on_failure(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "id\n1\n300\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    out = tmp_path / "out"
    first = process_chunk(spec, out, schema={"id": "int64"}, output_format="jsonl")
    before = Path(first.output_paths[0]).read_bytes()
    with pytest.raises(pl.exceptions.InvalidOperationError):
        process_chunk(
            spec,
            out,
            schema={"id": "int64"},
            output_format="jsonl",
            transform=lambda lf: lf.with_columns(pl.col("id").cast(pl.Int8, strict=True)),
        )
    assert Path(first.output_paths[0]).read_bytes() == before  # old part untouched
    again = process_chunk(spec, out, schema={"id": "int64"}, output_format="jsonl")
    assert again.output_paths == first.output_paths and again.rows_out == 2
    assert sorted(p.name for p in out.rglob("*")) == ["part-00000.jsonl"]


def test_partition_by_hive_layout(tmp_path: Path) -> None:
    rows = "".join(f"{i},{'eu' if i % 2 else 'us'},{2023 + i % 3}\n" for i in range(30))
    path = _write(tmp_path / "p.csv", "id,region,year\n" + rows)
    chunks = plan_chunks(resolve_inputs(path), chunk_bytes=200)
    out = tmp_path / "out"
    results = [
        process_chunk(c, out, schema={"id": "int64", "year": "int64"}, partition_by=["region", "year"]) for c in chunks
    ]
    paths = sorted(str(Path(p).relative_to(out)) for r in results for p in r.output_paths)
    assert "region=eu/year=2023/part-00000.parquet" in paths
    assert all(Path(p).name.startswith("part-") for p in paths)
    assert not list(out.rglob(".tmp-*"))
    back = pl.read_parquet(out / "**" / "*.parquet", hive_partitioning=True)
    assert back.height == 30 and sum(r.rows_out for r in results) == 30
    assert set(back["region"]) == {"eu", "us"}
    with pytest.raises(ConfigError, match=r"partition_by column\(s\) \['nope'\]"):
        process_chunk(chunks[0], out, partition_by=["nope"])


def test_arrow_table_parquet_nested_types_pass_through(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2], "tags": [["a"], ["b", "c"]]})
    pq.write_table(table, tmp_path / "n.parquet")
    spec = plan_chunks(resolve_inputs(tmp_path / "n.parquet"))[0]
    result = process_chunk(spec, tmp_path / "out")
    assert pl.read_parquet(result.output_paths[0])["tags"].to_list() == [["a"], ["b", "c"]]


def peek_then_self_join(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A transform that reads its input before the sink does: a first row, then a self-join."""
    assert lf.select(pl.col("id").first()).collect().height == 1
    totals = lf.group_by("day").agg(pl.col("amount").sum().alias("day_total"))
    return lf.join(totals, on="day", how="left")


def test_a_transform_that_reads_its_input_loses_no_rows(tmp_path: Path) -> None:
    """Each scan of a chunk is a fresh pass: rows, counts and rejects stay those of the whole chunk."""
    lines = ["id,amount,day"] + [f"{i},{'n/a' if i % 40 == 7 else i},2024-03-0{i % 3 + 1}" for i in range(400)]
    src = _write(tmp_path / "in.csv", "\n".join(lines) + "\n")
    (spec,) = plan_chunks(resolve_inputs(str(src)), chunk_bytes=1 << 20)
    schema = {"id": "int64", "amount": "float64", "day": "date"}
    result = process_chunk(spec, tmp_path / "out", schema=schema, transform=peek_then_self_join)
    assert not result.fast_path  # the bad rows send it down the careful path, where the reader is a stream
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (400, 390, 10)
    out = pl.read_parquet(result.output_paths[0])
    assert sorted(out["id"].to_list()) == [i for i in range(400) if i % 40 != 7]
    assert out["day_total"].null_count() == 0
    assert pl.read_csv(result.rejects_path or "")["id"].to_list() == list(range(7, 400, 40))


def test_flow_csv_decimals_are_not_rounded_and_wide_integers_are_inferred(tmp_path: Path) -> None:
    """Through the real flow: a decimal with too many digits is a reject naming the scale; without a schema an
    integer wider than int64 is inferred as a type that holds it (no reject), and its digits are written."""
    from flows.file_transform import file_transform  # imported here: the module needs the test Prefect server

    dec = _write(tmp_path / "dec.csv", "id,amt\n1,12.555\n2,-0.005\n3,1.999\n4,12.50\n")
    s = file_transform(dec, tmp_path / "dec", schema={"id": "int64", "amt": "decimal(10,2)"}, output_format="csv",
                       run_key="dec", raise_on_failure=False)
    assert (s.extra["rows_out"], s.extra["rows_rejected"]) == (1, 3)
    assert (tmp_path / "dec" / "part-00000.csv").read_text() == "id,amt\n4,12.50\n"
    rejects = pl.read_csv(tmp_path / "dec" / "_rejects" / "part-00000.csv", infer_schema=False)
    assert rejects["_reject_reason"].to_list() == [
        f"amt: '{v}' has more than 2 digit(s) after the decimal point; decimal(10,2) would round it"
        for v in ("12.555", "-0.005", "1.999")]
    big = _write(tmp_path / "big.csv", "id,big\n1,12345678901234567890\n2,5\n")
    s = file_transform(big, tmp_path / "big", output_format="csv", run_key="big")
    assert s.ok and s.extra["rows_rejected"] == 0
    assert (tmp_path / "big" / "part-00000.csv").read_text() == "id,big\n1,12345678901234567890\n2,5\n"


def test_parquet_values_a_cast_would_change_are_rejected(tmp_path: Path) -> None:
    """2.9 as int64, -1 as bool, nanoseconds in a datetime: rejects naming column and value, never changed."""
    ts = pl.Series([1704067200123456789, 1704067200000001000, 1704067200000000000, 0]).cast(pl.Datetime("ns"))
    pl.DataFrame({"id": [1, 2, 3, 4], "qty": [1.0, 1.0, 4.0, 2.9], "flag": [0, 1, -1, 1], "ts": ts}).write_parquet(
        tmp_path / "a.parquet")
    (spec,) = plan_chunks(resolve_inputs(str(tmp_path / "a.parquet")))
    schema = {"qty": "int64", "flag": "bool", "ts": "datetime"}
    res = process_chunk(spec, tmp_path / "out", schema=schema, output_format="csv")
    assert (res.rows_in, res.rows_out, res.rows_rejected) == (4, 1, 3)
    assert Path(res.output_paths[0]).read_text() == "id,qty,flag,ts\n2,1,true,2024-01-01T00:00:00.000001\n"
    assert pl.read_parquet(res.rejects_path)["_reject_reason"].to_list() == [
        "ts: '2024-01-01 00:00:00.123456789' has digits past the microseconds; datetime keeps microseconds and would "
        "drop them", "flag: '-1' is not bool", "qty: '2.9' is not int64"]
    assert pl.read_parquet(res.rejects_path)["qty"].to_list() == [1.0, 4.0, 2.9]  # as read


def test_csv_nanoseconds_fall_back_from_the_fast_path_to_a_reject(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.csv", "id,ts\n1,2024-01-01T10:00:00.123456789\n2,2024-01-01T10:00:00.5\n")
    (spec,) = plan_chunks(resolve_inputs(str(src)))
    res = process_chunk(spec, tmp_path / "out", schema={"id": "int64", "ts": "datetime"}, output_format="csv")
    assert (res.fast_path, res.rows_out, res.rows_rejected) == (False, 1, 1)
    assert Path(res.output_paths[0]).read_text() == "id,ts\n2,2024-01-01T10:00:00.500000\n"


def test_jsonl_output_keeps_nan_and_infinities_on_either_path(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.csv", "id,v\n1,NaN\n2,inf\n3,-inf\n4,1.5\n5,\n")
    (spec,) = plan_chunks(resolve_inputs(str(src)))
    for transform in (None, "SELECT id, v, v * 0 AS z FROM df"):
        res = process_chunk(spec, tmp_path / "out", schema={"id": "int64", "v": "float64"}, output_format="jsonl",
                            transform=transform)
        lines = Path(res.output_paths[0]).read_text().splitlines()
        assert (res.rows_in, res.rows_out, res.fast_path) == (5, 5, False)
        assert [line.split(',"z"')[0] + ("}" if transform else "") for line in lines] == [
            '{"id":1,"v":NaN}', '{"id":2,"v":Infinity}', '{"id":3,"v":-Infinity}', '{"id":4,"v":1.5}',
            '{"id":5,"v":null}']
    clean = _write(tmp_path / "b.csv", "id,v\n1,0.1\n2,\n")
    (spec,) = plan_chunks(resolve_inputs(str(clean)))
    res = process_chunk(spec, tmp_path / "out2", schema={"id": "int64", "v": "float64"}, output_format="jsonl")
    assert res.fast_path and Path(res.output_paths[0]).read_text() == '{"id":1,"v":0.1}\n{"id":2,"v":null}\n'


def raises_on_float_amount(lf: pl.LazyFrame) -> pl.LazyFrame:
    if lf.collect_schema()["amount"] == pl.Float64:
        raise KeyError("amount")
    return lf


def test_a_transform_that_raises_in_a_chunk_stops_the_run_naming_chunk_and_file(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.csv", "id,amount\n1,2.5\n")
    (spec,) = plan_chunks(resolve_inputs(str(src)))
    with pytest.raises(FatalError, match=(
            rf"chunk 0 \({src}\): transform '{__name__}:raises_on_float_amount' raised KeyError: 'amount' \(given "
            r"df with columns \['id', 'amount'\]\); fix the transform. The run stopped here")) as err:
        process_chunk(spec, tmp_path / "out", schema={"id": "int64", "amount": "float64"},
                      transform=raises_on_float_amount)
    assert isinstance(err.value, TransformFailed) and isinstance(err.value.__cause__, TransformError)
    with pytest.raises(TransformError, match="raised KeyError"):  # the plan check: a ConfigError, before any work
        apply_transform(pl.LazyFrame(schema={"amount": pl.Float64}), raises_on_float_amount)
