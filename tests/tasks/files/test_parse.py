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

from tasks.files.parse import (
    _has_surrogate_escape,
    _jsonl_polars,
    _polars_exact,
    parse_csv,
    parse_jsonl,
    raw_bytes,
)
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


# --- JSON lines: UTF-16 surrogate escapes -----------------------------------------------------------

# (a string value as written in the file, what it holds, or None: a lone surrogate, no string can hold it)
SURROGATES = [
    (r'"\ud83d\ude00"', "\U0001f600"),  # a pair: one character
    (r'"\uD83D\uDE00 \ud83d\ude00"', "\U0001f600 \U0001f600"),
    (r'"\\ud800"', "\\ud800"),  # an escaped backslash: text, no escape
    (r'"\\\\\ud83d\ude00"', "\\\\\U0001f600"),
    (r'["\ud83d\ude00", "b"]', '["\U0001f600", "b"]'),  # nested: as JSON text
    (r'"ok\ud800"', None),
    (r'"\uDE00"', None),  # a low half first
    (r'"\ud83d\\\ude00"', None),  # two halves with an escaped backslash between them
    (r'"\\\\ud83d\ude00"', None),  # the first half is text
    (r'"\ud83d\ud83d\ude00"', None),  # two high halves, one pair
    (r'"x\ud83d\u0041"', None),
    (r'["\ud83d\ude00", "\ud800"]', None),  # inside a nested value
]


def _surrogate_file(path: Path, *, malformed: bool) -> list[str]:
    lines = [f'{{"id": {i}, "name": {text}}}' for i, (text, _) in enumerate(SURROGATES)]
    path.write_text("\n".join(lines[:2] + (["{oops"] if malformed else []) + lines[2:]) + "\n")
    return lines


@pytest.mark.parametrize("malformed", [False, True], ids=["polars", "python"])
def test_a_lone_surrogate_escape_rejects_its_line_and_pairs_are_kept(tmp_path: Path, malformed: bool) -> None:
    """A lone surrogate became a NUL on polars' path (silently) and failed the chunk on Python's."""
    path = tmp_path / "in.jsonl"
    lines = _surrogate_file(path, malformed=malformed)
    result = process_chunk(plan_chunks(resolve_inputs(str(path)))[0], tmp_path / "out",
                           schema={"id": "int64", "name": "str"}, output_format="jsonl")
    kept = [(i, value) for i, (_, value) in enumerate(SURROGATES) if value is not None]
    written = Path(result.output_paths[0]).read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in written] == [{"id": i, "name": v} for i, v in kept]
    rejects = [json.loads(x) for x in Path(result.rejects_path or "").read_text().splitlines()]
    lone = [i for i, (_, value) in enumerate(SURROGATES) if value is None]
    assert [r["_raw"] for r in rejects if r["_raw"] != "{oops"] == [lines[i] for i in lone]
    shift = [i + 1 + (malformed and i >= 2) for i in lone]  # line numbers, the {oops line counted
    assert [r["_line"] for r in rejects if r["_raw"] != "{oops"] == shift
    reasons = [r["_reject_reason"] for r in rejects if r["_raw"] != "{oops"]
    assert all(r.startswith("name: holds the escape of a lone UTF-16 surrogate (\\ud") for r in reasons), reasons
    assert "(\\ud800," in reasons[0] and "(\\ude00," in reasons[1]
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (len(SURROGATES) + malformed, len(kept),
                                                                       len(lone) + malformed)


def test_surrogate_pairs_alone_keep_polars_path(tmp_path: Path) -> None:
    body = "".join(f'{{"id": {i}, "name": {t}}}\n' for i, (t, v) in enumerate(SURROGATES) if v is not None).encode()
    assert _has_surrogate_escape(body)
    fast = _jsonl_polars(body.rstrip(b"\n"), ["id", "name"], 1, "f", ["name"], surrogates=True)
    assert fast is not None and fast["name"].to_list() == [v for _, v in SURROGATES if v is not None]
    assert not _has_surrogate_escape(b'{"name": "caf\\u00e9 \\ud7ff \\\\u0041"}')


def test_escapes_inside_a_nested_value_are_kept_on_both_paths(tmp_path: Path) -> None:
    """polars wrote a backslash, a tab, a control character inside an array as is (``["x\\y"]``: not JSON)."""
    line = '{"id": 1, "tags": ["x\\\\y", "t\\tb", "c\\u0001", "q\\"n\\n"]}\n'
    for name, text in [("polars", line), ("python", line + "{oops\n")]:  # polars refuses the second: Python's json
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        result = process_chunk(plan_chunks(resolve_inputs(str(path)))[0], tmp_path / name,
                               schema={"id": "int64", "tags": "str"}, output_format="jsonl")
        got = json.loads(Path(result.output_paths[0]).read_text())["tags"]
        assert got == '["x\\\\y", "t\\tb", "c\\u0001", "q\\"n\\n"]', name
        assert json.loads(got) == ["x\\y", "t\tb", "c\x01", 'q"n\n']


@pytest.mark.parametrize("schema", [None, {"id": "int64", "v": "str"}], ids=["inferred", "schema"])
def test_a_lone_surrogate_escape_in_a_key_rejects_its_line(tmp_path: Path, schema: dict[str, str] | None) -> None:
    """No column can be named by a lone surrogate: in the first MiB it failed the chunk (UnicodeEncodeError)."""
    path = tmp_path / "keys.jsonl"
    path.write_text('{"id": 1, "v": "a"}\n{"id": 2, "\\ud800": 3}\n{"id": 3, "v": "c"}\n')
    result = process_chunk(plan_chunks(resolve_inputs(str(path)))[0], tmp_path / "out", schema=schema,
                           output_format="jsonl")
    assert [json.loads(x) for x in Path(result.output_paths[0]).read_text().splitlines()] == [
        {"id": 1, "v": "a"}, {"id": 3, "v": "c"}]
    (reject,) = [json.loads(x) for x in Path(result.rejects_path or "").read_text().splitlines()]
    assert reject["_line"] == 2 and reject["_raw"] == '{"id": 2, "\\ud800": 3}'
    assert reject["_reject_reason"].startswith("key '\\ud800' holds the escape of a lone UTF-16 surrogate")
