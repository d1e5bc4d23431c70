"""The local demo API (stdlib HTTP server on 127.0.0.1): orders to extract, customers to look up.

    python -m deployments.demo_api --port 8765 [--orders 5000]

Endpoints (every one needs ``Authorization: Bearer demo-token-not-a-secret``, else 401):

* ``GET /orders?offset=&limit=`` -> ``{"data": [order, ...], "total": N}``: N generated orders
  (id, customer_id, amount as text, currency, created_at); every 499th amount is ``"n/a"`` so the
  file transform has rows to reject.
* ``GET /customers/{id}`` -> ``{"id", "name", "tier"}``; ids divisible by 97 answer 404 (dead letters),
  and one request in 50 answers 503 once (retried).

Used by ``make demo`` (started and stopped by the demo) and ``make up`` (left running on 8765).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "demo-token-not-a-secret"
DEFAULT_PORT = 8765


def order(i: int) -> dict[str, Any]:
    amount = "n/a" if i % 499 == 498 else f"{(i * 7919) % 100_000 / 100:.2f}"
    return {
        "id": i, "customer_id": 1 + (i * 31) % 400, "amount": amount, "currency": "EUR" if i % 3 else "USD",
        "created_at": f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
    }


class DemoApi(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs of a client opening many connections: 1 s retries

    def __init__(self, port: int, orders: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.orders = orders
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: DemoApi
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK wait

    def log_message(self, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"error": "missing or wrong bearer token"})
            return
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/orders":
            offset, limit = int(query.get("offset", 0)), min(int(query.get("limit", 100)), 1000)
            rows = [order(i) for i in range(offset, min(offset + limit, self.server.orders))]
            self._send(200, {"data": rows, "total": self.server.orders})
        elif parts.path.startswith("/customers/"):
            key = parts.path.rsplit("/", 1)[-1]
            if not key.isdigit():
                self._send(400, {"error": f"customer id {key!r} is not a number"})
                return
            cid = int(key)
            with self.server.lock:
                self.server.seen[key] = self.server.seen.get(key, 0) + 1
                first = self.server.seen[key] == 1
            if cid % 97 == 0:
                self._send(404, {"error": f"customer {cid} not found"})
            elif first and cid % 50 == 7:
                self._send(503, {"error": "busy, try again"})
            else:
                self._send(200, {"id": cid, "name": f"Customer {cid}", "tier": ["bronze", "silver", "gold"][cid % 3]})
        else:
            self._send(404, {"error": f"no route {parts.path}"})


@contextmanager
def running(port: int = 0, orders: int = 5000) -> Iterator[DemoApi]:
    """The demo API in a background thread for the duration of the block."""
    server = DemoApi(port, orders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--orders", type=int, default=5000)
    args = parser.parse_args()
    server = DemoApi(args.port, args.orders)
    print(f"demo API on {server.url} ({args.orders} orders)", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
