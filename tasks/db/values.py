"""Value codecs between PostgreSQL, SQLite and polars, and the canonical text range checksums hash.

Why one canonical form per kind (``int``, ``Decimal``, aware UTC ``datetime``, ``JsonText``, ``bytes``,
``UUID``, ``list``): readers decode storage into it, writers encode it, and the checksum hashes it, so
"equal after a migration in either direction" has a single definition.

JSON travels as the text its database stored (``JsonText``), never parsed and re-serialized: a number
beyond a double's precision keeps every digit, ``12.50`` stays ``12.50``, a PostgreSQL ``json`` column
keeps its spacing, key order and non-ASCII characters byte for byte. Only verify parses it, to compare
documents by value (see :func:`canonical_json`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from itertools import islice
from operator import itemgetter
from typing import Any

from tasks.core.exactjson import dumps_exact, loads_exact
from tasks.db.typemap import ColumnInfo, sqlite_affinity, sqlite_int_numeric

_UTC = dt.UTC


class JsonText(str):
    """A JSON document as its database stores it (valid JSON text); written as is to a JSON column."""

    __slots__ = ()


def raw_json(data: bytes | bytearray | memoryview | str) -> JsonText:
    """psycopg's JSON loader for connections batchflows opens: the document's text, not parsed."""
    return JsonText(data if isinstance(data, str) else bytes(data).decode())


def _json_dumps(v: Any) -> str:
    """A Python value's JSON text; numbers read by :func:`tasks.core.exactjson.loads_exact` as they were written."""
    return dumps_exact(v, _json_default, separators=(",", ":"))

# ---------------------------------------------------------------- value codecs

_TRUE = frozenset({"t", "true", "1", "y", "yes", "on"})
_FALSE = frozenset({"f", "false", "0", "n", "no", "off"})


def _to_int(v: Any) -> int:
    if isinstance(v, bool | int):
        return int(v)
    if isinstance(v, float | Decimal):
        if v != int(v):
            raise ValueError(f"{v!r} is not a whole number")
        return int(v)
    return int(str(v).strip())


def _to_decimal(v: Any) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(v, float):
        return Decimal(repr(v))
    try:
        return Decimal(str(v).strip())
    except InvalidOperation:
        raise ValueError(f"{v!r} is not a decimal number") from None


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"{v!r} is not a boolean (use true/false, t/f or 1/0)")


def _to_datetime(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return dt.datetime.fromtimestamp(v, _UTC)
    return dt.datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))


def _to_timestamp(v: Any) -> dt.datetime:
    out = _to_datetime(v)
    return out.astimezone(_UTC).replace(tzinfo=None) if out.tzinfo else out


def _to_timestamptz(v: Any) -> dt.datetime:
    out = _to_datetime(v)
    return out.replace(tzinfo=_UTC) if out.tzinfo is None else out.astimezone(_UTC)


def _to_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        if v.time() != dt.time(0):
            raise ValueError(f"{v!r} has a time of day; a date column cannot hold it")
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v).strip()[:10])


END_OF_DAY = "24:00:00"  # PostgreSQL's time '24:00:00' (a day's end): no Python time holds it, so it stays text
_END_OF_DAY = re.compile(r"24:00(?::00(?:\.0*)?)?")


def _to_time(v: Any) -> dt.time | str:
    if isinstance(v, dt.time):
        return v
    text = str(v).strip()
    return END_OF_DAY if _END_OF_DAY.fullmatch(text) else dt.time.fromisoformat(text)


def _to_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        raise ValueError("binary data cannot go into a text column")
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    return str(v)


def _to_json(v: Any) -> JsonText:
    """A JSON document's text: text (or bytes) is checked to be JSON and kept as written; a Python value
    (dict, list, number, boolean) is serialized."""
    if type(v) is JsonText:
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        v = bytes(v).decode()
    if isinstance(v, str):
        try:
            json.loads(v)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        return JsonText(v)
    return JsonText(_json_dumps(v))


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, str) and v.startswith("\\x"):
        return bytes.fromhex(v[2:])
    raise ValueError(f"{type(v).__name__} value is not binary data")


def _to_uuid(v: Any) -> uuid.UUID:
    if isinstance(v, uuid.UUID):
        return v
    if isinstance(v, bytes) and len(v) == 16:
        return uuid.UUID(bytes=v)
    return uuid.UUID(str(v).strip())


_COERCE: dict[str, Callable[[Any], Any]] = {
    "smallint": _to_int, "integer": _to_int, "bigint": _to_int, "numeric": _to_decimal, "real": float,
    "double": float, "text": _to_text, "varchar": _to_text, "char": _to_text, "boolean": _to_bool,
    "date": _to_date, "time": _to_time, "timestamp": _to_timestamp, "timestamptz": _to_timestamptz,
    "json": _to_json, "jsonb": _to_json, "bytes": _to_bytes, "uuid": _to_uuid,
}


def coerce(col: ColumnInfo, value: Any) -> Any:
    """Convert any reasonable Python value (or its text form) into ``col``'s canonical Python form.

    Raises ValueError/TypeError with the reason; callers add the row key and column name.
    """
    if value is None:
        return None
    if col.cast_text and isinstance(value, list) and (col.declared or "").startswith("_"):
        return pg_array_literal(value)  # into a PostgreSQL array written as text (json[], unknown elements)
    if col.kind == "array" and isinstance(value, str) and _PG_ARRAY_START.match(value):
        # PostgreSQL's text form (a json[] read as text), never a JSON array: those start with "["
        texts = parse_pg_array_literal(value)
        inner = ColumnInfo(name=col.name, kind=col.element or "text")
        return [_coerce_nested(inner, x) for x in texts]
    if col.kind == "array":  # a JSON array's text (SQLite): numbers of json, numeric and text elements as written
        items = (loads_exact(value) if col.element in _EXACT_ELEMENTS else json.loads(value)) if isinstance(
            value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"{type(items).__name__} value is not an array")
        if col.element in ("json", "jsonb") and isinstance(value, str):
            # each element of the array's JSON is one document (a string, an array, null: JSON values, not
            # document texts or nested dimensions), as _sqlite_array_item writes them
            return [None if x is None else JsonText(_json_dumps(x)) for x in items]
        inner = ColumnInfo(name=col.name, kind=col.element or "text")
        return [_coerce_nested(inner, x) for x in items]
    return _COERCE[col.kind](value)


_EXACT_ELEMENTS = frozenset({"json", "jsonb", "numeric", "text", "varchar", "char"})


def _coerce_nested(inner: ColumnInfo, x: Any) -> Any:
    if isinstance(x, list):
        return [_coerce_nested(inner, y) for y in x]
    return coerce(inner, x)


def _json_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _sqlite_scalar(kind: str, v: Any) -> Any:
    if kind == "numeric":
        return str(v)
    if kind == "boolean":
        return 1 if v else 0
    if kind == "timestamp":
        return v.isoformat(sep=" ", timespec="microseconds")
    if kind == "timestamptz":
        return v.astimezone(_UTC).isoformat(sep=" ", timespec="microseconds")
    if kind in ("date", "time"):
        return v if isinstance(v, str) else v.isoformat()  # END_OF_DAY
    if kind in ("json", "jsonb"):
        return json_text(v)
    if kind == "uuid":
        return str(v)
    return v


def json_text(v: Any) -> str:
    """The text a JSON column stores for a canonical JSON value (its own text; a Python value serialized)."""
    return str(v) if isinstance(v, JsonText) else _json_dumps(v)


def _sqlite_array_item(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, list):
        return [_sqlite_array_item(kind, x) for x in v]
    if kind in ("json", "jsonb"):
        return loads_exact(v) if isinstance(v, JsonText) else v  # an element inside the array's own JSON
    out = _sqlite_scalar(kind, v)
    return "\\x" + out.hex() if isinstance(out, bytes) else out


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _sqlite_int(col: ColumnInfo) -> Callable[[Any], Any]:
    """A whole number -> the int a DECIMAL_INT column stores; anything SQLite would store otherwise is refused
    (INTEGER affinity turns a number past 64 bits into a rounded REAL, and a fraction into a REAL)."""
    def enc(v: Any) -> Any:
        if v is None:
            return None
        d = _to_decimal(v)
        if not d.is_finite() or d != d.to_integral_value():
            raise ValueError(f"not a whole number: a {col.declared} key column holds SQLite integers")
        n = int(d)
        if not _INT64_MIN <= n <= _INT64_MAX:
            raise ValueError(f"past the 64-bit integers (-2**63 to 2**63-1) a {col.declared} key column holds in "
                             "SQLite")
        return n

    return enc


def sqlite_bound(col: ColumnInfo, value: Any) -> Any:
    """A range bound (canonical value) -> the parameter a SQLite column is compared with: the stored form,
    except for a DECIMAL_INT column, where any number compares right (``id > b`` and ``id <= b`` hold for the
    integers ``id`` exactly when they do for ``floor(b)``; past 64 bits, where no stored value lies, +-inf)."""
    if value is None or not sqlite_int_numeric(col):
        return sqlite_encoder(col)(value)
    d = _to_decimal(value)
    if d.is_nan():
        raise ValueError(f"NaN is not a range bound of key column {col.name!r}")
    if d.is_infinite():
        return float(d)
    n = int(d.to_integral_value(rounding=ROUND_FLOOR))
    return n if _INT64_MIN <= n <= _INT64_MAX else float("inf") if n > 0 else float("-inf")


def unstorable(dialect: str, cols: Sequence[ColumnInfo], rows: Sequence[tuple[Any, ...]]
               ) -> tuple[int, int, str] | None:
    """(row, column, why) of the first float (or MySQL DECIMAL) the target would store as something else, or
    None. A NaN or infinite numeric has no MySQL/MariaDB DECIMAL (a numeric kept as text can hold it). SQLite has no
    NaN (it binds one as NULL) and stores -0.0 as 0 unless the column has BLOB affinity (``FLOAT8_BLOB``, what
    batchflows creates); MySQL/MariaDB have no NaN or infinity (refused without naming the row) and store -0.0
    as 0. One C-level sum per float column, which a NaN or an infinity poisons, and a
    ``0.0 in column`` (which -0.0 equals) where -0.0 is lost; the column's rows are scanned only then."""
    if dialect not in ("sqlite", "mysql"):
        return None
    mysql = dialect == "mysql"
    for i, col in enumerate(cols):
        if mysql and col.kind == "numeric" and col.precision is not None:  # a DECIMAL (not text: LONGTEXT keeps NaN)
            if (r := _nonfinite_decimal(list(map(itemgetter(i), rows)))) is not None:
                return r, i, f"{rows[r][i]} cannot be stored in a MySQL/MariaDB DECIMAL (no NaN or infinities)"
            continue
        if col.kind not in ("real", "double"):
            continue
        values = list(map(itemgetter(i), rows))
        try:
            total = sum(filter(None, values))  # NULLs and zeros left out
        except (TypeError, OverflowError):
            total = float("nan")
        blob = not mysql and sqlite_affinity(col.declared or "FLOAT8_BLOB") == "BLOB"  # keeps -0.0
        if (total == total and not (mysql and total in (math.inf, -math.inf))
                and not (not blob and 0.0 in values)):
            continue
        for r, v in enumerate(values):
            if isinstance(v, float) and (bad := _unstorable_float(v, mysql, blob)):
                return r, i, bad
    return None


def _nonfinite_decimal(values: list[Any]) -> int | None:
    """The row of the first NaN or infinite Decimal, or None: one C-level sum, which such a value poisons
    (or makes raise: an infinity minus another, a signalling NaN); the values are scanned only then."""
    try:
        total = sum(filter(None, values), Decimal(0))
        if total.is_finite():
            return None
    except (ArithmeticError, TypeError):
        pass
    return next((r for r, v in enumerate(values) if isinstance(v, Decimal) and not v.is_finite()), None)


def _unstorable_float(v: float, mysql: bool, blob: bool) -> str | None:
    if v != v:
        return ("NaN cannot be stored in MySQL/MariaDB" if mysql else
                "NaN cannot be stored in SQLite (it would be stored as NULL)")
    if v == 0.0 and math.copysign(1.0, v) < 0 and (mysql or not blob):
        return ("-0.0 cannot be stored in MySQL/MariaDB (it would be stored as 0)" if mysql else
                "-0.0 cannot be stored in a SQLite column of REAL or NUMERIC affinity (it would be stored as 0; "
                "batchflows creates FLOAT8_BLOB columns, which keep it)")
    if not mysql:
        return None
    if v in (math.inf, -math.inf):
        return f"{v!r} cannot be stored in MySQL/MariaDB (no infinities)"
    return None


def sqlite_encoder(col: ColumnInfo) -> Callable[[Any], Any]:
    """Canonical Python value -> what this column stores in SQLite (a DECIMAL_INT column: an int, see
    :func:`_sqlite_int`)."""
    kind = col.kind
    if sqlite_int_numeric(col):
        return _sqlite_int(col)
    if kind == "array":
        elem = col.element or "text"
        return lambda v: None if v is None else dumps_exact(
            [_sqlite_array_item(elem, x) for x in v], None, separators=(",", ":"))
    if kind in ("smallint", "integer", "bigint", "real", "double", "text", "varchar", "char", "bytes"):
        return lambda v: v
    if kind in ("numeric", "json", "jsonb") and sqlite_affinity(col.declared) in ("NUMERIC", "INTEGER", "REAL"):
        return _numeric_affinity(col)
    return lambda v: None if v is None else _sqlite_scalar(kind, v)


_SQLITE_NUMBER = re.compile(r"[ \t\n\f\r]*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[ \t\n\f\r]*")
_SQLITE_INTEGER = re.compile(r"[ \t\n\f\r]*[-+]?\d+[ \t\n\f\r]*")


def sqlite_affinity_value(text: str) -> int | float | None:
    """The number SQLite's NUMERIC affinity stores for ``text`` (sqlite.org/datatype3.html 3.0: an integer
    literal within 64 bits as it is, any other number as a double, kept as an integer when it is one), or None
    when the text stays text."""
    if not _SQLITE_NUMBER.fullmatch(text):
        return None
    if _SQLITE_INTEGER.fullmatch(text) and _INT64_MIN <= (n := int(text)) <= _INT64_MAX:
        return n
    f = float(text)
    return int(f) if f.is_integer() and -(2**63) <= f < 2**63 else f


_TEXT_TYPES = {"numeric": "DECIMAL_TEXT", "json": "JSON_TEXT", "jsonb": "JSONB_TEXT"}


def _numeric_affinity(col: ColumnInfo) -> Callable[[Any], Any]:
    """A numeric or JSON value into a column someone declared with NUMERIC affinity (``NUMERIC``, ``JSON``):
    SQLite turns text that looks like a number into one (``0.12345678901234567891`` -> a double), so a value
    that would not read back the same is refused, naming the way out."""
    json_kind = col.kind != "numeric"

    def enc(v: Any) -> Any:
        if v is None:
            return None
        text = json_text(v) if json_kind else _sqlite_scalar("numeric", v)
        stored = sqlite_affinity_value(text)
        if stored is None:
            return text
        same = (_json_dumps(stored) == text if json_kind else
                Decimal(stored if isinstance(stored, int) else repr(stored)) == _to_decimal(v))
        if same:
            return text
        raise ValueError(
            f"SQLite stores {text.strip()[:60]} as the number {stored!r} in this column (declared "
            f"{col.declared!r}: NUMERIC affinity), so it would not read back the same; declare the column with "
            f"TEXT affinity ({_TEXT_TYPES[col.kind]}) or let db_migrate create the table")

    return enc


def sqlite_decoder(col: ColumnInfo) -> Callable[[Any], Any]:
    """What SQLite returns for this column -> canonical Python value (SQLite is loosely typed, so
    every stored representation a reasonable writer may have used is accepted)."""
    kind = col.kind
    if kind in ("json", "jsonb"):
        return lambda v: None if v is None else _to_json(v)
    if kind in ("text", "varchar", "char"):
        return lambda v: v if v is None or isinstance(v, str) else _to_text(v)
    if kind in ("bigint", "integer", "smallint"):
        return lambda v: v if v is None or type(v) is int else _to_int(v)
    if kind == "double":
        return lambda v: v if v is None or type(v) is float else float(v)
    return lambda v: coerce(col, v)


def pg_decoder(col: ColumnInfo) -> Callable[[Any], Any] | None:
    """psycopg already loads canonical values; only time zones need normalizing (None = identity)."""
    if col.kind == "timestamptz":
        return lambda v: None if v is None else v.astimezone(_UTC)
    return None


def pg_array_literal(values: list[Any]) -> str:
    """PostgreSQL's text form of an array (``{"a","b\\"c",NULL}``): every element quoted, nested lists as
    nested dimensions. JSON documents go as their own text."""
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, list):
            parts.append(pg_array_literal(v))
        else:
            text = v if isinstance(v, str) else _to_text(v)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def parse_pg_array_literal(text: str) -> list[Any]:
    """PostgreSQL's text form of an array -> nested lists of element texts (None for NULL). Strict: what is not
    such a literal (a JSON object, say) raises ValueError instead of being read as one."""
    m = _PG_ARRAY_START.match(text)
    if m is None:
        raise ValueError(f"not an array literal: {text[:20]!r}")
    try:
        value, end = _pg_array_at(text, m.end() - 1)
    except IndexError:
        raise ValueError(f"the array literal ends too early: {text[-20:]!r}") from None
    if text[end:].strip():
        raise ValueError(f"text after the array literal's end: {text[end:end + 20]!r}")
    return value


_PG_ARRAY_START = re.compile(r"\s*(?:(?:\[-?\d+:-?\d+\])+\s*=\s*)?\{")  # "[0:1]={...}": other lower bounds


def _pg_array_at(text: str, pos: int) -> tuple[list[Any], int]:
    """The array starting at ``text[pos] == "{"``, and the position after its closing brace."""
    out: list[Any] = []
    pos = _skip_space(text, pos + 1)
    if text[pos] == "}":
        return out, pos + 1
    while True:
        c = text[pos]
        if c == "{":
            inner, pos = _pg_array_at(text, pos)
            out.append(inner)
        elif c == '"':
            chars, pos = [], pos + 1
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            out.append("".join(chars))
            pos += 1
        else:
            start = pos
            while text[pos] not in ',}{"':
                pos += 1
            word = text[start:pos].strip()
            if not word:
                raise ValueError(f"an empty element at {start} of the array literal")
            out.append(None if word.upper() == "NULL" else word.replace("\\", ""))
        pos = _skip_space(text, pos)
        if text[pos] == "}":
            return out, pos + 1
        if text[pos] != ",":
            raise ValueError(f"not an array literal at {pos}: {text[pos:pos + 20]!r}")
        pos = _skip_space(text, pos + 1)


def _skip_space(text: str, pos: int) -> int:
    while text[pos] in " \t\n\r":
        pos += 1
    return pos


def pg_encoder(col: ColumnInfo) -> Callable[[Any], Any] | None:
    """Canonical value -> what psycopg's binary dumper for this column accepts (None = identity)."""
    if col.cast_text:
        return lambda v: None if v is None else _to_text(v)
    if col.kind in ("json", "jsonb") or (col.kind == "array" and col.element in ("json", "jsonb")):
        # psycopg's JSON dumpers serialize what they get: the wrapper makes them send the document's own text
        from psycopg.types.json import Json

        def wrap(v: Any) -> Any:
            return None if v is None else Json(v, dumps=json_text)

        def wrap_items(v: Any) -> Any:
            return [wrap_items(x) for x in v] if isinstance(v, list) else wrap(v)

        return wrap if col.kind != "array" else wrap_items
    return None


# ---------------------------------------------------------------- canonical text for checksums


def _canon(v: Any) -> Any:
    if type(v) is JsonText:
        return canonical_json(v)
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Decimal):
        return _canon_decimal(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dt.datetime):
        return _canon_datetime(v)
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in v.items()}
    return str(v)


def _canon_decimal(v: Decimal) -> str:
    if v.is_nan():
        return "NaN"
    text = format(v, "f")  # not normalize(): it rounds to the context's 28 digits
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _canon_datetime(v: dt.datetime) -> str:
    if v.tzinfo is not None:
        return v.astimezone(_UTC).isoformat(timespec="microseconds")
    return v.isoformat(timespec="microseconds")


def _canon_json_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(f"{_canon_json_dumps(k)}:{_canon_json_value(v[k])}" for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_canon_json_value(x) for x in v) + "]"
    if isinstance(v, Decimal):
        return _canon_decimal(v)
    return _canon_json_dumps(v)  # strings, integers (exact), true/false/null, NaN/Infinity


# the C encoder of every canonical text (rows, columns, JSON documents): sorted keys, no spaces; it refuses
# Decimal (a number with a fraction or an exponent), which sends a JSON document through _canon_json_value
_canon_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_json_exact_loads = json.JSONDecoder(parse_float=Decimal).decode


def canonical_json(text: str) -> str:
    """A JSON document's canonical text for checksums: keys sorted, no spaces, escapes resolved, numbers
    by value as exact decimals (``12.50`` = ``12.5`` = ``1.25E1``; a number is never equal to a string)."""
    doc = _json_exact_loads(text)
    try:
        return _canon_json_dumps(doc)  # integers only (the common case): one C call
    except TypeError:
        return _canon_json_value(doc)


def canonical_row(row: tuple[Any, ...] | list[Any]) -> bytes:
    """The text a row's checksum is computed over: JSON of canonical values (numbers as normalized
    decimal text, timestamps as UTC ISO, bytes as hex, JSON objects with sorted keys)."""
    return _canon_json_dumps([_canon(v) for v in row]).encode()


def _canon_int(v: Any) -> Any:
    return None if v is None else str(v)


def _canon_char(v: Any) -> Any:
    """char(n): trailing spaces are padding (PostgreSQL pads, MySQL strips them): equal data compares equal."""
    return v.rstrip(" ") if isinstance(v, str) else v


def _same(v: Any) -> Any:
    return v


def _typed(kind: type, fast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fast`` for values of exactly ``kind`` (the column's decoded type), ``_canon`` for anything else."""
    return lambda v: fast(v) if type(v) is kind else _canon(v)


_CANON_BY_KIND: dict[str, Callable[[Any], Any]] = {
    "numeric": _typed(Decimal, _canon_decimal), "real": _typed(float, repr), "double": _typed(float, repr),
    "timestamp": _typed(dt.datetime, _canon_datetime), "timestamptz": _typed(dt.datetime, _canon_datetime),
    "json": _typed(JsonText, canonical_json), "jsonb": _typed(JsonText, canonical_json),
}


def _canon_funcs(cols: list[ColumnInfo], *, json_as_text: bool = False) -> list[Callable[[Any], Any]]:
    return [_canon_int if c.kind in ("smallint", "integer", "bigint") else
            _typed(JsonText, str) if json_as_text and c.kind == "json" else
            _canon_char if c.kind == "char" else
            _same if c.kind in ("text", "varchar", "boolean") else _CANON_BY_KIND.get(c.kind, _canon) for c in cols]


_CHECKSUM_BATCH = 10_000


def rows_checksum(cols: list[ColumnInfo], *, json_as_text: bool = False
                  ) -> Callable[[Iterable[tuple[Any, ...]]], tuple[int, str]]:
    """(count, checksum) of rows in order, computed column by column over batches of 10,000 rows (one
    C-encoded JSON array of canonical values per column and batch): several times faster than a digest per
    row for the common case, an equal range; :func:`row_canonicalizer` then finds the first differing row of
    an unequal one. Streams: one batch in memory. ``json_as_text``: a ``json`` document as its text, not
    parsed (equal texts are equal documents; unequal ones may still be equal values: compare again without)."""
    funcs, dumps = _canon_funcs(cols, json_as_text=json_as_text), _canon_json_dumps

    def checksum(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
        h, n, it = hashlib.md5(usedforsecurity=False), 0, iter(rows)
        while batch := list(islice(it, _CHECKSUM_BATCH)):
            n += len(batch)
            h.update(f"{len(batch)}:".encode())
            for f, column in zip(funcs, zip(*batch, strict=True), strict=True):
                h.update(dumps([f(v) for v in column]).encode())
        return n, h.hexdigest()

    return checksum


def row_canonicalizer(cols: list[ColumnInfo]) -> Callable[[tuple[Any, ...]], bytes]:
    """A faster ``canonical_row`` for rows of known columns (same output: dispatch once per column; char(n)
    values without their trailing padding)."""
    funcs, dumps = _canon_funcs(cols), _canon_json_dumps

    def canon(row: tuple[Any, ...]) -> bytes:
        return dumps([f(v) for f, v in zip(funcs, row, strict=True)]).encode()

    return canon


# ---------------------------------------------------------------- key bounds as JSON


def key_to_json(col: ColumnInfo, value: Any) -> Any:
    """A key value as JSON (for range bounds that are task parameters and cache keys)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float):
        return value
    raise ValueError(f"key column {col.name!r} of type {col.type_label()} cannot be a range bound")


def polars_dtype(col: ColumnInfo) -> Any:
    """The polars dtype a column gets in a transform's DataFrame (JSON, uuids and arrays as text)."""
    import polars as pl

    kinds: dict[str, Any] = {
        "smallint": pl.Int16, "integer": pl.Int32, "bigint": pl.Int64, "real": pl.Float32,
        "double": pl.Float64, "boolean": pl.Boolean, "date": pl.Date, "time": pl.Time,
        "timestamp": pl.Datetime("us"), "timestamptz": pl.Datetime("us", "UTC"), "bytes": pl.Binary,
    }
    if col.kind == "numeric" and col.precision is not None and col.precision <= 38:
        return pl.Decimal(col.precision, col.scale or 0)
    return kinds.get(col.kind, pl.String)


def frame_value(col: ColumnInfo, value: Any) -> Any:
    """Canonical value -> the value placed in a polars DataFrame of dtype ``polars_dtype(col)``."""
    if value is None:
        return None
    if col.kind in ("json", "jsonb"):
        return json_text(value)
    if col.kind == "array":
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if col.kind == "uuid" or (col.kind == "numeric" and (col.precision is None or col.precision > 38)):
        return str(value)
    return value


__all__ = [
    "END_OF_DAY",
    "JsonText",
    "canonical_json",
    "canonical_row",
    "coerce",
    "frame_value",
    "json_text",
    "key_to_json",
    "pg_decoder",
    "pg_encoder",
    "polars_dtype",
    "raw_json",
    "row_canonicalizer",
    "rows_checksum",
    "sqlite_affinity_value",
    "sqlite_bound",
    "sqlite_decoder",
    "sqlite_encoder",
    "unstorable",
]
