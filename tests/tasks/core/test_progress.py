"""tasks/core/progress.py: a Prefect API that answers 5xx (overloaded, restarting) ends a run with the same clear
advice as one that does not answer (nothing lost, rerun with the run_key), not a bare HTTP error traceback.
Progress and summaries through real runs: tests/flows/test_batch_map.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.fixtures.api_server import LoopbackHTTPServer

ROOT = Path(__file__).resolve().parents[3]


class Unavailable(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"detail": "Service Unavailable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer


def test_a_prefect_api_answering_503_ends_the_run_with_advice_not_a_traceback(tmp_path: Path) -> None:
    server = LoopbackHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_CLIENT_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT),
           "BATCHFLOWS_STATE_DIR": str(tmp_path / "state")}
    code = "from flows.batch_map import batch_map; batch_map([1, 2, 3], 'tests.handlers:double', run_key='busy')"
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tasks.core.progress.PrefectApiUnreachable: the Prefect API at {api} did not answer"), \
        proc.stderr[-3000:]
    assert "it answered HTTP 503 Service Unavailable" in last and "rerun with run_key='busy'" in last
