"""Flow-run hooks: post the run summary to a webhook and push run metrics when a flow run ends.

* ``BATCHFLOWS_NOTIFY_WEBHOOK_URL`` set -> every batchflows flow run that completes or fails POSTs a
  JSON body (flow, flow run, state, message, and the RunSummary when there is one) to it.
* ``BATCHFLOWS_NOTIFY_PUSHGATEWAY_URL`` set -> the run's metrics (items by outcome, throughput,
  duration, slowest chunk, success) are pushed to that Prometheus Pushgateway in the text format,
  grouped by job ``batchflows``, flow and run key.

Secrets are redacted; a receiver that is down is logged, never fails the run.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from tasks.core.redact import redact, redact_logs, redact_text, register_secret
from tasks.core.settings import NotifySettings

log = logging.getLogger("batchflows.notify")


def summary_payload(flow_name: str, flow_run: Any, state: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "flow": flow_name,
        "flow_run_id": str(getattr(flow_run, "id", "")),
        "flow_run_name": getattr(flow_run, "name", None),
        "state": getattr(state, "name", None),
        "message": redact_text(getattr(state, "message", None) or ""),
        "summary": None,
    }
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # the result may not be retrievable (not persisted): the state is enough
        result = None
    if isinstance(result, BaseException):  # a Failed run's data is RunFailed, its summary attached
        result = getattr(result, "summary", None)
    if hasattr(result, "model_dump"):
        payload["summary"] = redact(result.model_dump(mode="json"))
    return payload


def metrics_text(summary: dict[str, Any]) -> str:
    """The run's metrics in the Prometheus text exposition format."""
    flow = str(summary.get("flow", "unknown")).replace('"', "")
    lines = [
        "# TYPE batchflows_items gauge",
        *(f'batchflows_items{{flow="{flow}",outcome="{k}"}} {int(summary.get(k) or 0)}'
          for k in ("succeeded", "failed", "skipped")),
        "# TYPE batchflows_items_per_second gauge",
        f'batchflows_items_per_second{{flow="{flow}"}} {float(summary.get("items_per_second") or 0)}',
        "# TYPE batchflows_run_duration_seconds gauge",
        f'batchflows_run_duration_seconds{{flow="{flow}"}} {float(summary.get("duration_s") or 0)}',
        "# TYPE batchflows_chunks gauge",
        f'batchflows_chunks{{flow="{flow}",kind="total"}} {int(summary.get("chunks_total") or 0)}',
        f'batchflows_chunks{{flow="{flow}",kind="resumed"}} {int(summary.get("chunks_resumed") or 0)}',
        "# TYPE batchflows_slowest_chunk_seconds gauge",
        f'batchflows_slowest_chunk_seconds{{flow="{flow}"}} '
        f'{max((float(c.get("duration_s", 0)) for c in summary.get("slowest_chunks") or []), default=0.0)}',
        "# TYPE batchflows_run_success gauge",
        f'batchflows_run_success{{flow="{flow}"}} {1 if summary.get("state") == "Completed" else 0}',
    ]
    return "\n".join(lines) + "\n"


def post_summary(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_completion / on_failure hook: webhook and Pushgateway, each when configured."""
    settings = NotifySettings()
    if settings.webhook_url is None and settings.pushgateway_url is None:
        return
    webhook = None if settings.webhook_url is None else _registered(settings.webhook_url.get_secret_value())
    payload = summary_payload(getattr(flow, "name", str(flow)), flow_run, state)
    if webhook is not None:
        try:
            httpx.post(webhook, json=payload, timeout=10).raise_for_status()
        except Exception as exc:
            log.warning("could not post the run summary to the webhook: %s", _failure(exc))
    summary = payload["summary"]
    if settings.pushgateway_url and summary:
        url = (f"{settings.pushgateway_url.rstrip('/')}/metrics/job/batchflows/flow/{quote(summary['flow'], safe='')}"
               f"/run_key/{quote(summary['run_key'], safe='')}")
        try:
            httpx.put(url, content=metrics_text(summary), timeout=10,
                      headers={"Content-Type": "text/plain; version=0.0.4"}).raise_for_status()
        except Exception as exc:
            log.warning("could not push the run metrics to the Pushgateway: %s", _failure(exc))


def _registered(url: str) -> str:
    """The webhook URL, its secret parts registered for redaction first: a Slack-style URL carries its secret in
    the path (``/services/T0/B0/xyz``), others in the query; httpx names the URL in its errors and logs."""
    register_secret(url)
    try:
        parsed = httpx.URL(url)
    except Exception:  # httpx refuses it: the request's error says so, with the URL masked as a whole
        return url
    register_secret(str(parsed))
    if parsed.path not in ("", "/"):
        register_secret(parsed.path)
        register_secret(parsed.raw_path.decode("ascii", "replace").split("?")[0])
    if parsed.query:
        register_secret(parsed.query.decode("ascii", "replace"))
    redact_logs()
    return url


def _failure(exc: Exception) -> str:
    """What went wrong, without the URL (an HTTP error names it; the status says enough)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    return redact_text(f"{type(exc).__name__}: {exc}")


HOOKS: dict[str, list[Any]] = {"on_completion": [post_summary], "on_failure": [post_summary]}

__all__ = ["HOOKS", "metrics_text", "post_summary", "summary_payload"]
