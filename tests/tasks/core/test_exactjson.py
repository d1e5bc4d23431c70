"""tasks/core/exactjson.py: numbers of a response body come out as the body wrote them."""

from __future__ import annotations

import datetime as dt
import json
import math

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.exactjson import JsonNumber, dumps_exact, loads_exact, plain

NUMBER = r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"


def test_numbers_a_double_would_rewrite_are_written_as_they_came() -> None:
    text = ('{"price": 12.50, "digits": 0.12345678901234567891, "exp": 1e5, "huge": 1e400, "minus_zero": -0, '
            '"nan": NaN, "inf": -Infinity, "big": 123456789012345678901234567890, "plain": 2.5, "n": 3, '
            '"nested": [1.10, {"rate": 2.50e-3}], "plan": "Basic monthly", "when": "2024-01-05"}')
    value = loads_exact(text)
    assert dumps_exact(value) == text
    assert json.dumps(json.loads(text)) != text  # what the outputs wrote before: 12.5, 100000.0, Infinity, 0
    assert type(value["plain"]) is float and type(value["n"]) is int  # exact already: plain values
    assert type(value["price"]) is JsonNumber and value["price"].text == "12.50"


def test_bytes_in_any_json_encoding_and_errors_as_json_loads() -> None:
    assert dumps_exact(loads_exact('{"a": 1.50}'.encode("utf-16"))) == '{"a": 1.50}'
    for bad in (b'{"id": "broken', b"", b"1.5.5"):
        try:
            loads_exact(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_a_json_number_compares_hashes_and_converts_as_its_value() -> None:
    n = loads_exact("12.50")
    assert n == 12.5 and n == loads_exact("1.25e1") and hash(n) == hash(12.5)
    assert 12 < n < 13 and max([n, 3.0, 7]) is n and sorted([14, n, 1.5]) == [1.5, n, 14]
    assert float(n) == 12.5 and str(n) == "12.50" and f"{n}" == "12.50"
    assert math.isinf(float(loads_exact("1e400"))) and math.isnan(float(loads_exact("NaN")))
    assert plain(n) == 12.5 and type(plain(n)) is float and plain("x") == "x"
    assert pl.DataFrame([{"a": n}, {"a": 1.5}])["a"].to_list() == [12.5, 1.5]  # polars reads it as a double


def test_rows_without_such_numbers_are_json_dumps_output() -> None:
    row = {"item": {"path": "/ok/1", "when": dt.date(2024, 1, 5)}, "s": "é \u2028", "xs": [1, 2.5, None, True]}
    assert dumps_exact(row) == json.dumps(row, default=str, ensure_ascii=False)
    marker_like = {"s": "\x00deadbeef:0", "n": loads_exact("1.0e1")}  # text that merely looks like a marker
    assert json.loads(dumps_exact(marker_like))["s"] == "\x00deadbeef:0"
    assert dumps_exact(marker_like).endswith('"n": 1.0e1}')


def test_a_lone_surrogate_is_written_escaped_so_the_line_stays_utf8() -> None:
    value = loads_exact('{"s": "\\ud800", "n": 1.50, "e": "\u00e9"}')
    text = dumps_exact(value)
    text.encode()  # no UnicodeEncodeError
    assert text == '{"s": "\\ud800", "n": 1.50, "e": "\\u00e9"}'
    assert json.loads(text)["s"] == "\ud800"


@given(st.lists(st.from_regex(NUMBER, fullmatch=True), min_size=1, max_size=8))
def test_any_json_number_round_trips_as_text(numbers: list[str]) -> None:
    text = "[" + ", ".join(numbers) + "]"
    assert dumps_exact(loads_exact(text)) == text
    assert [float(v) for v in loads_exact(text)] == [float(n) for n in numbers]
