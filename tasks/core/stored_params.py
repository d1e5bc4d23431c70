"""Mask a refused credential in what Prefect stored for the current flow run.

Prefect stores a flow run's parameters (its database, the UI, ``prefect flow-run inspect``) before the
flow's own validation runs, so a credential a flow refuses as a plain parameter (a URL with a password, an
``Authorization`` header) is already stored when the refusal is raised. :func:`mask_run_parameters` reads
the stored parameters back and writes them with the credential replaced, so the refused run shows which
value was refused but not the secret. Prefect's update replaces the whole parameters dict: read, replace,
write. A failure is logged (never the secret) and never hides the refusal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger("batchflows.params")
_USERINFO = re.compile(r"[\w+.-]+://[^:/]*:(?P<password>[^@]*(?:@[^@/?]*)*)@")


def mask_run_parameters(replacements: Mapping[str, str], *, what: str, secret: str = "credential",
                        client: SyncPrefectClient | None = None) -> None:
    """In the current flow run's stored parameters (none outside a flow run), replace each key of
    ``replacements`` by its value in every string, through ``client`` (default: the run's own).

    ``what`` names the parameter (for the warning when that fails), ``secret`` what it holds.
    """
    from prefect.context import FlowRunContext

    replacements = {old: new for old, new in replacements.items() if old and old != new}
    flow_run = getattr(FlowRunContext.get(), "flow_run", None)
    if flow_run is None or not replacements:
        return
    try:
        from prefect.client.orchestration import get_client

        with client or get_client(sync_client=True) as api:
            stored = api.read_flow_run(flow_run.id).parameters
            masked = _replaced(stored, replacements)
            if masked != stored:
                api.update_flow_run(flow_run.id, parameters=masked)
    except Exception as exc:
        _warn_not_masked(flow_run.id, what, secret, replacements, exc)


def mask_url_password(url: str) -> str:
    """``url`` as written with the password of its ``user:password@`` shown as ``***`` (as written: still
    percent-encoded). The password runs to the last ``@`` before the host, and may hold a '/' (SQLAlchemy's URL
    grammar, which :mod:`tasks.db.dburl` parses)."""
    m = _USERINFO.match(url)
    if m is None or not m["password"]:
        return url
    return url[:m.start("password")] + "***" + url[m.end("password"):]


def _replaced(value: Any, replacements: Mapping[str, str]) -> Any:
    """A JSON-like value with each ``old`` replaced by ``new`` in every string (dict keys included)."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {_replaced(k, replacements): _replaced(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, replacements) for v in value]
    return value


def _warn_not_masked(flow_run_id: object, what: str, secret: str, replacements: Mapping[str, str],
                     exc: Exception) -> None:
    from prefect.logging import get_run_logger

    from tasks.core.redact import redact_text

    reason = _replaced(redact_text(f"{type(exc).__name__}: {exc}"), replacements)  # a 422 echoes the body
    get_run_logger().warning(
        "the stored parameter %s of flow run %s still holds the %s: masking it failed (%s); delete the flow run "
        "(prefect flow-run delete %s) or change the %s", what, flow_run_id, secret, reason[:500], flow_run_id, secret)


__all__ = ["mask_run_parameters", "mask_url_password"]
