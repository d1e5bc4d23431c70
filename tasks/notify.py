"""Flow-run hooks: post the run summary to a webhook when a flow run ends.

``BATCHFLOWS_NOTIFY_WEBHOOK_URL`` set -> every batchflows flow run that completes or fails POSTs a JSON
body (flow, flow run, state, message, and the RunSummary when there is one) to it. Secrets are
redacted; a webhook that is down is logged, never fails the run.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from tasks.redact import redact, redact_text
from tasks.settings import NotifySettings

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
    if hasattr(result, "model_dump"):
        payload["summary"] = redact(result.model_dump(mode="json"))
    return payload


def post_summary(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_completion / on_failure hook."""
    url = NotifySettings().webhook_url
    if url is None:
        return
    payload = summary_payload(getattr(flow, "name", str(flow)), flow_run, state)
    try:
        httpx.post(url.get_secret_value(), json=payload, timeout=10).raise_for_status()
    except Exception as exc:
        log.warning("could not post the run summary to the webhook: %s", redact_text(str(exc)))


HOOKS: dict[str, list[Any]] = {"on_completion": [post_summary], "on_failure": [post_summary]}

__all__ = ["HOOKS", "post_summary", "summary_payload"]
