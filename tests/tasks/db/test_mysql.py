"""MySQL/MariaDB as source and target, against a real throwaway MariaDB server (tests/fixtures/mariadb.py).

Data: a MySQL table holding every type of the type map (unsigned ints up to 2**64-1, TINYINT(1), ENUM, SET,
JSON, BLOB, utf8mb4 beyond the BMP, DATETIME vs TIMESTAMP, TIME, YEAR, DECIMAL, FLOAT) under an awkward name
with reserved-word and unicode columns, plus the awkward PostgreSQL table of test_migration.py; both go
through every pair (MySQL <-> PostgreSQL, MySQL <-> SQLite, MySQL -> MySQL) and are verified per range.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from tasks.core.errors import ConfigError, ItemError, SourceError
from tasks.db import (
    LedgerEntry,
    copy_range,
    create_target,
    ensure_ledger,
    parse_db_url,
    parse_table_name,
    plan_ranges,
    reflect,
    verify_range,
    verify_ranges,
)
from tasks.db.schema import _walkable
from tasks.db.session import connect
from tests.fixtures.mariadb import MY_PASSWORD
from tests.tasks.db.test_migration import key_values, pg_exec, sqlite_exec

ODD = "Odd Items"
ODD_REF = '"Odd Items"'
MY_DDL = """
CREATE TABLE `Odd Items` (
  `Order ID` INT UNSIGNED NOT NULL PRIMARY KEY, ub BIGINT UNSIGNED,
  `select` INT,
  `名前` VARCHAR(50),
  ti TINYINT, su SMALLINT UNSIGNED, mi MEDIUMINT, iu INT UNSIGNED, bi BIGINT,
  flag TINYINT(1), amount DECIMAL(30,10), f FLOAT, d DOUBLE,
  ch CHAR(5), tx TEXT, e ENUM('small','large'), s SET('a','b','c'),
  j JSON, bl BLOB, vb VARBINARY(16),
  dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(6), dd DATE, yr YEAR
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
MY_COLS = ["Order ID", "ub", "select", "名前", "ti", "su", "mi", "iu", "bi", "flag", "amount", "f", "d", "ch", "tx", "e",
           "s", "j", "bl", "vb", "dtm", "ts", "tm", "dd", "yr"]
N_MY = 300


def my_row(i: int) -> tuple[Any, ...]:
    key = 2**32 - 1 - i * 1_003 if i % 3 == 0 else i * 7  # unsigned keys beyond integer
    null = i % 10 == 0
    amount = Decimal(f"{10**19 + i}.0123456789")
    return (
        key, None if null else 2**64 - 1 - i, None if null else -i, f"名前 {i} 🍕\t'\"\\",
        -128 if i % 2 else 127, 65535 - i, -8388608 + i, 4294967295 - i, -(2**63) + i,
        None if null else i % 2, None if null else (-amount if i % 2 else amount),
        None if null else 0.1 * i, None if null else i / 3,
        f"c{i % 100}", None if null else "text " * (i % 4) + "ü",
        None if null else ("small", "large")[i % 2], None if null else ("a,c" if i % 2 else ""),
        None if null else json.dumps({"i": i, "ü": [1, 2.5, None, True], "s": 'x"y'}),
        None if i % 7 == 0 else bytes([i % 256, 0, 255, 10, 92, 39]) * 3, bytes([i % 256]) * (i % 16),
        dt.datetime(1000, 1, 1) + dt.timedelta(days=1000 * i, microseconds=i),
        None if null else dt.datetime(2001, 1, 1, 0, 0, 0, 500) + dt.timedelta(hours=i),
        dt.timedelta(hours=i % 24, microseconds=i), dt.date(1999, 12, 31) + dt.timedelta(days=i), 1901 + i % 254,
    )


def my_exec(url: str, sql: str, params: Any = None, *, sql_mode: str | None = None) -> list[tuple[Any, ...]]:
    ep = parse_db_url(url)
    conn = pymysql.connect(host=ep.host, port=ep.port, user=ep.user, database=ep.database, charset="utf8mb4",
                           password=ep.password.get_secret_value() if ep.password else "", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            if sql_mode is not None:
                cur.execute(f"SET sql_mode = '{sql_mode}'")
            if isinstance(params, list):
                cur.executemany(sql, params)
                return []
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def create_my(url: str) -> None:
    my_exec(url, MY_DDL)
    marks = ", ".join(["%s"] * len(MY_COLS))
    my_exec(url, f"INSERT INTO `Odd Items` VALUES ({marks})", [my_row(i) for i in range(N_MY)])


@pytest.fixture
def my_items(mysql_url: str) -> str:
    create_my(mysql_url)
    return mysql_url


@pytest.fixture
def my_target(mariadb_server: Any) -> str:
    return str(mariadb_server.url(mariadb_server.create_database()))


def migrate(src: str, tgt: str, table: str, *, mode: str = "upsert", chunk_rows: int = 70, **kw: Any) -> list[Any]:
    create_target(src, tgt, table, key=kw.get("key"))
    return [copy_range(src, tgt, table, r, mode=mode, **kw)  # type: ignore[arg-type]
            for r in plan_ranges(src, table, key=kw.get("key"), chunk_rows=chunk_rows)]


def all_ok(src: str, tgt: str, table: str, chunk_rows: int = 70) -> None:
    checks = verify_ranges(src, tgt, table, chunk_rows=chunk_rows)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def _same_values(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    ch = MY_COLS.index("ch")
    return [tuple(int(v) if isinstance(v, Decimal) and v == v.to_integral_value() and i != MY_COLS.index("amount")
                  else v.rstrip(" ") if i == ch and isinstance(v, str) else v for i, v in enumerate(r)) for r in rows]


def _norm(rows: list[tuple[Any, ...]], json_at: int | None = None) -> list[tuple[Any, ...]]:
    if json_at is None:
        return rows
    return [(*r[:json_at], None if r[json_at] is None else json.loads(r[json_at]), *r[json_at + 1:]) for r in rows]


# ---------------------------------------------------------------- type map


def test_type_map_of_every_mysql_type(my_items: str) -> None:
    s = reflect(my_items, ODD_REF)
    kinds = {c.name: c.type_label() for c in s.columns}
    assert kinds == {
        "Order ID": "bigint", "ub": "numeric(20,0)", "select": "integer", "名前": "varchar(50)", "ti": "smallint", "su": "integer",
        "mi": "integer", "iu": "bigint", "bi": "bigint", "flag": "boolean", "amount": "numeric(30,10)",
        "f": "real", "d": "double", "ch": "char(5)", "tx": "text", "e": "varchar(5)", "s": "varchar(5)",
        "j": "json", "bl": "bytes", "vb": "bytes", "dtm": "timestamp", "ts": "timestamptz", "tm": "time",
        "dd": "date", "yr": "smallint",
    }
    assert s.primary_key == s.key == ["Order ID"]
    ranges = plan_ranges(my_items, ODD_REF, chunk_rows=70)
    assert sum(r.estimated_rows for r in ranges) == N_MY and ranges[-1].upper is None
    assert ranges[-2].upper is not None and ranges[-2].upper[0] > 2**31  # the unsigned keys sort last


def test_mysql_keys_are_walked_like_the_one_pass_query(my_items: str) -> None:
    """MariaDB: ranges cut by walking the primary key (``LIMIT 1 OFFSET n``; the window query took 1.5 s for
    1M keys, the walk 0.27 s, measured) are the window query's, for unsigned keys past 2^31 and a composite
    key compared as a row."""
    from tests.tasks.db.test_upsert_and_planning import _one_pass

    my_exec(my_items, "CREATE TABLE c (a INT, b VARCHAR(10) COLLATE utf8mb4_nopad_bin, v INT, PRIMARY KEY (a, b))")
    my_exec(my_items, "INSERT INTO c SELECT seq % 7, CONCAT('k', seq), seq FROM seq_1_to_500")
    for table, chunk in ((ODD_REF, 70), (ODD_REF, 1), (ODD_REF, 10_000), ("c", 17)):
        schema = reflect(my_items, table)
        with connect(my_items, "source") as db:
            assert _walkable(db, schema), table
        assert plan_ranges(my_items, table, chunk_rows=chunk) == _one_pass(my_items, table, chunk)


# ---------------------------------------------------------------- every pair, round trips


def test_mysql_types_round_trip_through_every_pair(my_items: str, pg_target: str, sqlite_url: str,
                                                   my_target: str, mariadb_server: Any) -> None:
    """MySQL -> PG -> MySQL, MySQL -> SQLite -> MySQL, MySQL -> MySQL: verified at each hop, values equal."""
    ordered = "SELECT * FROM `Odd Items` ORDER BY `Order ID`"
    source = _norm(my_exec(my_items, ordered), MY_COLS.index("j"))
    for mid in (pg_target, sqlite_url, my_target):
        back = mariadb_server.url(mariadb_server.create_database())
        migrate(my_items, mid, ODD_REF)
        all_ok(my_items, mid, ODD_REF)
        migrate(mid, back, ODD_REF)
        all_ok(mid, back, ODD_REF)
        all_ok(my_items, back, ODD_REF)
        got = _norm(my_exec(back, ordered), MY_COLS.index("j"))
        if mid == my_target:  # MySQL -> MySQL keeps the column types as declared
            assert got == source
        else:  # through another database: the same values (BIGINT UNSIGNED comes back as DECIMAL(20,0), CHAR(5)
            # as the padded VARCHAR(5) PostgreSQL's char(5) gives)
            assert _same_values(got) == _same_values(source), mid
    pg_exec(pg_target, 'SELECT 1 FROM "Odd Items" LIMIT 1')
    row = pg_exec(pg_target, 'SELECT "Order ID", ub, flag, e, s, ts, tm, yr FROM "Odd Items" WHERE "Order ID" = %s',
                  (2**32 - 1 - 3 * 1003,))[0]
    assert row == (2**32 - 1 - 3 * 1003, Decimal(2**64 - 4), True, "large", "a,c",
                   dt.datetime(2001, 1, 1, 3, 0, 0, 500, tzinfo=dt.UTC), dt.time(3, 0, 0, 3), 1904)
    assert sqlite_exec(sqlite_url, 'SELECT "名前", bl FROM "Odd Items" WHERE "Order ID" = ?', ("7",))[0] == (
        "名前 1 🍕\t'\"\\", bytes([1, 0, 255, 10, 92, 39]) * 3)


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_pg_to_mysql_to_pg_exact_in_every_mode(mode: str, pg_items: str, mysql_url: str, pg_target: str) -> None:
    """The awkward PostgreSQL table (jsonb, uuid, arrays, 30-digit numeric, timestamptz, bytea) survives MySQL,
    with the ledger committed in the range's transaction; a committed range is never written twice."""
    ledger = ensure_ledger(mysql_url, parse_table_name("items"))
    entries = {i: LedgerEntry(table=ledger, key=f"r{i}", run_key="k", target_table="items") for i in range(50)}
    create_target(pg_items, mysql_url, "items")
    ranges = plan_ranges(pg_items, "items", chunk_rows=400)
    res = [copy_range(pg_items, mysql_url, "items", r, mode=mode, ledger=entries[r.index]) for r in ranges]  # type: ignore[arg-type]
    assert sum(r.rows_written for r in res) == len(key_values())
    assert my_exec(mysql_url, "SELECT count(*) FROM _batchflows_ranges")[0][0] == len(ranges)
    again = [copy_range(pg_items, mysql_url, "items", r, mode=mode, ledger=entries[r.index]) for r in ranges]  # type: ignore[arg-type]
    assert all(r.recovered for r in again)
    assert my_exec(mysql_url, "SELECT count(*) FROM items")[0][0] == len(key_values())
    all_ok(pg_items, mysql_url, "items", 400)
    migrate(mysql_url, pg_target, "items", chunk_rows=400)
    all_ok(mysql_url, pg_target, "items", 400)
    q = "SELECT * FROM items ORDER BY id"
    assert pg_exec(pg_items, q) == pg_exec(pg_target, q)
    kinds = {c.name: c.type_label() for c in reflect(mysql_url, "items").columns}
    assert kinds["at"] == "timestamptz" and kinds["uid"] == "uuid" and kinds["tags"] == "text[]"
    assert kinds["doc"] == "jsonb" and kinds["big"] == "numeric(30,10)"


def test_sqlite_to_mysql_and_mysql_to_sqlite(sqlite_items: str, mysql_url: str, tmp_path: Any) -> None:
    migrate(sqlite_items, mysql_url, "items", chunk_rows=400)
    all_ok(sqlite_items, mysql_url, "items", 400)
    out = f"sqlite:///{tmp_path / 'back.sqlite3'}"
    migrate(mysql_url, out, "items", chunk_rows=400)
    all_ok(mysql_url, out, "items", 400)
    all_ok(sqlite_items, out, "items", 400)


# ---------------------------------------------------------------- modes, verify, errors


def test_upsert_rerun_no_duplicates_and_replace_deletes(my_items: str, pg_target: str, my_target: str) -> None:
    for tgt in (my_target, pg_target):
        migrate(my_items, tgt, ODD_REF)
        migrate(my_items, tgt, ODD_REF)  # a rerun of every range without a ledger: upsert overwrites
        n = (my_exec if tgt.startswith("mysql") else pg_exec)(tgt, 'SELECT count(*) FROM ' +
                                                              ("`Odd Items`" if tgt.startswith("mysql") else '"Odd Items"'))
        assert n[0][0] == N_MY
    my_exec(my_items, "UPDATE `Odd Items` SET `名前` = 'changed' WHERE `Order ID` = 7")
    my_exec(my_items, "DELETE FROM `Odd Items` WHERE `Order ID` = 14")
    first = plan_ranges(my_items, ODD_REF, chunk_rows=70)[0]
    copy_range(my_items, my_target, ODD_REF, first, mode="upsert")
    assert my_exec(my_target, "SELECT `名前` FROM `Odd Items` WHERE `Order ID` = 7")[0][0] == "changed"
    assert my_exec(my_target, "SELECT count(*) FROM `Odd Items` WHERE `Order ID` = 14")[0][0] == 1
    copy_range(my_items, my_target, ODD_REF, first, mode="replace")
    assert my_exec(my_target, "SELECT count(*) FROM `Odd Items` WHERE `Order ID` = 14")[0][0] == 0
    all_ok(my_items, my_target, ODD_REF)
    with pytest.raises(ItemError, match=r"range 0.*Duplicate entry"):
        copy_range(my_items, my_target, ODD_REF, first, mode="append")


def test_upsert_needs_a_unique_key_in_the_target(my_items: str, my_target: str) -> None:
    my_exec(my_target, "CREATE TABLE `Odd Items` (`Order ID` BIGINT UNSIGNED, `select` INT, `名前` VARCHAR(50))")
    rng = plan_ranges(my_items, ODD_REF, chunk_rows=70)[0]
    with pytest.raises(ConfigError, match="primary key or unique index"):
        copy_range(my_items, my_target, ODD_REF, rng, mode="upsert", transform=_three_columns)


def _three_columns(df: Any) -> Any:
    return df.select("Order ID", "select", "名前")


def test_verify_detects_a_changed_row(my_items: str, sqlite_url: str, my_target: str) -> None:
    for tgt in (sqlite_url, my_target):
        migrate(my_items, tgt, ODD_REF)
        all_ok(my_items, tgt, ODD_REF)
    my_exec(my_target, "UPDATE `Odd Items` SET amount = amount + 0.0000000001 WHERE `Order ID` = 28")
    sqlite_exec(sqlite_url, """UPDATE "Odd Items" SET tm = '10:00:00.000001' WHERE "Order ID" = 35""")
    bad = [c for c in verify_ranges(my_items, my_target, ODD_REF, chunk_rows=70) if not c.ok]
    assert [c.first_difference for c in bad] == [[28]]
    bad = [c for c in verify_ranges(my_items, sqlite_url, ODD_REF, chunk_rows=70) if not c.ok]
    assert [c.first_difference for c in bad] == [[35]]


def test_zero_date_is_refused_naming_row_and_column(mysql_url: str, pg_target: str) -> None:
    my_exec(mysql_url, "CREATE TABLE z (id INT PRIMARY KEY, d DATE, t DATETIME)")
    my_exec(mysql_url, "INSERT INTO z VALUES (1, '2024-01-01', '2024-01-01 00:00:00'), (2, '0000-00-00', NULL), "
                       "(3, '2024-01-02', '0000-00-00 00:00:00')", sql_mode="")
    create_target(mysql_url, pg_target, "z")
    rng = plan_ranges(mysql_url, "z")[0]
    with pytest.raises(ItemError) as err:
        copy_range(mysql_url, pg_target, "z", rng)
    msg = str(err.value)
    assert "{'id': 2}" in msg and "'d'" in msg and "zero date" in msg and "NULLIF" in msg
    assert pg_exec(pg_target, "SELECT count(*) FROM z")[0][0] == 0
    q = "SELECT id, NULLIF(d, '0000-00-00') AS d, NULLIF(t, '0000-00-00 00:00:00') AS t FROM z"
    res = copy_range(mysql_url, pg_target, None, plan_ranges(mysql_url, query=q, key="id")[0], query=q, key="id",
                     target_table="z")
    assert res.rows_written == 3
    assert pg_exec(pg_target, "SELECT id, d, t FROM z ORDER BY id")[1:] == [
        (2, None, None), (3, dt.date(2024, 1, 2), None)]


def test_value_too_long_names_row_and_column(pg_items: str, mysql_url: str) -> None:
    my_exec(mysql_url, "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(20))")
    rng = plan_ranges(pg_items, "items", chunk_rows=400)[0]
    with pytest.raises(ItemError, match=r"range 0: .*row with key \{'id': 2\}.*column 'name'"):
        copy_range(pg_items, mysql_url, "items", rng, transform=lambda df: df.select("id", "name"))
    assert my_exec(mysql_url, "SELECT count(*) FROM items")[0][0] == 0


def test_identifiers_always_quoted(mysql_url: str, sqlite_url: str, my_target: str) -> None:
    my_exec(mysql_url, "CREATE TABLE `from` (`Order` INT, `a``b c` TEXT, `Ünïcødé 名` VARCHAR(10), `group` DATE, "
                       "PRIMARY KEY (`Order`))")
    my_exec(mysql_url, "INSERT INTO `from` VALUES (%s, %s, %s, %s)",
            [(i, f"v{i}", "名" * (i % 10), dt.date(2020, 1, 1 + i % 28)) for i in range(100)])
    for tgt in (sqlite_url, my_target):
        migrate(mysql_url, tgt, "from", chunk_rows=30)
        all_ok(mysql_url, tgt, "from", 30)
    assert [c.name for c in reflect(my_target, "from").columns] == ["Order", "a`b c", "Ünïcødé 名", "group"]


def test_text_keys_order_bytewise_and_query_source(mysql_url: str, pg_target: str) -> None:
    my_exec(mysql_url, "CREATE TABLE k (code VARCHAR(20) COLLATE utf8mb4_bin PRIMARY KEY, n INT)")
    codes = ["Zürich", "alpha", "Beta", "béta", "日本", "a b", "A", "b", "_x", "Ω"]
    my_exec(mysql_url, "INSERT INTO k VALUES (%s, %s)", [(c, i) for i, c in enumerate(codes)])
    ranges = plan_ranges(mysql_url, "k", chunk_rows=3)
    assert sum(r.estimated_rows for r in ranges) == len(codes)
    migrate(mysql_url, pg_target, "k", chunk_rows=3)
    all_ok(mysql_url, pg_target, "k", 3)
    q = "SELECT code, n * 2 AS n2, CAST(n AS DECIMAL(10,2)) AS m, 'x%y' AS pct FROM k WHERE n >= 2"
    s = reflect(mysql_url, query=q, key="code")
    assert [c.kind for c in s.columns] == ["text", "bigint", "numeric", "text"]
    create_target(mysql_url, pg_target, query=q, key="code", target_table="k2")
    for rng in plan_ranges(mysql_url, query=q, key="code", chunk_rows=4):
        copy_range(mysql_url, pg_target, None, rng, query=q, key="code", target_table="k2", mode="append")
    assert pg_exec(pg_target, "SELECT count(*), sum(n2), min(pct) FROM k2")[0] == (8, sum(2 * i for i in range(2, 10)),
                                                                                "x%y")
    checks = verify_ranges(mysql_url, pg_target, query=q, key="code", target_table="k2", chunk_rows=4)
    assert all(c.ok for c in checks)


def test_urls_and_passwords_never_in_messages(mysql_url: str) -> None:
    for scheme in ("mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql"):
        ep = parse_db_url(mysql_url.replace("mysql+pymysql", scheme, 1))
        assert ep.dialect == "mysql" and ep.port and ep.database
    with pytest.raises(ConfigError, match="mysql\\+pymysql"):
        parse_db_url(mysql_url.replace("mysql+pymysql", "mysql+mysqldb", 1))
    with pytest.raises(ConfigError, match="needs a database"):
        parse_db_url(mysql_url.rsplit("/", 1)[0])
    wrong = mysql_url.replace(MY_PASSWORD, "Wr0ng-pa55-zzq")
    with pytest.raises(SourceError) as err:
        reflect(wrong, "items")
    assert "Access denied" in str(err.value) and "Wr0ng-pa55-zzq" not in str(err.value)
    assert MY_PASSWORD not in str(err.value)
    with pytest.raises(SourceError) as err2:
        reflect(mysql_url, "missing_table")
    assert "not found" in str(err2.value) and MY_PASSWORD not in str(err2.value)
    migrate_err = None
    try:
        verify_range(mysql_url, wrong, "t", plan_ranges.__defaults__ and None)  # type: ignore[arg-type]
    except Exception as exc:
        migrate_err = str(exc)
    assert migrate_err is not None and "Wr0ng-pa55-zzq" not in migrate_err and MY_PASSWORD not in migrate_err


def test_insert_path_when_load_data_is_refused(pg_items: str, mysql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without LOCAL INFILE (or a load with warnings) gets multi-row INSERTs: the same exact data."""
    import tasks.db.mysql as my

    loads: list[str] = []
    real = my._load_data

    def refused(db: Any, dest: str, *args: Any) -> None:
        loads.append(dest)
        raise my._LocalInfileRefused

    monkeypatch.setattr(my, "_load_data", refused)
    for mode in ("append", "upsert", "replace"):
        migrate(pg_items, mysql_url, "items", mode=mode, chunk_rows=400)
        all_ok(pg_items, mysql_url, "items", 400)
    assert loads and my._load_data is refused and real is not refused


def test_composite_key_and_schema_qualified_names(mysql_url: str, pg_target: str, my_target: str) -> None:
    my_exec(mysql_url, "CREATE TABLE `Two Part` (region VARCHAR(20) COLLATE utf8mb4_general_ci, n INT, "
                       "v DATETIME(6), PRIMARY KEY (region, n))")
    regions = ["Zürich", "alpha", "Beta", "日本", "a b", "Ω"]
    data = [(r, n, dt.datetime(2024, 1, 1) + dt.timedelta(minutes=n)) for r in regions for n in range(0, 40, 3)]
    my_exec(mysql_url, "INSERT INTO `Two Part` VALUES (%s, %s, %s)", data)
    db = mysql_url.rsplit("/", 1)[1]
    qualified = f'{db}."Two Part"'
    assert reflect(mysql_url, qualified).primary_key == ["region", "n"]
    for tgt in (pg_target, my_target):
        migrate(mysql_url, tgt, '"Two Part"', chunk_rows=11)
        all_ok(mysql_url, tgt, '"Two Part"', 11)
    ranges = plan_ranges(mysql_url, qualified, chunk_rows=11)
    assert sum(r.estimated_rows for r in ranges) == len(data)
    assert my_exec(my_target, "SELECT count(*) FROM `Two Part`")[0][0] == len(data)


def test_float_and_double_are_exact(mysql_url: str, pg_target: str, my_target: str) -> None:
    """FLOAT's text form has 6 digits (1.0000001 shows as 1): it is read as the double it holds, exactly."""
    pg_exec(pg_target, "CREATE TABLE fl (id int PRIMARY KEY, r real, d double precision)")
    vals = [(1, 1.0000001, 0.1 + 0.2), (2, 16777215.0, 1e-300), (3, 3.4028235e38, 2.0**-1074), (4, -1.17549435e-38,
                                                                                               1 / 3)]
    pg_exec(pg_target, "INSERT INTO fl VALUES (%s, %s, %s), (%s, %s, %s), (%s, %s, %s), (%s, %s, %s)",
            tuple(v for r in vals for v in r))
    migrate(pg_target, mysql_url, "fl")
    all_ok(pg_target, mysql_url, "fl")
    migrate(mysql_url, my_target, "fl")
    all_ok(pg_target, my_target, "fl")
    got = my_exec(my_target, "SELECT id, CAST(r AS DOUBLE), d FROM fl ORDER BY id")
    want = pg_exec(pg_target, "SELECT id, r::float8, d FROM fl ORDER BY id")
    assert [tuple(r) for r in got] == [tuple(r) for r in want]


def test_remaining_pg_kinds_through_mysql(pg_url: str, mysql_url: str, pg_target: str, sqlite_url: str) -> None:
    """The kinds the awkward table lacks (smallint, integer, real, time, char(n), varchar key, unconstrained
    numeric, json) go PG -> MySQL -> PG and MySQL -> SQLite unchanged."""
    pg_exec(pg_url, 'CREATE TABLE "Kinds" (code varchar(30) PRIMARY KEY, s smallint, i integer, r real, t time, '
                    'c char(5), n numeric, j json, tz timestamptz)')
    data = [(f"k{i:03d} ü", (-1) ** i * i, -(2**31) + i, i / 7, dt.time(i % 24, i % 60, 0, i * 7),
             None if i % 4 == 0 else f"c{i % 9}", Decimal(f"{i}.{'0' * (i % 40)}1") * (10 ** (i % 50)),
             json.dumps({"k": i, "l": [None, "ß"]}), dt.datetime(1900 + i, 1, 1, tzinfo=dt.UTC)) for i in range(120)]
    pg_exec(pg_url, 'INSERT INTO "Kinds" SELECT * FROM unnest(%s::text[], %s::int2[], %s::int4[], %s::float4[], '
                    '%s::time[], %s::bpchar(5)[], %s::numeric[], %s::json[], %s::timestamptz[])',
            tuple(list(col) for col in zip(*data, strict=True)))
    migrate(pg_url, mysql_url, '"Kinds"', chunk_rows=25)
    all_ok(pg_url, mysql_url, '"Kinds"', 25)
    kinds = {c.name: c.type_label() for c in reflect(mysql_url, '"Kinds"').columns}
    assert kinds == {"code": "varchar(30)", "s": "smallint", "i": "integer", "r": "real", "t": "time",
                     "c": "char(5)", "n": "numeric", "j": "json", "tz": "timestamptz"}
    migrate(mysql_url, pg_target, '"Kinds"', chunk_rows=25)
    all_ok(mysql_url, pg_target, '"Kinds"', 25)
    q = 'SELECT code, s, i, r, t, c, n, j::text, tz FROM "Kinds" ORDER BY code'
    assert pg_exec(pg_url, q) == pg_exec(pg_target, q)
    migrate(mysql_url, sqlite_url, '"Kinds"', chunk_rows=25)
    all_ok(mysql_url, sqlite_url, '"Kinds"', 25)
