"""Importable demo sources for deployments (parameters must be JSON: sources are "pkg.mod:fn")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from deployments.demo import demo_items


def orders() -> Iterator[dict[str, Any]]:
    """``BATCHFLOWS_DEMO_ITEMS`` generated orders (default 10,000)."""
    return demo_items(int(os.environ.get("BATCHFLOWS_DEMO_ITEMS", "10000")))
