"""The end-of-run hooks (webhook, Pushgateway) against a real loopback HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from flows.batch_map import batch_map
from tests import handlers
from tests.fixtures.api_server import LoopbackHTTPServer

Received = list[tuple[str, str, bytes]]


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    """A loopback HTTP server recording (method, path, body) of every request."""
    received: Received = []

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def _record(self) -> None:
            received.append((self.command, self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        do_POST = do_PUT = _record

        def log_message(self, *args: object) -> None:
            return

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_completed_and_failed_runs_post_their_summary(receiver: tuple[str, Received],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    address, received = receiver
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", f"http://hook-user:hook-pass@{address}/hook")
    ok = batch_map(list(range(20)), handlers.double, chunk_size=5)
    bad = batch_map(list(range(20)), handlers.mixed, chunk_size=5, retries=0, raise_on_failure=False)
    assert ok.ok and not bad.ok
    payloads = [json.loads(body) for method, _, body in received if method == "POST"]
    assert [p["state"] for p in payloads] == ["Completed", "Failed"]
    assert payloads[0]["summary"]["succeeded"] == 20 and payloads[0]["flow"] == "batch-map"
    assert payloads[1]["summary"]["failed"] == 4 and "14 succeeded" in payloads[1]["message"]


def test_run_metrics_are_pushed_to_a_pushgateway(receiver: tuple[str, Received],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    address, received = receiver
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_PUSHGATEWAY_URL", f"http://{address}")
    summary = batch_map(list(range(20)), handlers.mixed, chunk_size=5, retries=0, run_key="metrics-run",
                        raise_on_failure=False)
    [(_, path, body)] = [r for r in received if r[0] == "PUT"]
    assert path == "/metrics/job/batchflows/flow/batch-map/run_key/metrics-run"
    text = body.decode()
    assert 'batchflows_items{flow="batch-map",outcome="succeeded"} 14' in text
    assert 'batchflows_items{flow="batch-map",outcome="failed"} 4' in text
    assert f'batchflows_run_success{{flow="batch-map"}} {int(summary.ok)}' in text
    assert "# TYPE batchflows_run_duration_seconds gauge" in text


def test_a_receiver_that_is_down_does_not_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/nothing-listens-here")
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_PUSHGATEWAY_URL", "http://127.0.0.1:9")
    assert batch_map([1, 2, 3], handlers.double).ok


def test_a_failing_webhook_is_logged_without_its_secret_url(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A Slack-style webhook URL holds its secret in the path; httpx names the URL in its errors and logs."""
    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = LoopbackHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "T0SECRETPATHxyz987"
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/services/B0/{secret}")
    try:
        with caplog.at_level("INFO"):
            assert batch_map([1, 2, 3], handlers.double).ok
    finally:
        server.shutdown()
    assert any("could not post the run summary to the webhook: HTTP 500" in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if secret in r.getMessage()]
