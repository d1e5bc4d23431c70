"""Run a flow in a subprocess for crash/memory tests: ``python -m tests.run_flow <flow> '<json params>'``.

Prints the RunSummary as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    name, params = sys.argv[1], json.loads(sys.argv[2])
    if name == "batch-map":
        from flows.batch_map import batch_map

        summary = batch_map(**params)
    else:
        raise SystemExit(f"unknown flow {name!r}")
    print("SUMMARY " + summary.model_dump_json())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
