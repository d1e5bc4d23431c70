"""tasks/core/exactjson.py: numbers of a response body come out as the body wrote them."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import json
import math
import pickle
import uuid
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.exactjson import (
    JsonFloat,
    JsonNumber,
    UnwritableValue,
    dumps_exact,
    dumps_row,
    json_body,
    jsonable,
    loads_exact,
    loads_items,
)
from tasks.core.identity import chunk_hash

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


def test_an_items_float_is_a_float_to_the_handler_and_its_text_to_the_outputs() -> None:
    item = loads_items('{"amount": 12.50, "big": 1e400, "nan": NaN, "plain": 2.5, "n": -0}')
    amount = item["amount"]
    assert type(amount) is JsonFloat and isinstance(amount, float) and amount == 12.5 and amount.text == "12.50"
    assert type(amount * 2) is float and amount * 2 == 25.0 and f"{amount}" == "12.5"  # a float in every use
    assert type(item["plain"]) is float and item["n"] == 0 and isinstance(item["n"], int)  # the int 0 ...
    assert item["n"] + 1 == 1 and type(item["n"] + 1) is int and f"{item['n']}" == "0" and str(item["n"]) == "0"
    assert math.isinf(item["big"]) and math.isnan(item["nan"])
    assert dumps_exact(item) == '{"amount": 12.50, "big": 1e400, "nan": NaN, "plain": 2.5, "n": -0}'  # ... "-0" out
    line = '{"d": "1999-01-05", "t": "x-0", "z": 0, "m": [-0, -0.0, -1e1, 7]}'
    assert dumps_exact(loads_items(line)) == line and json_body(loads_items(line)) == line.replace(", ", ",").replace(
        ": ", ":").encode()
    assert dumps_exact(({"x": [amount]},)) == '[{"x": [12.50]}]'
    for copied in (pickle.loads(pickle.dumps(item)), copy.deepcopy(item)):  # task runs, records, processes
        assert copied["amount"].text == "12.50" and dumps_exact(copied) == dumps_exact(item)
    assert chunk_hash([item]) == chunk_hash([json.loads('{"amount": 12.5, "big": 1e400, "nan": NaN, '
                                                        '"plain": 2.5, "n": 0}')])  # identity: its value


def test_dead_letter_default_writes_what_pydantic_json_mode_wrote() -> None:
    value = {"when": dt.datetime(2024, 1, 5, 10, 0, tzinfo=dt.UTC), "d": Decimal("12.50"), "s": {1}, "p": object}
    text = dumps_exact(value, jsonable)
    assert text.startswith('{"when": "2024-01-05T10:00:00Z", "d": "12.50", "s": [1], "p": "<class ')


def test_a_request_body_is_httpx_json_with_an_items_files_numbers() -> None:
    import httpx

    value = {"a": [1, 2.5, "é", None, True], "b": {"c": "x"}}
    assert json_body(value) == httpx.Request("POST", "http://x/", json=value).content  # httpx's own bytes
    assert json_body(loads_items('{"amount": 12.50, "n": [1e5]}')) == b'{"amount":12.50,"n":[1e5]}'
    for bad in (loads_items('{"x": NaN}'), loads_items('{"x": 1e400}'), {"x": float("inf")}):
        with pytest.raises(ValueError, match="not JSON compliant"):
            json_body(bad)
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_body({"x": object()})


class _Plain:
    def __init__(self, x: int) -> None:
        self.x = x


@dataclasses.dataclass
class _Record:
    name: str
    payload: object = None
    score: float = 1.5


class _Colour(enum.Enum):
    RED = "red"


def test_an_output_row_keeps_the_documented_forms_of_values_json_has_no_type_for() -> None:
    when = dt.datetime(2024, 1, 5, 10, 0, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    result = {"when": when, "d": Decimal("12.50"), "id": ident, "c": _Colour.RED, "s": {1},
              "rec": _Record("a", [dt.date(2024, 1, 5)], float("nan"))}
    row = json.loads(dumps_row({"item": 1, "result": result}))
    assert math.isnan(row["result"]["rec"].pop("score"))  # NaN as json.dumps writes it (pydantic wrote null)
    assert row["result"] == {"when": "2024-01-05T10:00:00Z", "d": "12.50", "id": str(ident), "c": "red", "s": [1],
                             "rec": {"name": "a", "payload": ["2024-01-05"]}}
    assert dumps_row({"item": 1, "result": _Record("a")}) == (
        '{"item": 1, "result": {"name": "a", "payload": null, "score": 1.5}}')


@pytest.mark.parametrize("result", [_Plain(1), b"\x01\xff", b"ab", bytearray(b"ab"), [b""], {"k": memoryview(b"a")},
                                    _Record("a", b"\x01"), {frozenset([b"a"])}, _Record("b", _Plain(2))])
def test_a_result_json_cannot_hold_exactly_is_refused_never_a_repr_or_a_decoding(result: object) -> None:
    with pytest.raises(UnwritableValue, match=r"^the result: .*(bytes|bytearray|memoryview|_Plain)") as caught:
        dumps_row({"item": 1, "result": result})
    assert "base64" in str(caught.value) or "return a dict" in str(caught.value)


def test_an_items_bytes_are_written_tagged_with_the_item_typed_as_dead_letters_write_it() -> None:
    from tasks.core.outcomes import from_typed

    item = {"raw": b"\xff\x00", "text": bytearray(b"ab"), "amount": Decimal("1.50"), "$k": 1}
    row = json.loads(dumps_row({"item": item, "result": "ok"}))
    assert row["item"] == {"raw": {"$bytes": "/wA="}, "text": {"$bytearray": "YWI="}, "amount": "1.50", "$k": 1}
    assert from_typed(row["item_typed"]) == item and row["result"] == "ok"
    assert dumps_row({"item": b"ab", "result": 1}).startswith('{"item": {"$bytes": "YWI="}, "item_typed": ')
    with pytest.raises(UnwritableValue, match="memoryview"):
        dumps_row({"item": {"a": memoryview(b"a")}, "result": 1})
