"""Failpoints: named places in batchflows where the fault-injection tests can stop a run exactly.

A crash is most dangerous between a side effect and its record (outputs written but the chunk not yet
recorded, a range committed but not yet in the run's state). Tests reach those windows by naming a
hook: ``BATCHFLOWS_FAILPOINTS="tests.faults.helpers:failpoint"`` makes every :func:`failpoint` call
``hook(name)`` (which may block until the test kills the process). Unset, a failpoint costs one
attribute lookup; the variable is read once per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

ENV = "BATCHFLOWS_FAILPOINTS"


@cache
def _hook() -> Callable[[str], None] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    from tasks.core.loader import load_callable

    return load_callable(spec, what=ENV)


def failpoint(name: str) -> None:
    """Call the configured hook with ``name`` (no-op when none is configured)."""
    hook = _hook()
    if hook is not None:
        hook(name)


__all__ = ["ENV", "failpoint"]
