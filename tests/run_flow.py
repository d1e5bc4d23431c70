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
import signal
import subprocess
import sys
import time
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
    """Start ``python -m tests.run_flow <target> <params>`` from the repo root (stdout+stderr piped).

    In its own process group, with faulthandler on: :func:`finish` can dump the Python stacks of the run
    and of every process it started (pool and Dask workers) when it hangs.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "tests.run_flow", target, json.dumps(params)],
        cwd=ROOT, env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300, what: str = "the flow run") -> str:
    """The output of a :func:`start_flow` subprocess once it ended (assert on its return code in the test).

    Past ``timeout`` the test fails with the tail of the output, which then ends with the Python stacks of
    every process of the run (SIGABRT to its process group: faulthandler prints them), and the group is killed.
    """
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGABRT, signal.SIGKILL):
            try:
                if os.getpgid(proc.pid) == proc.pid:  # its own group (start_flow): workers included
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        out, _ = proc.communicate()
        raise AssertionError(f"{what} did not finish in {timeout:.0f} s; its output, then its processes' "
                             f"stacks:\n{out[-30000:]}") from None
    return out


def summary_in(output: str, model: type[M]) -> M:
    """The summary a run_flow subprocess printed (its last ``SUMMARY`` line)."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("SUMMARY "))
    return model.model_validate_json(line.removeprefix("SUMMARY "))


if __name__ == "__main__":
    raise SystemExit(main())
