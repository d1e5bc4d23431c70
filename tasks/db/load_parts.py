"""Load part files (Parquet/JSONL written by file_transform or api flows) into a database table.

One part = one transaction (create-if-missing, then upsert on ``key``), so a retried or resumed part
never duplicates rows and a killed load leaves whole parts only. Used by the etl-demo flow's load
stage; identifiers are validated and quoted, values always bound as parameters. PostgreSQL, SQLite
and MySQL/MariaDB (``ON DUPLICATE KEY UPDATE``; the table is created outside the part's transaction,
since MySQL commits DDL implicitly).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task

from tasks.core import (
    ChunkedRun,
    ChunkRef,
    ChunkReport,
    ConfigError,
    RunSummary,
    SourceError,
    recorded_safely,
    value_hash,
)
from tasks.db.conn import Db, TableName, connect, parse_key, parse_table_name
from tasks.db.mysql import is_mariadb
from tasks.db.mysql_types import create_table_mysql
from tasks.db.typemap import ColumnInfo

if TYPE_CHECKING:
    import polars as pl

_SQL_TYPES: dict[str, dict[str, str]] = {
    "postgresql": {"int": "BIGINT", "float": "DOUBLE PRECISION", "bool": "BOOLEAN", "date": "DATE",
                   "datetime": "TIMESTAMPTZ", "decimal": "NUMERIC", "text": "TEXT"},
    "sqlite": {"int": "INTEGER", "float": "REAL", "bool": "INTEGER", "date": "TEXT", "datetime": "TEXT",
               "decimal": "TEXT", "text": "TEXT"},
}


def _kind(dtype: pl.DataType) -> str:
    import polars as pl

    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    return "text"


def read_part(path: str | Path) -> pl.DataFrame:
    """A part file as a DataFrame (parts are bounded in size by design)."""
    import polars as pl  # imported here: a db_migrate run never needs it

    p = Path(path)
    if not p.is_file():
        msg = f"part file {str(p)!r} does not exist; was the producing stage run with the same run_key?"
        raise SourceError(msg)
    if p.suffix == ".parquet":
        return pl.read_parquet(p)
    if p.suffix == ".jsonl":
        return pl.read_ndjson(p)
    msg = f"cannot load {str(p)!r}: only .parquet and .jsonl parts"
    raise ConfigError(msg)


_MYSQL_KINDS = {"int": "bigint", "float": "double", "bool": "boolean", "date": "date", "datetime": "timestamptz",
                "decimal": "numeric", "text": "text"}


def _create_table(db: Db, table: str, frame: pl.DataFrame, key: list[str]) -> None:
    types = _SQL_TYPES[db.dialect]
    cols = ", ".join(f"{db.q(c)} {types[_kind(t)]}" for c, t in frame.schema.items())
    pk = ", ".join(db.q(k) for k in key)
    db.raw.cursor().execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({pk}))")


def _create_table_mysql(db: Db, table: TableName, frame: pl.DataFrame, key: list[str]) -> None:
    import polars as pl

    cols = []
    for name, dtype in frame.schema.items():
        decimal = isinstance(dtype, pl.Decimal)
        cols.append(ColumnInfo(name=name, kind=_MYSQL_KINDS[_kind(dtype)],  # type: ignore[arg-type]
                               precision=dtype.precision if decimal else None,  # type: ignore[union-attr]
                               scale=dtype.scale if decimal else None))  # type: ignore[union-attr]
    ddl = create_table_mysql(cols, key, table, mariadb=is_mariadb(db))
    cur = db.raw.cursor()
    cur.execute(ddl.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    db.raw.commit()


def _value(value: Any, dialect: str) -> Any:
    if dialect == "mysql" and isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)  # the session's time zone is UTC
    if dialect == "mysql" and isinstance(value, list | dict):
        return json.dumps(value, default=str)
    if dialect == "sqlite" and isinstance(value, Decimal):
        return str(value)  # exact digits as TEXT (json.dumps would store them inside quotes)
    if dialect == "sqlite" and not isinstance(value, int | float | str | bytes | type(None)):
        return value.isoformat() if hasattr(value, "isoformat") else json.dumps(value, default=str)
    return value


def load_part(path: str | Path, index: int, database_url: str, table: str, key: str | list[str]) -> ChunkReport:
    """Upsert one part file into ``table`` in one transaction; rows count as items of the report."""
    started = time.perf_counter()
    frame = read_part(path)
    keys = parse_key(key) or []
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        msg = f"key column(s) {missing} not in {str(path)!r}; its columns are {frame.columns}"
        raise ConfigError(msg)
    for column in frame.columns:
        parse_key(column)  # every column must be a plain SQL name
    with connect(database_url, "target", write=True) as db:
        tname = parse_table_name(table)
        name = tname.sql(db.dialect)
        sql = _upsert_sql(db, name, frame.columns, keys)
        rows = [tuple(_value(v, db.dialect) for v in row) for row in frame.iter_rows()]
        if db.dialect == "mysql":
            _create_table_mysql(db, tname, frame, keys)
        cur = db.raw.cursor()
        cur.execute("BEGIN")
        try:
            if db.dialect != "mysql":
                _create_table(db, name, frame, keys)
            cur.executemany(sql, rows)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
    return ChunkReport(index=index, size=frame.height, succeeded=frame.height, output_path=str(path),
                       duration_s=round(time.perf_counter() - started, 6), extra={"rows_loaded": frame.height})


def _upsert_sql(db: Db, name: str, cols: list[str], keys: list[str]) -> str:
    """``INSERT .. ON CONFLICT`` (PostgreSQL, SQLite) or ``.. ON DUPLICATE KEY UPDATE`` (MySQL) on ``keys``."""
    insert = f"INSERT INTO {name} ({', '.join(db.q(c) for c in cols)}) VALUES ({', '.join([db.ph] * len(cols))})"
    rest = [c for c in cols if c not in keys]
    if db.dialect == "mysql":
        sets = ", ".join(f"{db.q(c)} = VALUES({db.q(c)})" for c in rest or keys[:1])
        return f"{insert} ON DUPLICATE KEY UPDATE {sets}"
    updates = ", ".join(f"{db.q(c)} = excluded.{db.q(c)}" for c in rest)
    target = ", ".join(db.q(k) for k in keys)
    return f"{insert} ON CONFLICT ({target}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")


def count_rows(database_url: str, table: str) -> int:
    with connect(database_url, "target") as db:
        return int(db.all(f"SELECT count(*) FROM {parse_table_name(table).sql(db.dialect)}")[0][0])


@task(name="load-part", task_run_name="load-{index}", persist_result=True)
def load_part_task(path: str, index: int, database_url: str, table: str, key: str, ref: ChunkRef) -> ChunkReport:
    """One part file -> one transaction (upsert), cached per run key for resume."""
    with recorded_safely(f"part {index}"):
        report = load_part(path, index, database_url, table, key)
        report.content_hash = ref.content or ""
        return report


def load_parts(parts_dir: Path, database_url: str, table: str, *, flow: str, run_key: str) -> RunSummary:
    """Load every ``part-*.parquet`` of ``parts_dir`` into ``table``, one chunk task (and transaction) per part."""
    parts = sorted(parts_dir.glob("part-*.parquet"))
    with ChunkedRun(flow, run_key=run_key, total=None, unit="rows", identity=(table,)) as run:
        summary = run.execute(
            list(enumerate(parts)),
            lambda pair: {"path": str(pair[1]), "index": pair[0], "database_url": database_url, "table": table,
                          "key": "id", "ref": run.ref(pair[0], content=value_hash(
                              [str(pair[1]), pair[1].stat().st_mtime_ns, pair[1].stat().st_size]))},
            run.configure(load_part_task, chunk_retries=1),
            chunk=lambda pair: (pair[0], 1, [str(pair[1])]),
            max_concurrency=1,  # one writer at a time: SQLite allows no more, and the parts are small
        )
        return run.finish(summary, output_path=table)


__all__ = ["count_rows", "load_part", "load_part_task", "load_parts", "read_part"]
