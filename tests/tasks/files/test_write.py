"""tasks/files/write.py: JSON lines keep NaN and infinities; the types each output format cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.files.write import (
    NonFiniteFloats,
    finite_floats_only,
    sink_atomic,
    sink_partitioned_atomic,
    unwritable_columns,
)

ODD = [1.5, float("nan"), float("inf"), float("-inf"), None, -0.0, 1e20, 0.1]


def test_jsonl_writes_nan_and_infinities_as_json_dumps_does(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": range(len(ODD)), "v": ODD, "f32": pl.Series(ODD, dtype=pl.Float32),
                       "s": ['"nonfinite-x:1"', "NaN", "a\nb", None, "", "\\", "Infinity", "ü"]})
    path = sink_atomic(df.lazy(), tmp_path / "part-00000.jsonl", "jsonl")
    lines = path.read_text().splitlines()
    assert lines[1] == '{"id":1,"v":NaN,"f32":NaN,"s":"NaN"}'
    assert [json.loads(line) for line in lines][2:4] == [
        {"id": 2, "v": float("inf"), "f32": float("inf"), "s": "a\nb"},
        {"id": 3, "v": float("-inf"), "f32": float("-inf"), "s": None}]
    finite = df.filter(pl.col("v").is_finite() | pl.col("v").is_null())  # the same text polars writes for them
    plain = finite.write_ndjson().splitlines()
    assert [line for i, line in enumerate(lines) if i not in (1, 2, 3)] == plain
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.jsonl"]


def test_jsonl_partitions_keep_nan_too(tmp_path: Path) -> None:
    df = pl.DataFrame({"k": ["a", "b", "a"], "v": [float("nan"), 2.0, float("-inf")]})
    paths = sink_partitioned_atomic(df.lazy(), tmp_path, "part-00000.jsonl", "jsonl", ["k"])
    texts = {p.parent.name: p.read_text() for p in paths}
    assert texts == {"k=a": '{"v":NaN}\n{"v":-Infinity}\n', "k=b": '{"v":2.0}\n'}


def test_finite_floats_only_raises_a_polars_error_only_for_a_non_finite_float() -> None:
    assert finite_floats_only(pl.LazyFrame({"v": [1.0, None]})).collect()["v"].to_list() == [1.0, None]
    with pytest.raises(NonFiniteFloats, match=r"\['v'\]") as err:
        finite_floats_only(pl.LazyFrame({"v": [1.0, float("nan")], "s": ["a", "b"]})).collect()
    assert isinstance(err.value, pl.exceptions.PolarsError)  # the fast path steps aside for it


def test_unwritable_columns_per_format() -> None:
    schema = {"id": pl.Int64(), "tags": pl.List(pl.String()), "blob": pl.Binary(), "st": pl.Struct({"b": pl.Binary()}),
              "dur": pl.Duration("us"), "ok": pl.Struct({"a": pl.Int64()})}
    assert unwritable_columns(schema, "csv") == [
        "'tags' (List(String))", "'blob' (Binary)", "'st' (Struct({'b': Binary}))", "'dur' (Duration(time_unit='us'))",
        "'ok' (Struct({'a': Int64}))"]
    assert unwritable_columns(schema, "jsonl") == ["'blob' (Binary)", "'st' (Struct({'b': Binary}))"]
    assert unwritable_columns(schema, "parquet") == []


NAN, INF = float("nan"), float("inf")
NESTED = {
    "id": [0, 1, 2, 3],
    "xs": [[1.5, NAN], [INF, -INF, None], [], None],
    "f32s": pl.Series([[[0.1, NAN]], [None, [-INF]], [[]], [[2.0]]], dtype=pl.List(pl.List(pl.Float32))),
    "arr": pl.Series([[1.0, NAN], [2.0, 3.0], None, [INF, 1e20]], dtype=pl.Array(pl.Float64, 2)),
    "st": [{"a": 1.0, "b": "x", "c": [NAN]}, None, {"a": NAN, "b": None, "c": None}, {"a": -INF, "b": "z", "c": [0.5]}],
    "pts": [[{"x": INF, "y": 1}], [{"x": 0.25, "y": 2}], None, [None, {"x": -0.0, "y": 3}]],
}


def test_jsonl_writes_nan_and_infinities_inside_lists_arrays_and_structs(tmp_path: Path) -> None:
    """polars wrote them null: a NaN in a list<f64> column, in a struct's float field, came out as null."""
    df = pl.DataFrame(NESTED)
    lines = sink_atomic(df.lazy(), tmp_path / "part-00000.jsonl", "jsonl").read_text().splitlines()
    assert lines == [
        '{"id":0,"xs":[1.5,NaN],"f32s":[[0.1,NaN]],"arr":[1.0,NaN],"st":{"a":1.0,"b":"x","c":[NaN]},'
        '"pts":[{"x":Infinity,"y":1}]}',
        '{"id":1,"xs":[Infinity,-Infinity,null],"f32s":[null,[-Infinity]],"arr":[2.0,3.0],"st":null,'
        '"pts":[{"x":0.25,"y":2}]}',
        '{"id":2,"xs":[],"f32s":[[]],"arr":null,"st":{"a":NaN,"b":null,"c":null},"pts":null}',
        '{"id":3,"xs":null,"f32s":[[2.0]],"arr":[Infinity,1e+20],"st":{"a":-Infinity,"b":"z","c":[0.5]},'
        '"pts":[null,{"x":-0.0,"y":3}]}',
    ]
    finite = pl.DataFrame({"l": [[0.1, 1e-7, 123456789.125]], "s": [{"f": 1 / 3}]})  # the text polars writes
    both = sink_atomic(pl.concat([finite, pl.DataFrame({"l": [[NAN]], "s": [{"f": 1.0}]})]).lazy(),
                       tmp_path / "b.jsonl", "jsonl").read_text().splitlines()
    assert both == [finite.write_ndjson().strip(), '{"l":[NaN],"s":{"f":1.0}}']


def test_finite_floats_only_looks_inside_lists_arrays_and_structs() -> None:
    for name in ("xs", "f32s", "arr", "st", "pts"):
        with pytest.raises(NonFiniteFloats, match=rf"\['{name}'\]"):
            finite_floats_only(pl.DataFrame(NESTED).select(name).lazy()).collect()
    finite = pl.LazyFrame({"xs": [[1.0, None], None], "st": [{"a": 1.0, "t": [2.5]}, None], "tags": [["a"], []]})
    assert_frame_equal(finite_floats_only(finite).collect(), finite.collect())
    no_floats = pl.LazyFrame({"tags": [["a"]], "st": [{"i": 1}]})
    assert finite_floats_only(no_floats) is no_floats  # nothing checked: no cost without floats
