"""Parse one segment of CSV/TSV/JSONL bytes into (rows as strings, malformed-line rejects).

Fast path: polars' native reader. Ragged rows are found with exact field counts per record (quoted
sections removed by a regex, then separators counted), and each row's physical line comes from the
newlines inside its fields, so line numbers stay exact with quoted newlines. A cross-check (rows +
embedded newlines == physical lines) guards the mapping. When polars refuses a segment (bad quoting,
invalid JSON) or the cross-check fails, Python's csv/json re-parse just that segment line by line to
name each bad line; that path is slower, so it only runs on segments that need it.

CSV values are what polars reads: an empty field is null, a quoted ``""`` the empty string (Python's csv
cannot tell them apart, so its path looks at the text of a row with an empty value); in columns that
become another type than str (``empty_as_null``) both are null, as in polars' typed read. Only empty
lines are skipped: in a one-column file a value of spaces is a row. A CSV segment is checked to be UTF-8
in C (``isascii``, else one decode); if it is not, its rows are decoded one by one and each row that is not valid UTF-8 becomes
a reject whose ``_raw`` escapes the invalid bytes (:func:`raw_bytes` gives the bytes back).

JSON lines carry each row's line as ``_raw`` (a schema reject is that line); a line that is not valid UTF-8
is rejected the same way, and a line with a key outside the columns is rejected naming the key. A string
holding an escape of a lone UTF-16 surrogate (``"\\ud800"``: valid JSON, but no character) cannot be a
polars string (polars' reader makes it a NUL): its line is rejected naming the column. A pair of such escapes
(``"\\ud83d\\ude00"``) is one character and kept; segments without any surrogate escape pay one byte search.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from tasks.files.schema import LINE, RAW, REJECT_REASON, SOURCE_FILE

# A field may be as long as a record, and a record is never cut (tasks.files.read): Python's csv must take any
# length (its default limit, 128 KiB, would reject a valid long field on the slow path). Process-wide.
csv.field_size_limit(sys.maxsize)

_QUOTED = r'"(?:[^"]|"")*"'
_QUOTED_RE = re.compile(_QUOTED)


def _text_lines(body: bytes) -> list[str]:
    return body.decode("utf-8", "replace").split("\n") if body else []


def _rejects(raws: list[str], lines: list[int], reasons: list[str], source: str) -> pl.DataFrame:
    return pl.DataFrame(
        {RAW: raws, SOURCE_FILE: [source] * len(raws), LINE: lines, REJECT_REASON: reasons},
        schema={RAW: pl.String, SOURCE_FILE: pl.String, LINE: pl.Int64, REJECT_REASON: pl.String},
    )


def _malformed(lines: list[str], first_line: int, source: str, rows: list[tuple[int, int, str]]) -> pl.DataFrame:
    """Rejects for lines that could not be parsed: rows = (start index, end index exclusive, reason)."""
    return _rejects(
        ["\n".join(lines[s:e]).removesuffix("\r") for s, e, _ in rows], [first_line + s for s, _, _ in rows],
        [r for _, _, r in rows], source,
    )


def _frame(columns: list[str], rows: list[list[Any]], lines: list[int], source: str) -> pl.DataFrame:
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    schema = {c: pl.String for c in columns}
    df = pl.DataFrame(data, schema=schema)
    return df.with_columns(pl.lit(source).alias(SOURCE_FILE), pl.Series(LINE, lines, dtype=pl.Int64))


NOT_UTF8 = "not valid UTF-8"
_ESCAPED = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def raw_bytes(raw: str, reason: str) -> bytes:
    """The bytes of a rejected row from its ``_raw`` and ``_reject_reason``. ``_raw`` of a row that is not valid
    UTF-8 (reason starting "not valid UTF-8") shows each invalid byte as ``\\xNN`` and each backslash doubled;
    any other ``_raw`` is the row's text as it is."""
    if not reason.startswith(NOT_UTF8):
        return raw.encode()
    return _ESCAPED.sub(lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]), raw.encode())


def not_utf8_reject(row: bytes, exc: UnicodeDecodeError) -> tuple[str, str]:
    """A row that is not valid UTF-8 as a reject: its ``_raw`` (see :func:`raw_bytes`) and its reason."""
    raw = row.removesuffix(b"\r").replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    reason = (f"{NOT_UTF8} (byte 0x{row[exc.start]:02x} at offset {exc.start} of the row); _raw shows each invalid "
              "byte as \\xNN and each backslash doubled")
    return raw, reason


def _records(lines: list[bytes]) -> Iterator[tuple[int, int]]:
    """(first, end) line indices of each CSV record: a record ends at a line break outside quotes."""
    i = 0
    while i < len(lines):
        j, odd = i + 1, lines[i].count(b'"') % 2
        while odd and j < len(lines):
            odd = (odd + lines[j].count(b'"')) % 2
            j += 1
        yield i, j
        i = j


def _split_invalid_utf8(body: bytes, first_line: int, source: str) -> tuple[bytes, pl.DataFrame | None]:
    """The rows that are not valid UTF-8 as rejects, and the body with their lines left empty (so the line
    numbers of the others stay). One C-speed check when the body is valid; row by row only when it is not."""
    if body.isascii():
        return body, None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return body, None
    lines = body.split(b"\n")
    raws: list[str] = []
    at: list[int] = []
    reasons: list[str] = []
    for i, j in _records(lines):
        record = lines[i] if j == i + 1 else b"\n".join(lines[i:j])
        try:
            record.decode("utf-8")
        except UnicodeDecodeError as exc:
            lines[i:j] = [b""] * (j - i)
            raw, reason = not_utf8_reject(record, exc)
            raws.append(raw)
            at.append(first_line + i)
            reasons.append(reason)
    return b"\n".join(lines), _rejects(raws, at, reasons, source)


def _quoted_fields(record: str, sep: str) -> list[bool]:
    """Whether each field of a well-formed CSV record starts with a quote."""
    quoted: list[bool] = []
    pos = 0
    while True:
        quoted.append(record.startswith('"', pos))
        if quoted[-1] and (m := _QUOTED_RE.match(record, pos)):
            pos = m.end()
        nxt = record.find(sep, pos)
        if nxt == -1:
            return quoted
        pos = nxt + 1


def _csv_values(row: list[str], record: str, sep: str) -> list[str | None]:
    """Python's csv gives '' for an empty field and for ``""``: the record's text tells which is null."""
    quoted = _quoted_fields(record.rstrip("\r"), sep)
    return [None if v == "" and not (i < len(quoted) and quoted[i]) else v for i, v in enumerate(row)]


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
        if not row:  # an empty line
            continue
        if len(row) != len(columns):
            bad.append((start, prev, f"line has {len(row)} fields, expected {len(columns)}"))
            continue
        good.append(row if "" not in row else _csv_values(row, "\n".join(lines[start:prev]), sep))
        good_lines.append(first_line + start)
    return _frame(columns, good, good_lines, source), _malformed(lines, first_line, source, bad)


def parse_csv(
    body: bytes, columns: list[str], sep: str, first_line: int, source: str, *, empty_as_null: Sequence[str] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of a CSV segment as strings, and its rejects (malformed, ragged or not UTF-8 rows; see the module).

    ``empty_as_null``: columns where a quoted ``""`` is null too (those cast to a type other than str)."""
    body, not_utf8 = _split_invalid_utf8(body.rstrip(b"\r\n"), first_line, source)
    body = body.rstrip(b"\r\n")
    if body:
        good, bad = _csv_polars(body, columns, sep, first_line, source)
    else:
        good, bad = _frame(columns, [], [], source), _rejects([], [], [], source)
    if empty_as_null:
        good = good.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in empty_as_null)
    return good, bad if not_utf8 is None else pl.concat([bad, not_utf8])


def _csv_polars(
    body: bytes, columns: list[str], sep: str, first_line: int, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fast path: polars parses, then exact field counts per record catch ragged rows."""
    n = len(columns)
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
                encoding="utf8",
            )
    except pl.exceptions.PolarsError:
        return _csv_python(body, columns, sep, first_line, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            line_s = pl.read_lines(body, name="rec").to_series()
    except pl.exceptions.PolarsError:
        return _csv_python(body, columns, sep, first_line, source)
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
    blank = meta["rec"] == ""
    ragged = ~blank & (meta["nfields"] != n)
    good = df.with_columns(pl.lit(source).alias(SOURCE_FILE), (start + first_line).alias(LINE))
    good = good.filter(~blank & ~ragged)
    bad_meta = meta.with_columns(lines=extra + 1).filter(ragged)
    bad = _rejects(
        _record_texts(body, bad_meta["start"].to_list(), bad_meta["lines"].to_list()),
        (bad_meta["start"] + first_line).to_list(),
        [f"line has {k} fields, expected {n}" for k in bad_meta["nfields"]], source,
    )
    return good, bad


def _record_texts(body: bytes, starts: list[int], counts: list[int]) -> list[str]:
    """The text of each record (first line index, number of lines) as it is in ``body``: a CR inside a quoted
    field kept (polars' lines drop it), the record's own line break not. Only for rejected records."""
    if not starts:
        return []
    lines = body.split(b"\n")
    return [b"\n".join(lines[s:s + k]).removesuffix(b"\r").decode() for s, k in zip(starts, counts, strict=True)]


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


_KNOWN_KEYS: dict[tuple[str, ...], str] = {}


def utf8_encodable(text: str) -> bool:
    """False for a str holding a lone surrogate (a JSON ``"\\ud800"`` escape): no UTF-8 text, no column name."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unknown_keys(keys: list[str]) -> str:
    """The reason of a line with keys that are not columns, and what to do to keep them."""
    names = ", ".join(repr(k) for k in keys)
    them = "it" if len(keys) == 1 else "them"
    if not all(map(utf8_encodable, keys)):
        return (f"key {names} holds the escape of a lone UTF-16 surrogate: no column can have that name; write the "
                "character itself or both escapes of its pair")
    return (f"key {names} not among the columns (the schema's and the keys in the first MiB of the first JSON-lines "
            f"file); add {them} to the schema's columns (e.g. {json.dumps({keys[0]: 'str'})}) to keep {them}")


def _known_keys_pattern(columns: Sequence[str]) -> str:
    """A regex for ``"name":`` of any of ``columns`` as JSON writes the name."""
    key = tuple(columns)
    pattern = _KNOWN_KEYS.get(key)
    if pattern is None:
        names = "|".join(pl.escape_regex(json.dumps(c, ensure_ascii=False)) for c in columns)
        pattern = _KNOWN_KEYS.setdefault(key, f"(?:{names}):")
    return pattern


def _only_known_keys(body: bytes, text: pl.Series, df: pl.DataFrame, columns: list[str]) -> bool:
    """Whether no line of a segment polars read (``df``; ``text``: its lines) has a key outside ``columns``:
    polars drops such a key.

    Counted, not parsed (unless :func:`_odd`, every ``":`` ends a key or lies in a string): a line with as many
    ``":`` as it has non-null columns plus those inside its columns' values (objects) has no other key. A line
    with more (a null, a key of an object named like a column, a ``"`` in a string, or another key) is looked at
    again: its ``":`` not of a column's name must all be inside its columns' values. A line with an escaped
    quote, or one of these left over, and polars lists the keys of every line instead."""
    frame = df.with_columns(text.alias("\x00text"))
    line = pl.col("\x00text")
    if _odd(frame, line):
        return _keys_of(body) <= set(columns)
    nested = {c: pl.col(c).str.starts_with("{") | pl.col(c).str.starts_with("[") for c in columns}
    objects = [c for c, has in frame.select(n.any().alias(c) for c, n in nested.items()).row(0, named=True).items()
               if has]

    def inside(pattern: str, *, literal: bool) -> pl.Expr:
        counts = [pl.when(nested[c]).then(pl.col(c).str.count_matches(pattern, literal=literal)) for c in objects]
        return pl.sum_horizontal(counts).fill_null(0).cast(pl.Int64) if counts else pl.lit(0, pl.Int64)

    keys = line.str.count_matches('":', literal=True).cast(pl.Int64)
    values = pl.sum_horizontal(pl.col(c).is_not_null() for c in columns).cast(pl.Int64)
    frame = frame.filter(keys != values + inside('":', literal=True))
    if frame.is_empty():
        return True
    known = _known_keys_pattern(columns)
    if not frame.select(line.str.contains('\\"', literal=True).any()).item():
        others = keys - line.str.count_matches(known).cast(pl.Int64)
        if frame.select((others == inside('":', literal=True) - inside(known, literal=False)).all()).item():
            return True
    return _keys_of(body) <= set(columns)


def _odd(frame: pl.DataFrame, line: pl.Expr) -> bool:
    """A line where a ``":`` may not end a key or lie in a string as written: a space (tab, CR) between a key
    and its colon, or a quote or colon written as ``\\u0022``, ``\\u003a``."""
    if not frame.select(line.str.contains(r"\\u00(?:22|3[aA])| :|\t:|\r:").any()).item():
        return False
    return frame.select(line.str.contains(r'\\u00(?:22|3[aA])|"[ \t\r]+:').any()).item()


def _keys_of(body: bytes) -> set[str]:
    """The keys of every line of a segment (polars infers them all: slower than reading); none if it cannot."""
    try:
        return set(pl.scan_ndjson(body, infer_schema_length=None).collect_schema().names())
    except pl.exceptions.PolarsError:
        return {"\x00"}


_SURROGATE_ESCAPE = rb"\\u[dD][89a-fA-F]"
_SURROGATE = re.compile(_SURROGATE_ESCAPE)
_SURROGATE_PAIR = r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"


def _has_surrogate_escape(body: bytes) -> bool:
    """Whether a segment may hold a ``\\uD800``-``\\uDFFF`` escape: two byte searches, a regex only if one hits."""
    return (b"\\ud" in body or b"\\uD" in body) and _SURROGATE.search(body) is not None


def _lone_surrogates(text: pl.Series) -> bool:
    """Whether a line holds an escape of a lone surrogate (not a high one followed by a low one), as JSON reads
    it: escaped backslashes out first (``\\\\ud800`` is text), then the pairs; any surrogate escape left is lone."""
    return bool(
        text.str.replace_all("\\\\", "_", literal=True)
        .str.replace_all(_SURROGATE_PAIR, "")
        .str.contains(_SURROGATE_ESCAPE.decode())
        .any()
    )


def _lone_surrogate(columns: list[str], values: list[str | None]) -> str | None:
    """The reason of a row (Python's json read it) with a value a string cannot hold: a lone surrogate."""
    for column, value in zip(columns, values, strict=True):
        if value is None or value.isascii():
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"{column}: holds the escape of a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}, half "
                    "of a pair without its other half), which is not a character and cannot be stored as text; "
                    "write the character itself or both escapes of its pair (e.g. \\ud83d\\ude00)")
    return None


def _nested_escapes(df: pl.DataFrame, columns: list[str]) -> bool:
    """Whether an object or array value holds a backslash or a control character: polars writes a backslash, a
    tab or a control character of a string inside it as is (``["x\\y"]``, not JSON), so Python's json reads it."""
    nested = [(pl.col(c).str.starts_with("{") | pl.col(c).str.starts_with("["))
              & pl.col(c).str.contains(r"[\\\x00-\x1f]") for c in columns]
    return bool(df.select(pl.any_horizontal(nested).any()).item())


def _jsonl_polars(body: bytes, columns: list[str], first_line: int, source: str,
                  exact_columns: Sequence[str], *, surrogates: bool) -> pl.DataFrame | None:
    """The rows of a segment read by polars, with their line and text (``_raw``); None when the segment needs
    Python's json (see :func:`parse_jsonl`). ``surrogates``: the segment may hold a lone surrogate escape."""
    if not _polars_exact(body, exact_columns):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = pl.read_lines(body, name=RAW).to_series()  # without the line breaks (\r\n too)
            if surrogates and _lone_surrogates(text):
                return None
            df = pl.read_ndjson(body, schema={c: pl.String for c in columns})
    except pl.exceptions.PolarsError:
        return None
    rows = ~text.str.contains(r"^[ \t\r]*$")  # JSON whitespace only: not a row
    text = text.filter(rows)
    if df.height != text.len() or not df.height or not _only_known_keys(body, text, df, columns):
        return None
    if b"\\" in body and _nested_escapes(df, columns):
        return None
    at = pl.int_range(first_line, first_line + rows.len(), dtype=pl.Int64, eager=True).filter(rows)
    return df.with_columns(pl.lit(source).alias(SOURCE_FILE), at.alias(LINE), text)


def _jsonl_lines(body: bytes) -> tuple[list[str], dict[int, str]]:
    """The lines of a segment as text, and the reasons of those that are not valid UTF-8 (by index): such a
    line's text is its ``_raw`` as for CSV (:func:`raw_bytes` gives its bytes back). One decode when all are."""
    try:
        return (body.decode("utf-8").split("\n") if body else []), {}
    except UnicodeDecodeError:
        pass
    lines: list[str] = []
    bad: dict[int, str] = {}
    for i, row in enumerate(body.split(b"\n")):
        try:
            lines.append(row.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raw, bad[i] = not_utf8_reject(row, exc)
            lines.append(raw)
    return lines, bad


def parse_jsonl(body: bytes, columns: list[str], first_line: int, source: str,
                exact_columns: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Values as text, and each row's line as ``_raw`` (a row the schema rejects is written as that line).

    polars reads a number with a fraction or exponent as a double (``12.50`` -> ``12.5``, digits past the 17th
    lost): harmless for a column that becomes a float, not for one whose text is kept (``exact_columns``:
    String, Decimal). A segment where polars would rewrite a number of such a column is read by Python's json,
    which hands every number over as the file writes it; so does a segment polars refuses, so both paths give
    the same text. A line with a key that is not in ``columns`` is rejected naming the key (polars would drop
    the key silently): a segment where one may be is read by Python's json too, and so is one with a lone
    surrogate escape, whose line is rejected."""
    body = body.rstrip(b"\r\n")
    surrogates = bool(body) and _has_surrogate_escape(body)
    good = _jsonl_polars(body, columns, first_line, source, exact_columns, surrogates=surrogates) if body else None
    if good is not None:
        return good, _rejects([], [], [], source)
    lines, not_utf8 = _jsonl_lines(body)
    known = set(columns)
    rows: list[list[Any]] = []
    at: list[int] = []
    bad: list[tuple[int, int, str]] = []
    for i, line in enumerate(lines):
        if i in not_utf8:
            bad.append((i, i + 1, not_utf8[i]))
            continue
        if not line.strip():
            continue
        try:
            obj = _exact_loads(line)
        except json.JSONDecodeError as exc:
            bad.append((i, i + 1, f"invalid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            bad.append((i, i + 1, f"line is a JSON {type(obj).__name__}, expected an object"))
            continue
        if unknown := [k for k in obj if k not in known]:
            bad.append((i, i + 1, _unknown_keys(unknown)))
            continue
        row = [_json_text(obj.get(c)) for c in columns]
        if surrogates and (reason := _lone_surrogate(columns, row)):
            bad.append((i, i + 1, reason))
            continue
        rows.append(row)
        at.append(i)
    df = _frame(columns, rows, [first_line + i for i in at], source)
    df = df.with_columns(pl.Series(RAW, [lines[i].rstrip("\r") for i in at], dtype=pl.String))
    return df, _malformed(lines, first_line, source, bad)


__all__ = ["NOT_UTF8", "parse_csv", "parse_jsonl", "raw_bytes", "utf8_encodable"]
