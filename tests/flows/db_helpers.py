"""Transforms for the db_migrate flow tests, importable as "tests.flows.db_helpers:fn" by subprocesses."""

from __future__ import annotations

import os
import time

import polars as pl


def slow_identity(df: pl.DataFrame) -> pl.DataFrame:
    """Return the range unchanged after sleeping BF_DB_SLEEP seconds (so a SIGKILL lands mid-run)."""
    time.sleep(float(os.environ.get("BF_DB_SLEEP", "0")))
    return df


__all__ = ["slow_identity"]
