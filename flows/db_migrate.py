"""db-migrate: copy a table (or a SELECT) between PostgreSQL and SQLite databases in keyset ranges.

One Prefect task per key range (``copy-range``), each range ONE target transaction with its ledger row,
so a killed or retried range leaves nothing half-written and a rerun with the same ``run_key`` writes
only the ranges that did not commit. After the load every range is verified (row counts and checksums on
both sides); a mismatch fails the run and names the ranges. Three ways to run it:

* Python: ``db_migrate(source_url, target_url, "orders", mode="upsert")`` -> MigrationSummary.
* Deployment / UI / CLI: the ``db_migrate_flow`` flow with JSON parameters; URLs may be given as the
  name of a Prefect Secret block (``source_secret=`` or ``source_url="secret:name"``), or come from
  ``BATCHFLOWS_DB_SOURCE_URL`` / ``BATCHFLOWS_DB_TARGET_URL``. A plain URL holding a password is refused
  there: Prefect stores flow parameters and shows them in its UI.
* Verify only (existing tables, nothing written): ``db_migrate(..., verify_only=True)`` or ``db_verify(...)``.

Passwords: URLs travel as SecretStr (Prefect stores SecretStr parameters masked), the password is
registered for redaction the moment a URL is parsed, and only redacted URLs reach logs, artifacts,
dead letters and the summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, ValidationInfo, field_validator, model_validator

from tasks.core import (
    SETTING,
    ChunkedRun,
    ChunkTaskGroup,
    ConfigError,
    DbSettings,
    FlowParams,
    FromSetting,
    MaxConcurrency,
    RunGroup,
    SelectQuery,
    batchflow,
    callable_name,
    handler_identity,
    is_handle,
    load_callable,
    python_entry,
)
from tasks.db import (
    PLAN_VERSION,
    CopyFormat,
    CopyJob,
    Deletes,
    MigrationSummary,
    Mode,
    TableName,
    copy_and_verify,
    ensure_ledger,
    fingerprint,
    incremental_job,
    index_watermark,
    key_builder,
    parse_db_url,
    parse_key,
    parse_table_name,
    plan_migration,
    plan_ranges,
    planned_ranges,
    redacted_url,
    reflect,
    require_key,
    resolve_url,
    resume_note,
    shared_connections,
    validate_identifier,
    verify_only,
    watermark_column,
)
from tasks.db import create_target as ensure_target
from tasks.db.dburl import refuse_plain_password


def _table_name(value: str | None) -> str | None:
    if value is not None:
        parse_table_name(value)  # a ConfigError saying what a table name may be
    return value


FLOW_NAME = "db-migrate"


def _refuse_plain_password(value: Any, name: str) -> Any:
    side = name.removesuffix("_url")
    return refuse_plain_password(value, name, f"pass {name}='secret:<block name>' (or {side}_secret='<block name>'), "
                                 f"set BATCHFLOWS_DB_{name.upper()} in the worker's environment, or call "
                                 "db_migrate() from Python (it passes the URL masked)")


class DbMigrateParams(FlowParams, RunGroup, ChunkTaskGroup):
    """Copy a table (or a SELECT) between databases in keyset ranges, each range once, then verify."""

    source_url: Annotated[SecretStr | None, Field(description=(
        "Source SQLAlchemy URL, or 'secret:BLOCK_NAME' (default: BATCHFLOWS_DB_SOURCE_URL)."))] = None
    target_url: Annotated[SecretStr | None, Field(description=(
        "Target SQLAlchemy URL, or 'secret:BLOCK_NAME' (default: BATCHFLOWS_DB_TARGET_URL)."))] = None
    table: Annotated[str | None, AfterValidator(_table_name), Field(description=(
        "Source table: 'table' or 'schema.table'."))] = None
    target_table: Annotated[str | None, AfterValidator(_table_name), Field(description=(
        "Target table (default: the source table's name)."))] = None
    query: Annotated[SelectQuery, Field(description=(
        "A SELECT to copy instead of a table (needs key and target_table)."))] = None
    key: Annotated[str | list[str] | None, Field(description=(
        "Range key column(s); default: the primary key. A table without one is copied append-only "
        "(mode='append') in physical ranges."))] = None
    chunk_rows: Annotated[int, Field(ge=1, le=100_000_000, description="Rows per key range (one task, one transaction)."),
                          FromSetting(DbSettings, "chunk_rows")] = SETTING
    mode: Annotated[Mode, Field(description=(
        "append (insert), upsert (insert or update by key), replace (delete the range, then insert)."))] = "upsert"
    create_target: Annotated[bool, Field(description="Create the target table when it is missing.")] = True
    transform: Annotated[str | None, Field(description="'pkg.mod:fn' applied to a polars DataFrame per range.")] = None
    verify: Annotated[bool, Field(description="Compare counts and checksums per range after the load.")] = True
    verify_only: Annotated[bool, Field(description="Only verify existing tables; write nothing.")] = False
    dry_run: Annotated[bool, Field(description="Print the plan (ranges, rows, DDL); write nothing.")] = False
    copy_format: Annotated[CopyFormat, Field(description=(
        "PostgreSQL -> PostgreSQL path: auto, binary, text, or rows (decode every row)."))] = "auto"
    source_secret: Annotated[str | None, Field(description="Prefect Secret block holding the source URL.")] = None
    target_secret: Annotated[str | None, Field(description="Prefect Secret block holding the target URL.")] = None
    max_concurrency: MaxConcurrency = 2
    incremental: Annotated[str | None, Field(description=(
        "Watermark column (an updated-at timestamp or an integer that grows with every insert and update): "
        "each run copies only rows past the last complete run's watermark (upsert); the first run copies "
        "everything. The watermark is kept in the target database."))] = None
    lookback: Annotated[float, Field(ge=0, description=(
        "Start this far below the watermark to catch late rows (seconds for dates/times, units for integers)."))] = 0
    deletes: Annotated[Deletes, Field(description=(
        "Incremental deletes: ignore, soft_column (delete target rows whose soft_delete_column is set), "
        "compare_keys (delete target rows whose key the source no longer has)."))] = "ignore"
    soft_delete_column: Annotated[str | None, Field(description=(
        "The source's soft-delete column for deletes='soft_column' (set = not NULL and not false)."))] = None
    reset_incremental: Annotated[bool, Field(description=(
        "Ignore the stored watermark: copy everything again, then store the new watermark."))] = False

    @field_validator("source_url", "target_url", mode="before")
    @classmethod
    def _no_plain_password(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_plain_password(value, str(info.field_name))

    @model_validator(mode="after")
    def _consistent(self) -> DbMigrateParams:
        if (self.table is None) == (self.query is None):
            msg = "pass exactly one of table (a table name) and query (a SELECT)"
            raise ValueError(msg)
        if self.query is not None and not self.target_table:
            msg = "a query source needs target_table (the table to write to)"
            raise ValueError(msg)
        if self.query is not None and not self.key:
            msg = "a query source needs key (the unique column(s) ranges are cut on)"
            raise ValueError(msg)
        parse_key(self.key)
        if self.incremental is not None:
            validate_identifier(self.incremental, what="incremental column")
            if self.mode != "upsert":
                msg = (f"incremental runs need mode='upsert' (got {self.mode!r}): a changed row is copied again and "
                       "must replace its old version")
                raise ValueError(msg)
        elif self.deletes != "ignore" or self.reset_incremental or self.lookback:
            msg = "deletes, lookback and reset_incremental apply to incremental runs: pass incremental='<column>'"
            raise ValueError(msg)
        if self.deletes == "soft_column" and not self.soft_delete_column:
            msg = "deletes='soft_column' needs soft_delete_column (e.g. 'deleted_at' or 'is_deleted')"
            raise ValueError(msg)
        return self


@batchflow(FLOW_NAME, DbMigrateParams, positional=("source_url", "target_url", "table"), summary=MigrationSummary)
def db_migrate_flow(p: DbMigrateParams) -> MigrationSummary:
    """Copy a table (or a SELECT) between databases in keyset ranges, each range once, then verify."""
    with shared_connections():  # one connection per database and thread for the run (tasks.db.session)
        return _migrate(p)


def _target_table(p: DbMigrateParams, target_url: Any) -> TableName:
    """``target_table``, else the source table's name; a schema-qualified source table going to SQLite or
    MySQL/MariaDB keeps only its name (SQLite has no schemas; a MySQL schema is a database, the URL's)."""
    if p.target_table:
        return parse_table_name(p.target_table)
    name = parse_table_name(p.table or "")
    if name.schema_name and parse_db_url(target_url).dialect != "postgresql":
        return TableName(name=name.name)
    return name


def _migrate(p: DbMigrateParams) -> MigrationSummary:
    src = resolve_url(p.source_url, p.source_secret, what="source_url")
    tgt = resolve_url(p.target_url, p.target_secret, what="target_url")
    fn = load_callable(p.transform, what="transform") if p.transform else None
    transform_id = handler_identity(fn if is_handle(p.transform) else p.transform).text if fn else ""
    transform_name = callable_name(fn if is_handle(p.transform) else p.transform) if fn else None
    tname = str(_target_table(p, tgt))
    info = {"source": redacted_url(src), "target": redacted_url(tgt), "table": p.table, "query": p.query,
            "target_table": tname, "mode": p.mode}

    if p.dry_run:
        plan = plan_migration(src, tgt, p.table, target_table=tname, query=p.query, key=p.key, chunk_rows=p.chunk_rows,
                              mode=p.mode, create_target=p.create_target)
        text = plan.describe()
        print(f"dry run, nothing written:\n{text}")
        return MigrationSummary(
            flow=FLOW_NAME, run_key=p.run_key or "dry-run", **info, key=plan.key, dry_run=True, plan=text,
            ddl=plan.ddl, ranges_total=len(plan.ranges), rows_estimated=plan.estimated_rows,
            message=f"dry run: {len(plan.ranges)} ranges, about {plan.estimated_rows} rows; nothing written",
        )

    schema = reflect(src, p.table, query=p.query, key=p.key)
    if not p.verify_only:  # a table without a primary key: append only (a ConfigError before anything is written)
        require_key(schema, p.mode, incremental=p.incremental)
    # the run's identity: what is copied where and how; a range adds its position (and its bounds as content)
    identity = [info["source"], info["target"], p.table or "", p.query or "", tname, ",".join(schema.key), p.mode,
                transform_id, p.copy_format]
    if p.incremental:
        watermark_column(schema, p.incremental)  # a ConfigError before anything is written
        identity += [f"incremental:{p.incremental}:{p.lookback}:{p.deletes}:{p.soft_delete_column}:"
                     f"{p.reset_incremental}"]
    plan_id = fingerprint(PLAN_VERSION, p.cache_version, p.chunk_rows, p.verify_only, *identity)

    def job(target_schema: Any, **more: Any) -> CopyJob:
        return CopyJob(source_url=src, target_url=tgt, table=p.table, target_table=tname, query=p.query,
                       key=schema.key, mode=p.mode, copy_format=p.copy_format, source_schema=schema,
                       target_schema=target_schema, transform=fn, **more)

    if p.verify_only:
        return verify_only(FLOW_NAME, src, job(reflect(tgt, tname, key=schema.key, role="target")), info,
                           run_key=p.run_key, chunk_rows=p.chunk_rows, max_concurrency=p.max_concurrency,
                           counts_only=fn is not None)

    with ChunkedRun(FLOW_NAME, run_key=p.run_key, total=None, handler_id=transform_name, unit="rows",
                    identity=(p.cache_version, *identity)) as run:
        made = ensure_target(src, tgt, p.table, target_table=tname, query=p.query, key=schema.key,
                             execute=p.create_target, source_schema=schema,
                             defer_key=run.run_key if p.mode == "append" and not p.incremental else None)
        if not made.existed and not p.create_target:
            msg = f"target table {tname} does not exist and create_target is off; create it or pass create_target=True"
            raise ConfigError(msg)
        created, ddl = made.created, made.ddl if made.created else None
        if created:
            print(f"created target table {tname} in {info['target']}:\n{made.ddl}")
        key_later = key_builder(tgt, parse_table_name(tname), run.run_key, created=made.key_deferred,
                                 key=schema.key)
        copy_job = job(made.target_schema or reflect(tgt, tname, key=schema.key, role="target"),
                       ledger=ensure_ledger(tgt, parse_table_name(tname)), run_key=run.run_key)
        inc = incremental_job(
            src, tgt, schema, copy_job.target_schema, column=p.incremental, source_label=info["source"],
            table=p.table, query=p.query, target_table=parse_table_name(tname), chunk_rows=p.chunk_rows,
            lookback=p.lookback, reset=p.reset_incremental, deletes=p.deletes,
            soft_delete_column=p.soft_delete_column) if p.incremental else None
        if inc is not None and created:
            index_watermark(tgt, parse_table_name(tname), inc.column.name)
        ranges = planned_ranges(run, plan_id, lambda: plan_ranges(
            src, p.table, query=p.query, key=schema.key, chunk_rows=p.chunk_rows,
            window=inc.plan() if inc is not None else None, schema=schema))
        if not schema.key:
            info["resume_note"] = resume_note(schema, ranges)
            print(info["resume_note"])
        return copy_and_verify(run, ranges, copy_job, info, schema, created=created, ddl=ddl, verify=p.verify,
                               chunk_rows=p.chunk_rows, mode=p.mode, tname=tname, chunk_retries=p.chunk_retries,
                               tags=p.tags, max_concurrency=p.max_concurrency, counts_only=fn is not None,
                               incremental=inc.started(ranges) if inc is not None else None, build_key=key_later)


def _urls_as_secrets(values: dict[str, Any], handles: list[str]) -> None:
    """URLs given in Python are parsed first (their passwords registered for redaction before Prefect sees
    anything) and passed as SecretStr (Prefect stores those masked)."""
    for name in ("source_url", "target_url"):
        url = values.get(name)
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url
        if raw and not raw.startswith("secret:"):
            parse_db_url(raw)
        if isinstance(url, str):
            values[name] = SecretStr(url)
    if isinstance(values.get("key"), Sequence) and not isinstance(values["key"], str):
        values["key"] = list(values["key"])


db_migrate = python_entry(
    db_migrate_flow, prepare=_urls_as_secrets,
    objects={"transform": str | Callable[..., Any] | None},  # a function of a polars DataFrame
    types={"source_url": str | SecretStr | None, "target_url": str | SecretStr | None,
           "key": str | Sequence[str] | None})


def db_verify(source_url: str | SecretStr | None = None, target_url: str | SecretStr | None = None,
              table: str | None = None, **kwargs: Any) -> MigrationSummary:
    """Verify existing tables range by range (counts and checksums); writes nothing to either database."""
    return db_migrate(source_url, target_url, table, verify_only=True, **kwargs)


__all__ = ["FLOW_NAME", "DbMigrateParams", "MigrationSummary", "db_migrate", "db_migrate_flow", "db_verify"]
