"""Parse one segment of CSV/TSV/JSONL bytes into (rows as strings, malformed-line rejects).

Fast path: polars' native reader. Ragged rows are found with exact field counts per record (quoted
sections removed by a regex, then separators counted), and each row's physical line comes from the
newlines inside its fields, so line numbers stay exact with quoted newlines. A cross-check (rows +
embedded newlines == physical lines) guards the mapping. When polars refuses a segment (bad quoting,
invalid JSON) or the cross-check fails, Python's csv/json re-parse just that segment line by line to
name each bad line; that path is slower, so it only runs on segments that need it.

Empty fields read as null (quoted ``""`` too) so both paths agree. Invalid UTF-8 is replaced (U+FFFD).
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Sequence
from typing import Any

import polars as pl

from tasks.files.schema import LINE, RAW, REJECT_REASON, SOURCE_FILE

_QUOTED = r'"(?:[^"]|"")*"'


def _text_lines(body: bytes) -> list[str]:
    return body.decode("utf-8", "replace").split("\n") if body else []


def _malformed(lines: list[str], first_line: int, source: str, rows: list[tuple[int, int, str]]) -> pl.DataFrame:
    """Rejects for lines that could not be parsed: rows = (start index, end index exclusive, reason)."""
    return pl.DataFrame(
        {
            RAW: ["\n".join(lines[s:e]).rstrip("\r") for s, e, _ in rows],
            SOURCE_FILE: [source] * len(rows),
            LINE: [first_line + s for s, _, _ in rows],
            REJECT_REASON: [r for _, _, r in rows],
        },
        schema={RAW: pl.String, SOURCE_FILE: pl.String, LINE: pl.Int64, REJECT_REASON: pl.String},
    )


def _frame(columns: list[str], rows: list[list[Any]], lines: list[int], source: str) -> pl.DataFrame:
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    schema = {c: pl.String for c in columns}
    df = pl.DataFrame(data, schema=schema)
    return df.with_columns(pl.lit(source).alias(SOURCE_FILE), pl.Series(LINE, lines, dtype=pl.Int64))


def _csv_python(
    body: bytes, columns: list[str], sep: str, first_line: int, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Slow exact path for a segment polars refused: Python's csv finds each bad record and its lines."""
    lines = _text_lines(body)
    reader = csv.reader((line + "\n" for line in lines), delimiter=sep, quotechar='"', strict=True)
    good: list[list[Any]] = []
    good_lines: list[int] = []
    bad: list[tuple[int, int, str]] = []
    prev = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad.append((prev, max(reader.line_num, prev + 1), f"bad quoting: {exc}"))
            prev = reader.line_num
            continue
        start, prev = prev, reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(columns):
            bad.append((start, prev, f"line has {len(row)} fields, expected {len(columns)}"))
            continue
        good.append([v if v != "" else None for v in row])
        good_lines.append(first_line + start)
    return _frame(columns, good, good_lines, source), _malformed(lines, first_line, source, bad)


def parse_csv(
    body: bytes, columns: list[str], sep: str, first_line: int, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fast path: polars parses, then exact field counts per record catch ragged rows."""
    body = body.rstrip(b"\r\n")
    n = len(columns)
    if not body:
        return _frame(columns, [], [], source), _malformed([], first_line, source, [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = pl.read_csv(
                body,
                has_header=False,
                schema={c: pl.String for c in columns},
                separator=sep,
                truncate_ragged_lines=True,
                raise_if_empty=False,
                encoding="utf8-lossy",
            )
    except pl.exceptions.PolarsError:
        return _csv_python(body, columns, sep, first_line, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            line_s = pl.read_lines(body, name="rec").to_series()
    except pl.exceptions.PolarsError:  # invalid UTF-8: decode with replacement instead
        line_s = pl.Series("rec", _text_lines(body), dtype=pl.String)
    if b'"' in body:
        nl = df.select(pl.sum_horizontal(pl.col(c).str.count_matches("\n", literal=True) for c in columns))
        extra = nl.to_series().fill_null(0).cast(pl.Int64)
    else:
        extra = pl.repeat(0, df.height, dtype=pl.Int64, eager=True)
    start = pl.int_range(df.height, dtype=pl.Int64, eager=True) + extra.cum_sum().shift(1, fill_value=0)
    if df.height + int(extra.sum()) != line_s.len():
        return _csv_python(body, columns, sep, first_line, source)
    record = line_s.gather(start)
    if int(extra.sum()):
        multi = [i for i, e in enumerate(extra.to_list()) if e]
        joined = [
            "\n".join(line_s.slice(s, e + 1).to_list())
            for s, e in zip(start.gather(multi), extra.gather(multi), strict=True)
        ]
        record = record.scatter(multi, joined)
    meta = pl.DataFrame({"rec": record.str.strip_suffix("\r"), "start": start})
    meta = meta.with_columns(
        nfields=pl.when(pl.col("rec").str.contains('"', literal=True))
        .then(pl.col("rec").str.replace_all(_QUOTED, ""))
        .otherwise(pl.col("rec"))
        .str.count_matches(sep, literal=True)
        + 1
    )
    blank = meta["rec"].str.strip_chars() == ""
    ragged = ~blank & (meta["nfields"] != n)
    good = df.with_columns(pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in columns)
    good = good.with_columns(pl.lit(source).alias(SOURCE_FILE), (start + first_line).alias(LINE))
    good = good.filter(~blank & ~ragged)
    bad_meta = meta.filter(ragged)
    bad = (
        pl.DataFrame(
            {
                RAW: bad_meta["rec"],
                SOURCE_FILE: pl.Series([source] * bad_meta.height, dtype=pl.String),
                LINE: bad_meta["start"] + first_line,
                REJECT_REASON: [f"line has {k} fields, expected {n}" for k in bad_meta["nfields"]],
            }
        )
        if bad_meta.height
        else _malformed([], first_line, source, [])
    )
    return good, bad


class _Number:
    """A JSON number with a fraction or an exponent, as its text in the file (``12.50``, ``1e400``); not a
    str, so the C JSON encoder refuses it and a nested value holding one is written by the walk below."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


# a number polars would write differently from the file: an exponent, a trailing zero in a fraction, more
# than 15 digits in a fraction (a double holds 15 significant digits exactly; polars writes its shortest
# positional form, so any other fraction comes out as written; integers of any size it keeps as written)
_UNSAFE_NUMBER = (rb"-?[0-9]+(?:\.[0-9]+)?[eE]|-?[0-9]*\.[0-9]*0(?![0-9])"
                  rb"|-?(?=[0-9]*\.[0-9])(?:[0-9]\.?){16}")
_UNSAFE = re.compile(_UNSAFE_NUMBER)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_KEY_PATTERNS: dict[str, tuple[re.Pattern[bytes], re.Pattern[bytes]]] = {}


def _key_patterns(name: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """``"name": <a number polars would rewrite>`` and ``"name": <an object or array>`` (which may hold one)."""
    pats = _KEY_PATTERNS.get(name)
    if pats is None:
        key = re.escape(json.dumps(name, ensure_ascii=False).encode()) + rb"\s*:\s*"
        pats = _KEY_PATTERNS.setdefault(name, (re.compile(key + rb"(?:" + _UNSAFE_NUMBER + rb")"),
                                               re.compile(key + rb"[\[{]")))
    return pats


def _polars_exact(body: bytes, exact_columns: Sequence[str]) -> bool:
    """Whether polars writes every value of ``exact_columns`` (those whose text is kept: String, Decimal) as
    the file does. A quick look for any such number first; then one search per column for its key followed
    by one (text inside a string that merely looks like that sends the segment to the exact path too); an
    object or array value: any such number outside strings."""
    if not exact_columns or not _UNSAFE.search(body):
        return True
    pats = [_key_patterns(c) for c in exact_columns]
    if any(number.search(body) for number, _ in pats):
        return False
    return not any(nested.search(body) for _, nested in pats) or not _UNSAFE.search(_STRING.sub(b'""', body))


_dumps = json.JSONEncoder(ensure_ascii=False).encode  # polars writes nested values with these separators
_exact_loads = json.JSONDecoder(parse_float=_Number).decode


def _json_value_text(value: Any) -> str:
    """A nested value as JSON text, as polars writes it, numbers as the file writes them."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_dumps(k)}: {_json_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_value_text(v) for v in value) + "]"
    return value.text if type(value) is _Number else _dumps(value)


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if type(value) is _Number:
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return _dumps(value)  # no number with a fraction inside: one C call
    except TypeError:
        return _json_value_text(value)


def parse_jsonl(body: bytes, columns: list[str], first_line: int, source: str,
                exact_columns: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Values as text. polars reads a number with a fraction or exponent as a double (``12.50`` -> ``12.5``,
    digits past the 17th lost): harmless for a column that becomes a float, not for one whose text is kept
    (``exact_columns``: String, Decimal). A segment where polars would rewrite a number of such a column is
    read by Python's json, which hands every number over as the file writes it; so does a segment polars
    refuses, so both paths give the same text."""
    lines = _text_lines(body.rstrip(b"\r\n"))
    keep = [i for i, line in enumerate(lines) if line.strip()]
    if keep and _polars_exact(body, exact_columns):
        try:
            df = pl.read_ndjson(body, schema={c: pl.String for c in columns})
            if df.height == len(keep):
                return df.with_columns(
                    pl.lit(source).alias(SOURCE_FILE), pl.Series(LINE, [first_line + i for i in keep], dtype=pl.Int64)
                ), _malformed([], first_line, source, [])
        except pl.exceptions.PolarsError:
            pass
    good: list[list[Any]] = []
    good_lines: list[int] = []
    bad: list[tuple[int, int, str]] = []
    for i in keep:
        try:
            obj = _exact_loads(lines[i])
        except json.JSONDecodeError as exc:
            bad.append((i, i + 1, f"invalid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            bad.append((i, i + 1, f"line is a JSON {type(obj).__name__}, expected an object"))
            continue
        good.append([_json_text(obj.get(c)) for c in columns])
        good_lines.append(first_line + i)
    return _frame(columns, good, good_lines, source), _malformed(lines, first_line, source, bad)


__all__ = ["parse_csv", "parse_jsonl"]
