"""Two fixed costs Prefect 3.8 adds to every flow run, removed without changing what a run does.

A scheduled deployment starts a fresh process per run, so a run's fixed cost is paid every time
(``python -m bench.startup`` prints it per flow). Measured on a tiny run, Prefect's sync flow engine
spends two pieces of it on nothing:

- **The heartbeat join.** The engine's heartbeat thread sleeps in 1 s steps and is joined when the
  run ends, so every run waits up to a second (0.4-0.7 s measured) for a thread that has nothing left
  to do. The thread is a daemon and checks its stop event before each heartbeat, so not joining it
  (what Prefect's async engine already does) sends no heartbeat after the run and loses none before.
- **fastapi for the parameters.** ``Flow.serialize_parameters`` imports fastapi (0.26 s) to encode
  the parameters sent with the new flow run. batchflows' parameters are validated plain values
  (objects are passed as handles), so JSON values go as they are; anything else still goes through
  Prefect's own encoder.

:func:`apply` is called by :func:`tasks.core.flowdef.batchflow` when a flow is declared, so every way
of running a flow (Python, a worker's subprocess, ``flow.serve``) has it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_JSON_SCALARS = (str, int, float, bool, type(None))


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is JSON as it is: scalars, lists and string-keyed dicts of them."""
    if isinstance(value, _JSON_SCALARS):
        return True
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def without_join(send_heartbeats: Callable[..., Any]) -> Callable[..., Any]:
    """Prefect's ``_send_heartbeats`` context manager, never joining its daemon thread on exit."""

    @functools.wraps(send_heartbeats)
    def send(engine: Any, join_on_exit: bool = True) -> Any:
        return send_heartbeats(engine, join_on_exit=False)

    send.__batchflows__ = True  # type: ignore[attr-defined]
    return send


def plain_parameters(prefect_flow: Any) -> None:
    """Serialize ``prefect_flow``'s plain JSON parameters without Prefect's fastapi encoder."""
    encode = prefect_flow.serialize_parameters

    def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
        if all(is_plain_json(v) for v in parameters.values()):
            return dict(parameters)
        return encode(parameters)

    prefect_flow.serialize_parameters = serialize_parameters


def apply(prefect_flow: Any) -> Any:
    """Both changes: the heartbeat one once per process, the parameter one on ``prefect_flow``."""
    import prefect.flow_engine as flow_engine

    if not getattr(flow_engine._send_heartbeats, "__batchflows__", False):
        flow_engine._send_heartbeats = without_join(flow_engine._send_heartbeats)
    plain_parameters(prefect_flow)
    return prefect_flow


__all__ = ["apply", "is_plain_json", "plain_parameters", "without_join"]
