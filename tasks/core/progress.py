"""Progress for humans: a Prefect progress artifact, ETA log lines, and the final summary artifacts.

Updates are throttled (``BATCHFLOWS_PROGRESS_INTERVAL_S``, default once a second) so a run of 10k
chunks does not send 10k API calls. Outside a flow run (plain Python) only the log lines are written.

Artifacts are cosmetic, the run is not: every artifact call goes through a background thread, so an
API that is slow, restarting or gone never stalls the chunk window. (The Prefect client retries a
refused connection for about a minute per call; called from the flow thread, one progress update
held every chunk of the run for that long while the server restarted.) The final updates wait for
the API a bounded time, then the run goes on without them and says so.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from tasks.core.errors import BatchflowsError
from tasks.core.outcomes import RunSummary
from tasks.core.redact import redact_text

log = logging.getLogger("batchflows")


def _run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return log


def _eta(remaining: int, rate: float) -> str:
    if rate <= 0:
        return "?"
    seconds = int(remaining / rate)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _artifact_key(flow: str, run_key: str, kind: str) -> str:
    """``batch-map-<run key>-progress``: one key per run, so concurrent runs of a flow never overwrite each
    other's artifacts (a long run key is shortened with a hash to fit Prefect's 100 characters)."""
    import hashlib

    def clean(text: str) -> str:
        return "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in text.lower()).split("-")))

    key = clean(f"{flow}-{run_key}-{kind}")
    if len(key) > 100:
        digest = hashlib.blake2b(run_key.encode(), digest_size=5).hexdigest()
        key = clean(f"{flow}-{run_key[:40]}-{digest}-{kind}")[:100]
    return key


_FIRST_WAIT_S = 0.5  # a healthy API answers an artifact call well within this; past it, ask /health


def _in_background(call: Callable[[], None], name: str) -> threading.Thread:
    """Start ``call`` in a daemon thread with this context (flow run, client), so it may outlive a wait."""
    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(call,), name=name, daemon=True)
    thread.start()
    return thread


def _wait_for_api(join: Callable[[float], bool], timeout_s: float) -> str | None:
    """Wait for Prefect API calls to finish (``join(seconds) -> done``): briefly, then up to ``timeout_s``
    only while the API answers its health check. None when done, else why not."""
    if join(_FIRST_WAIT_S):
        return None
    reason = api_unreachable()
    if reason is not None:
        return f"unreachable ({reason})"
    return None if join(timeout_s) else f"slower than {timeout_s:.0f} s"


def _joiner(*threads: threading.Thread) -> Callable[[float], bool]:
    """``join(seconds) -> done``: wait at most that long in all for every thread to end."""
    def join(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    return join


class _ArtifactSender:
    """One background thread owning the progress artifact: creates it, then sends the newest value.

    Values that arrive while a call is in flight replace each other (only the latest matters), so a
    stalled API costs one pending call, never a queue.
    """

    def __init__(self, label: str, run_key: str) -> None:
        self.label = label
        self.run_key = run_key
        self._cond = threading.Condition()
        self._pending: float | None = None
        self._closed = False
        self.artifact_id: UUID | None = None
        self._thread = _in_background(self._loop, "batchflows-progress")

    def send(self, pct: float) -> None:
        with self._cond:
            self._pending = pct
            self._cond.notify()

    def close(self, final: float | None) -> Callable[[float], bool]:
        """Send ``final`` (if any) as the last value; returns a join for the wait until everything went out."""
        with self._cond:
            self._pending = final
            self._closed = True
            self._cond.notify()
        return _joiner(self._thread)

    def _loop(self) -> None:
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                progress=0.0, key=_artifact_key(self.label, self.run_key, "progress"),
                description=f"{self.label} run {self.run_key} progress"
            )
        except Exception as exc:  # the API is unreachable: logs still flow
            log.debug("no progress artifact: %s", exc)
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                pct, self._pending = self._pending, None
                closed = self._closed
            if pct is not None and self.artifact_id is not None:
                try:
                    from prefect.artifacts import update_progress_artifact

                    update_progress_artifact(artifact_id=self.artifact_id, progress=pct)
                except Exception as exc:
                    log.debug("progress artifact update failed: %s", exc)
            if closed:
                with self._cond:
                    if self._pending is None:
                        return


def _in_flow_run() -> bool:
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:
        return False


class Progress:
    """Tracks done/total and reports at most once per ``interval_s``."""

    def __init__(
        self, label: str, total: int | None, *, run_key: str = "", interval_s: float = 1.0, artifacts: bool = True,
        final_timeout_s: float = 10.0,
    ) -> None:
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.final_timeout_s = final_timeout_s
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self._last = 0.0
        self.logger = _run_logger()
        self._sender = _ArtifactSender(label, run_key) if artifacts and _in_flow_run() else None
        self._closing: Callable[[float], bool] | None = None

    def advance(self, items: int, failed: int = 0, *, force: bool = False) -> None:
        self.done += items
        self.failed += failed
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self._report(now)

    def _report(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            eta = _eta(self.total - self.done, rate)
            line = f"{self.label}: {self.done:,}/{self.total:,} ({pct:.1f}%), {rate:,.0f} items/s, ETA {eta}"
        else:
            pct = None
            line = f"{self.label}: {self.done:,} done (total unknown), {rate:,.0f} items/s"
        if self.failed:
            line += f", {self.failed:,} failed"
        self.logger.info(line)
        if self._sender is not None and pct is not None:
            self._sender.send(pct)

    def finish(self, *, wait: bool = True) -> None:
        """The last report; ``wait=False``: the artifact's last update goes out while the run ends (the summary
        artifacts are sent meanwhile), and :meth:`wait_sent` waits for it."""
        if self.total is None or self.done >= self.total:
            self.total = self.total or self.done
        self._report(time.monotonic())
        if self._sender is None:
            return
        self._closing = self._sender.close(100.0)
        if wait:
            self.wait_sent()

    def wait_sent(self) -> None:
        """Wait until the progress artifact's last update went out (see :func:`_wait_for_api`)."""
        closing, self._closing = self._closing, None
        if closing is None:
            return
        why = _wait_for_api(closing, self.final_timeout_s)
        if why:
            self.logger.warning("progress artifact not updated: the Prefect API is %s; the run goes on", why)

    def abandon(self) -> None:
        """The run ended without finishing (an exception): let the artifact thread end, without waiting."""
        if self._sender is not None:
            self._sender.close(None)


def prefect_api_url() -> str | None:
    try:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url
    except Exception:
        return None


def api_unreachable(url: str | None = None, *, timeout_s: float = 3.0) -> str | None:
    """Why the Prefect API does not answer (a refused or timed-out connection), or None when it does."""
    import httpx

    url = url or prefect_api_url()
    if not url:
        return None
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def unreachable_advice(flow: str, run_key: str | None, url: str | None, *, gave_up: bool = False) -> str:
    """What a user should know when the Prefect API went away: nothing is lost, how to finish."""
    key = f"run_key={run_key!r}" if run_key else "the same run_key (the flow run id when none was given)"
    where = f"the Prefect API at {url or '(PREFECT_API_URL)'}"
    what = (
        f"{where} did not answer, so Prefect could not create or finish this {flow} flow run"
        if gave_up else
        f"{where} is unreachable: Prefect retries recording this {flow} run's state for about a minute "
        "(PREFECT_CLIENT_MAX_RETRIES) and fails the process if the server is not back by then"
    )
    return (
        f"{what}. Nothing is lost: every finished chunk is kept in the state dir. Once the server answers again, "
        f"rerun with {key}: finished chunks are reused, none runs twice"
    )


def drop_undeliverable() -> int:
    """Empty the queues of this process's Prefect event and API-log workers; return how many items went.

    Only for when Prefect has already given up on its API: at exit each queued event would otherwise
    be tried for ~7 s (11 websocket reconnections), which holds the process for hours after a big run.
    The logs were printed to the console already.
    """
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        workers = [w for w in list(_QueueServiceBase._instances.values()) if isinstance(w, EventsWorker | APILogWorker)]
    except Exception:  # another Prefect version: nothing to drop, the exit may just take longer
        return 0
    dropped = 0
    for worker in workers:
        pending: queue.Queue[Any] | None = getattr(worker, "_queue", None)
        while pending is not None:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
            pending.task_done()
            if item is None:  # the stop signal stays for the worker
                pending.put_nowait(None)
                break
            dropped += 1
    return dropped


class PrefectApiUnreachable(BatchflowsError):
    """The Prefect API went away while a flow ran: Prefect could not create or finish the flow run."""


@contextmanager
def api_errors_explained(flow: str, run_key: str | None) -> Iterator[None]:
    """Turn a connection error or a 5xx answer of Prefect's own API calls (flow run creation, state proposals;
    also as the cause of Prefect's "Failed to reach API") into a :class:`PrefectApiUnreachable` that says what
    happened and how to finish the run."""
    try:
        yield
    except Exception as exc:
        url = prefect_api_url()
        cause = _api_failure(exc, url)
        if cause is None or not url:
            raise
        import httpx

        if isinstance(cause, httpx.HTTPStatusError):  # the server is up but failing (503: overloaded, restarting)
            why = f"it answered HTTP {cause.response.status_code} {cause.response.reason_phrase}".rstrip()
        else:
            why = f"{type(cause).__name__}: {cause}"
        msg = f"{unreachable_advice(flow, run_key, url, gave_up=True)} ({why})"
        if dropped := drop_undeliverable():
            msg += f"; {dropped} Prefect events/log batches that cannot be delivered were dropped so the process can exit"
        raise PrefectApiUnreachable(msg) from exc


def _api_failure(exc: BaseException, url: str | None) -> BaseException | None:
    """The transport error or 5xx answer of a call to the Prefect API at ``url`` that ``exc`` is or was caused
    by (None for anything else: a call we cannot vouch for is not explained)."""
    import httpx

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and url:
        seen.add(id(current))
        failing = isinstance(current, httpx.HTTPStatusError) and current.response.status_code >= 500
        if isinstance(current, httpx.TransportError) or failing:
            try:
                target = str(current.request.url)  # type: ignore[attr-defined]
            except RuntimeError:  # no request attached
                target = ""
            if target.startswith(url.rstrip("/")):
                return current
        current = current.__cause__
    return None


def publish_summary(summary: RunSummary, *, timeout_s: float = 30.0, progress: Progress | None = None) -> None:
    """Log the summary and, inside a flow run, publish a table and a markdown artifact.

    The artifacts wait for the API at most ``timeout_s`` (the summary is also in the log and in the
    run's summary.json): an unreachable server must not hold the end of a finished run. When the API
    does not answer, a warning says so and how to finish the run, before Prefect's own retries. The two
    artifacts and ``progress``'s last update (:meth:`Progress.finish` with ``wait=False``) go out at once.
    """
    logger = _run_logger()
    logger.info(summary.render_text())
    if not _in_flow_run():
        if progress is not None:
            progress.wait_sent()
        return
    sending = _joiner(_in_background(lambda: _summary_table(summary), "batchflows-summary"),
                      _in_background(lambda: _summary_markdown(summary), "batchflows-summary-details"))
    if progress is not None:
        progress.wait_sent()
    why = _wait_for_api(sending, timeout_s)
    if why is None:
        return
    logger.warning("summary artifacts not sent: the Prefect API is %s; the run goes on", why)
    if why.startswith("unreachable"):
        logger.warning("%s. This run's summary is in summary.json of its state dir.",
                       unreachable_advice(summary.flow, summary.run_key, prefect_api_url()))


def _summary_table(summary: RunSummary) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        rows: list[dict[str, Any]] = [
            {"metric": "state", "value": summary.state},
            {"metric": "total", "value": summary.total},
            {"metric": "succeeded", "value": summary.succeeded},
            {"metric": "failed", "value": summary.failed},
            {"metric": "skipped", "value": summary.skipped},
            {"metric": "chunks (resumed)", "value": f"{summary.chunks_total} ({summary.chunks_resumed})"},
            {"metric": "duration", "value": f"{summary.duration_s:.1f} s"},
            {"metric": "throughput", "value": f"{summary.items_per_second:,.1f} items/s"},
        ]
        rows += [{"metric": k, "value": redact_text(v) if isinstance(v, str) else v} for k, v in summary.extra.items()]
        if summary.output_path:
            rows.append({"metric": "output", "value": redact_text(summary.output_path)})
        if summary.dead_letter_path and summary.failed:
            rows.append({"metric": "dead letters", "value": redact_text(summary.dead_letter_path)})
        create_table_artifact(table=rows, key=_artifact_key(summary.flow, summary.run_key, "summary"),
                              description=f"{summary.flow} run {summary.run_key}")
    except Exception as exc:
        log.warning("could not publish the summary table artifact: %s", exc)


def _summary_markdown(summary: RunSummary) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        md = ["## " + f"{summary.flow} run `{summary.run_key}`: **{summary.state}**", "", redact_text(summary.message or "")]
        if summary.top_errors:
            md += ["", "| count | error | category | example |", "|---:|---|---|---|"]
            md += [
                f"| {e.count} | {e.error_type} | {e.category} | {e.example.replace('|', '/')[:200]} |"
                for e in summary.top_errors
            ]
        if summary.slowest_chunks:
            md += ["", "Slowest chunks: " + ", ".join(f"#{c.index} ({c.duration_s:.2f} s)" for c in summary.slowest_chunks)]
        key = _artifact_key(summary.flow, summary.run_key, "summary")
        create_markdown_artifact(markdown="\n".join(md), key=f"{key}-details")
    except Exception as exc:
        log.warning("could not publish the summary markdown artifact: %s", exc)


__all__ = [
    "PrefectApiUnreachable",
    "Progress",
    "api_errors_explained",
    "api_unreachable",
    "drop_undeliverable",
    "prefect_api_url",
    "publish_summary",
    "unreachable_advice",
]
