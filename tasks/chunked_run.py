"""One resumable run of chunk tasks: the plumbing every flow shares.

A flow describes its chunks (items, key ranges, file parts) and a Prefect task that turns one chunk
into a :class:`ChunkReport`; :class:`ChunkedRun` does the rest: run key and state dir, cache keys
and persisted results (resume), the bounded window, progress, dead letters, stop rules (fatal
errors, fail-fast) and the summary with its final state.

    run = ChunkedRun("db-migrate", run_key=run_key, total=len(ranges))
    task = run.configure(copy_range_task, chunk_retries=1)
    summary = run.execute(
        ranges, lambda r: {"rng": r, "cache_key": run.cache_key("v1", r.model_dump_json()), ...}, task,
        chunk=lambda r: (r.index, r.estimated_rows, [r.model_dump()]), max_concurrency=2,
    )
    return run.finish(summary, min_success_ratio=1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect.states import State

from tasks.engine import (
    TaskRunnerName,
    chunk_cache_key,
    configure_chunk_task,
    open_task_runner,
    run_window,
    state_report,
)
from tasks.errors import FatalError
from tasks.outcomes import ChunkReport, DeadLetterWriter, FailedItem, RunSummary, SummaryBuilder
from tasks.progress import Progress, publish_summary
from tasks.redact import redact_text
from tasks.settings import EngineSettings
from tasks.state import RunDir, new_run_key, write_text_atomic

U = TypeVar("U")
OnErrorMode = Literal["continue", "fail_fast"]
# (index, size, items to dead-letter if the whole chunk fails)
ChunkFacts = Callable[[Any], tuple[int, int, list[Any]]]


def current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def default_run_key() -> str:
    """The flow run's id inside a flow run (a retried flow run resumes), otherwise a new key."""
    return current_flow_run_id() or new_run_key()


def missing_outputs(report: ChunkReport) -> list[str]:
    """Files a finished chunk wrote that are gone now: ``extra["outputs"]`` when the flow lists every file
    (parts, partitions, rejects), else ``output_path``."""
    listed = report.extra.get("outputs")
    paths = [str(p) for p in listed] if isinstance(listed, list) else [report.output_path] if report.output_path else []
    return [p for p in paths if not Path(p).exists()]


class ChunkedRun:
    """State of one run of one flow: see the module docstring."""

    def __init__(
        self, flow: str, *, run_key: str | None, total: int | None, handler_id: str | None = None,
        on_error: OnErrorMode = "continue", unit: str = "items", redo_missing_outputs: bool = False,
    ) -> None:
        self.settings = EngineSettings()
        self.flow = flow
        self.run_key = run_key or default_run_key()
        self.run_dir = RunDir.for_run(flow, self.run_key, self.settings.state_dir)
        self.total = total
        self.on_error = on_error
        self.unit = unit
        self.builder = SummaryBuilder(flow, self.run_key)
        self.dead = DeadLetterWriter(self.run_dir.dead_letter, flow=flow, run_key=self.run_key, handler=handler_id)
        self.progress = Progress(flow, total, interval_s=self.settings.progress_interval_s)
        self.fatal: str | None = None
        self.failed_seen = False
        # a finished chunk whose output file is gone: redone (pure transforms) or reported (side effects)
        self.redo_missing_outputs = redo_missing_outputs
        self.missing_outputs: list[str] = []
        self._started = time.perf_counter()

    def cache_key(self, *parts: str) -> str:
        """Cache key of a chunk: flow, run key and the given parts (cache version, identity, content)."""
        return chunk_cache_key(self.flow, self.run_key, *parts)

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

    def should_stop(self) -> bool:
        return self.fatal is not None or (self.on_error == "fail_fast" and self.failed_seen)

    def record(self, report: ChunkReport) -> None:
        """Fold one chunk's report: counts, dead letters, progress."""
        self.builder.add(report)
        self.dead.write(report.failures)
        self.failed_seen = self.failed_seen or report.failed > 0
        self.progress.advance(report.size, report.failed)

    def record_failure(self, index: int, size: int, items: list[Any], exc: BaseException) -> ChunkReport:
        """A chunk task that failed as a whole: all its items failed with that error (and are not cached)."""
        if isinstance(exc, FatalError):
            self.fatal = redact_text(str(exc))
        failures = [FailedItem.from_exception(item, exc, chunk=index, position=i, attempts=1) for i, item in enumerate(items)]
        report = ChunkReport(index=index, size=size, failed=size, failures=failures)
        self.builder.summary.chunks_failed += 1
        self.record(report)
        return report

    def execute(
        self,
        units: Iterable[U],
        parameters: Callable[[U], dict[str, Any]],
        task: Any,
        *,
        chunk: ChunkFacts,
        max_concurrency: int,
        task_runner: TaskRunnerName = "threads",
        dask_address: str | None = None,
        on_report: Callable[[U, ChunkReport], None] | None = None,
    ) -> RunSummary:
        """Run one task per unit in a bounded window; return the (undecided) summary when all are done."""

        def on_done(pair: tuple[U, dict[str, Any]], state: State) -> None:
            unit = pair[0]
            outcome = state_report(state)
            if isinstance(outcome, ChunkReport):
                self.record(outcome)
                if on_report is not None:
                    on_report(unit, outcome)
            else:
                index, size, items = chunk(unit)
                self.record_failure(index, size, items, outcome)

        def fresh_units() -> Iterator[tuple[U, dict[str, Any]]]:
            """Units still to run; finished ones (persisted reports) are recorded without a task run."""
            for unit in units:
                params = parameters(unit)
                cached = self.cached_report(params["cache_key"]) if "cache_key" in params else None
                gone = missing_outputs(cached) if cached is not None else []
                if gone:
                    if self.redo_missing_outputs:
                        self.progress.logger.warning(
                            "chunk %d finished in an earlier attempt but its output %s is gone: running it again",
                            cached.index, gone[0])
                        (self.run_dir.chunks / params["cache_key"]).unlink(missing_ok=True)
                        cached = None
                    else:
                        self.missing_outputs.extend(gone)
                if cached is None:
                    yield unit, params
                    continue
                self.record(cached)
                if on_report is not None:
                    on_report(unit, cached)
                if self.should_stop():
                    return

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
                    should_stop=self.should_stop,
                    memory_limit_mb=self.settings.memory_limit_mb,
                    logger=self.progress.logger,
                )
        except BaseException:
            self.progress.abandon()
            raise
        finally:
            self.dead.close()
        self.progress.finish()
        summary = self.builder.finish(time.perf_counter() - self._started)
        if self.should_stop():
            summary.remaining = None if self.total is None else max(self.total - summary.total, 0)
        return summary

    def finish(
        self, summary: RunSummary, *, min_success_ratio: float = 1.0, output_path: str | None = None,
        failed_reason: str | None = None,
    ) -> RunSummary:
        """Decide the final state, write summary.json, publish the artifacts; return the summary."""
        summary.dead_letter_path = str(self.run_dir.dead_letter) if summary.failed else None
        summary.output_path = output_path
        summary.flow_run_id = current_flow_run_id()
        if self.missing_outputs and not failed_reason:
            failed_reason = (
                f"{len(self.missing_outputs)} output file(s) of chunks finished in an earlier attempt are missing "
                f"(e.g. {self.missing_outputs[0]}); they are not redone on their own because that would run their "
                "items again (side effects included): restore the files, or rerun with a new cache_version to redo "
                "the whole run"
            )
        decide_state(summary, on_error=self.on_error, min_success_ratio=min_success_ratio, fatal=self.fatal,
                     failed_reason=failed_reason)
        write_text_atomic(self.run_dir.summary, summary.model_dump_json(indent=2))
        publish_summary(summary)
        return summary


def decide_state(
    summary: RunSummary, *, on_error: OnErrorMode, min_success_ratio: float, fatal: str | None,
    failed_reason: str | None = None,
) -> RunSummary:
    """Set the final state and a message stating the counts, following on_error and min_success_ratio."""
    counts = summary.counts_line()
    if fatal is not None:
        summary.state, summary.message = "Failed", f"stopped by a fatal error: {fatal}. {counts}"
    elif on_error == "fail_fast" and summary.failed:
        summary.state, summary.message = "Failed", f"fail_fast: stopped at the first failed item. {counts}"
    elif summary.success_ratio < min_success_ratio:
        summary.state = "Failed"
        summary.message = f"success ratio {summary.success_ratio:.4f} is below min_success_ratio {min_success_ratio}. {counts}"
    elif failed_reason:
        summary.state, summary.message = "Failed", f"{failed_reason}. {counts}"
    else:
        summary.state, summary.message = "Completed", counts
    return summary


__all__ = ["ChunkFacts", "ChunkedRun", "current_flow_run_id", "decide_state", "default_run_key", "missing_outputs"]
