"""Planning a migration: the dry-run plan and the target table (create it, or check an existing one).

The db package's building blocks (PostgreSQL <-> SQLite) that the db_migrate flow wraps, all public
through ``tasks.db``:

The public functions take URLs (str or SecretStr), names and small JSON-able ranges, and open their own
connections, so each can be a Prefect task with a meaningful cache key:

1. :func:`plan_migration` - the dry run: reflected columns, key, ranges, DDL; writes nothing.
2. :func:`create_target` - create the target table from the source schema, or check an existing one.
3. :func:`plan_ranges` - keyset ranges of about ``chunk_rows`` rows (no OFFSET).
4. :func:`copy_range` - one range in one target transaction (append | upsert | replace).
5. :func:`verify_range` - counts and canonical checksums of one range on both sides.

Passwords never appear in messages: URLs are parsed with their passwords registered for redaction, and
connection failures name host and port only. Modules: ``conn`` (names, URLs, connections), ``session``
(connections reused within a run), ``typemap``
(kinds, type maps), ``values`` (codecs, canonical text), ``schema`` (reflection, ranges, DDL), ``copier``
(read/write), ``ledger`` (exactly-once commits), ``verify`` (checksums), ``plan`` (this module),
``migrate`` (the flow's range tasks and phases), ``load_parts`` (part files into a table), ``relay`` (libpq
COPY relay), ``unchanged`` (upsert ranges the target holds already) and ``deferred_key`` (an append's
primary key built after the load), among others.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from tasks.core import ConfigError
from tasks.db.conn import (
    Endpoint,
    TableName,
    UrlLike,
    creating,
    missing_schema,
    parse_db_url,
    parse_table_name,
    redacted_url,
)
from tasks.db.copier import MODES, Mode
from tasks.db.deferred_key import add_key_sql, mark
from tasks.db.mysql_types import key_text_lengths
from tasks.db.physical import require_key, scan_label
from tasks.db.schema import (
    KeyRange,
    SourceSchema,
    compare_schemas,
    create_table_sql,
    plan_ranges,
    reflect,
    target_table_exists,
)
from tasks.db.session import connect
from tasks.db.typemap import ColumnInfo


class TargetResult(BaseModel):
    """Outcome of :func:`create_target`: whether the table was created, and the DDL used or needed."""

    table: str
    created: bool
    existed: bool
    ddl: str
    key_deferred: bool = False  # created without its primary key, built after the load (tasks.db.deferred_key)
    target_schema: SourceSchema | None = None  # the existing table's reflection (None when created or a dry run)


class MigrationPlan(BaseModel):
    """A dry run's answer: everything a migration would do, as data."""

    source: str
    target: str
    table: str | None
    query: str | None
    target_table: str
    key: list[str]
    columns: list[ColumnInfo]
    mode: Mode
    ranges: list[KeyRange]
    estimated_rows: int
    target_exists: bool
    ddl: str | None

    def describe(self) -> str:
        """A short human-readable plan for logs and dry-run artifacts."""
        key = self.key or f"none: append-only in {scan_label(self.ranges)}"
        lines = [
            f"source {self.source} {self.table or '(query)'} -> target {self.target} {self.target_table} "
            f"(mode {self.mode}, key {key})",
            f"{len(self.ranges)} ranges, about {self.estimated_rows} rows",
        ]
        lines += [f"  range {r.index}: {r.describe()} ~{r.estimated_rows} rows" for r in self.ranges[:20]]
        if len(self.ranges) > 20:
            lines.append(f"  ... {len(self.ranges) - 20} more")
        lines.append(f"DDL to run:\n{self.ddl}" if self.ddl else "target table exists; no DDL")
        return "\n".join(lines)


def _target_name(table: str | None, target_table: str | None) -> TableName:
    if target_table is None and table is None:
        msg = "a query source needs target_table (the table to write to)"
        raise ConfigError(msg)
    return parse_table_name(target_table or table or "")


def create_target(source_url: UrlLike, target_url: UrlLike, table: str | None = None, *,
                  target_table: str | None = None, query: str | None = None,
                  key: str | Sequence[str] | None = None, execute: bool = True,
                  source_schema: SourceSchema | None = None, defer_key: str | None = None) -> TargetResult:
    """Create the target table from the source's reflected schema (primary key = the range key; a source
    table without a primary key gives a target without one). ``defer_key`` (a run key; PostgreSQL
    targets): create it without the key and mark it for that run to build the key after the load
    (tasks.db.deferred_key).

    If the table exists it is checked instead: columns missing in the target or types that cannot hold
    the source's values raise ConfigError listing every differing column; its reflection is returned
    (``target_schema``). ``execute=False`` only computes the DDL (dry run). ``source_schema``: the source's
    reflection (same table, query and key) when the caller has it.
    """
    return _ensure_target(source_url, target_url, table, target_table=target_table, query=query, key=key,
                          execute=execute, schema=source_schema, defer_key=defer_key)


def _ensure_target(source_url: UrlLike, target_url: UrlLike, table: str | None, *, target_table: str | None,
                   query: str | None, key: str | Sequence[str] | None, execute: bool,
                   schema: SourceSchema | None = None, defer_key: str | None = None) -> TargetResult:
    schema = schema or reflect(source_url, table, query=query, key=key)
    tname = _target_name(table, target_table)
    ep = parse_db_url(target_url)
    if tname.schema_name is not None and not _schema_exists(ep, tname.schema_name):
        raise missing_schema(ep, tname)
    if target_table_exists(target_url, tname):
        existing = reflect(target_url, tname, key=schema.key, role="target")
        problems = compare_schemas(_as_created(schema, ep), existing)
        if problems:
            msg = (f"target table {tname} in {ep.describe()} exists but cannot take the source rows: "
                   + "; ".join(problems) + ". Alter or drop it, or choose another target_table.")
            raise ConfigError(msg)
        return TargetResult(table=str(tname), created=False, existed=True, ddl="", target_schema=existing)
    deferred = defer_key is not None and ep.dialect == "postgresql" and bool(schema.key)
    ddl = create = create_table_sql(schema, ep.dialect, tname, with_key=not deferred)
    if deferred:  # shown, not run: a quoted name may hold a line break
        ddl += f"\n-- after the load: {add_key_sql(tname, schema.key)}"
    if execute:
        with connect(ep, "target", write=True) as db, creating(db, tname):
            if db.dialect == "mysql" and "mariadb" not in str(db.raw.get_server_info()).lower():
                ddl = create = create.replace("utf8mb4_nopad_bin", "utf8mb4_0900_bin")  # MySQL 8's binary no-pad
            db.raw.execute(create)
            if deferred:
                mark(db, tname, schema.key, str(defer_key))
            if db.dialect == "postgresql":
                db.raw.commit()
    return TargetResult(table=str(tname), created=execute, existed=False, ddl=ddl, key_deferred=deferred)


def _as_created(schema: SourceSchema, ep: Endpoint) -> SourceSchema:
    """The source's columns as a created MySQL/MariaDB target holds them: a key's text columns shortened to share
    InnoDB's key limit (a longer value fails its row), so a table db_migrate created, or one with keys at least
    as long, is not refused as too short by the next run."""
    if ep.dialect != "mysql" or not schema.key:
        return schema
    lengths = {n: k for n, k in key_text_lengths(schema.key_columns()).items() if k > 0}
    cols = [c.model_copy(update={"length": lengths[c.name]})
            if c.name in lengths and (c.length is None or c.length > lengths[c.name]) else c for c in schema.columns]
    return schema.model_copy(update={"columns": cols})


def _schema_exists(ep: Endpoint, schema: str) -> bool:
    """Whether the target's schema (a MySQL/MariaDB database; SQLite's file is 'main') exists, so a missing one
    is named up front, in a dry run too."""
    if ep.dialect == "sqlite":
        return schema == "main"
    sql = ("SELECT 1 FROM pg_namespace WHERE nspname = %s" if ep.dialect == "postgresql"
           else "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s")
    with connect(ep, "target") as db:
        found = db.all(sql, [schema])
        db.raw.rollback()
    return bool(found)


def plan_migration(source_url: UrlLike, target_url: UrlLike, table: str | None = None, *,
                   target_table: str | None = None, query: str | None = None,
                   key: str | Sequence[str] | None = None, chunk_rows: int = 50_000, mode: Mode = "upsert",
                   create_target: bool = True) -> MigrationPlan:
    """The dry run: reflect, check the key, plan ranges and compute the DDL; writes nothing.

    Raises the same ConfigError/SourceError a real run would (bad names, unreachable databases,
    a non-unique key, an incompatible existing target, a missing target with ``create_target=False``).
    """
    if mode not in MODES:
        msg = f"mode {mode!r} is not one of {list(MODES)}"
        raise ConfigError(msg)
    schema = reflect(source_url, table, query=query, key=key)
    require_key(schema, mode)
    tname = _target_name(table, target_table)
    target = _ensure_target(source_url, target_url, table, target_table=str(tname), query=query,
                            key=schema.key, execute=False, schema=schema,
                            defer_key="dry run" if mode == "append" else None)
    if not target.existed and not create_target:
        msg = f"target table {tname} does not exist and create_target is off; create it or pass create_target=True"
        raise ConfigError(msg)
    ranges = plan_ranges(source_url, table, query=query, key=schema.key, chunk_rows=chunk_rows, schema=schema)
    return MigrationPlan(
        source=redacted_url(source_url), target=redacted_url(target_url), table=str(schema.table) if schema.table else None,
        query=schema.query, target_table=str(tname), key=schema.key, columns=schema.columns, mode=mode,
        ranges=ranges, estimated_rows=sum(r.estimated_rows for r in ranges), target_exists=target.existed,
        ddl=None if target.existed else target.ddl,
    )


__all__ = ["MigrationPlan", "TargetResult", "create_target", "plan_migration"]
