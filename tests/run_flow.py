"""Run a flow's Python entry point in a subprocess, for crash and memory tests.

    python -m tests.run_flow flows.batch_map:batch_map '<json kwargs>'

The function is called with the JSON object as keyword arguments; the RunSummary (or any pydantic
model it returns) is printed as JSON on the last line of stdout, prefixed by ``SUMMARY ``. Exit code
0 when ``summary.ok`` (or no ``ok`` attribute), 1 otherwise.
"""

from __future__ import annotations

import json
import sys

ALIASES = {"batch-map": "flows.batch_map:batch_map"}


def main() -> int:
    from tasks.loader import load_callable

    target, params = ALIASES.get(sys.argv[1], sys.argv[1]), json.loads(sys.argv[2])
    result = load_callable(target, what="entry point")(**params)
    print("SUMMARY " + result.model_dump_json())
    return 0 if getattr(result, "ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
