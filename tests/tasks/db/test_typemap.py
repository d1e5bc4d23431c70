"""The SQLite side of the type map (tasks/db/typemap.py): declared names whose affinity keeps values as written.

Each declared type is checked against SQLite itself (a real file: ``typeof()`` of what was stored), not only
against our own reading of its affinity rules.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from tasks.core import ConfigError
from tasks.db.schema import SourceSchema, create_table_sql
from tasks.db.typemap import (
    ColumnInfo,
    column_from_sqlite,
    sqlite_affinity,
    sqlite_int_numeric,
    sqlite_key_problem,
    sqlite_type,
)

NUM20 = ColumnInfo(name="id", kind="numeric", precision=20, scale=0)


@pytest.mark.parametrize(("declared", "affinity"), [
    ("INTEGER", "INTEGER"), ("DECIMAL_INT(20,0)", "INTEGER"), ("DECIMAL_TEXT(12,2)", "TEXT"), ("VARCHAR(4)", "TEXT"),
    ("FLOAT8_BLOB", "BLOB"), ("FLOAT4_BLOB", "BLOB"), ("", "BLOB"), ("DOUBLE PRECISION", "REAL"), ("FLOAT4", "REAL"),
    ("NUMERIC(12,2)", "NUMERIC"), ("DECIMAL", "NUMERIC"), ("BOOLEAN", "NUMERIC"), ("POINT", "INTEGER"),
])
def test_affinity_follows_sqlite(tmp_path: Path, declared: str, affinity: str) -> None:
    assert sqlite_affinity(declared) == affinity
    conn = sqlite3.connect(tmp_path / "a.sqlite")  # what SQLite makes of the text '10' says the same
    conn.execute(f"CREATE TABLE t (c {declared})")
    conn.execute("INSERT INTO t VALUES ('10'), ('1.5')")
    stored = [r[0] for r in conn.execute("SELECT typeof(c) FROM t")]
    conn.close()
    expected = {"INTEGER": ["integer", "real"], "NUMERIC": ["integer", "real"], "REAL": ["real", "real"],
                "TEXT": ["text", "text"], "BLOB": ["text", "text"]}[affinity]
    assert stored == expected


def test_key_and_float_columns_get_names_sqlite_keeps_them_by(tmp_path: Path) -> None:
    cols = [NUM20, ColumnInfo(name="amount", kind="numeric", precision=12, scale=2),
            ColumnInfo(name="d", kind="double"), ColumnInfo(name="r", kind="real")]
    ddl = create_table_sql(SourceSchema(dialect="postgresql", columns=cols, key=["id"]), "sqlite", "t")
    assert '"id" DECIMAL_INT(20,0) NOT NULL' in ddl and '"amount" DECIMAL_TEXT(12,2)' in ddl
    assert '"d" FLOAT8_BLOB' in ddl and '"r" FLOAT4_BLOB' in ddl
    conn = sqlite3.connect(tmp_path / "t.sqlite")
    conn.execute(ddl)
    conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (10, "12.50", -0.0, -0.0))
    row = conn.execute("SELECT id, typeof(id), amount, d, r FROM t").fetchone()
    declared = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(t)")}
    conn.close()
    assert row[:3] == (10, "integer", "12.50") and math.copysign(1, row[3]) == math.copysign(1, row[4]) == -1
    again = [column_from_sqlite(n, declared[n], notnull=False) for n in ("id", "amount", "d", "r")]
    assert [(c.kind, c.precision, c.scale) for c in again] == [
        ("numeric", 20, 0), ("numeric", 12, 2), ("double", None, None), ("real", None, None)]
    assert sqlite_int_numeric(again[0]) and not sqlite_int_numeric(again[1])


@pytest.mark.parametrize(("col", "stored", "problem"), [
    (NUM20, False, None),
    (ColumnInfo(name="n", kind="numeric"), False, None),  # unconstrained: whole values only, checked per row
    (ColumnInfo(name="p", kind="numeric", precision=10, scale=2), False, "numeric(10,2)"),
    (NUM20.model_copy(update={"declared": "DECIMAL_TEXT(20,0)"}), True, "TEXT affinity"),
    (NUM20.model_copy(update={"declared": "DECIMAL_INT(20,0)"}), True, None),
    (ColumnInfo(name="id", kind="numeric", declared="NUMERIC"), True, None),
    (ColumnInfo(name="id", kind="text", declared="TEXT"), True, None),
])
def test_numeric_keys_sqlite_cannot_order(col: ColumnInfo, stored: bool, problem: str | None) -> None:
    why = sqlite_key_problem(col, stored=stored)
    assert (why is None) == (problem is None) and (problem is None or problem in (why or ""))


def test_a_decimal_key_is_refused_before_any_sqlite_table_is_made() -> None:
    schema = SourceSchema(dialect="postgresql", columns=[ColumnInfo(name="p", kind="numeric", precision=10, scale=2)],
                          key=["p"])
    with pytest.raises(ConfigError, match=r"key column 'p'.*numeric\(10,2\)"):
        create_table_sql(schema, "sqlite", "t")
    assert "numeric(10,2)" in create_table_sql(schema, "postgresql", "t")  # other databases order it right
    assert sqlite_type(schema.columns[0]) == "DECIMAL_TEXT(10,2)"  # not a key: its text, exactly
