"""db-migrate: copy a table (or a SELECT) PostgreSQL/SQLite -> PostgreSQL/SQLite in keyset ranges.

One Prefect task per key range (``copy-range``), each range ONE target transaction, so a killed or
retried range leaves nothing half-written and a rerun with the same ``run_key`` runs only the ranges
that did not finish. After the load every range is verified (row counts and checksums on both sides);
a mismatch fails the run and names the ranges. Three ways to run it:

* Python: ``db_migrate(source_url, target_url, "orders", mode="upsert")`` -> MigrationSummary.
* Deployment / UI / CLI: the ``db_migrate_flow`` flow with JSON parameters; URLs may be given as the
  name of a Prefect Secret block (``source_secret=`` or ``source_url="secret:name"``), or come from
  ``BATCHFLOWS_DB_SOURCE_URL`` / ``BATCHFLOWS_DB_TARGET_URL``.
* Verify only (existing tables, nothing written): ``db_migrate(..., verify_only=True)`` or ``db_verify(...)``.

Passwords: URLs travel as SecretStr (Prefect stores SecretStr parameters masked), the password is
registered for redaction the moment a URL is parsed, and only redacted URLs reach logs, artifacts,
dead letters and the summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from pydantic import BaseModel, Field, SecretStr

from flows.batch_map import summary_from_state, summary_state
from tasks.chunked_run import ChunkedRun
from tasks.db import (
    MODES,
    CopyFormat,
    KeyRange,
    Mode,
    RangeCheck,
    SourceSchema,
    copy_range,
    parse_db_url,
    parse_key,
    parse_table_name,
    plan_migration,
    plan_ranges,
    redacted_url,
    reflect,
    validate_query,
    verify_range,
)
from tasks.db import create_target as ensure_target
from tasks.db_conn import TableName
from tasks.db_ledger import LedgerEntry, ensure_ledger
from tasks.engine import open_task_runner, recorded_safely, run_window
from tasks.errors import ConfigError, FatalError, ItemError
from tasks.identity import callable_name, handler_identity, value_hash
from tasks.items import ChunkRef
from tasks.loader import is_handle, load_callable, register_object, release_object
from tasks.notify import HOOKS
from tasks.outcomes import ChunkReport, RunSummary
from tasks.progress import api_errors_explained
from tasks.redact import redact_text
from tasks.settings import DbSettings

FLOW_NAME = "db-migrate"
PLAN_VERSION = "1"
VerifyMode = Literal["off", "checksums", "counts"]


# ---------------------------------------------------------------- the summary


class RangeMismatch(BaseModel):
    """A range whose source and target differ after the load (or whose check could not run)."""

    index: int
    lower: list[Any] | None = None
    upper: list[Any] | None = None
    count_src: int = 0
    count_tgt: int = 0
    first_difference: list[Any] | None = None
    error: str | None = None

    def describe(self) -> str:
        span = f"keys ({_bound(self.lower, '-inf')}, {_bound(self.upper, '+inf')}]"
        if self.error:
            return f"range {self.index} {span}: check failed: {self.error}"
        first = f", first differing key {self.first_difference}" if self.first_difference is not None else ""
        return f"range {self.index} {span}: source {self.count_src} rows, target {self.count_tgt} rows{first}"


def _bound(b: list[Any] | None, unbounded: str) -> str:
    if b is None:
        return unbounded
    return ", ".join(map(str, b)) if len(b) > 1 else str(b[0])


class MigrationSummary(RunSummary):
    """A RunSummary (items = rows) plus what a migration planned, copied and verified."""

    source: str = ""
    target: str = ""
    table: str | None = None
    query: str | None = None
    target_table: str = ""
    key: list[str] = Field(default_factory=list)
    mode: str = "upsert"
    dry_run: bool = False
    verify_only: bool = False
    target_created: bool = False
    ddl: str | None = None
    plan: str | None = Field(None, description="The plan as text (dry run).")
    ranges_total: int = 0
    ranges_copied: int = 0
    ranges_resumed: int = 0
    ranges_recovered: int = Field(0, description="Ranges an earlier attempt had committed (found in the ledger).")
    ranges_failed: list[int] = Field(default_factory=list)
    rows_estimated: int = 0
    rows_copied: int = 0
    verify: VerifyMode = "off"
    ranges_verified: int = 0
    ranges_matching: int = 0
    ranges_mismatched: list[RangeMismatch] = Field(default_factory=list)
    verify_seconds: float = 0.0


# ---------------------------------------------------------------- URLs and secrets


def _load_secret(name: str, what: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except Exception as exc:  # a missing block is a ValueError; an unreachable API anything else
        msg = (f"{what}: Prefect Secret block {name!r} could not be loaded ({type(exc).__name__}); create it "
               "(Secret(value='postgresql+psycopg://...').save(name)) or pass the URL")
        raise ConfigError(redact_text(msg)) from None
    if not isinstance(value, str) or not value:
        msg = f"{what}: Prefect Secret block {name!r} must hold the database URL as a string"
        raise ConfigError(msg)
    return value


def resolve_url(url: str | SecretStr | None, secret: str | None, *, what: str) -> SecretStr:
    """The database URL from (in order) a Secret block name, a ``"secret:name"`` URL, the URL, the env.

    The password is registered for redaction before anything can print it.
    """
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    if secret:
        raw = _load_secret(secret, what)
    elif raw and raw.startswith("secret:"):
        raw = _load_secret(raw.removeprefix("secret:"), what)
    elif not raw:
        env = getattr(DbSettings(), what)
        if env is None:
            msg = (f"{what} is missing: pass it, a Prefect Secret block name ({what.split('_')[0]}_secret=...), "
                   f"or set BATCHFLOWS_DB_{what.upper()}")
            raise ConfigError(msg)
        raw = env.get_secret_value()
    parse_db_url(raw)  # validates and registers the password for redaction
    return SecretStr(raw)


# ---------------------------------------------------------------- parameters


def check_parameters(*, table: str | None, query: str | None, target_table: str | None,
                     key: str | Sequence[str] | None, chunk_rows: int, mode: str, max_concurrency: int,
                     transform: Any) -> None:
    """Cheap checks before any connection; every message names the parameter."""
    if (table is None) == (query is None):
        msg = "pass exactly one of table (a table name) and query (a SELECT)"
        raise ConfigError(msg)
    if table is not None:
        parse_table_name(table)
    if query is not None:
        validate_query(query)
        if not target_table:
            msg = "a query source needs target_table (the table to write to)"
            raise ConfigError(msg)
        if not key:
            msg = "a query source needs key (the unique column(s) ranges are cut on)"
            raise ConfigError(msg)
    if target_table is not None:
        parse_table_name(target_table)
    parse_key(key)
    if chunk_rows < 1:
        msg = f"chunk_rows must be at least 1, got {chunk_rows}"
        raise ConfigError(msg)
    if mode not in MODES:
        msg = f"mode {mode!r} is not one of {list(MODES)}"
        raise ConfigError(msg)
    if max_concurrency < 1:
        msg = f"max_concurrency must be at least 1, got {max_concurrency}"
        raise ConfigError(msg)
    if transform is not None and not (callable(transform) or isinstance(transform, str)):
        msg = f"transform must be 'pkg.mod:fn' or a callable, got {type(transform).__name__}"
        raise ConfigError(msg)


# ---------------------------------------------------------------- the chunk tasks


@dataclass(frozen=True)
class CopyJob:
    """Everything a range task needs besides its range (reflected once by the flow)."""

    source_url: SecretStr
    target_url: SecretStr
    table: str | None
    target_table: str
    query: str | None
    key: list[str]
    mode: Mode
    copy_format: CopyFormat
    source_schema: SourceSchema
    target_schema: SourceSchema
    transform: Callable[[pl.DataFrame], Any] | None = None
    ledger: TableName | None = None  # the target's range ledger (exactly-once commits); None: verify only
    run_key: str = ""


def copy_one_range(rng: KeyRange, job: CopyJob, ref: ChunkRef | None = None) -> ChunkReport:
    """Copy one range and report it in rows (plain function; the task below is a thin wrapper).

    A ConfigError here (target lacks a unique key, a transform output column the target lacks) would
    hit every range alike: it stops the run (FatalError). A conversion error fails this range only.
    A range that an earlier attempt committed (found in the ledger) writes nothing and reports its rows.
    """
    started = time.perf_counter()
    ledger = LedgerEntry(table=job.ledger, key=ref.key, run_key=job.run_key, target_table=job.target_table) \
        if job.ledger is not None and ref is not None else None
    try:
        res = copy_range(job.source_url, job.target_url, job.table, rng, target_table=job.target_table,
                         query=job.query, key=job.key, mode=job.mode, transform=job.transform,
                         copy_format=job.copy_format, source_schema=job.source_schema,
                         target_schema=job.target_schema, ledger=ledger)
    except ConfigError as exc:
        raise FatalError(redact_text(str(exc))) from None
    took = time.perf_counter() - started
    report = ChunkReport(index=rng.index, size=res.rows_read, succeeded=res.rows_read, duration_s=took,
                         extra={"rows_copied": res.rows_written}, resumed=res.recovered,
                         content_hash=ref.content or "" if ref is not None else "")
    if res.recovered:
        report.extra["ranges_recovered"] = 1
    report.check()
    return report


@task(name="copy-range", task_run_name="range-{rng.index}", persist_result=True, log_prints=False)
def copy_range_task(rng: KeyRange, ref: ChunkRef, job: CopyJob) -> ChunkReport:
    """Prefect face of :func:`copy_one_range`; ``ref.key`` is read by the resume cache policy."""
    with recorded_safely(f"range {rng.index}"):
        return copy_one_range(rng, job, ref)


def _retry_condition(task: Any, task_run: Any, state: State) -> bool:
    """Retry infrastructure failures only: bad data and bad configuration fail the same way again."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, FatalError | ConfigError | ItemError)


@task(name="verify-range", task_run_name="verify-{rng.index}", cache_policy=NO_CACHE, persist_result=False,
      log_prints=False)
def verify_range_task(rng: KeyRange, job: CopyJob) -> RangeCheck:
    return verify_range(job.source_url, job.target_url, job.table, rng, target_table=job.target_table,
                        query=job.query, key=job.key, source_schema=job.source_schema,
                        target_schema=job.target_schema)


def verify_all(ranges: Sequence[KeyRange], job: CopyJob, *, max_concurrency: int, counts_only: bool
               ) -> tuple[int, list[RangeMismatch]]:
    """Verify ranges as Prefect tasks (bounded window, never cached); return (matching, mismatches)."""
    matching = 0
    bad: list[RangeMismatch] = []

    def on_done(rng: KeyRange, state: State) -> None:
        nonlocal matching
        result = state.result(raise_on_failure=False)
        base = {"index": rng.index, "lower": rng.lower, "upper": rng.upper}
        if not isinstance(result, RangeCheck):
            bad.append(RangeMismatch(**base, error=redact_text(f"{type(result).__name__}: {result}")[:500]))
            return
        ok = result.count_src == result.count_tgt if counts_only else result.ok
        if ok:
            matching += 1
        else:
            bad.append(RangeMismatch(**base, count_src=result.count_src, count_tgt=result.count_tgt,
                                     first_difference=None if counts_only else result.first_difference))

    with open_task_runner("threads", max_concurrency) as runner:
        run_window(ranges, lambda r: runner.submit(verify_range_task, parameters={"rng": r, "job": job}), on_done,
                   max_in_flight=max_concurrency)
    return matching, sorted(bad, key=lambda m: m.index)


def mismatch_reason(bad: Sequence[RangeMismatch], checked: int) -> str:
    shown = "; ".join(m.describe() for m in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"verify: {len(bad)} of {checked} ranges differ between source and target: {shown}{more}"


# ---------------------------------------------------------------- the flow


def _fingerprint(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, default=str, sort_keys=True).encode(), digest_size=16).hexdigest()


def _planned_ranges(run: ChunkedRun, fingerprint: str, plan: Callable[[], list[KeyRange]]) -> list[KeyRange]:
    """The ranges of this run key: planned once and checkpointed, so a resumed run cuts the same ranges
    (and hits the same cache keys) even if rows were added to the source in between."""
    saved = run.run_dir.read_checkpoint() or {}
    if saved.get("fingerprint") == fingerprint and isinstance(saved.get("ranges"), list):
        return [KeyRange.model_validate(r) for r in saved["ranges"]]
    ranges = plan()
    run.run_dir.write_checkpoint({"fingerprint": fingerprint, "ranges": [r.model_dump(mode="json") for r in ranges]})
    return ranges


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, **HOOKS)
def db_migrate_flow(
    source_url: Annotated[SecretStr | None, Field(description="Source SQLAlchemy URL, or 'secret:<block name>'.")] = None,
    target_url: Annotated[SecretStr | None, Field(description="Target SQLAlchemy URL, or 'secret:<block name>'.")] = None,
    table: Annotated[str | None, Field(description="Source table ('table' or 'schema.table').")] = None,
    target_table: Annotated[str | None, Field(description="Target table (default: the source table's name).")] = None,
    query: Annotated[str | None, Field(description="Source SELECT instead of a table (needs key, target_table).")] = None,
    key: Annotated[str | list[str] | None, Field(description="Range key column(s); default the primary key.")] = None,
    chunk_rows: Annotated[int, Field(gt=0, description="Rows per key range (one task, one transaction).")] = 50_000,
    mode: Annotated[Mode, Field(description="append | upsert | replace")] = "upsert",
    create_target: Annotated[bool, Field(description="Create the target table when missing.")] = True,
    transform: Annotated[str | None, Field(description="'pkg.mod:fn' on a polars DataFrame per range.")] = None,
    verify: Annotated[bool, Field(description="Compare counts and checksums per range after the load.")] = True,
    verify_only: Annotated[bool, Field(description="Only verify existing tables; write nothing.")] = False,
    dry_run: Annotated[bool, Field(description="Print the plan (ranges, rows, DDL); write nothing.")] = False,
    max_concurrency: Annotated[int, Field(ge=1, le=64, description="Ranges in flight.")] = 2,
    run_key: Annotated[str | None, Field(description="Reuse to resume a crashed run.")] = None,
    cache_version: Annotated[str, Field(description="Change to force every range to run again.")] = "1",
    chunk_retries: Annotated[int, Field(ge=0, le=20, description="Retries of a range after a transient error.")] = 1,
    copy_format: Annotated[CopyFormat, Field(description="auto | binary | text | rows (PG->PG path).")] = "auto",
    source_secret: Annotated[str | None, Field(description="Prefect Secret block holding the source URL.")] = None,
    target_secret: Annotated[str | None, Field(description="Prefect Secret block holding the target URL.")] = None,
    tags: Annotated[list[str] | None, Field(description="Range task tags (tag concurrency limits).")] = None,
) -> MigrationSummary:
    check_parameters(table=table, query=query, target_table=target_table, key=key, chunk_rows=chunk_rows,
                     mode=mode, max_concurrency=max_concurrency, transform=transform)
    src = resolve_url(source_url, source_secret, what="source_url")
    tgt = resolve_url(target_url, target_secret, what="target_url")
    fn = load_callable(transform, what="transform") if transform else None
    transform_id = handler_identity(fn if is_handle(transform) else transform).text if fn else ""
    transform_name = callable_name(fn if is_handle(transform) else transform) if fn else None
    tname = str(parse_table_name(target_table or table or ""))
    info = {"source": redacted_url(src), "target": redacted_url(tgt), "table": table, "query": query,
            "target_table": tname, "mode": mode}

    if dry_run:
        plan = plan_migration(src, tgt, table, target_table=tname, query=query, key=key, chunk_rows=chunk_rows,
                              mode=mode, create_target=create_target)
        text = plan.describe()
        print(f"dry run, nothing written:\n{text}")
        summary = MigrationSummary(
            flow=FLOW_NAME, run_key=run_key or "dry-run", **info, key=plan.key, dry_run=True, plan=text,
            ddl=plan.ddl, ranges_total=len(plan.ranges), rows_estimated=plan.estimated_rows,
            message=f"dry run: {len(plan.ranges)} ranges, about {plan.estimated_rows} rows; nothing written",
        )
        return Completed(message=summary.message, data=summary)  # type: ignore[return-value]

    schema = reflect(src, table, query=query, key=key)
    identity = [info["source"], info["target"], table or "", query or "", tname, ",".join(schema.key), mode,
                transform_id, copy_format]
    fingerprint = _fingerprint(PLAN_VERSION, cache_version, chunk_rows, verify_only, *identity)

    if verify_only:
        target_schema = reflect(tgt, tname, key=schema.key, role="target")
        job = CopyJob(source_url=src, target_url=tgt, table=table, target_table=tname, query=query, key=schema.key,
                      mode=mode, copy_format=copy_format, source_schema=schema, target_schema=target_schema,
                      transform=fn)
        return summary_state(_verify_only(src, job, info, fingerprint, run_key=run_key, chunk_rows=chunk_rows,
                                          max_concurrency=max_concurrency, counts_only=fn is not None))  # type: ignore[return-value]

    with ChunkedRun(FLOW_NAME, run_key=run_key, total=None, handler_id=transform_name, unit="rows",
                    identity=(cache_version, *identity)) as run:
        made = ensure_target(src, tgt, table, target_table=tname, query=query, key=schema.key,
                             execute=create_target)
        if not made.existed and not create_target:
            msg = f"target table {tname} does not exist and create_target is off; create it or pass create_target=True"
            raise ConfigError(msg)
        created, ddl = made.created, made.ddl if made.created else None
        if created:
            print(f"created target table {tname} in {info['target']}:\n{made.ddl}")
        target_schema = reflect(tgt, tname, key=schema.key, role="target")
        job = CopyJob(source_url=src, target_url=tgt, table=table, target_table=tname, query=query, key=schema.key,
                      mode=mode, copy_format=copy_format, source_schema=schema, target_schema=target_schema,
                      transform=fn, ledger=ensure_ledger(tgt, parse_table_name(tname)), run_key=run.run_key)
        ranges = _planned_ranges(run, fingerprint, lambda: plan_ranges(src, table, query=query, key=schema.key,
                                                                        chunk_rows=chunk_rows))
        return summary_state(_copy(run, ranges, job, info, schema, created=created, ddl=ddl, verify=verify,  # type: ignore[return-value]
                                   chunk_rows=chunk_rows, mode=mode, tname=tname, chunk_retries=chunk_retries,
                                   tags=tags, max_concurrency=max_concurrency, counts_only=fn is not None))


def _copy(run: ChunkedRun, ranges: list[KeyRange], job: CopyJob, info: dict[str, Any], schema: SourceSchema, *,
          created: bool, ddl: str | None, verify: bool, chunk_rows: int, mode: str, tname: str, chunk_retries: int,
          tags: list[str] | None, max_concurrency: int, counts_only: bool) -> MigrationSummary:
    estimated = sum(r.estimated_rows for r in ranges)
    run.total = estimated
    run.progress.total = estimated
    print(f"{info['source']} -> {info['target']} {tname}: {len(ranges)} ranges of ~{chunk_rows} rows, about "
          f"{estimated} rows, mode {mode}, run key {run.run_key!r}")
    task_ = run.configure(copy_range_task, chunk_retries=chunk_retries, tags=tags or []).with_options(
        retry_condition_fn=_retry_condition)
    done: dict[int, ChunkReport] = {}

    summary = run.execute(
        ranges,
        lambda r: {"rng": r, "ref": run.ref(r.index, content=value_hash(r.model_dump(mode="json"))), "job": job},
        task_,
        chunk=lambda r: (r.index, r.estimated_rows, [{"range": r.index, "lower": r.lower, "upper": r.upper}]),
        describe=lambda r: f"range {r.index}",
        max_concurrency=max_concurrency,
        on_report=lambda r, rep: done.__setitem__(r.index, rep),
    )
    result = MigrationSummary(**summary.model_dump(), **info, key=schema.key, target_created=created, ddl=ddl,
                              ranges_total=len(ranges), rows_estimated=estimated)
    result.ranges_resumed = sum(rep.resumed for rep in done.values())
    result.ranges_recovered = sum(int(rep.extra.get("ranges_recovered", 0)) for rep in done.values())
    result.ranges_copied = sum(not rep.resumed for rep in done.values())
    result.ranges_failed = sorted(r.index for r in ranges if r.index not in done)
    result.rows_copied = int(summary.extra.get("rows_copied", 0))
    reason = None
    if result.ranges_failed:
        print(f"ranges that failed (rerun with run_key={run.run_key!r} after fixing): {result.ranges_failed}")
    if verify and not run.should_stop():
        started = time.perf_counter()
        todo = [r for r in ranges if r.index in done]
        result.verify = "counts" if counts_only else "checksums"
        matching, bad = verify_all(todo, job, max_concurrency=max_concurrency, counts_only=counts_only)
        result.ranges_verified, result.ranges_matching, result.ranges_mismatched = len(todo), matching, bad
        result.verify_seconds = round(time.perf_counter() - started, 3)
        print(f"verify ({result.verify}): {matching} of {len(todo)} ranges match in {result.verify_seconds:.1f}s")
        if bad:
            reason = mismatch_reason(bad, len(todo))
            print(reason)
        result.duration_s = round(result.duration_s + result.verify_seconds, 3)
    return run.finish(result, failed_reason=reason)


def _verify_only(src: SecretStr, job: CopyJob, info: dict[str, Any], fingerprint: str, *, run_key: str | None,
                 chunk_rows: int, max_concurrency: int, counts_only: bool) -> MigrationSummary:
    with ChunkedRun(FLOW_NAME, run_key=run_key, total=None, unit="rows") as run:
        run.dead.close()
        return _verify_ranges(run, src, job, info, chunk_rows=chunk_rows, max_concurrency=max_concurrency,
                              counts_only=counts_only)


def _verify_ranges(run: ChunkedRun, src: SecretStr, job: CopyJob, info: dict[str, Any], *, chunk_rows: int,
                   max_concurrency: int, counts_only: bool) -> MigrationSummary:
    started = time.perf_counter()
    ranges = plan_ranges(src, job.table, query=job.query, key=job.key, chunk_rows=chunk_rows, verify_key=False)
    matching, bad = verify_all(ranges, job, max_concurrency=max_concurrency, counts_only=counts_only)
    took = time.perf_counter() - started
    rows = sum(r.estimated_rows for r in ranges)
    result = MigrationSummary(
        flow=FLOW_NAME, run_key=run.run_key, **info, key=job.key, verify_only=True, total=rows, succeeded=rows,
        chunks_total=len(ranges), duration_s=round(took, 3), items_per_second=round(rows / took, 1) if took else 0.0,
        ranges_total=len(ranges), rows_estimated=rows, verify="counts" if counts_only else "checksums",
        ranges_verified=len(ranges), ranges_matching=matching, ranges_mismatched=bad, verify_seconds=round(took, 3),
    )
    reason = mismatch_reason(bad, len(ranges)) if bad else None
    print(reason or f"verify: all {len(ranges)} ranges match ({rows} rows)")
    return run.finish(result, failed_reason=reason)


# ---------------------------------------------------------------- Python entry points


def db_migrate(
    source_url: str | SecretStr | None = None,
    target_url: str | SecretStr | None = None,
    table: str | None = None,
    *,
    target_table: str | None = None,
    query: str | None = None,
    key: str | Sequence[str] | None = None,
    chunk_rows: int = 50_000,
    mode: Mode = "upsert",
    create_target: bool = True,
    transform: str | Callable[[pl.DataFrame], Any] | None = None,
    verify: bool = True,
    verify_only: bool = False,
    dry_run: bool = False,
    max_concurrency: int = 2,
    run_key: str | None = None,
    cache_version: str = "1",
    chunk_retries: int = 1,
    copy_format: CopyFormat = "auto",
    source_secret: str | None = None,
    target_secret: str | None = None,
    tags: Sequence[str] = (),
) -> MigrationSummary:
    """Run the db-migrate flow from Python; return its MigrationSummary (``summary.ok`` tells the state).

    URLs may be str or SecretStr (they reach Prefect as SecretStr, stored masked), ``"secret:<block>"``,
    or be replaced by ``source_secret``/``target_secret`` block names. ``transform`` is ``"pkg.mod:fn"``
    or a callable on a polars DataFrame. Bad parameters raise ConfigError before any work; unreachable
    databases, unknown tables or columns and incompatible targets raise the error that stopped the run.
    """
    check_parameters(table=table, query=query, target_table=target_table, key=key, chunk_rows=chunk_rows,
                     mode=mode, max_concurrency=max_concurrency, transform=transform)
    for url in (source_url, target_url):
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url
        if raw and not raw.startswith("secret:"):
            parse_db_url(raw)  # registers the password for redaction before Prefect sees anything
    handle = register_object(transform) if callable(transform) else None
    try:
        with api_errors_explained(FLOW_NAME, run_key):
            state = db_migrate_flow(
                source_url=_secret(source_url), target_url=_secret(target_url), table=table,
                target_table=target_table, query=query,
                key=list(key) if key is not None and not isinstance(key, str) else key,
                chunk_rows=chunk_rows, mode=mode, create_target=create_target, transform=handle or transform,  # type: ignore[arg-type]
                verify=verify, verify_only=verify_only, dry_run=dry_run, max_concurrency=max_concurrency,
                run_key=run_key, cache_version=cache_version, chunk_retries=chunk_retries, copy_format=copy_format,
                source_secret=source_secret, target_secret=target_secret, tags=list(tags), return_state=True,
            )
        summary = summary_from_state(state)
    finally:
        if handle is not None:
            release_object(handle)
    if not isinstance(summary, MigrationSummary):  # pragma: no cover - the flow always returns one
        summary = MigrationSummary(**summary.model_dump())
    return summary


def db_verify(source_url: str | SecretStr | None = None, target_url: str | SecretStr | None = None,
              table: str | None = None, **kwargs: Any) -> MigrationSummary:
    """Verify existing tables range by range (counts and checksums); writes nothing to either database."""
    return db_migrate(source_url, target_url, table, verify_only=True, **kwargs)


def _secret(url: str | SecretStr | None) -> SecretStr | None:
    if url is None or isinstance(url, SecretStr):
        return url
    return SecretStr(url)


__all__ = [
    "FLOW_NAME",
    "CopyJob",
    "MigrationSummary",
    "RangeMismatch",
    "check_parameters",
    "copy_one_range",
    "db_migrate",
    "db_migrate_flow",
    "db_verify",
    "mismatch_reason",
    "resolve_url",
    "verify_all",
]
