"""One resumable run of chunk tasks: the plumbing every flow shares.

A flow describes its chunks (items, key ranges, file parts) and a Prefect task that turns one chunk
into a :class:`ChunkReport`; :class:`ChunkedRun` does the rest: the run key, its lock (one live run per
key) and state dir, chunk identities and persisted results (resume), journals, the bounded window,
progress, dead letters, stop rules (fatal errors, fail-fast) and the summary with its final state.

    with ChunkedRun("db-migrate", run_key=run_key, total=None, identity=(cache_version, target)) as run:
        task = run.configure(copy_range_task, chunk_retries=1)
        summary = run.execute(
            ranges, lambda r: {"rng": r, "ref": run.ref(r.index, content=value_hash(r.bounds())), ...}, task,
            chunk=lambda r: (r.index, r.estimated_rows, [r.model_dump()]), max_concurrency=2,
        )
        return run.finish(summary, min_success_ratio=1.0)

Exactly once, the contract: a chunk is identified by the run (flow, run key, the flow's identity
parts: cache_version, handler identity, output, ...) plus its *position*; its record carries the
*content hash* it ran with. A rerun finds a finished chunk by position, checks that the source still
holds the same content there (else it stops: the source changed) and reuses the record; a chunk
without a record runs, and its journal gives back the items an earlier attempt finished.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect.states import State

from tasks.core.engine import (
    TaskRunnerName,
    chunk_cache_key,
    configure_chunk_task,
    open_task_runner,
    run_window,
    state_report,
)
from tasks.core.errors import FatalError
from tasks.core.identity import LEGACY_FORMS, HashForm, UnhashableItem, legacy_chunk_hashes
from tasks.core.items import ChunkRef, describe_stop, stop_signal
from tasks.core.journal import FAILED, SKIPPED, SUCCEEDED, ChunkJournal, SourceChanged, journal_content
from tasks.core.journal_sync import JournalPusher
from tasks.core.lease import LeaseLock
from tasks.core.objoutput import exists, guard_output
from tasks.core.outcomes import ChunkReport, DeadLetterWriter, FailedItem, RunSummary, SummaryBuilder
from tasks.core.progress import Progress, publish_summary
from tasks.core.redact import redact_text
from tasks.core.retry import attempts_made
from tasks.core.runlock import OutputLock, RunLock, mark_crashed
from tasks.core.settings import EngineSettings
from tasks.core.state import RunDir, new_run_key, write_text_atomic
from tasks.core.timeouts import run_timeout

U = TypeVar("U")
SAME_FAILURE_STOP = 3  # whole-chunk failures alike, before any success, that stop the run
OnError = Literal["continue", "fail_fast"]
# (index, size, items to dead-letter if the whole chunk fails)
ChunkFacts = Callable[[Any], tuple[int, int, list[Any]]]


def current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def current_flow_name(default: str) -> str:
    """The name of the flow whose run this is (a flow body reused by another flow runs under that one's name)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow.name if ctx is not None and ctx.flow is not None else default


def default_run_key() -> str:
    """The flow run's id inside a flow run (a retried flow run resumes), otherwise a new key."""
    return current_flow_run_id() or new_run_key()


def missing_outputs(report: ChunkReport) -> list[str]:
    """Files a finished chunk wrote that are gone now: ``extra["outputs"]`` when the flow lists every file
    (parts, partitions, rejects), else ``output_path``."""
    listed = report.extra.get("outputs")
    paths = [str(p) for p in listed] if isinstance(listed, list) else [report.output_path] if report.output_path else []
    return [p for p in paths if not exists(p)]


STILL_RUNNING_S = 30.0  # after run_timeout_s, when a run still waiting for its chunks says why (twice that: abandons them)


class ChunkedRun:
    """State of one run of one flow: see the module docstring. Use it as a context manager (the run key's
    lock is released when the block ends, however it ends)."""

    def __init__(
        self, flow: str, *, run_key: str | None, total: int | None, identity: Sequence[str] = (),
        handler_id: str | None = None, on_error: OnError = "continue", unit: str = "items",
        redo_missing_outputs: bool = False,
    ) -> None:
        self.settings = EngineSettings()
        self.flow = flow
        self.run_key = run_key or default_run_key()
        store = self.settings.object_store()
        self.lease: LeaseLock | None = None
        self.run_dir = RunDir.for_run(flow, self.run_key, self.settings.resolved_state_dir(), store=store,
                                      guard=self._holds_key)
        self.identity = tuple(str(p) for p in identity)
        self.scope = f"{flow}:{self.run_key}:{uuid.uuid4().hex}"  # this attempt: stop signals, internal names
        self.fatal: str | None = None
        # the local lock always (one run per key on this machine; cleanup never removes a live run's
        # directory), the lease as well when the state is in object storage (one run per key anywhere)
        self.lock = RunLock(self.run_dir.root / "lock", flow=flow, run_key=self.run_key,
                            flow_run_id=current_flow_run_id()).acquire()
        stored: dict[str, str] = {}
        if store is not None:
            try:
                self.lease = LeaseLock(store, f"{self.run_dir.rel}/lease", flow=flow, run_key=self.run_key,
                                       flow_run_id=current_flow_run_id(), lease_s=self.settings.state_lease_s,
                                       on_lost=self._lease_lost).acquire()
                stored = self.run_dir.pull()
            except BaseException:
                if self.lease is not None:
                    self.lease.release()
                self.lock.release()
                raise
        self._plan_pushed = -1
        self._plan_lock = threading.Lock()
        self.journals: JournalPusher | None = None
        if store is not None and self.settings.state_journal_push_s > 0:
            self.journals = JournalPusher(
                self.run_dir, self.settings.state_journal_push_s, before_push=self._push_plan,
                stored=[n.removeprefix("journal/") for n in stored if n.startswith("journal/")])
        self.total = total
        self.on_error = on_error
        self.unit = unit
        self.builder = SummaryBuilder(flow, self.run_key)
        self.progress = Progress(flow, total, run_key=self.run_key, interval_s=self.settings.progress_interval_s)
        self.progress.logger.info("%s run %r: state in %s", flow, self.run_key, self.run_dir.location)
        # no part anywhere is this run's yet
        self.fresh = _records_nothing(self.run_dir.root, {self.lock.path, self.run_dir.identity})
        self._previous_identity = self._note_identity()
        self.output_lock: OutputLock | None = None
        self._guarded: str | None = None  # the output folder whose writes ask _holds_key
        self._take_over_note()
        self.dead = DeadLetterWriter(self.run_dir.dead_letter, flow=flow, run_key=self.run_key, handler=handler_id)
        self.failed_seen = False
        # a finished chunk whose output file is gone: redone (pure transforms) or reported (side effects)
        self.redo_missing_outputs = redo_missing_outputs
        self.missing_outputs: list[str] = []
        self.incomplete = 0
        self.chunks_done_ok = 0  # chunks that finished with a success (a run that works at all)
        self._failure_shape: tuple[str, str] | None = None
        self._failures_alike = 0
        self._started = time.perf_counter()
        self.timed_out: str | None = None
        self._closed = False
        limit = run_timeout.get()
        self._ends_at = time.time() + limit if limit else None  # for the chunks (ChunkRef.stop_at)
        self._still_timer: threading.Timer | None = None
        self._timer = threading.Timer(limit, self._time_up, args=(limit,)) if limit else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    # ------------------------------------------------------------------ lock

    def claim_output(self, folder: str | None) -> None:
        """Take ``folder`` for this run: refused (OutputInUse, naming the other run) while another live run
        writes to it, since their parts would have the same names. Then a fresh run removes the part files an
        earlier run (another run_key) left directly in ``folder``: its own parts take their names, and a part
        it does not write (a chunk that fails as a whole, or that a stop leaves unreached) must not hand back
        the other run's rows. A resumed run keeps its parts; one whose identity changed (a new cache_version or
        handler: its chunks' records are not reused) removes every part no current record wrote."""
        if not folder:
            return
        self.lock_output(folder)
        if self.lease is not None:
            guard_output(folder, self._holds_key)
            self._guarded = folder
        from tasks.core.results import clear_parts

        if self.fresh:
            removed, whose = clear_parts(folder), "an earlier run (another run_key)"
        elif (owned := self._parts_of_other_identity()) is not None:
            removed, whose = clear_parts(folder, keep=owned), f"an earlier attempt of run_key {self.run_key!r} " \
                "with another identity (cache_version or handler)"
        else:
            return
        if removed:
            self.progress.logger.warning(
                "output %s held %d part file(s) of %s: removed them, this run writes its own (give each run its "
                "own output folder to keep earlier results)", redact_text(str(folder)), removed, whose)

    def lock_output(self, folder: str | Path) -> None:
        """Hold ``folder`` for this run until it closes: refused (OutputInUse, naming the other run) while another
        live run writes to it, since their parts would have the same names (a lease in the bucket when the
        state is in object storage, so that runs on other machines see it)."""
        if self.output_lock is None:
            self.output_lock = OutputLock(str(folder), state_dir=self.settings.resolved_state_dir(), flow=self.flow,
                                          run_key=self.run_key, flow_run_id=current_flow_run_id(),
                                          store=self.run_dir.store, lease_s=self.settings.state_lease_s,
                                          on_lost=self._lease_lost).acquire()

    def _note_identity(self) -> str | None:
        """Record this attempt's identity in the run dir; the one the previous attempt recorded (None if none)."""
        path = self.run_dir.identity
        previous = path.read_text().strip() if path.is_file() else None
        current = chunk_cache_key(self.flow, self.run_key, *self.identity)
        if previous != current:
            write_text_atomic(path, current)
            self.run_dir.push(path)
        return previous

    def _parts_of_other_identity(self) -> set[str] | None:
        """When an earlier attempt of this run_key ran under another identity, the names of the parts this
        identity's records own (every other part is the earlier identity's); None when the identity is the same."""
        current = chunk_cache_key(self.flow, self.run_key, *self.identity)
        if self._previous_identity == current:
            return None
        owned: set[str] = set()
        foreign = self._previous_identity is not None  # no marker: a run dir of batchflows < 0.14, look
        for path in sorted(self.run_dir.chunks.glob("*")) if self.run_dir.chunks.is_dir() else []:
            report = self.cached_report(path.name) if path.is_file() and not path.name.startswith(".") else None
            if report is None:
                continue
            if path.name != self.ref(report.index).key:
                foreign = True
                continue
            listed = report.extra.get("outputs")
            outputs = listed if isinstance(listed, list) else [report.output_path] if report.output_path else []
            owned.update(str(p).rstrip("/").rsplit("/", 1)[-1] for p in outputs)
        return owned if foreign else None

    def _take_over_note(self) -> None:
        dead = self.lease.previous if self.lease is not None else self.lock.previous
        if dead is None:
            return
        self.progress.logger.warning(
            "%s run_key %r: the previous run of this key (%s) ended without finishing (killed or crashed); this "
            "run takes it over and resumes its work", self.flow, self.run_key, dead.describe())
        thread = threading.Thread(
            target=mark_crashed, kwargs={"holder": dead, "flow": self.flow, "run_key": self.run_key,
                                         "new_flow_run_id": current_flow_run_id()},
            name="batchflows-mark-crashed", daemon=True)
        thread.start()
        thread.join(15)

    def _holds_key(self) -> bool:
        """The one gate of this run's writes to the shared state and outputs in object storage (plan, records,
        journals, dead letters, summary, deletions, output parts): True while the run key's lease is confirmed
        held (:meth:`tasks.core.lease.LeaseLock.confirmed`). Once it is lost, what this run still finishes stays
        in its local cache: the key, its state and its output folder are another run's."""
        return self.lease is not None and self.lease.confirmed()

    def _lease_lost(self, why: str) -> None:
        self.fatal = self.fatal or why
        stop_signal(self.scope).set()

    def close(self) -> None:
        """Release the run key (idempotent); the dead-letter file is closed (and pushed) too."""
        self._closed = True
        for timer in (self._timer, self._still_timer):
            if timer is not None:
                timer.cancel()
        self.dead.close()
        if self.journals is not None:
            self.journals.stop()
        if self.lease is not None and self.lease.held:
            try:
                if self.journals is not None:
                    self.journals.push_changed()
                self.run_dir.push(self.run_dir.dead_letter)
            except Exception as exc:  # rebuilt from the chunk records by the next run of the key
                self.progress.logger.warning("state not pushed to %s: %s", self.run_dir.location, exc)
            self.lease.release()
        if self._guarded is not None:
            guard_output(self._guarded, None)
            self._guarded = None
        if self.output_lock is not None:
            self.output_lock.release()
        self.lock.release()

    def _push_plan(self) -> None:
        """Push ``plan.log`` if it grew since its last push (before any record or journal that needs it)."""
        with self._plan_lock:
            size = self.run_dir.plan.stat().st_size if self.run_dir.plan.is_file() else -1
            if size != self._plan_pushed:
                self.run_dir.push(self.run_dir.plan)
                self._plan_pushed = size

    def _drop_journal(self, ref: ChunkRef) -> None:
        """The chunk's record is written: its journal goes (here, and in object storage if it was pushed)."""
        if not ref.journal:
            return
        if self.journals is not None:
            self.journals.drop(Path(ref.journal))
        else:
            Path(ref.journal).unlink(missing_ok=True)

    def _push_record(self, key: str, report: ChunkReport) -> None:
        """Make a finished chunk's record durable in object storage: the plan it was cut by first, then the
        record itself (one PUT each). A record written on another machine (a Dask worker) is rebuilt here."""
        if not self.run_dir.writable():  # local state, or lost: the key is another run's
            return
        self._push_plan()
        path = self.run_dir.chunks / key
        if path.is_file():
            self.run_dir.push(path)
            return
        from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

        record = ResultRecord(metadata=ResultRecordMetadata(storage_key=str(path)), result=report)
        self.run_dir.put(f"chunks/{key}", record.serialize())

    def _time_up(self, limit: float) -> None:
        self.timed_out = (f"run_timeout_s={limit:g}s passed: no chunk started after it and the chunks in flight "
                          "stopped before their next item")
        stop_signal(self.scope).set()
        self.progress.logger.warning("%s run %r: %s", self.flow, self.run_key, self.timed_out)
        if self._closed:
            return
        self._still_timer = threading.Timer(STILL_RUNNING_S, self._still_running, args=(limit,))
        self._still_timer.daemon = True
        self._still_timer.start()

    def _still_running(self, limit: float) -> None:
        """Say why a run that timed out has not ended: a handler call in flight has not returned."""
        if self._closed:
            return
        self.progress.logger.warning(
            "%s run %r: run_timeout_s=%gs passed %g s ago and chunks are still in flight: a handler call that "
            "does not return keeps this run waiting, since a running call cannot be stopped; batch_map abandons "
            "such calls %g s from now (their items run again on the rerun). Bound each call with item_timeout_s "
            "(a call past it is abandoned, its item retried then dead-lettered) and give the handler's I/O its own "
            "timeout", self.flow, self.run_key, limit, STILL_RUNNING_S, STILL_RUNNING_S)

    def __enter__(self) -> ChunkedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ chunk identities

    def ref(self, index: int, content: str | None = None) -> ChunkRef:
        """The identity of chunk ``index`` in this run; ``content`` when the flow knows it (else the task
        computes it from the items)."""
        key = chunk_cache_key(self.flow, self.run_key, *self.identity, f"#{index}")
        ends = self._ends_at
        return ChunkRef(key=key, index=index, content=content, journal=str(self.run_dir.journal / f"{key}.jsonl"),
                        stop_at=ends, abandon_at=None if ends is None else ends + 2 * STILL_RUNNING_S)

    def configure(self, task: Any, *, chunk_retries: int = 1, tags: Iterable[str] = (), retry_delay_s: float = 1.0) -> Any:
        """The flow's chunk task with this run's resume cache, retries and tags."""
        return configure_chunk_task(
            task, results_dir=self.run_dir.chunks, chunk_retries=chunk_retries, tags=tags, retry_delay_s=retry_delay_s
        )

    def cached_report(self, cache_key: str) -> ChunkReport | None:
        """The persisted report of a chunk that finished in an earlier attempt of this run key, if any.

        Reading the record directly costs a file read; submitting the task only to get ``Cached``
        back costs a task run (~5-10 ms and API traffic), which dominated resumes of big runs.
        """
        path = self.run_dir.chunks / cache_key
        if not path.is_file():
            return None
        try:
            from prefect._internal.result_records import ResultRecord

            result = ResultRecord.deserialize(path.read_bytes()).result
        except Exception as exc:  # unreadable record: run the chunk again (it overwrites the record)
            self.progress.logger.warning("chunk record %s unreadable (%s); the chunk runs again", path.name, exc)
            return None
        return result.model_copy(update={"resumed": True}) if isinstance(result, ChunkReport) else None

    def _changed(self, index: int, what: str) -> SourceChanged:
        return SourceChanged(
            f"the source changed since {self.flow} run_key {self.run_key!r} started: {what} holds different items "
            f"than the earlier attempt recorded for chunk {index}, so its recorded outcome cannot be reused and "
            "running it again would mix two versions of the input. Nothing more was run. Restore the original "
            "source to finish this run, or start over with a new run_key (or another cache_version)")

    def _check_content(self, ref: ChunkRef, recorded: str | None, content: Callable[[], str | None], what: str) -> None:
        if not recorded:
            return
        current = ref.content or content()
        if current is not None and current != recorded:
            if not any(self._hashed_as(form, content) == recorded for form in LEGACY_FORMS):  # an earlier version's?
                raise self._changed(ref.index, what)
            current = recorded  # the same items: the chunk goes on under its recorded hash (its journal's header)
        ref.content = current

    @staticmethod
    def _hashed_as(form: HashForm, content: Callable[[], str | None]) -> str | None:
        with legacy_chunk_hashes(form):
            return content()

    def _check_source_end(self, count: int) -> None:
        """The source ended after ``count`` chunks: SourceChanged if an earlier attempt of this run (same
        identity) recorded or started a chunk past that end (its ``plan.log`` planned it), since its outcome and
        output are of items the source no longer holds. A chunk that only shrank is caught by its content."""
        plan = self.run_dir.plan
        planned = plan.read_bytes().count(b"\n") if plan.is_file() else 0
        beyond = [index for index in range(count, planned) if self._started_chunk(index)]
        if not beyond:
            return
        shown = ", ".join(str(i) for i in beyond[:5]) + (f" (and {len(beyond) - 5} more)" if len(beyond) > 5 else "")
        raise SourceChanged(
            f"the source changed since {self.flow} run_key {self.run_key!r} started: it now ends after {count} "
            f"chunk(s), but the earlier attempt recorded chunk(s) {shown} past that end, "
            "whose outcomes and outputs are of items the source no longer holds. Their results are not counted or "
            "mixed in; restore the original source to finish this run, or start over with a new run_key (or "
            "another cache_version)")

    def _started_chunk(self, index: int) -> bool:
        ref = self.ref(index)
        return (self.run_dir.chunks / ref.key).is_file() or bool(ref.journal and Path(ref.journal).is_file())

    # ------------------------------------------------------------------ folding reports

    def should_stop(self) -> bool:
        return self.fatal is not None or self.timed_out is not None or (
            self.on_error == "fail_fast" and self.failed_seen)

    def _same_failure(self, exc: BaseException) -> None:
        """Stop the run when the first chunks all fail as a whole the same way (nothing succeeded yet): every
        other chunk would too (a missing permission, a type the writer cannot encode, a wrong endpoint)."""
        if self.chunks_done_ok or self.fatal is not None:
            return
        text = redact_text(str(exc) or type(exc).__name__)
        shape = (type(exc).__name__, re.sub(r"\d+", "N", text))
        self._failures_alike = self._failures_alike + 1 if shape == self._failure_shape else 1
        self._failure_shape = shape
        if self._failures_alike >= SAME_FAILURE_STOP:
            self.fatal = (f"the first {self._failures_alike} chunks all failed the same way and none succeeded, so "
                          f"every other one would too: {text[:500]}")

    def record(self, report: ChunkReport) -> None:
        """Fold one chunk's report: counts, dead letters, progress."""
        if report.complete and report.succeeded:
            self.chunks_done_ok += 1
        self.builder.add(report)
        self.dead.write(report.failures)
        if report.failures:  # complete at close; meanwhile at most every 2 s (rebuilt from records on resume)
            self.run_dir.push(self.run_dir.dead_letter, min_interval_s=2.0)
        self.failed_seen = self.failed_seen or report.failed > 0
        self.progress.advance(report.size - report.not_reached, report.failed)

    def record_failure(self, index: int, size: int, items: list[Any], exc: BaseException,
                       ref: ChunkRef | None = None) -> ChunkReport:
        """A chunk task that failed as a whole (after its retries): the items its journal says finished keep
        their outcome, every other item failed with that error. Nothing is cached: a rerun runs it again."""
        if isinstance(exc, FatalError | UnhashableItem):  # UnhashableItem: every chunk with such items would fail
            self.fatal = redact_text(str(exc))
        self._same_failure(exc)
        entries = {}
        if ref is not None and ref.journal and (content := journal_content(Path(ref.journal))):
            try:
                entries = ChunkJournal(Path(ref.journal), content).load()
            except Exception:  # unreadable: count from the error alone
                entries = {}
        report = ChunkReport(index=index, size=size, complete=False)
        for position, item in enumerate(items):
            entry = entries.get(position)
            if entry is not None and entry.kind == SUCCEEDED:
                report.succeeded += 1
            elif entry is not None and entry.kind == SKIPPED:
                report.skipped += 1
            elif entry is not None and entry.kind == FAILED:
                failure = FailedItem.model_validate_json(entry.payload)
                failure.item = item
                report.failures.append(failure)
            else:
                report.failures.append(FailedItem.from_exception(item, exc, chunk=index, position=position,
                                                                 attempts=attempts_made(exc)))
        report.failed = size - report.succeeded - report.skipped  # a unit of many rows fails with all its rows
        self.builder.summary.chunks_failed += 1
        self.incomplete += 1
        self.record(report)
        return report

    # ------------------------------------------------------------------ the run

    def execute(
        self,
        units: Iterable[U],
        parameters: Callable[[U], dict[str, Any]],
        task: Any,
        *,
        chunk: ChunkFacts,
        max_concurrency: int,
        content: Callable[[U], str | None] | None = None,
        describe: Callable[[U], str] | None = None,
        task_runner: TaskRunnerName = "threads",
        dask_address: str | None = None,
        on_report: Callable[[U, ChunkReport], None] | None = None,
    ) -> RunSummary:
        """Run one task per unit in a bounded window; return the (undecided) summary when all are done.

        ``parameters(unit)`` holds the task's parameters, ``ref`` (from :meth:`ref`) among them.
        ``content(unit)`` computes a unit's content hash when its ref has none (only needed when an
        earlier attempt left a record or journal to check against).
        """

        def on_done(pair: tuple[U, dict[str, Any]], state: State) -> None:
            unit, params = pair
            ref: ChunkRef = params["ref"]
            outcome = state_report(state)
            if isinstance(outcome, ChunkReport):
                if outcome.complete:
                    self._push_record(ref.key, outcome)
                    self._drop_journal(ref)
                else:  # not finished: drop its record so a rerun runs it (its journal keeps what was done)
                    self.run_dir.discard(self.run_dir.chunks / ref.key)
                    self.incomplete += 1
                    if any(f.category == "fatal" for f in outcome.failures) and self.fatal is None:
                        self.fatal = outcome.stop_reason
                    self.progress.logger.warning(describe_stop(outcome))
                self.record(outcome)
                if on_report is not None:
                    on_report(unit, outcome)
            else:
                index, size, items = chunk(unit)
                self.record_failure(index, size, items, outcome, ref)

        def fresh_units() -> Iterator[tuple[U, dict[str, Any]]]:
            """Units still to run; finished ones (persisted reports) are recorded without a task run."""
            seen = 0
            for unit in units:
                params = parameters(unit)
                ref: ChunkRef = params["ref"]
                seen = ref.index + 1
                compute = (lambda unit=unit: content(unit)) if content is not None else (lambda: None)
                cached = self.cached_report(ref.key)
                if cached is not None and not cached.complete:
                    self.run_dir.discard(self.run_dir.chunks / ref.key)
                    cached = None
                shown = describe(unit) if describe is not None else f"chunk {ref.index}"
                if cached is None:
                    recorded = journal_content(Path(ref.journal)) if ref.journal else None
                    self._check_content(ref, recorded, compute, shown)
                    yield unit, params
                    continue
                self._check_content(ref, cached.content_hash, compute, shown)
                self._drop_journal(ref)
                gone = missing_outputs(cached)
                if gone:
                    if self.redo_missing_outputs:
                        self.progress.logger.warning(
                            "chunk %d finished in an earlier attempt but its output %s is gone: running it again",
                            cached.index, gone[0])
                        self.run_dir.discard(self.run_dir.chunks / ref.key)
                        yield unit, params
                        continue
                    self.missing_outputs.extend(gone)
                self.record(cached)
                if on_report is not None:
                    on_report(unit, cached)
                if self.should_stop():
                    return
            self._check_source_end(seen)

        runners: list[Any] = []

        def submit(pair: tuple[U, dict[str, Any]]) -> Any:
            if not runners:  # started on first use: a fully resumed run starts no pool or Dask cluster
                runners.append(stack.enter_context(open_task_runner(task_runner, max_concurrency, dask_address)))
            return runners[0].submit(task, parameters=pair[1])

        try:
            with ExitStack() as stack:
                run_window(
                    fresh_units(),
                    submit,
                    on_done,
                    max_in_flight=max_concurrency,
                    runner=lambda: runners[0] if runners else None,
                    should_stop=self.should_stop,
                    memory_limit_mb=self.settings.memory_limit_mb,
                    logger=self.progress.logger,
                )
        except BaseException:
            self.progress.abandon()
            self.close()
            raise
        self.dead.close()
        self.progress.finish(wait=False)  # its last update goes out beside the summary artifacts
        summary = self.builder.finish(time.perf_counter() - self._started)
        reached = summary.total + self.builder.not_reached
        if self.should_stop():
            summary.remaining = None if self.total is None else self.builder.not_reached + max(self.total - reached, 0)
        else:
            summary.remaining = self.builder.not_reached
        return summary

    def finish(
        self, summary: RunSummary, *, min_success_ratio: float = 1.0, output_path: str | None = None,
        failed_reason: str | None = None,
    ) -> RunSummary:
        """Decide the final state, write summary.json, publish the artifacts, release the run key."""
        try:
            summary.dead_letter_path = str(self.run_dir.dead_letter) if summary.failed else None
            summary.run_dir = self.run_dir.location
            summary.output_path = output_path
            summary.flow_run_id = current_flow_run_id()
            if self.missing_outputs and not failed_reason:
                failed_reason = (
                    f"{len(self.missing_outputs)} output file(s) of chunks finished in an earlier attempt are missing "
                    f"(e.g. {self.missing_outputs[0]}); they are not redone on their own because that would run "
                    "their items again (side effects included): restore the files, or rerun with a new cache_version "
                    "to redo the whole run"
                )
            decide_state(summary, on_error=self.on_error, min_success_ratio=min_success_ratio, fatal=self.fatal,
                         failed_reason=failed_reason or (self.timed_out if summary.remaining != 0 else None))
            if (self.incomplete or (self.timed_out and summary.remaining != 0)) and summary.state == "Failed":
                summary.message += f" Rerun with run_key={self.run_key!r} to finish: only what was not done runs."
            write_text_atomic(self.run_dir.summary, summary.model_dump_json(indent=2))
            self.run_dir.push(self.run_dir.summary)
            publish_summary(summary, progress=self.progress)
            return summary
        finally:
            self.close()


def _records_nothing(root: Path, ignore: set[Path]) -> bool:
    """True when the run's state folder holds no file but its lock (and identity): no plan, record, journal,
    checkpoint or summary of an earlier attempt of this run_key."""
    return all(path in ignore or not path.is_file() for path in root.rglob("*"))


def decide_state(
    summary: RunSummary, *, on_error: OnError, min_success_ratio: float, fatal: str | None,
    failed_reason: str | None = None,
) -> RunSummary:
    """Set the final state and a message stating the counts, following on_error and min_success_ratio."""
    counts = summary.counts_line()
    if fatal is not None:
        summary.state, summary.message = "Failed", f"stopped by a fatal error: {fatal.rstrip('.')}. {counts}"
    elif on_error == "fail_fast" and summary.failed:
        summary.state, summary.message = "Failed", f"fail_fast: stopped at the first failed item. {counts}"
    elif summary.success_ratio < min_success_ratio:
        summary.state = "Failed"
        summary.message = f"success ratio {summary.success_ratio:.4f} is below min_success_ratio {min_success_ratio}. {counts}"
    elif failed_reason:
        summary.state, summary.message = "Failed", f"{failed_reason.rstrip('.')}. {counts}"
    else:
        summary.state, summary.message = "Completed", counts
    return summary


__all__ = [
    "ChunkFacts",
    "ChunkedRun",
    "OnError",
    "current_flow_name",
    "current_flow_run_id",
    "decide_state",
    "default_run_key",
    "missing_outputs",
]
