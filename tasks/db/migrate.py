"""db_migrate's range tasks and phases: copy every key range once, verify, summarize.

``copy_range_task`` copies one keyset range in one target transaction (its ledger row included, see
tasks.db.ledger); ``verify_all`` checks ranges by counts and checksums; :func:`copy_and_verify` runs the
copy phase through a :class:`ChunkedRun` and then the verify phase, and :func:`verify_only` checks existing
tables alone. :class:`MigrationSummary` is the RunSummary of a migration; :func:`resolve_url` finds a
database URL in a Secret block, the parameter or the environment, its password registered for redaction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from pydantic import BaseModel, Field, SecretStr

from tasks.core import (
    ChunkedRun,
    ChunkRef,
    ChunkReport,
    ConfigError,
    DbSettings,
    FatalError,
    ItemError,
    RunSummary,
    open_task_runner,
    recorded_safely,
    redact_text,
    run_window,
    value_hash,
)
from tasks.db.conn import TableName, parse_db_url
from tasks.db.copier import CopyFormat, Mode, copy_range
from tasks.db.incremental import IncrementalJob
from tasks.db.ledger import LEDGER_TABLE, LedgerEntry, committed_keys
from tasks.db.physical import verify_scope
from tasks.db.schema import KeyRange, SourceSchema, plan_ranges
from tasks.db.verify import RangeCheck, verify_range

PLAN_VERSION = "1"
VerifyMode = Literal["off", "checksums", "counts"]

if TYPE_CHECKING:
    import polars as pl


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
    scan: str = "key"

    def describe(self) -> str:
        span = "whole table" if self.scan == "all" else f"keys ({_bound(self.lower, '-inf')}, {_bound(self.upper, '+inf')}]"
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
    ranges_not_in_ledger: list[int] = Field(default_factory=list, description=(
        "Ranges an earlier attempt of this run key recorded as done that the target's ledger did not hold (the "
        "target was recreated or its ledger emptied since): copied again"))
    ranges_by_path: dict[str, int] = Field(default_factory=dict, description=(
        "How this run wrote its ranges: copy-binary / copy-text (COPY relayed), columnar-csv (the columnar path), "
        "rows (converted row by row), unchanged (an upsert range the target already held as the source has it: "
        "nothing written), ledger (an earlier attempt had committed it); resumed ranges are not counted"))
    rows_estimated: int = 0
    rows_copied: int = 0
    key_build_seconds: float | None = Field(None, description=(
        "A PostgreSQL table created for an append gets its primary key after the load: the seconds that took"))
    verify: VerifyMode = "off"
    ranges_verified: int = 0
    ranges_matching: int = 0
    ranges_mismatched: list[RangeMismatch] = Field(default_factory=list)
    verify_seconds: float = 0.0
    incremental_column: str | None = Field(None, description="The watermark column of an incremental run.")
    incremental_reset: bool = False
    watermark_before: Any = Field(None, description="The watermark this run started from (None: first run).")
    watermark_after: Any = Field(None, description="The watermark stored when this run ended.")
    lag_s: float | None = Field(None, description="Now minus the newest source timestamp, in seconds.")
    rows_deleted: int = Field(0, description="Target rows deleted (incremental deletes).")
    resume_note: str | None = Field(None, description=(
        "A table without a primary key: how it was cut and what a rerun can promise (tasks.db.physical)."))


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
                         extra={"rows_copied": res.rows_written, "path": res.path}, resumed=res.recovered,
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
    """Verify ranges as Prefect tasks (bounded window, never cached); return (matching, mismatches). A single
    range (an incremental run's window, a small table) is checked in the flow's thread: the same check and
    verdict without a task run and its thread pool (~5-10 % of such a run)."""
    matching = 0
    bad: list[RangeMismatch] = []

    def on_done(rng: KeyRange, state: State) -> None:
        verdict(rng, state.result(raise_on_failure=False))

    def verdict(rng: KeyRange, result: Any) -> None:
        nonlocal matching
        base = {"index": rng.index, "lower": rng.lower, "upper": rng.upper, "scan": rng.scan}
        if not isinstance(result, RangeCheck):
            bad.append(RangeMismatch(**base, error=redact_text(f"{type(result).__name__}: {result}")[:500]))
            return
        ok = result.count_src == result.count_tgt if counts_only else result.ok
        if ok:
            matching += 1
        else:
            bad.append(RangeMismatch(**base, count_src=result.count_src, count_tgt=result.count_tgt,
                                     first_difference=None if counts_only else result.first_difference))

    if len(ranges) == 1:
        verdict(ranges[0], _verify_here(ranges[0], job))
        return matching, bad
    with open_task_runner("threads", max_concurrency) as runner:
        run_window(ranges, lambda r: runner.submit(verify_range_task, parameters={"rng": r, "job": job}), on_done,
                   max_in_flight=max_concurrency, runner=lambda: runner)
    return matching, sorted(bad, key=lambda m: m.index)


def _verify_here(rng: KeyRange, job: CopyJob) -> RangeCheck | Exception:
    """:func:`verify_range_task`'s check in this thread: its verdict, or the exception that failed it (a failed
    check is a mismatch naming the error, as a failed task run is)."""
    try:
        return verify_range_task.fn(rng, job)
    except Exception as exc:
        return exc


def mismatch_reason(bad: Sequence[RangeMismatch], checked: int) -> str:
    shown = "; ".join(m.describe() for m in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"verify: {len(bad)} of {checked} ranges differ between source and target: {shown}{more}"


# ---------------------------------------------------------------- the flow


def fingerprint(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, default=str, sort_keys=True).encode(), digest_size=16).hexdigest()


def planned_ranges(run: ChunkedRun, fingerprint: str, plan: Callable[[], list[KeyRange]]) -> list[KeyRange]:
    """The ranges of this run key: planned once and checkpointed, so a resumed run cuts the same ranges
    (and hits the same cache keys) even if rows were added to the source in between."""
    saved = run.run_dir.read_checkpoint() or {}
    if saved.get("fingerprint") == fingerprint and isinstance(saved.get("ranges"), list):
        return [KeyRange.model_validate(r) for r in saved["ranges"]]
    ranges = plan()
    run.run_dir.write_checkpoint({"fingerprint": fingerprint, "ranges": [r.model_dump(mode="json") for r in ranges]})
    return ranges


def recheck_ledger(run: ChunkedRun, ranges: Sequence[KeyRange], job: CopyJob) -> list[int]:
    """Ranges the state dir records as done that the target's ledger does not hold: their records are discarded,
    so this run copies them again. The target's ledger decides what a rerun skips (a target recreated since the
    earlier attempt holds none of its ranges); one ledger query per run, none when nothing is recorded."""
    if job.ledger is None:
        return []
    recorded = {r.index: key for r in ranges if (run.run_dir.chunks / (key := run.ref(r.index).key)).is_file()}
    if not recorded:
        return []
    held = committed_keys(job.target_url, job.ledger, job.run_key)
    redo = sorted(i for i, key in recorded.items() if key not in held)
    for i in redo:
        run.run_dir.discard(run.run_dir.chunks / recorded[i])
    if redo:
        which = f"range {redo[0]}" if len(redo) == 1 else f"ranges {_spans(redo)}"
        print(f"the target's ledger does not hold {which}: copying {'it' if len(redo) == 1 else 'them'} again "
              f"(an earlier attempt of run key {run.run_key!r} recorded {'it' if len(redo) == 1 else 'them'} as "
              f"done; the target was recreated or its {LEDGER_TABLE} emptied since)")
    return redo


def _spans(indexes: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    spans: list[list[int]] = []
    for i in indexes:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def copy_and_verify(run: ChunkedRun, ranges: list[KeyRange], job: CopyJob, info: dict[str, Any], schema: SourceSchema, *,
          created: bool, ddl: str | None, verify: bool, chunk_rows: int, mode: str, tname: str, chunk_retries: int,
          tags: list[str] | None, max_concurrency: int, counts_only: bool,
          incremental: IncrementalJob | None = None, build_key: Callable[[], float] | None = None
          ) -> MigrationSummary:
    estimated = sum(r.estimated_rows for r in ranges)
    run.total = estimated
    run.progress.total = estimated
    print(f"{info['source']} -> {info['target']} {tname}: {len(ranges)} ranges of ~{chunk_rows} rows, about "
          f"{estimated} rows, mode {mode}, run key {run.run_key!r}")
    task_ = run.configure(copy_range_task, chunk_retries=chunk_retries, tags=tags or []).with_options(
        retry_condition_fn=_retry_condition)
    done: dict[int, ChunkReport] = {}
    redo = recheck_ledger(run, ranges, job)

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
                              ranges_total=len(ranges), rows_estimated=estimated, ranges_not_in_ledger=redo)
    result.ranges_resumed = sum(rep.resumed for rep in done.values())
    result.ranges_recovered = sum(int(rep.extra.get("ranges_recovered", 0)) for rep in done.values())
    result.ranges_copied = sum(not rep.resumed for rep in done.values())
    paths = Counter(str(rep.extra["path"]) for rep in done.values() if rep.extra.get("path") and
                    (not rep.resumed or rep.extra.get("ranges_recovered")))
    result.ranges_by_path = dict(sorted(paths.items()))
    result.ranges_failed = sorted(r.index for r in ranges if r.index not in done)
    result.rows_copied = int(summary.extra.get("rows_copied", 0))
    reason = None
    if result.ranges_failed:
        print(f"ranges that failed (rerun with run_key={run.run_key!r} after fixing): {result.ranges_failed}")
    complete = not result.ranges_failed and not run.should_stop()
    if build_key is not None and not run.should_stop():  # failed ranges too: their rerun has the key in place
        result.key_build_seconds = round(build_key(), 3)
        result.duration_s = round(result.duration_s + result.key_build_seconds, 3)
        print(f"built the primary key {schema.key} of {tname} after the load in {result.key_build_seconds:.1f}s")
    if incremental is not None and complete:
        incremental.after_copy(result, job.source_url, job.target_url, schema, job.target_schema)
    if verify and not run.should_stop():
        started = time.perf_counter()
        todo = [r for r in ranges if r.index in done]
        if not schema.key:  # compared whole, once every range is in (a missing range would be a mismatch)
            todo = verify_scope(ranges) if not result.ranges_failed else []
        if incremental is not None and incremental.soft is not None and complete:
            todo = [r.model_copy(update={"window": r.window.model_copy(update={"live": incremental.soft})})
                    if r.window is not None else r for r in todo]
        result.verify = "counts" if counts_only else "checksums"
        matching, bad = verify_all(todo, job, max_concurrency=max_concurrency, counts_only=counts_only)
        result.ranges_verified, result.ranges_matching, result.ranges_mismatched = len(todo), matching, bad
        result.verify_seconds = round(time.perf_counter() - started, 3)
        print(f"verify ({result.verify}): {matching} of {len(todo)} ranges match in {result.verify_seconds:.1f}s")
        if bad:
            reason = mismatch_reason(bad, len(todo))
            print(reason)
        result.duration_s = round(result.duration_s + result.verify_seconds, 3)
    if incremental is not None:
        incremental.complete(result, job.target_url, run.run_key, moved=complete and reason is None)
    return run.finish(result, failed_reason=reason)


def verify_only(flow: str, src: SecretStr, job: CopyJob, info: dict[str, Any], *, run_key: str | None,
                chunk_rows: int, max_concurrency: int, counts_only: bool) -> MigrationSummary:
    """Verify existing tables range by range (counts and checksums) under run key ``run_key``; writes nothing."""
    with ChunkedRun(flow, run_key=run_key, total=None, unit="rows") as run:
        run.dead.close()
        return _verify_ranges(run, src, job, info, chunk_rows=chunk_rows, max_concurrency=max_concurrency,
                              counts_only=counts_only)


def _verify_ranges(run: ChunkedRun, src: SecretStr, job: CopyJob, info: dict[str, Any], *, chunk_rows: int,
                   max_concurrency: int, counts_only: bool) -> MigrationSummary:
    started = time.perf_counter()
    ranges = verify_scope(plan_ranges(src, job.table, query=job.query, key=job.key, chunk_rows=chunk_rows,
                                      verify_key=False, schema=job.source_schema))
    matching, bad = verify_all(ranges, job, max_concurrency=max_concurrency, counts_only=counts_only)
    took = time.perf_counter() - started
    rows = sum(r.estimated_rows for r in ranges)
    result = MigrationSummary(
        flow=run.flow, run_key=run.run_key, **info, key=job.key, verify_only=True, total=rows, succeeded=rows,
        chunks_total=len(ranges), duration_s=round(took, 3), items_per_second=round(rows / took, 1) if took else 0.0,
        ranges_total=len(ranges), rows_estimated=rows, verify="counts" if counts_only else "checksums",
        ranges_verified=len(ranges), ranges_matching=matching, ranges_mismatched=bad, verify_seconds=round(took, 3),
    )
    reason = mismatch_reason(bad, len(ranges)) if bad else None
    print(reason or f"verify: all {len(ranges)} ranges match ({rows} rows)")
    return run.finish(result, failed_reason=reason)


__all__ = [
    "CopyJob",
    "MigrationSummary",
    "RangeMismatch",
    "copy_and_verify",
    "copy_one_range",
    "copy_range_task",
    "fingerprint",
    "mismatch_reason",
    "planned_ranges",
    "recheck_ledger",
    "resolve_url",
    "verify_all",
    "verify_only",
]
