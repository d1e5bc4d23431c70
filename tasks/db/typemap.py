"""Column kinds shared by PostgreSQL and SQLite: type maps, DDL types, compatibility.

Why a kind layer: a migration goes PostgreSQL <-> SQLite in either direction, so each column is described
once by a dialect-neutral kind (plus precision, scale, length, array element); the value codecs in
``tasks.db.values`` and the DDL of both dialects are derived from it.

SQLite stores what PostgreSQL types carry in declared type names that keep their affinity harmless:
``numeric(p,s)`` becomes ``DECIMAL_TEXT(p,s)`` (TEXT affinity: no silent rounding to a double), except a
key column of whole numbers: ``DECIMAL_INT(p,0)`` (INTEGER affinity, so keys compare as numbers, not as
text where '10' < '9'; a value past 64 bits is refused, see ``values.sqlite_encoder``); floats are
``FLOAT8_BLOB``/``FLOAT4_BLOB`` (BLOB affinity: REAL affinity stores a whole float as an integer and loses
the sign of -0.0); timestamps are ISO text in UTC, JSON is ``JSON_TEXT``/``JSONB_TEXT`` (TEXT affinity: a
declared ``JSON`` has NUMERIC affinity, which turns a document ``1.10`` into the double 1.1), arrays are JSON
text (``INTEGER_ARRAY``...), uuids are text.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal[
    "smallint", "integer", "bigint", "numeric", "real", "double", "text", "varchar", "char", "boolean",
    "date", "time", "timestamp", "timestamptz", "json", "jsonb", "bytes", "uuid", "array",
]
KINDS: frozenset[str] = frozenset(Kind.__args__)  # type: ignore[attr-defined]

_PG_KINDS: dict[str, str] = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "numeric": "numeric", "float4": "real",
    "float8": "double", "text": "text", "varchar": "varchar", "bpchar": "char", "name": "text",
    "bool": "boolean", "date": "date", "time": "time", "timestamp": "timestamp",
    "timestamptz": "timestamptz", "json": "json", "jsonb": "jsonb", "bytea": "bytes", "uuid": "uuid",
}
_PG_DDL: dict[str, str] = {
    "smallint": "smallint", "integer": "integer", "bigint": "bigint", "real": "real",
    "double": "double precision", "text": "text", "boolean": "boolean", "date": "date", "time": "time",
    "timestamp": "timestamp", "timestamptz": "timestamptz", "json": "json", "jsonb": "jsonb",
    "bytes": "bytea", "uuid": "uuid",
}
_SQLITE_DDL: dict[str, str] = {
    "smallint": "SMALLINT", "integer": "INTEGER", "bigint": "INTEGER", "real": "FLOAT4_BLOB",
    "double": "FLOAT8_BLOB", "text": "TEXT", "boolean": "BOOLEAN", "date": "DATE", "time": "TIME",
    "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ", "json": "JSON_TEXT", "jsonb": "JSONB_TEXT",
    "bytes": "BLOB", "uuid": "UUID",
}
_FAMILY: dict[str, str] = {
    "smallint": "int", "integer": "int", "bigint": "int", "numeric": "numeric", "real": "float",
    "double": "float", "text": "text", "varchar": "text", "char": "text", "json": "json", "jsonb": "json",
}
_INT_WIDTH = {"smallint": 2, "integer": 4, "bigint": 8}


class ColumnInfo(BaseModel):
    """One column as both dialects understand it. ``pg_oid`` is set for PostgreSQL columns only."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    nullable: bool = True
    precision: int | None = None
    scale: int | None = None
    length: int | None = None
    element: Kind | None = None
    declared: str = ""
    pg_oid: int | None = None
    cast_text: bool = False
    collate_c: bool = False

    def type_label(self) -> str:
        if self.kind == "array":
            return f"{self.element}[]"
        if self.kind == "numeric" and self.precision is not None:
            return f"numeric({self.precision},{self.scale or 0})"
        if self.kind in ("varchar", "char") and self.length is not None:
            return f"{self.kind}({self.length})"
        return self.kind


# ---------------------------------------------------------------- type maps and DDL


def kind_from_pg(typname: str, *, is_array: bool) -> tuple[str, str | None, bool]:
    """Map a PostgreSQL type name to (kind, element kind, cast_to_text). Unknown types travel as text."""
    base = _PG_KINDS.get(typname)
    if is_array:
        return ("array", base, False) if base and base not in ("json", "jsonb") else ("text", None, True)
    return (base, None, False) if base else ("text", None, True)


_DECL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def column_from_sqlite(name: str, declared: str, *, notnull: bool) -> ColumnInfo:
    """Map a SQLite declared type (``PRAGMA table_info``) to a column, following SQLite's affinity rules
    for names batchflows did not write itself."""
    m = _DECL.match(declared or "")
    word = (m.group(1) if m else declared).upper().strip()
    p = int(m.group(2)) if m and m.group(2) else None
    s = int(m.group(3)) if m and m.group(3) else None
    common: dict[str, Any] = {"name": name, "nullable": not notnull, "declared": declared}
    if word.endswith("_ARRAY") and word[:-6].lower() in KINDS:
        return ColumnInfo(kind="array", element=word[:-6].lower(), **common)
    exact = {
        "DECIMAL_TEXT": "numeric", "DECIMAL_INT": "numeric", "NUMERIC": "numeric", "DECIMAL": "numeric",
        "BOOLEAN": "boolean", "BOOL": "boolean", "TIMESTAMPTZ": "timestamptz",
        "TIMESTAMP WITH TIME ZONE": "timestamptz", "TIMESTAMP": "timestamp", "DATETIME": "timestamp",
        "DATE": "date", "TIME": "time", "JSON": "json", "JSONB": "jsonb", "JSON_TEXT": "json",
        "JSONB_TEXT": "jsonb", "UUID": "uuid", "BLOB": "bytes",
        "BYTEA": "bytes", "SMALLINT": "smallint", "INT2": "smallint", "TINYINT": "smallint", "INT4": "integer",
        "MEDIUMINT": "integer", "FLOAT4": "real", "FLOAT4_BLOB": "real", "FLOAT8_BLOB": "double", "CHAR": "char",
        "CHARACTER": "char",
    }
    kind = exact.get(word)
    if kind is None:
        if "INT" in word:
            kind = "bigint"
        elif "CHAR" in word or "CLOB" in word or "TEXT" in word:
            kind = "varchar" if "VARCHAR" in word and p is not None else "text"
        elif any(w in word for w in ("REAL", "FLOA", "DOUB")):
            kind = "double"
        else:
            kind = "text" if word == "" else "numeric"
    if kind == "numeric":
        return ColumnInfo(kind="numeric", precision=p, scale=s if p is not None else None, **common)
    if kind in ("varchar", "char"):
        return ColumnInfo(kind=kind, length=p, **common)
    return ColumnInfo(kind=kind, **common)


def pg_type(col: ColumnInfo) -> str:
    """The PostgreSQL DDL type of a column."""
    if col.kind == "array":
        inner = ColumnInfo(name=col.name, kind=col.element or "text")
        return pg_type(inner) + "[]"
    if col.kind == "numeric":
        return f"numeric({col.precision},{col.scale or 0})" if col.precision else "numeric"
    if col.kind in ("varchar", "char"):
        base = "varchar" if col.kind == "varchar" else "char"
        return f"{base}({col.length})" if col.length else ("text" if base == "varchar" else "char")
    return _PG_DDL[col.kind]


def sqlite_type(col: ColumnInfo, *, key: bool = False) -> str:
    """The SQLite DDL type of a column (see the module docstring for why these names). ``key``: the column
    is part of the range key (a numeric one must then hold whole numbers: see :func:`sqlite_key_problem`)."""
    if col.kind == "array":
        return f"{(col.element or 'text').upper()}_ARRAY"
    if col.kind == "numeric":
        base = "DECIMAL_INT" if key else "DECIMAL_TEXT"
        return f"{base}({col.precision},{col.scale or 0})" if col.precision else base
    if col.kind in ("varchar", "char"):
        base = "VARCHAR" if col.kind == "varchar" else "CHAR"
        return f"{base}({col.length})" if col.length else "TEXT"
    return _SQLITE_DDL[col.kind]


def sqlite_affinity(declared: str) -> str:
    """SQLite's affinity of a declared column type, by its rules (sqlite.org/datatype3.html, 3.1)."""
    word = declared.upper()
    if "INT" in word:
        return "INTEGER"
    if any(w in word for w in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in word or not word.strip():
        return "BLOB"
    if any(w in word for w in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def sqlite_int_numeric(col: ColumnInfo) -> bool:
    """A SQLite numeric column of INTEGER affinity (``DECIMAL_INT``): its values are stored as 64-bit integers."""
    return (col.kind == "numeric" and not col.declared.startswith("mysql:")
            and sqlite_affinity(col.declared) == "INTEGER")


def sqlite_key_problem(col: ColumnInfo, *, stored: bool) -> str | None:
    """Why a numeric key column cannot be ranged in SQLite, or None. ``stored``: the column is a SQLite
    table's (its declared type decides how values compare), else one SQLite is to create
    (:func:`sqlite_type` with ``key=True``). SQLite has no exact decimal type that orders by value: text
    orders '10' before '9', a REAL rounds past 15 digits."""
    if col.kind != "numeric":
        return None
    if stored:
        if sqlite_affinity(col.declared) != "TEXT":
            return None
        return (f"it is declared {col.declared} (TEXT affinity), so SQLite compares its values as text ('10' < '9') "
                "and key ranges would take the wrong rows")
    if col.scale:
        return (f"it is {col.type_label()}: SQLite keeps such decimals exactly only as text, which orders '10' "
                "before '9', so it cannot be a range key there (whole-number keys are stored as DECIMAL_INT)")
    return None


def incompatibility(src: ColumnInfo, tgt: ColumnInfo) -> str | None:
    """Why values of ``src`` cannot be stored in ``tgt`` without loss, or None when they can."""
    if src.kind == "array" and src.element in ("json", "jsonb") and tgt.cast_text and tgt.declared in ("_json", "_jsonb"):
        return None  # PostgreSQL's json[] is written through its text form (values.pg_array_literal)
    fam_s, fam_t = _FAMILY.get(src.kind, src.kind), _FAMILY.get(tgt.kind, tgt.kind)
    if fam_s != fam_t and not (fam_t == "text" and fam_s in ("uuid", "json")):
        return f"{src.type_label()} -> {tgt.type_label()}"
    if fam_s == "int" and src.kind in _INT_WIDTH and _INT_WIDTH[tgt.kind] < _INT_WIDTH[src.kind]:
        return f"{src.type_label()} -> {tgt.type_label()} (narrower)"
    if fam_s == "numeric" and tgt.precision is not None and (
        src.precision is None or (tgt.scale or 0) < (src.scale or 0)
        or tgt.precision - (tgt.scale or 0) < src.precision - (src.scale or 0)
    ):
        return f"{src.type_label()} -> {tgt.type_label()} (less precision)"
    if fam_s == "text" and tgt.length is not None and (src.length is None or src.length > tgt.length):
        return f"{src.type_label()} -> {tgt.type_label()} (shorter)"
    if src.kind == "array" and src.element != tgt.element:
        return f"{src.type_label()} -> {tgt.type_label()}"
    return None



__all__ = [
    "KINDS",
    "ColumnInfo",
    "Kind",
    "column_from_sqlite",
    "incompatibility",
    "kind_from_pg",
    "pg_type",
    "sqlite_affinity",
    "sqlite_int_numeric",
    "sqlite_key_problem",
    "sqlite_type",
]
