"""tasks/files/read.py (and the JSON-lines reading of tasks/files/parse.py): the columns of a JSON-lines chunk,
keys outside them, inferred types. Real files in tmp_path."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import polars as pl
import pytest

from tasks.core import ConfigError, SourceError
from tasks.files.parse import _only_known_keys, parse_jsonl, raw_bytes
from tasks.files.process import plan_chunks, process_chunk, resolve_inputs
from tasks.files.read import ChunkReader, check_layouts, infer_schema, plan_json_keys
from tasks.files.schema import parse_schema

MIB = 1 << 20


def _lines(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_grouped_jsonl_files_read_the_keys_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b'{"id": 1}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"id": 2, "email": "x@y.z"}\n')
    (spec,) = plan_chunks(resolve_inputs(tmp_path))
    assert len(spec.files) == 2
    result = process_chunk(spec, tmp_path / "out", output_format="jsonl")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (2, 2, 0)
    assert Path(result.output_paths[0]).read_bytes() == b'{"id":1,"email":null}\n{"id":2,"email":"x@y.z"}\n'


def test_a_key_first_seen_after_the_first_mib_is_rejected_naming_it(tmp_path: Path) -> None:
    rows = [{"id": i, "pad": "x" * 100} for i in range(12_000)]
    late = b'{"id": 99999, "pad": "y", "late": "IMPORTANT"}'
    path = tmp_path / "a.jsonl"
    path.write_bytes(_lines(rows) + late + b"\n")
    assert path.stat().st_size > MIB
    spec = plan_chunks(resolve_inputs(path), chunk_bytes=1 << 30)[0]
    result = process_chunk(spec, tmp_path / "out")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (12_001, 12_000, 1)
    rejects = pl.read_ndjson(result.rejects_path or "")
    assert rejects["_raw"].to_list() == [late.decode()] and rejects["_line"].to_list() == [12_001]
    assert rejects["_reject_reason"][0].startswith("key 'late' not among the columns")
    assert 'add it to the schema\'s columns (e.g. {"late": "str"})' in rejects["_reject_reason"][0]
    kept = process_chunk(spec, tmp_path / "kept", schema={"late": "str"})
    assert (kept.rows_out, kept.rows_rejected) == (12_001, 0)
    assert pl.read_parquet(kept.output_paths[0])["late"].drop_nulls().to_list() == ["IMPORTANT"]


def test_planned_keys_give_every_chunk_the_same_columns(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b'{"id": 1, "name": "a"}\n{"id": 2}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"name": "b", "id": 3}\n{"id": 4, "email": "e"}\n{"id": 5, "name": null}\n')
    files = resolve_inputs(tmp_path)
    schema = plan_json_keys(parse_schema({"id": "int64"}), files)
    assert schema is not None and schema.json_keys == ["id", "name"]
    chunks = plan_chunks(files, chunk_bytes=1)  # a chunk per line
    assert len(chunks) == 5
    results = [process_chunk(c, tmp_path / "out", schema=schema) for c in chunks]
    parts = [pl.read_parquet(p) for r in results for p in r.output_paths]
    assert all(p.columns == ["id", "name"] for p in parts)
    assert pl.concat(parts)["id"].to_list() == [1, 2, 3, 5]
    rejects = [pl.read_ndjson(r.rejects_path) for r in results if r.rejects_path]
    assert [r["_raw"].to_list() for r in rejects] == [['{"id": 4, "email": "e"}']]
    inferred = plan_json_keys(infer_schema(chunks[0].files[0]), files)
    assert inferred is not None and inferred.inferred and inferred.columns == {"id": "int64", "name": "str"}


def test_the_chunk_columns_come_from_the_plan_not_from_its_own_files(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"id": 1, "x": 1}\n')
    spec = plan_chunks(resolve_inputs(path))[0]
    planned = ChunkReader(spec, schema=parse_schema({"columns": {"id": "int64"}, "json_keys": ["id", "y"]}))
    assert list(planned.raw_columns) == ["id", "y"]
    sampled = ChunkReader(spec, schema=parse_schema({"id": "int64", "z": "str"}))
    assert list(sampled.raw_columns) == ["id", "x", "z"]


# keys, strings and separators that could fool a count of '":' (escaped quotes, colons, \u escapes, spacing)
_COLUMNS = ["id", "name", "n", 'a"b', "é"]
_KEYS = [*_COLUMNS, "x", "zz", 'e"x', "id2", ":", '"', "n\\"]
_TEXT = ["", "a", 'say "hi": x', '{"id": 1}', '"id":', "naïve", " : ", 'x":y', "null", "\\", '"n":']


def _value(rnd: random.Random, depth: int) -> object:
    r = rnd.random()
    if depth < 2 and r < 0.2:
        return {rnd.choice(_KEYS): _value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}
    if depth < 2 and r < 0.3:
        return [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return rnd.choice([None, 1, -2.5, True, rnd.choice(_TEXT)])


def _line(rnd: random.Random) -> tuple[str, bool]:
    keys = rnd.sample(_COLUMNS, rnd.randint(1, len(_COLUMNS)))
    if rnd.random() < 0.15:
        keys.append(rnd.choice([k for k in _KEYS if k not in _COLUMNS]))
    obj = {k: _value(rnd, 0) for k in keys}
    separators = rnd.choice([(",", ":"), (", ", ": "), (",", ": "), (" , ", " : ")])
    return json.dumps(obj, ensure_ascii=rnd.random() < 0.5, separators=separators), any(k not in _COLUMNS for k in obj)


def test_a_line_with_another_key_is_rejected_whatever_its_text() -> None:
    rnd = random.Random(20261130)
    for _ in range(1500):
        lines = [_line(rnd) for _ in range(rnd.randint(1, 6))]
        body = "\n".join(text for text, _ in lines).encode()
        good, bad = parse_jsonl(body, _COLUMNS, 1, "f", _COLUMNS)
        assert bad["_line"].to_list() == [i + 1 for i, (_, other) in enumerate(lines) if other], body
        assert good["_raw"].to_list() == [text for text, other in lines if not other]
        assert all(r.startswith("key ") for r in bad["_reject_reason"])


def test_plain_lines_keep_the_fast_path() -> None:
    rows = [{"id": i, "name": None if i % 3 else f"n{i}", "n": {"id": i, "x": [1, {"y": None}]}} for i in range(500)]
    body = _lines(rows).rstrip(b"\n")
    text = pl.read_lines(body, name="_raw").to_series()
    df = pl.read_ndjson(body, schema=dict.fromkeys(["id", "name", "n"], pl.String))
    assert _only_known_keys(body, text, df, ["id", "name", "n"])
    assert not _only_known_keys(body, text, df, ["id", "name"])


def test_a_jsonl_line_that_is_not_utf8_is_rejected_with_its_bytes(tmp_path: Path) -> None:
    bad = b'{"id": 2, "name": "caf\xe9 \\\\ x"}'  # and "note" only in the line with a U+2028 (not a line break)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1, "name": "ok", "note": "line\xe2\x80\xa8sep"}\r\n' + bad + b"\r\n")
    result = process_chunk(plan_chunks(resolve_inputs(path))[0], tmp_path / "out", output_format="jsonl")
    assert (result.rows_out, result.rows_rejected) == (1, 1)
    assert pl.read_ndjson(result.output_paths[0])["note"].to_list() == ["line\u2028sep"]
    rejects = pl.read_ndjson(result.rejects_path or "")
    assert rejects["_reject_reason"][0].startswith("not valid UTF-8 (byte 0xe9")
    assert raw_bytes(rejects["_raw"][0], rejects["_reject_reason"][0]) == bad


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_inferred_types_hold_integers_wider_than_int64(tmp_path: Path, fmt: str) -> None:
    values = {"u": ["12345678901234567890", "5"], "d": ["-12345678901234567890", "3"],
              "s": ["150000000000000000000000000000000000000", "1"], "i": ["-5", "9223372036854775807"]}
    path = tmp_path / f"big.{fmt}"
    if fmt == "csv":
        path.write_text("u,d,s,i\n" + "".join(",".join(v[k] for v in values.values()) + "\n" for k in range(2)))
    else:
        path.write_text("".join("{" + ", ".join(f'"{c}": {v[k]}' for c, v in values.items()) + "}\n" for k in range(2)))
    schema = infer_schema(plan_chunks(resolve_inputs(path))[0].files[0])
    assert schema.columns == {"u": "uint64", "d": "decimal(38,0)", "s": "str", "i": "int64"} and schema.inferred
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(spec, tmp_path / "out", schema=schema, output_format="csv")
    assert result.rows_rejected == 0
    assert pl.read_csv(result.output_paths[0], infer_schema=False).to_dict(as_series=False) == values


def test_inferred_datetimes_with_digits_past_the_microseconds_stay_text(tmp_path: Path) -> None:
    """polars parses them cutting the nanoseconds; the inference keeps such a column as text, so no value it saw is
    rejected or changed (datetime keeps microseconds)."""
    path = tmp_path / "ns.csv"
    path.write_text("id,ns,us\n1,2024-01-01T10:00:00.123456789,2024-01-01T10:00:00.5\n"
                    "2,2024-01-01T10:00:01.000000001,2024-01-02 00:00:00\n")
    schema = infer_schema(plan_chunks(resolve_inputs(path))[0].files[0])
    assert schema.columns == {"id": "int64", "ns": "str", "us": "datetime"}
    result = process_chunk(plan_chunks(resolve_inputs(path))[0], tmp_path / "out", schema=schema, output_format="csv")
    assert result.rows_rejected == 0
    assert pl.read_csv(result.output_paths[0], infer_schema=False)["ns"].to_list() == [
        "2024-01-01T10:00:00.123456789", "2024-01-01T10:00:01.000000001"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_inferred_float_column_holding_an_integer_a_float_would_change_stays_text(tmp_path: Path, fmt: str) -> None:
    """1.5 beside 9007199254740993: float64 would make the integer 9007199254740992 (and reject it); the inference
    keeps the column as text, so no value it saw is rejected or changed."""
    path = tmp_path / f"mixed.{fmt}"
    rows = [("1", "1.5"), ("2", "9007199254740993"), ("3", "2")]
    if fmt == "csv":
        path.write_text("id,v,f\n" + "".join(f"{i},{v},0.25\n" for i, v in rows))
    else:
        path.write_text("".join(f'{{"id": {i}, "v": {v}, "f": 0.25}}\n' for i, v in rows))
    schema = infer_schema(plan_chunks(resolve_inputs(path))[0].files[0])
    assert schema.columns == {"id": "int64", "v": "str", "f": "float64"}
    result = process_chunk(plan_chunks(resolve_inputs(path))[0], tmp_path / "out", schema=schema, output_format="csv")
    assert result.rows_rejected == 0
    assert pl.read_csv(result.output_paths[0], infer_schema=False)["v"].to_list() == ["1.5", "9007199254740993", "2"]


# --- records longer than a segment, headers, layouts, files gone --------------------------------------------


@pytest.mark.parametrize("name", ["long.csv", "long.csv.gz", "long.jsonl"])
def test_a_record_longer_than_many_segments_is_read_whole(tmp_path: Path, name: str) -> None:
    """The reader reads on until a record ends: it never cuts one (it did past 4 segments)."""
    blob = "A" * 80_000 + "é" * 3_000 + "Z"  # > 4 segments of 1 KiB and the 64 KiB read of a header
    if name.endswith(".jsonl"):
        text = '{"id":1,"blob":"short"}\n{"id":2,"blob":"' + blob + '"}\n{"id":3,"blob":"end"}\n'
    else:
        text = f'id,blob\n1,short\n2,{blob}\n3,"end\nof it"\n4,last\n'
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    (spec,) = plan_chunks(resolve_inputs(path))
    reader = ChunkReader(spec, schema=parse_schema({"id": "int64"}), segment_bytes=1024)
    df = reader.lazy().collect()
    reader.drain()
    assert reader.rows_rejected == 0 and reader.rejects() is None
    assert df["blob"][1] == blob
    expected = (["short", blob, "end"], [1, 2, 3]) if name.endswith(".jsonl") else \
        (["short", blob, "end\nof it", "last"], [2, 3, 4, 6])
    assert (df["blob"].to_list(), df["_line"].to_list()) == expected


def test_a_column_name_twice_in_a_header_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id,amount,amount\n1,2,3\n")
    (spec,) = plan_chunks(resolve_inputs(path))
    with pytest.raises(ConfigError, match=r"a\.csv has the column name\(s\) \['amount'\] more than once"):
        process_chunk(spec, tmp_path / "out")


def test_files_with_other_columns_are_refused_and_another_order_is_read_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,x\n1,a\n2,b\n")
    (tmp_path / "b.csv").write_text("x,id\nc,3\n")
    (tmp_path / "c.csv").write_text("")  # empty: no header, no rows
    files = resolve_inputs(tmp_path)
    check_layouts(files)
    (spec,) = plan_chunks(files)
    result = process_chunk(spec, tmp_path / "out", output_format="csv", schema={"id": "int64"})
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (3, 3, 0)
    assert Path(result.output_paths[0]).read_text() == "id,x\n1,a\n2,b\n3,c\n"
    (tmp_path / "d.csv").write_text("x,id,extra\nw,4,e\n")
    with pytest.raises(ConfigError, match=r"d\.csv has columns \['x', 'id', 'extra'\] but .*a\.csv has \['id', 'x'\]"):
        check_layouts(resolve_inputs(tmp_path))


def test_a_file_deleted_after_planning_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id\n1\n")
    (spec,) = plan_chunks(resolve_inputs(path))
    path.unlink()
    with pytest.raises(SourceError, match=r"a\.csv no longer exists"):
        process_chunk(spec, tmp_path / "out")
