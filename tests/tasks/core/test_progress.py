"""tasks/core/progress.py: a Prefect API that answers 5xx (overloaded, restarting) ends a run with the same clear
advice as one that does not answer (nothing lost, rerun with the run_key), not a bare HTTP error traceback.
Progress and summaries through real runs: tests/flows/test_batch_map.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.tasks.api.loopback import raw_api

ROOT = Path(__file__).resolve().parents[3]


def test_a_prefect_api_answering_503_ends_the_run_with_advice_not_a_traceback(tmp_path: Path) -> None:
    code = "from flows.batch_map import batch_map; batch_map([1, 2, 3], 'tests.handlers:double', run_key='busy')"
    with raw_api(lambda request: (503, {}, {"detail": "Service Unavailable"})) as (url, _):
        api = f"{url}/api"
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_CLIENT_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT),
               "BATCHFLOWS_STATE_DIR": str(tmp_path / "state")}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tasks.core.progress.PrefectApiUnreachable: the Prefect API at {api} did not answer"), \
        proc.stderr[-3000:]
    assert "it answered HTTP 503 Service Unavailable" in last and "rerun with run_key='busy'" in last
