"""Calling a flow object directly (``batch_map_flow(source=..., handler=...)``, as a deployment or a parent flow
does): a run that ends Failed raises RunFailed with its summary, like the Python function."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from flows.batch_map import batch_map_flow
from flows.file_transform import file_transform_flow
from tasks.core.flowdef import RunFailed, summary_from_state
from tests.fixtures.api_server import LoopbackHTTPServer


def items_file(path: Path, n: int) -> Path:
    """``{"x": i}`` per line: with tests.handlers:mixed_record, x % 10 == 3 or 7 fail and x % 10 == 5 is skipped."""
    path.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """A loopback webhook (BATCHFLOWS_NOTIFY_WEBHOOK_URL) recording the JSON bodies the end-of-run hook posts."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BATCHFLOWS_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


def test_a_failed_run_of_the_flow_object_raises_run_failed_with_its_summary(tmp_path: Path,
                                                                          webhook: list[dict]) -> None:
    source = items_file(tmp_path / "items.jsonl", 20)
    with pytest.raises(RunFailed) as failed:
        batch_map_flow(source=str(source), handler="tests.handlers:mixed_record", retries=0)
    summary = failed.value.summary
    assert (summary.state, summary.total, summary.succeeded, summary.failed, summary.skipped) == ("Failed", 20, 14, 4, 2)
    assert str(failed.value) == summary.message and "min_success_ratio" in summary.message
    assert pickle.loads(pickle.dumps(failed.value)).summary == summary  # a persisted Failed state keeps it
    # the end-of-run hook still posts the summary of the failed run
    assert [(p["state"], (p["summary"] or {}).get("failed")) for p in webhook] == [("Failed", 4)]

    done = batch_map_flow(source=str(source), handler="tests.handlers:mixed_record", retries=0,
                          min_success_ratio=0.5)
    assert done.ok and done.succeeded == 14  # a Completed run returns its summary, as before


def test_the_failed_state_keeps_its_message_and_gives_the_summary(tmp_path: Path) -> None:
    source = items_file(tmp_path / "items.jsonl", 10)
    state = batch_map_flow(source=str(source), handler="tests.handlers:mixed_record", retries=0, return_state=True)
    summary = summary_from_state(state)
    assert state.is_failed() and state.message == summary.message and summary.failed == 2
    with pytest.raises(RunFailed) as failed:
        state.result()
    assert failed.value.summary.failed == 2


def test_every_flow_built_on_flowdef_raises_run_failed_when_called_directly(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text("id,amount\n1,2.5\n2,not a number\n3,4.0\n")
    with pytest.raises(RunFailed) as failed:
        file_transform_flow(source=str(source), output_dir=str(tmp_path / "out"),
                            schema={"id": "int64", "amount": "float64"})
    summary = failed.value.summary
    assert summary.state == "Failed" and (summary.succeeded, summary.failed) == (2, 1)
    assert summary.extra["rows_rejected"] == 1 and "min_success_ratio" in str(failed.value)
