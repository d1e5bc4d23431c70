"""Parsing keeps the file's values (tasks/files/parse.py).

JSON lines: polars reads a number with a fraction as a double, so a segment where that would rewrite a number
of a text or decimal column is read exactly, and the fast and the exact path give the same text for the same
line. CSV: polars' reader and Python's csv (the segments polars refuses) give the same rows: a quoted ``""``
is the empty string, an empty field null, a row that is not valid UTF-8 a reject that keeps its bytes, and
only truly empty lines are skipped."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tasks.files.parse import _polars_exact, parse_csv, parse_jsonl, raw_bytes
from tasks.files.process import plan_chunks, process_chunk, resolve_inputs

# values polars writes as the file does, whichever path reads them
SAFE = ["0", "12345678901234567890", "-5", "0.1", "1.5", "-0.5", "3.14159265358979", "12345678901234.5", "true",
        "false", "null", '"s"', '"1.50"', '""', '{"k": 1, "z": [1, "a", {"q": null}]}', "[1.5, 2]", "[]", "{}",
        '"\\u00e9\\n"', '"2024-01-01T00:00:00.000Z"']
# values polars would rewrite (12.5, 100000, 1.0e+400 refused, 17 digits kept of 30)
UNSAFE = ["12.50", "1.0e5", "1e400", "12345678901234567890.123456789", "1.0", "-0.0", '{"k": 1.10, "z": [2E-3]}']


def _body(values: list[str], *, malformed: bool = False) -> tuple[bytes, list[str]]:
    cols = [f"c{i}" for i in range(len(values))]
    line = "{" + ", ".join(f'"{c}": {v}' for c, v in zip(cols, values, strict=True)) + "}\n"
    return (line * 3 + ("{oops\n" if malformed else "")).encode(), cols


def test_fast_and_exact_paths_give_the_same_text() -> None:
    body, cols = _body(SAFE)
    assert _polars_exact(body, cols)
    fast, _ = parse_jsonl(body, cols, 1, "f", cols)
    exact, bad = parse_jsonl(*_body(SAFE, malformed=True), 1, "f", cols)  # polars refuses: the Python path
    assert bad.height == 1 and fast.rows() == exact.rows()[:3]
    assert fast.row(0)[:len(cols)] == ("0", "12345678901234567890", "-5", "0.1", "1.5", "-0.5", "3.14159265358979",
                                       "12345678901234.5", "true", "false", None, "s", "1.50", "",
                                       '{"k": 1, "z": [1, "a", {"q": null}]}', "[1.5, 2]", "[]", "{}", "é\n",
                                       "2024-01-01T00:00:00.000Z")


@pytest.mark.parametrize("value", UNSAFE)
def test_numbers_of_text_columns_come_out_as_written(value: str) -> None:
    body, cols = _body(["1", value, '"x"'])
    assert not _polars_exact(body, cols)
    df, bad = parse_jsonl(body, cols, 1, "f", cols)
    assert bad.height == 0 and df["c1"].to_list() == [value] * 3
    assert _polars_exact(body, ["c0", "c2"])  # a float column may take polars' double: same value


def test_text_that_only_looks_like_a_number_keeps_the_fast_path_exact() -> None:
    body, cols = _body(['"price: 12.50"', "1.5"])
    df, _ = parse_jsonl(body, cols, 1, "f", cols)
    assert df["c0"].to_list() == ["price: 12.50"] * 3 and df["c1"].to_list() == ["1.5"] * 3


def test_file_transform_keeps_decimal_digits_and_text_of_a_jsonl_file(tmp_path: Path) -> None:
    rows = [{"id": i, "amount": f"12345678901234567890.{i:018d}", "code": "1.50" if i % 2 else "7.0",
             "price": "37.0", "label": f"row {i}"} for i in range(200)]
    path = tmp_path / "orders.jsonl"
    lines = ["{" + ", ".join(f'"{k}": "{v}"' if k == "label" else f'"{k}": {v}' for k, v in r.items()) + "}\n"
             for r in rows]
    path.write_text("".join(lines))
    schema = {"id": "int64", "amount": "decimal(38,18)", "code": "str", "price": "float64", "label": "str"}
    result = process_chunk(plan_chunks(resolve_inputs(str(path)))[0], tmp_path / "out", schema=schema)
    got = pl.read_parquet(result.output_paths[0]).sort("id")
    assert got["amount"].to_list() == [Decimal(r["amount"]) for r in rows]
    assert got["code"].to_list() == [r["code"] for r in rows] and got["price"].to_list() == [37.0] * 200
    assert json.loads(path.read_text().splitlines()[1])["code"] == 1.5  # what a double makes of it


# --- CSV ------------------------------------------------------------------------------------------

REFUSED = b'\n99,"bad"q'  # bad quoting: polars refuses the segment, Python's csv parses it line by line
CSV_PATHS = pytest.mark.parametrize("tail", [b"", REFUSED], ids=["polars", "python"])


def _csv(body: bytes, columns: list[str], tail: bytes, **kwargs) -> tuple[pl.DataFrame, pl.DataFrame]:
    good, bad = parse_csv(body + tail, columns, ",", 2, "f.csv", **kwargs)
    return good, bad.filter(pl.col("_line") != body.count(b"\n") + 3) if tail else bad


@CSV_PATHS
def test_quoted_empty_is_an_empty_string_and_an_empty_field_is_null(tail: bytes) -> None:
    good, bad = _csv(b'1,""\n2,\n3,"a"\n,""', ["id", "name"], tail)
    assert bad.height == 0
    assert good.select("id", "name").rows() == [("1", ""), ("2", None), ("3", "a"), (None, "")]
    typed, _ = _csv(b'1,""\n2,\n"",x', ["id", "name"], tail, empty_as_null=["id", "name"])
    assert typed.select("id", "name").rows() == [("1", None), ("2", None), (None, "x")]  # as polars' typed read


@CSV_PATHS
def test_only_empty_lines_are_skipped(tail: bytes) -> None:
    good, bad = _csv(b'x\n   \n\n""\r\n\t\ny', ["name"], tail)
    assert bad.height == 0
    assert good["name"].to_list() == ["x", "   ", "", "\t", "y"] and good["_line"].to_list() == [2, 3, 5, 6, 7]
    _, ragged = _csv(b"1,a\n  \n2,b", ["id", "name"], tail)  # a line of spaces is a row: here a short one
    assert ragged.select("_raw", "_line").rows() == [("  ", 3)]


@CSV_PATHS
def test_a_row_that_is_not_utf8_is_rejected_with_its_bytes(tail: bytes) -> None:
    rows = [b"1,caf\xc3\xa9", b"2,caf\xe9", b'3,"two\nlines \xff"', b"4,back\\x41slash \xe9\\", b"5,ok"]
    good, bad = _csv(b"\n".join(rows), ["id", "name"], tail)
    assert good.select("id", "name", "_line").rows() == [("1", "caf\u00e9", 2), ("5", "ok", 7)]
    assert bad["_line"].to_list() == [3, 4, 6]
    assert all(r.startswith("not valid UTF-8") for r in bad["_reject_reason"])
    assert [raw_bytes(x, r) for x, r in bad.select("_raw", "_reject_reason").rows()] == rows[1:4]


def test_raw_bytes_of_other_rejects_is_the_text() -> None:
    assert raw_bytes("a\\x41,\u00e9", "line has 2 fields, expected 3") == "a\\x41,\u00e9".encode()


def test_a_field_longer_than_128_kib_is_kept_on_the_python_path() -> None:
    """A bad row sends its segment to Python's csv, whose default field limit (128 KiB) rejected a valid field."""
    big = "B" * 200_000
    body = f'1,{big},ok\n2,"abc"def,bad quoting\n3,small,ok\n'.encode()
    good, bad = parse_csv(body, ["id", "doc", "x"], ",", 2, "a.csv")
    assert good["doc"].to_list() == [big, "small"] and good["_line"].to_list() == [2, 4]
    assert bad["_line"].to_list() == [3] and bad["_reject_reason"][0].startswith("bad quoting")
