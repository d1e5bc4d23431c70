"""tasks/files/schema.py: casts that never round or truncate silently, inferred types that hold what was seen."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tasks.core.errors import ConfigError
from tasks.files.process import plan_chunks, process_chunk, resolve_inputs
from tasks.files.schema import RowValidator, Schema, parse_schema, polars_dtype, type_name_of


def _split(schema: dict[str, str], values: dict[str, pl.Series]) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = pl.DataFrame(values).with_columns(pl.lit("f").alias("_source_file"), pl.int_range(pl.len()).alias("_line"))
    validator = RowValidator(parse_schema(schema), dict(frame.drop("_source_file", "_line").schema), source="f")
    return validator.split(frame)


def test_decimal_rejects_a_value_it_would_round() -> None:
    text = ["12.555", "-0.005", "1.999", "1.0000000000000001", "1e-3", "12.50", "1.000", "1.2345e2", "-0", "0e-9",
            "7", " 1.5E-1 "]
    good, rejects = _split({"amt": "decimal(10,2)"}, {"amt": pl.Series(text)})
    assert good["amt"].to_list() == [Decimal(v) for v in ("12.50", "1.00", "123.45", "0.00", "0.00", "7.00", "0.15")]
    assert rejects["amt"].to_list() == text[:5]
    assert rejects["_reject_reason"].to_list() == [
        f"amt: '{v}' has more than 2 digit(s) after the decimal point; decimal(10,2) would round it" for v in text[:5]
    ]
    plain, rounded = _split({"amt": "decimal(10,2)"}, {"amt": pl.Series(["0.125", "0.120", " 3.1 "])})  # no exponent
    assert plain["amt"].to_list() == [Decimal("0.12"), Decimal("3.10")] and rounded["amt"].to_list() == ["0.125"]
    _, too_big = _split({"amt": "decimal(4,2)"}, {"amt": pl.Series(["123.45"])})
    assert too_big["_reject_reason"].to_list() == ["amt: '123.45' is not decimal(4,2)"]


def test_decimal_from_a_float_or_a_finer_decimal_rejects_what_it_would_round() -> None:
    finer = pl.Series([Decimal("12.555"), Decimal("12.550"), Decimal("-0.001"), Decimal("3")], dtype=pl.Decimal(10, 3))
    floats = pl.Series([0.1, 12.555, 1 / 3, 0.25])
    good, rejects = _split({"d": "decimal(10,2)", "f": "decimal(10,2)"}, {"d": finer, "f": floats})
    assert good[["d", "f", "_line"]].rows() == [(Decimal("3.00"), Decimal("0.25"), 3)]
    rounds = "has more than 2 digit(s) after the decimal point; decimal(10,2) would round it"
    assert rejects["_reject_reason"].to_list() == [
        f"d: '12.555' {rounds}", f"f: '12.555' {rounds}", f"d: '-0.001' {rounds}; f: '0.3333333333333333' {rounds}"]


def test_a_csv_decimal_too_fine_is_rejected_on_the_fast_and_the_careful_path(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("id,price\n1,12.50\n2,12.555\n3,7\n4,1.25e1\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    for fast in (True, False):
        result = process_chunk(spec, tmp_path / f"out-{fast}", schema={"id": "int64", "price": "decimal(10,2)"},
                               output_format="csv", fast=fast)
        assert not result.fast_path
        assert Path(result.output_paths[0]).read_text() == "id,price\n1,12.50\n3,7.00\n4,12.50\n"
        rejects = pl.read_csv(result.rejects_path or "", infer_schema=False)
        assert rejects.rows() == [("2", "12.555", str(path), "3", "price: '12.555' has more than 2 digit(s) after "
                                   "the decimal point; decimal(10,2) would round it")]


def test_clean_decimals_keep_the_fast_path_and_an_exponent_takes_the_careful_one(tmp_path: Path) -> None:
    schema = {"id": "int64", "price": "decimal(10,2)"}
    clean = tmp_path / "clean.csv"
    clean.write_text("id,price\n1,12.50\n2,3\n3,-0.1\n")
    result = process_chunk(plan_chunks(resolve_inputs(clean))[0], tmp_path / "a", schema=schema, output_format="csv")
    assert result.fast_path and Path(result.output_paths[0]).read_text() == "id,price\n1,12.50\n2,3.00\n3,-0.10\n"
    exp = tmp_path / "exp.csv"
    exp.write_text("id,price\n1,12.50\n2,1.25E1\n")
    result = process_chunk(plan_chunks(resolve_inputs(exp))[0], tmp_path / "b", schema=schema, output_format="csv")
    assert not result.fast_path and result.rows_rejected == 0
    assert Path(result.output_paths[0]).read_text() == "id,price\n1,12.50\n2,12.50\n"


def test_inferred_integer_types_hold_every_value_seen() -> None:
    assert type_name_of(pl.UInt64()) == "uint64" and polars_dtype("uint64") == pl.UInt64
    assert type_name_of(pl.Int128()) == "decimal(38,0)" and type_name_of(pl.Int32()) == "int64"
    good, rejects = _split({"big": "uint64"}, {"big": pl.Series(["12345678901234567890", "-1", "5"])})
    assert good["big"].to_list() == [12345678901234567890, 5] and rejects["_line"].to_list() == [1]


def test_an_inferred_schema_says_so_in_its_rejects_and_keeps_its_json() -> None:
    schema = Schema(columns={"n": "int64"}, inferred=True)
    validator = RowValidator(Schema.model_validate(schema.model_dump(mode="json")), {"n": pl.String()}, source="f")
    frame = pl.DataFrame({"n": ["1", "x"], "_source_file": "f", "_line": [1, 2]})
    _, rejects = validator.split(frame)
    assert rejects["_reject_reason"].to_list() == [
        "n: 'x' is not int64 (type inferred from the first rows; pass a schema to set it)"]
    # a schema that does not use the new fields has the JSON it always had (a run's identity is made of it)
    assert Schema(columns={"n": "int64"}).model_dump(mode="json") == {
        "columns": {"n": "int64"}, "not_null": [], "unique_key": []}
    keyed = Schema(columns={}, json_keys=["a", "b"]).model_dump(mode="json")
    assert keyed["json_keys"] == ["a", "b"] and "inferred" not in keyed


@pytest.mark.parametrize("line", [b'{"id": 3, "code": 9, "amt": "x", "ok": true}', b'{"amt":"x" , "id":3}',
                                  b'{"id" : 3,\t"amt" :"x", "code": 1.50}'])
def test_a_jsonl_schema_reject_is_the_line_as_written(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1, "code": 7, "amt": 1.5, "ok": false, "extra": 1}\r\n' + line + b"\r\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    result = process_chunk(spec, tmp_path / "out", schema={"id": "int64", "amt": "float64"}, output_format="jsonl")
    rejects = pl.read_ndjson(result.rejects_path or "")
    assert rejects.columns == ["_raw", "_source_file", "_line", "_reject_reason"]
    assert rejects["_raw"].to_list() == [line.decode()] and rejects["_line"].to_list() == [2]
    assert rejects["_reject_reason"].to_list() == ["amt: 'x' is not float64"]


def test_a_typed_cast_that_would_change_a_value_rejects_it() -> None:
    """Parquet columns: 1.5 -> int64 was 1, 2 -> bool was true, nanoseconds were cut; now each is a reject."""
    ns = pl.Series([1704067200123456789, 1704067200123456000, 1704067200000000000]).cast(pl.Datetime("ns"))
    values = {"qty": pl.Series([1.0, 1.5, 2.9]), "flag": pl.Series([0, 2, 1]), "ts": ns}
    good, rejects = _split({"qty": "int64", "flag": "bool", "ts": "datetime", "day": "date"},
                           {**values, "day": ns})
    assert good.height == 0 and rejects["_line"].to_list() == [0, 1, 2]
    assert rejects["_reject_reason"].to_list() == [
        "ts: '2024-01-01 00:00:00.123456789' has digits past the microseconds; datetime keeps microseconds and "
        "would drop them; day: '2024-01-01 00:00:00.123456789' is not date",
        "qty: '1.5' is not int64; flag: '2' is not bool; day: '2024-01-01 00:00:00.123456000' is not date",
        "qty: '2.9' is not int64",
    ]
    exact, none = _split({"qty": "int64", "flag": "bool", "ts": "datetime[UTC]", "n": "uint64"},
                         {"qty": pl.Series([3.0]), "flag": pl.Series([1]), "ts": ns[1:2], "n": pl.Series([7])})
    assert none.height == 0
    assert exact.select("qty", "flag", pl.col("ts").dt.to_string("%H:%M:%S%.6f"), "n").rows() == [
        (3, True, "00:00:00.123456", 7)]


def test_text_with_digits_past_microseconds_is_rejected_not_truncated() -> None:
    text = ["2024-01-01T10:00:00.123456789", "2024-01-01 10:00:00.123456000", "2024-01-01T10:00:00.5"]
    for type_name, more in (("datetime", []), ("datetime[UTC]", ["2024-01-01T10:00:00.5+02:00",
                                                                  "2024-01-01T10:00:00.1234567+02:00"])):
        good, rejects = _split({"ts": type_name}, {"ts": pl.Series(text + more)})
        assert good["_line"].to_list() == [1, 2, 3][: 2 + len(more) // 2]
        assert rejects["ts"].to_list() == [text[0], *more[1:]]
        assert rejects["_reject_reason"][0] == (
            f"ts: '{text[0]}' has digits past the microseconds; {type_name} keeps microseconds and would drop them")
    inferred = Schema(columns={"ts": "datetime"}, inferred=True)
    frame = pl.DataFrame({"ts": text[:1], "_source_file": ["f"], "_line": [1]})
    _, rejects = RowValidator(inferred, {"ts": pl.String()}, source="f").split(frame)
    assert rejects["_reject_reason"].item().endswith("would drop them (type inferred from the first rows; pass a "
                                                     "schema to set it)")


@pytest.mark.parametrize("name", ["_line", "_source_file", "_raw", "_reject_reason"])
def test_an_input_column_named_like_a_lineage_or_reject_column_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"column '{name}' of data/a.csv has a name file_transform uses .*rename it"):
        RowValidator(None, {"id": pl.String(), name: pl.String()}, source="data/a.csv")


BIG = 2**53 + 1  # 9007199254740993: the first integer a double does not hold
INEXACT = "is an integer float64 cannot hold exactly (it would be {}); declare the column int64, uint64, " \
          "decimal(38,0) or str to keep it"


def test_integer_text_a_float_would_change_is_rejected() -> None:
    """float64 made '9007199254740993' 9007199254740992.0 silently; text with a point keeps the nearest double."""
    text = [str(BIG), f" -{BIG} ", "18446744073709551617", "1" * 41, str(2**53), "1.5", "0.1", "1e300", "-0",
            "inf", "NaN", "x", "+42"]
    good, rejects = _split({"v": "float64"}, {"v": pl.Series(text)})
    assert good["v"].to_list()[:6] == [2.0**53, 1.5, 0.1, 1e300, -0.0, float("inf")]
    assert good["v"].to_list()[7:] == [42.0] and good["_line"].to_list() == [4, 5, 6, 7, 8, 9, 10, 12]
    assert rejects["v"].to_list() == [*text[:4], "x"]
    assert rejects["_reject_reason"].to_list() == [
        f"v: '{BIG}' {INEXACT.format('9007199254740992.0')}", f"v: ' -{BIG} ' {INEXACT.format('-9007199254740992.0')}",
        f"v: '18446744073709551617' {INEXACT.format('1.8446744073709552e+19')}",
        f"v: '{'1' * 41}' {INEXACT.format('1.111111111111111e+40')}", "v: 'x' is not float64"]


def test_a_typed_integer_a_float_would_change_is_rejected() -> None:
    """Parquet/JSON int64, uint64, decimal(38,0) -> float64 rounded past 2**53; a decimal's fraction still takes
    the nearest double (as text does), and int32 and smaller always fit."""
    values = {"i": pl.Series([BIG, 2**63 - 1, -(2**53), None]), "u": pl.Series([2**64 - 1, 3, 2**60, 0], dtype=pl.UInt64),
              "d": pl.Series([Decimal(BIG), Decimal(-BIG), Decimal(2**100), None], dtype=pl.Decimal(38, 0)),
              "f": pl.Series([Decimal("0.1"), Decimal("2.0"), Decimal(f"{BIG}.5"), None], dtype=pl.Decimal(20, 1)),
              "small": pl.Series([2**31 - 1, 0, -(2**31), 1], dtype=pl.Int32)}
    good, rejects = _split(dict.fromkeys(values, "float64"), values)
    assert good.select(*values, "_line").rows() == [
        (-(2.0**53), 2.0**60, 2.0**100, float(BIG + 1), -(2.0**31), 2), (None, 0.0, None, None, 1.0, 3)]
    assert rejects["_reject_reason"].to_list() == [
        f"i: '{BIG}' {INEXACT.format('9007199254740992.0')}; u: '18446744073709551615' "
        f"{INEXACT.format('1.8446744073709552e+19')}; d: '{BIG}' {INEXACT.format('9007199254740992.0')}",
        f"i: '9223372036854775807' {INEXACT.format('9.223372036854776e+18')}; "
        f"d: '-{BIG}' {INEXACT.format('-9007199254740992.0')}",
    ]


def test_a_csv_integer_a_float_would_change_is_rejected_on_the_fast_and_the_careful_path(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text(f"id,v\n1,{BIG}\n2,1.5\n3,{2**53}\n4,1e20\n")
    spec = plan_chunks(resolve_inputs(path))[0]
    for fast in (True, False):
        result = process_chunk(spec, tmp_path / f"out-{fast}", schema={"id": "int64", "v": "float64"},
                               output_format="parquet", fast=fast)
        assert not result.fast_path  # a float past 2**53 may be such an integer: the careful path looks at its text
        assert pl.read_parquet(result.output_paths[0]).rows() == [(2, 1.5), (3, 2.0**53), (4, 1e20)]
        rejects = pl.read_csv(result.rejects_path or "", infer_schema=False)
        assert rejects.rows() == [("1", str(BIG), str(path), "2", f"v: '{BIG}' {INEXACT.format('9007199254740992.0')}")]
    small = tmp_path / "small.csv"
    small.write_text(f"id,v\n1,{2**53 - 1}\n2,-0.5\n")
    result = process_chunk(plan_chunks(resolve_inputs(small))[0], tmp_path / "small", schema={"id": "int64", "v": "float64"},
                           output_format="parquet")
    assert result.fast_path and pl.read_parquet(result.output_paths[0])["v"].to_list() == [2.0**53 - 1, -0.5]
