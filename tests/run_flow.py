"""Run a flow's Python entry point in a subprocess, for crash and memory tests.

    python -m tests.run_flow flows.batch_map:batch_map '<json kwargs>'

The function is called with the JSON object as keyword arguments; the RunSummary (or any pydantic
model it returns) is printed as JSON on the last line of stdout, prefixed by ``SUMMARY ``. Exit code
0 when ``summary.ok`` (or no ``ok`` attribute), 1 otherwise.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
M = TypeVar("M", bound=BaseModel)

ALIASES = {"batch-map": "flows.batch_map:batch_map"}


def main() -> int:
    from tasks.core.loader import load_callable

    target, params = ALIASES.get(sys.argv[1], sys.argv[1]), json.loads(sys.argv[2])
    entry = load_callable(target, what="entry point")
    if "raise_on_failure" in inspect.signature(entry).parameters:
        params.setdefault("raise_on_failure", False)  # print the failed summary instead of a traceback
    result = entry(**params)
    print("SUMMARY " + result.model_dump_json())
    return 0 if getattr(result, "ok", True) else 1


def start_flow(target: str, params: dict, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m tests.run_flow <target> <params>`` from the repo root (stdout+stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.run_flow", target, json.dumps(params)],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def summary_in(output: str, model: type[M]) -> M:
    """The summary a run_flow subprocess printed (its last ``SUMMARY`` line)."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("SUMMARY "))
    return model.model_validate_json(line.removeprefix("SUMMARY "))


if __name__ == "__main__":
    raise SystemExit(main())
