"""The webhook hook against a real loopback HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.batch_map import batch_map
from tests import handlers


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", f"http://hook-user:hook-pass@127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


def test_completed_and_failed_runs_post_their_summary(webhook: list[dict]) -> None:
    ok = batch_map(list(range(20)), handlers.double, chunk_size=5)
    bad = batch_map(list(range(20)), handlers.mixed, chunk_size=5, retries=0)
    assert ok.ok and not bad.ok
    assert [p["state"] for p in webhook] == ["Completed", "Failed"]
    assert webhook[0]["summary"]["succeeded"] == 20 and webhook[0]["flow"] == "batch-map"
    assert webhook[1]["summary"]["failed"] == 4 and "14 succeeded" in webhook[1]["message"]


def test_a_webhook_that_is_down_does_not_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/nothing-listens-here")
    assert batch_map([1, 2, 3], handlers.double).ok
