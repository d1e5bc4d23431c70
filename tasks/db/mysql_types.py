"""MySQL/MariaDB type map, DDL and value codecs (the MySQL side of tasks.db.typemap and tasks.db.values).

Why these choices:

* **Reading**: ``TINYINT(1)`` is a boolean; unsigned integers widen to the next kind that holds every value
  (``INT UNSIGNED`` -> bigint, ``BIGINT UNSIGNED`` -> numeric(20,0)); ``DATETIME`` is a timestamp without time
  zone and ``TIMESTAMP`` one in UTC (sessions run with ``time_zone = '+00:00'``); ``ENUM`` and ``SET`` are
  text (``'a,b'`` for a SET), ``JSON`` (also MariaDB's ``LONGTEXT CHECK (json_valid(..))``) is json, every
  ``BLOB``/``BINARY`` is bytes. A zero date (``0000-00-00``) has no equal anywhere else: it is refused,
  naming the row and column, never guessed into NULL.
* **Writing**: kinds MySQL has no exact type for are stored in a type that keeps the value exact and tagged in
  the column comment (``batchflows:timestamptz`` in ``DATETIME(6)`` as UTC, so the 1970-2038 range of
  ``TIMESTAMP`` does not apply; ``batchflows:uuid`` in ``CHAR(36)``; ``batchflows:numeric`` for numerics
  without precision in ``LONGTEXT``; ``batchflows:char`` in ``VARCHAR(n)`` because ``CHAR`` drops trailing
  spaces; ``batchflows:array:<element>`` in ``JSON``), so reading the table back gives the same kinds.
  Tables are InnoDB in utf8mb4 with a binary no-pad collation, so keys compare exactly as in PostgreSQL's
  ``COLLATE "C"`` and SQLite.
* **Text keys**: InnoDB indexes at most 3072 bytes of a key and counts 4 per utf8mb4 character, so a key's
  text columns share what its other columns leave: a declared length that fits is kept, the rest is split
  evenly (``(bigint, text)`` -> ``VARCHAR(766)``). A longer value fails its row (strict mode), never cut.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tasks.core import ConfigError
from tasks.db.conn import TableName, quote
from tasks.db.typemap import KINDS, ColumnInfo
from tasks.db.values import END_OF_DAY, JsonText, _to_bool, _to_json, coerce, json_text, sqlite_decoder, sqlite_encoder

TAG = "batchflows:"
_UTC = dt.UTC
_BIN_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb3_nopad_bin", "binary", "ascii_nopad_bin")
_KEY_BYTES = 3072  # InnoDB's index key limit (DYNAMIC rows, MariaDB 10.2+ and MySQL 5.7+)
_CHAR_BYTES = 4  # what InnoDB counts for a utf8mb4 character of a key
_SIZED = re.compile(r"(var)?char\((\d+)\)")
_DECIMAL = re.compile(r"(?:decimal|numeric)\((\d+)(?:,\s*(\d+))?\)")
_FRACTION = re.compile(r"(datetime|timestamp|time)(?:\((\d)\))?")
_FRACTION_BASE = {"datetime": 5, "timestamp": 4, "time": 3}
_FIXED_BYTES = {"tinyint": 1, "year": 1, "smallint": 2, "mediumint": 3, "int": 4, "integer": 4, "float": 4,
                "bigint": 8, "double": 8, "real": 8, "date": 3, "enum": 2, "set": 8, "bit": 8, "inet4": 4}
_WIDEST_FIXED = 16  # a type not listed above (uuid, inet6, ...): as much as any fixed-width key type takes


# ---------------------------------------------------------------- reading the type map


def column_from_mysql(name: str, data_type: str, column_type: str, *, nullable: bool, precision: int | None,
                      scale: int | None, length: int | None, collation: str | None = None, comment: str = "",
                      json_check: bool = False) -> ColumnInfo:
    """Map one ``information_schema.COLUMNS`` row to a column (see the module docstring)."""
    dtype, ctype = data_type.lower(), column_type.lower()
    unsigned = "unsigned" in ctype
    common: dict[str, Any] = {"name": name, "nullable": nullable, "declared": f"mysql:{column_type}"}
    binary_order = collation is None or collation.lower() in _BIN_COLLATIONS
    tag = comment[len(TAG):].strip() if comment.startswith(TAG) else ""
    if tag.startswith("array:") and tag[6:] in KINDS:
        return ColumnInfo(kind="array", element=tag[6:], **common)
    if tag in ("timestamptz", "uuid", "jsonb", "numeric", "char"):
        extra: dict[str, Any] = {"length": length} if tag == "char" and dtype == "varchar" else {}
        return ColumnInfo(kind=tag, collate_c=tag == "char" and not binary_order, **common, **extra)
    if dtype == "tinyint" and ctype.startswith("tinyint(1)") and not unsigned:
        return ColumnInfo(kind="boolean", **common)
    ints = {"tinyint": "smallint", "smallint": "integer" if unsigned else "smallint", "mediumint": "integer",
            "int": "bigint" if unsigned else "integer", "integer": "bigint" if unsigned else "integer",
            "bigint": "numeric" if unsigned else "bigint", "year": "smallint"}
    if dtype in ints:
        kind = ints[dtype]
        return ColumnInfo(kind=kind, **({"precision": 20, "scale": 0} if kind == "numeric" else {}), **common)
    if dtype in ("decimal", "numeric"):
        return ColumnInfo(kind="numeric", precision=precision, scale=scale or 0, **common)
    simple = {"float": "real", "double": "double", "real": "double", "date": "date", "time": "time",
              "datetime": "timestamp", "timestamp": "timestamptz", "json": "json", "uuid": "uuid",
              "binary": "bytes", "varbinary": "bytes", "tinyblob": "bytes", "blob": "bytes",
              "mediumblob": "bytes", "longblob": "bytes", "bit": "bytes"}
    if dtype in simple:
        return ColumnInfo(kind=simple[dtype], **common)
    if dtype in ("tinytext", "text", "mediumtext", "longtext"):
        return ColumnInfo(kind="json" if json_check else "text", collate_c=not json_check and not binary_order,
                          **common)
    if dtype in ("char", "varchar", "enum", "set"):
        kind = "char" if dtype == "char" else "varchar"
        return ColumnInfo(kind=kind, length=length, collate_c=not binary_order, **common)
    # anything else (inet4/inet6, geometry, ...) travels as its text form
    return ColumnInfo(kind="text", cast_text=True, collate_c=True, **common)


def column_from_field(name: str, type_code: int, *, unsigned: bool, binary: bool, length: int, decimals: int,
                      nullable: bool = True) -> ColumnInfo:
    """Map a result-set field (a query source: no information_schema row) to a column."""
    from pymysql.constants import FIELD_TYPE as F

    common: dict[str, Any] = {"name": name, "nullable": nullable}
    if type_code in (F.DECIMAL, F.NEWDECIMAL):
        prec = length - (1 if decimals else 0) - (0 if unsigned else 1)
        return ColumnInfo(kind="numeric", precision=max(prec, 1), scale=decimals, **common)
    ints = {F.TINY: "boolean" if length == 1 else "smallint", F.SHORT: "integer" if unsigned else "smallint",
            F.INT24: "integer", F.LONG: "bigint" if unsigned else "integer", F.YEAR: "smallint",
            F.LONGLONG: "numeric" if unsigned else "bigint"}
    if type_code in ints:
        kind = ints[type_code]
        return ColumnInfo(kind=kind, **({"precision": 20, "scale": 0} if kind == "numeric" else {}), **common)
    simple = {F.FLOAT: "real", F.DOUBLE: "double", F.DATE: "date", F.TIME: "time", F.DATETIME: "timestamp",
              F.TIMESTAMP: "timestamptz", F.JSON: "json", F.BIT: "bytes"}
    if type_code in simple:
        return ColumnInfo(kind=simple[type_code], **common)
    return ColumnInfo(kind="bytes" if binary else "text", **common)


# ---------------------------------------------------------------- DDL


def _ddl(col: ColumnInfo, *, is_key: bool) -> tuple[str, str | None]:
    """(MySQL type, comment tag or None) of a column."""
    declared = col.declared[6:] if col.declared.startswith("mysql:") else ""
    if declared and not (is_key and ("text" in declared.lower() or "blob" in declared.lower())):
        return declared, _tag_of(col)
    k = col.kind
    if k == "array":
        return "JSON", f"array:{col.element or 'text'}"
    if k == "numeric":
        if col.precision is not None and col.precision <= 65 and (col.scale or 0) <= 30:
            return f"DECIMAL({col.precision},{col.scale or 0})", None
        return ("DECIMAL(65,30)", None) if is_key else ("LONGTEXT", "numeric")
    if k in ("text", "varchar", "char"):  # a key's are sized by _key_types
        tag = "char" if k == "char" else None
        return (f"VARCHAR({col.length})", tag) if col.length is not None and col.length <= 16383 else ("LONGTEXT", tag)
    fixed = {"smallint": "SMALLINT", "integer": "INT", "bigint": "BIGINT", "real": "FLOAT", "double": "DOUBLE",
             "boolean": "TINYINT(1)", "date": "DATE", "time": "TIME(6)", "timestamp": "DATETIME(6)",
             "timestamptz": "DATETIME(6)", "json": "JSON", "jsonb": "JSON", "bytes": "LONGBLOB", "uuid": "CHAR(36)"}
    return fixed[k], {"timestamptz": "timestamptz", "jsonb": "jsonb", "uuid": "uuid"}.get(k)


def _tag_of(col: ColumnInfo) -> str | None:
    declared = col.declared[6:].lower()
    if col.kind == "array":
        return f"array:{col.element or 'text'}"
    if col.kind in ("timestamptz", "uuid", "jsonb") and not declared.startswith(("timestamp", "uuid", "json")):
        return col.kind
    if (col.kind == "numeric" and "text" in declared) or (col.kind == "char" and declared.startswith("varchar")):
        return col.kind
    return None


def _text_key(col: ColumnInfo) -> tuple[str, int | None] | None:
    """(``VARCHAR`` or ``CHAR``, the declared length or None) of a text key column; None for other kinds."""
    if col.kind not in ("text", "varchar", "char"):
        return None
    declared = col.declared[6:].lower() if col.declared.startswith("mysql:") else ""
    sized = _SIZED.fullmatch(declared)
    if sized:
        return ("VARCHAR" if sized[1] else "CHAR"), int(sized[2])
    if declared and "text" not in declared:  # ENUM, SET, ... keep their declared type
        return None
    return "VARCHAR", col.length


def _digits_bytes(digits: int) -> int:
    return digits // 9 * 4 + (0, 1, 1, 2, 2, 3, 3, 4, 4)[digits % 9]


def _key_bytes(typ: str) -> int:
    """The bytes InnoDB counts for a key column of this (not text) type."""
    t = typ.lower()
    if m := _SIZED.match(t):
        return int(m[2]) * _CHAR_BYTES
    if m := _DECIMAL.match(t):
        precision, scale = int(m[1]), int(m[2] or 0)
        return _digits_bytes(precision - scale) + _digits_bytes(scale)
    if m := _FRACTION.match(t):
        return _FRACTION_BASE[m[1]] + (int(m[2] or 0) + 1) // 2
    word = re.match(r"[a-z0-9]*", t)
    return _FIXED_BYTES.get(word[0] if word else "", _WIDEST_FIXED)


def _share(wanted: dict[str, int | None], chars: int) -> dict[str, int]:
    """Characters per text column out of ``chars``: the shortest declared lengths first, each taking at most an
    even share of what is left, so a length that fits is kept and the rest split evenly."""
    out: dict[str, int] = {}
    order = sorted(wanted, key=lambda n: (wanted[n] is None, wanted[n] or 0))
    for i, name in enumerate(order):
        even = chars // (len(order) - i)
        want = wanted[name]
        out[name] = even if want is None else min(want, even)
        chars -= out[name]
    return out


def key_text_lengths(key_cols: list[ColumnInfo]) -> dict[str, int]:
    """The characters each text column of a key gets in a table created in MySQL/MariaDB: they share the 3072
    bytes the key's other columns leave (see the module docstring); 0 for every one when the key cannot fit."""
    used = sum(_key_bytes(_ddl(c, is_key=True)[0]) for c in key_cols if _text_key(c) is None)
    wanted = {c.name: t[1] for c in key_cols if (t := _text_key(c)) is not None}
    lengths = _share(wanted, max(_KEY_BYTES - used, 0) // _CHAR_BYTES)
    return dict.fromkeys(lengths, 0) if used > _KEY_BYTES or 0 in lengths.values() else lengths


def _key_types(key_cols: list[ColumnInfo], table: TableName) -> dict[str, tuple[str, str | None]]:
    """(MySQL type, tag) of each key column, text ones sized by :func:`key_text_lengths`; a ConfigError when
    the key cannot fit."""
    types = {c.name: _ddl(c, is_key=True) for c in key_cols if _text_key(c) is None}
    used = sum(_key_bytes(typ) for typ, _ in types.values())
    texts = {c.name: t for c in key_cols if (t := _text_key(c)) is not None}
    lengths = key_text_lengths(key_cols)
    if used > _KEY_BYTES or 0 in lengths.values():
        names = ", ".join(repr(c.name) for c in key_cols)
        left = f", leaving no character for each of its {len(texts)} text columns" if texts else ""
        msg = (f"the key ({names}) of {table} cannot be a MySQL/MariaDB primary key: InnoDB indexes at most "
               f"{_KEY_BYTES} bytes of a key (4 per utf8mb4 character) and its other columns take {used}{left}. "
               "Create the target table yourself (db_migrate writes into an existing one), or pass key= naming "
               "fewer columns")
        raise ConfigError(msg)
    for c in key_cols:  # char(n) in a VARCHAR is tagged: CHAR would drop trailing spaces
        if c.name in texts:
            word = texts[c.name][0]
            types[c.name] = f"{word}({lengths[c.name]})", "char" if c.kind == "char" and word == "VARCHAR" else None
    return types


def mysql_type(col: ColumnInfo, *, is_key: bool = False) -> str:
    """The MySQL DDL type of a column (with its ``COMMENT 'batchflows:...'`` tag where one is needed); a key
    column as the only column of its key."""
    typ, tag = _key_types([col], TableName(name=col.name))[col.name] if is_key else _ddl(col, is_key=False)
    return f"{typ} COMMENT '{TAG}{tag}'" if tag else typ


def create_table_mysql(columns: list[ColumnInfo], key: list[str], table: TableName, *, mariadb: bool = True) -> str:
    """``CREATE TABLE`` for MySQL/MariaDB: InnoDB, utf8mb4 with a binary no-pad collation, key = primary key
    (its text columns sized to fit InnoDB's key limit; a ConfigError when the key cannot fit)."""
    def q(name: str) -> str:
        return quote(name, "mysql")

    key_types = _key_types([c for c in columns if c.name in key], table)
    lines = []
    for c in columns:
        typ, tag = key_types[c.name] if c.name in key_types else _ddl(c, is_key=False)
        null = "" if c.nullable and c.name not in key else " NOT NULL"
        lines.append(f"{q(c.name)} {typ}{null}" + (f" COMMENT '{TAG}{tag}'" if tag else ""))
    if key:  # a table without one gets none
        lines.append(f"PRIMARY KEY ({', '.join(q(k) for k in key)})")
    collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    return (f"CREATE TABLE {table.sql('mysql')} (\n  " + ",\n  ".join(lines)
            + f"\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}")


# ---------------------------------------------------------------- value codecs


def _float32(v: Any) -> float:
    return struct.unpack("f", struct.pack("f", float(v)))[0]


def _zero_date(v: Any, kind: str) -> ValueError:
    if isinstance(v, str) and (v.startswith("0000") or "-00" in v[4:10]):
        return ValueError(f"{v!r} is a MySQL zero date, which no other database can store as a {kind}; set it to "
                          "NULL or a real date in the source, or select with query= and NULLIF(column, "
                          "'0000-00-00')")
    return ValueError(f"{v!r} is not a valid {kind}")


def _dec_timestamp(v: Any) -> Any:
    if type(v) is dt.datetime:
        return v
    raise _zero_date(v, "timestamp")


def _dec_timestamptz(v: Any) -> Any:
    if type(v) is dt.datetime:
        return v.replace(tzinfo=_UTC) if v.tzinfo is None else v.astimezone(_UTC)
    raise _zero_date(v, "timestamp")


def _dec_date(v: Any) -> Any:
    if type(v) is dt.date:
        return v
    if type(v) is dt.datetime:
        return coerce(ColumnInfo(name="d", kind="date"), v)
    raise _zero_date(v, "date")


def _dec_time(v: Any) -> Any:
    if isinstance(v, dt.time):
        return v
    if isinstance(v, dt.timedelta):
        if v == dt.timedelta(days=1):
            return END_OF_DAY  # 24:00:00, a day's end (as PostgreSQL's time holds it)
        if v < dt.timedelta(0) or v >= dt.timedelta(days=1):
            raise ValueError(f"MySQL TIME {v} is outside 00:00:00-23:59:59.999999 (a duration, not a time of day)")
        return (dt.datetime.min + v).time()
    return dt.time.fromisoformat(str(v))


def _dec_json(v: Any) -> Any:
    # the document's text as MySQL returns it: MySQL's JSON type and MariaDB's JSON (LONGTEXT with a
    # json_valid CHECK, which is how reflection knows it is JSON) hold valid JSON only, so no parse here
    return JsonText(v) if type(v) is str else _to_json(v)


def mysql_decoder(col: ColumnInfo) -> Callable[[Any], Any] | None:
    """What PyMySQL returns for this column -> canonical Python value (None = already canonical)."""
    k = col.kind
    if k == "array":
        return sqlite_decoder(col)
    if k == "boolean":
        return _to_bool
    if k == "real":
        return _float32
    if k == "numeric":
        return lambda v: v if type(v) is Decimal else Decimal(v if isinstance(v, int) else str(v).strip())
    if k == "timestamp":
        return _dec_timestamp
    if k == "timestamptz":
        return _dec_timestamptz
    if k == "date":
        return _dec_date
    if k == "time":
        return _dec_time
    if k in ("json", "jsonb"):
        return _dec_json
    if k == "uuid":
        return lambda v: uuid.UUID(v if isinstance(v, str) else v.decode())
    if k in ("text", "varchar", "char"):
        return lambda v: v if type(v) is str else (v.decode() if isinstance(v, bytes) else str(v))
    if k in ("smallint", "integer", "bigint", "double"):
        return None
    return None


def _enc_timestamptz(v: Any) -> Any:
    return v.astimezone(_UTC).replace(tzinfo=None) if v.tzinfo is not None else v


def mysql_encoder(col: ColumnInfo) -> Callable[[Any], Any] | None:
    """Canonical value -> the parameter PyMySQL sends for this column (None = identity)."""
    k = col.kind
    if k == "array":
        return sqlite_encoder(col)
    if k == "timestamptz":
        return lambda v: None if v is None else _enc_timestamptz(v)
    if k in ("json", "jsonb"):
        return lambda v: None if v is None else json_text(v)
    if k == "uuid":
        return lambda v: None if v is None else str(v)
    if k == "numeric" and col.precision is None:
        return lambda v: None if v is None else str(v)
    return None


__all__ = [
    "TAG",
    "column_from_field",
    "column_from_mysql",
    "create_table_mysql",
    "key_text_lengths",
    "mysql_decoder",
    "mysql_encoder",
    "mysql_type",
]
