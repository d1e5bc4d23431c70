"""Progress for humans: a Prefect progress artifact, ETA log lines, and the final summary artifacts.

Updates are throttled (``BATCHFLOWS_PROGRESS_INTERVAL_S``, default once a second) so a run of 10k
chunks does not send 10k API calls. Outside a flow run (plain Python) only the log lines are written.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from uuid import UUID

from tasks.outcomes import RunSummary

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


def _artifact_key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100] or "batchflows"


class Progress:
    """Tracks done/total and reports at most once per ``interval_s``."""

    def __init__(self, label: str, total: int | None, *, interval_s: float = 1.0, artifacts: bool = True) -> None:
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self._last = 0.0
        self._artifact_id: UUID | None = None
        self.logger = _run_logger()
        if artifacts:
            self._artifact_id = self._create_artifact()

    def _create_artifact(self) -> UUID | None:
        try:
            from prefect.artifacts import create_progress_artifact

            return create_progress_artifact(
                progress=0.0, key=_artifact_key(f"{self.label}-progress"), description=f"{self.label} progress"
            )
        except Exception as exc:  # outside a run, or the API is unreachable: logs still flow
            log.debug("no progress artifact: %s", exc)
            return None

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
        if self._artifact_id is not None and pct is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(artifact_id=self._artifact_id, progress=pct)
            except Exception as exc:
                log.debug("progress artifact update failed: %s", exc)

    def finish(self) -> None:
        if self.total is None or self.done >= self.total:
            self.total = self.total or self.done
        self._report(time.monotonic())
        if self._artifact_id is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(artifact_id=self._artifact_id, progress=100.0)
            except Exception as exc:
                log.debug("progress artifact update failed: %s", exc)


def publish_summary(summary: RunSummary) -> None:
    """Log the summary and, inside a flow run, publish a table and a markdown artifact."""
    logger = _run_logger()
    logger.info(summary.render_text())
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return
        key = _artifact_key(f"{summary.flow}-summary")
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
        rows += [{"metric": k, "value": v} for k, v in summary.extra.items()]
        if summary.output_path:
            rows.append({"metric": "output", "value": summary.output_path})
        if summary.dead_letter_path and summary.failed:
            rows.append({"metric": "dead letters", "value": summary.dead_letter_path})
        create_table_artifact(table=rows, key=key, description=f"{summary.flow} run {summary.run_key}")
        md = ["## " + f"{summary.flow} run `{summary.run_key}`: **{summary.state}**", "", summary.message or ""]
        if summary.top_errors:
            md += ["", "| count | error | category | example |", "|---:|---|---|---|"]
            md += [
                f"| {e.count} | {e.error_type} | {e.category} | {e.example.replace('|', '/')[:200]} |"
                for e in summary.top_errors
            ]
        if summary.slowest_chunks:
            md += ["", "Slowest chunks: " + ", ".join(f"#{c.index} ({c.duration_s:.2f} s)" for c in summary.slowest_chunks)]
        create_markdown_artifact(markdown="\n".join(md), key=f"{key}-details")
    except Exception as exc:
        log.warning("could not publish the summary artifacts: %s", exc)


__all__ = ["Progress", "publish_summary"]
