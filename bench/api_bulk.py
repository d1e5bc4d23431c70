"""api_bulk benchmarks (``python -m bench.api_bulk``): unthrottled throughput vs plain clients, throttled accuracy.

A fast loopback JSON API (uvicorn, raw ASGI app) runs in a subprocess started here.

1. Unthrottled: N GETs (default 20,000) at 64 in flight: plain ``asyncio.gather`` over
   ``httpx.AsyncClient`` (native transport) with a semaphore of 64, the same over httpx-aiohttp's
   ``AiohttpTransport`` (the httpx path's transport), over a plain ``aiohttp.ClientSession`` (the lean path's
   transport), and api_bulk (one chunk task x 64, two x 32 threads, two x 32 ``task_runner="processes"``).
   Ratios of each to the three gathers (api_bulk's inside the run) and peak RSS of this process (the servers
   are not counted). ``--chunk-only`` measures the hot loop alone (``process_api_chunk`` on the lean path and
   on the httpx client, no Prefect) beside the gathers, best of ``--repeat``; ``--profile N`` prints cProfile
   of one chunk of N GETs on both paths.
2. Throttled at 50/s and 500/s against ``/limited`` (429 + ``Retry-After: 1`` above the limit in each
   wall second): achieved rate / limit (end to end, and first-to-last accepted request) and the
   share of 429s, for api_bulk (``rate_limit_per_second``) and for Prefect's per-call
   ``prefect.concurrency.sync.rate_limit`` (16 threads, one httpx.Client, 10 s window) beside it.
   Then api_bulk configured at 500/s against a server allowing only 400/s: what AIMD recovers.

Bounded: about 3-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psutil

from bench.common import ROOT, prefect_server, print_table, wait_server_idle

# --------------------------------------------------------------------------- the loopback API (subprocess)

_limit = {"per_second": 50}
_accepted: dict[int, int] = defaultdict(int)
_rejected: dict[int, int] = defaultdict(int)
_times: list[float] = []


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Raw ASGI: /ok/{id}, /limited/{id}, /config?limit=N (resets counters), /stats."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    status, headers, body = 200, [(b"content-type", b"application/json")], b""
    if path.startswith("/ok/"):
        body = b'{"id":"' + path[4:].encode() + b'","ok":true}'
    elif path.startswith("/limited/"):
        now = time.time()
        second = int(now)
        if _accepted[second] < _limit["per_second"]:
            _accepted[second] += 1
            _times.append(now)
            body = b'{"id":"' + path[9:].encode() + b'"}'
        else:
            _rejected[second] += 1
            status, body = 429, b'{"error":"rate limited"}'
            headers.append((b"retry-after", b"1"))
    elif path == "/config":
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        _limit["per_second"] = int(query.get("limit", "50"))
        _accepted.clear()
        _rejected.clear()
        _times.clear()
        body = b"{}"
    elif path == "/stats":
        first_last = [min(_times), max(_times)] if _times else [0, 0]
        body = json.dumps({"accepted": sum(_accepted.values()), "rejected": sum(_rejected.values()),
                           "first_last": first_last, "max_per_second": max(_accepted.values(), default=0),
                           "per_second": [_accepted[k] for k in sorted(_accepted)]}).encode()
    else:
        status, body = 404, b'{"error":"no route"}'
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(port: int) -> None:
    import uvicorn

    # keep-alive past the default 5 s: on a loaded machine an idle pooled connection closed by the server made
    # httpx native fail a round with ReadError
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
                timeout_keep_alive=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.api_bulk", "--serve", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ok/ping", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the bench API did not start")


# --------------------------------------------------------------------------- measuring


class OwnPeakRss:
    """Peak RSS of this process only (the API server and Prefect server are children: not counted)."""

    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> OwnPeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    with OwnPeakRss() as rss:
        started = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - started
    return secs, rss.peak / 1e6, result


async def gather_httpx(url: str, n: int, concurrency: int, transport: str) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        from tasks.api import make_client

        client = make_client(url, max_connections=concurrency, transport="aiohttp")
    else:
        client = httpx.AsyncClient(base_url=url, limits=limits, timeout=30)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            response = await client.get(f"/ok/{i}")
            ok += response.status_code == 200

    async with client:
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


async def gather_aiohttp(url: str, n: int, concurrency: int) -> int:
    """The floor under any Python client on this machine: aiohttp's own session, no httpx layer."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal ok
        async with sem, session.get(f"{url}/ok/{i}") as response:
            await response.read()
            ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    return ok


def unthrottled(url: str, n: int, concurrency: int, repeat: int = 1) -> list[dict[str, Any]]:
    """api_bulk (lean path: plain aiohttp under it) beside plain gathers in the same run, ``repeat`` rounds of
    every variant in turn, the best of each kept (the machine's load swings hit all variants alike). Each ratio
    column divides by one baseline: httpx native, gather over httpx + AiohttpTransport (the httpx path's
    transport) and plain aiohttp gather (the lean path's transport, also the single-process baseline for
    ``task_runner="processes"``). api_bulk's ratios use its rate inside the run (no flow start, no summary)."""
    from flows.api_bulk import api_bulk

    items = list(range(n))

    def bulk(chunks: int, per_chunk: int, runner: str) -> tuple[int, float]:
        summary = api_bulk(items, base_url=url, path_template="/ok/{id}", chunk_size=n // (4 * chunks),
                           max_concurrency=chunks, item_concurrency=per_chunk, retries=3, task_runner=runner,
                           run_key=f"bench-{uuid.uuid4().hex[:8]}")
        assert summary.ok and summary.succeeded == n, summary.render_text()
        return summary.succeeded, n / summary.duration_s

    variants: list[tuple[str, Callable[[], tuple[int, float | None]]]] = [
        (f"plain gather, httpx.AsyncClient native, sem {concurrency}",
         lambda: (asyncio.run(gather_httpx(url, n, concurrency, "httpx")), None)),
        (f"plain gather, httpx + AiohttpTransport, sem {concurrency}",
         lambda: (asyncio.run(gather_httpx(url, n, concurrency, "aiohttp")), None)),
        (f"plain gather, aiohttp.ClientSession, sem {concurrency}",
         lambda: (asyncio.run(gather_aiohttp(url, n, concurrency)), None)),
        *((f"api_bulk {c} chunk task(s) x {per} in flight ({runner})", lambda c=c, per=per, r=runner: bulk(c, per, r))
          for c, per, runner in ((1, concurrency, "threads"), (2, concurrency // 2, "threads"),
                                 (2, concurrency // 2, "processes"))),
    ]
    best: dict[str, tuple[float, float, int, float | None]] = {}
    for round_ in range(repeat):
        for name, fn in variants:
            if name.startswith("api_bulk"):
                wait_server_idle()
            secs, mb, (ok, inside) = measure(fn)
            rate = inside or n / secs
            print(f"  round {round_ + 1}: {name}: {n / secs:,.0f} req/s"
                  + (f" ({inside:,.0f} inside the run)" if inside else ""), flush=True)
            if name not in best or rate > (best[name][3] or n / best[name][0]):
                best[name] = (secs, mb, ok, inside)
    bases = [n / best[name][0] for name, _ in variants[:3]]
    labels = ("vs httpx native", "vs gather httpx+aiohttp", "vs plain aiohttp")
    rows = []
    for name, _ in variants:
        secs, mb, ok, inside = best[name]
        rate = inside or n / secs
        rows.append({"variant": name, "ok": ok, "seconds": f"{secs:.2f}", "req/s": f"{n / secs:,.0f}",
                     "inside the run req/s": f"{inside:,.0f}" if inside else "-",
                     **{label: f"{rate / base:.2f}x" for label, base in zip(labels, bases, strict=True)},
                     "peak RSS MB": f"{mb:.0f}"})
    return rows


def chunk_job(url: str, concurrency: int, *, lean: bool) -> Any:
    from tasks.api.bulk import ApiJob
    from tasks.api.request_spec import RequestTemplate

    return ApiJob(base_url=url, template=RequestTemplate(path_template="/ok/{id}"), item_concurrency=concurrency,
                  retries=3, lean=lean)


def one_chunk(url: str, n: int, concurrency: int, *, lean: bool) -> int:
    """process_api_chunk on one chunk of ``n`` items in this thread: the hot loop without Prefect."""
    from tasks.api.bulk import process_api_chunk
    from tasks.core import Chunk

    report = process_api_chunk(Chunk(0, [{"id": i} for i in range(n)]), chunk_job(url, concurrency, lean=lean))
    return report.succeeded


def chunk_level(url: str, n: int, concurrency: int, repeat: int) -> list[dict[str, Any]]:
    """The hot loop alone, best of ``repeat`` rounds, the variants interleaved so load swings hit them alike."""
    variants: dict[str, Callable[[], int]] = {
        "gather, httpx + AiohttpTransport": lambda: asyncio.run(gather_httpx(url, n, concurrency, "aiohttp")),
        "gather, plain aiohttp.ClientSession": lambda: asyncio.run(gather_aiohttp(url, n, concurrency)),
        "process_api_chunk, httpx client (lean=False)": lambda: one_chunk(url, n, concurrency, lean=False),
        "process_api_chunk, lean path (default)": lambda: one_chunk(url, n, concurrency, lean=True),
    }
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}  # this process's CPU per request (the API server has its own process): less noisy
    for _ in range(repeat):
        for name, fn in variants.items():
            started_cpu = time.process_time()
            secs, _, ok = measure(fn)
            assert ok == n, (name, ok)
            best[name] = max(best.get(name, 0.0), n / secs)
            cpu[name] = min(cpu.get(name, float("inf")), 1e6 * (time.process_time() - started_cpu) / n)
    same, plain = best["gather, httpx + AiohttpTransport"], best["gather, plain aiohttp.ClientSession"]
    rows = [{"variant": name, "req/s (best)": f"{rate:,.0f}", "vs gather httpx+aiohttp": f"{rate / same:.2f}x",
             "vs plain aiohttp": f"{rate / plain:.2f}x", "CPU us/req (best)": f"{cpu[name]:.0f}",
             "CPU vs plain aiohttp": f"{cpu[name] / cpu['gather, plain aiohttp.ClientSession']:.2f}"}
            for name, rate in best.items()]
    for row in rows:
        print(f"  {row}", flush=True)
    return rows


def profile_chunk(url: str, n: int, concurrency: int, *, lean: bool, top: int = 25) -> None:
    """cProfile of one chunk's hot loop (``--profile``), sorted by own time."""
    import cProfile
    import pstats

    one_chunk(url, 500, concurrency, lean=lean)  # warm: imports, SSL context, pool
    profiler = cProfile.Profile()
    profiler.enable()
    one_chunk(url, n, concurrency, lean=lean)
    profiler.disable()
    print(f"\n## cProfile, one chunk of {n:,} GETs x {concurrency}, lean={lean} (own time)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("tasks/", top)


def configure(url: str, limit: int) -> None:
    import httpx

    httpx.get(f"{url}/config", params={"limit": limit}, timeout=5)


def stats(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/stats", timeout=5).json()


def throttle_row(name: str, limit: int, secs: float, st: dict[str, Any]) -> dict[str, Any]:
    total = st["accepted"] + st["rejected"]
    first, last = st["first_last"]
    steady = (st["accepted"] - 1) / (last - first) if last > first else 0.0
    return {"variant": name, "limit/s": limit, "accepted": st["accepted"], "seconds": f"{secs:.1f}",
            "achieved/limit (end to end)": f"{st['accepted'] / secs / limit:.3f}",
            "achieved/limit (first-last)": f"{steady / limit:.3f}",
            "429 %": f"{100 * st['rejected'] / max(total, 1):.2f}", "max in a second": st["max_per_second"]}


def throttled_api_bulk(url: str, limit: int, seconds: float, server_limit: int | None = None) -> dict[str, Any]:
    """api_bulk at ``limit``/s against a server enforcing ``server_limit`` (default: the same)."""
    from flows.api_bulk import api_bulk

    server_limit = server_limit or limit
    n = int(server_limit * seconds)
    configure(url, server_limit)
    wait_server_idle()
    started = time.perf_counter()
    summary = api_bulk([{"path": f"/limited/{i}"} for i in range(n)], base_url=url, rate_limit_per_second=limit,
                       chunk_size=max(n // 8, 10), max_concurrency=2, item_concurrency=32, retries=5,
                       run_key=f"bench-rl-{uuid.uuid4().hex[:8]}")
    secs = time.perf_counter() - started
    assert summary.succeeded == n, summary.render_text()
    name = f"api_bulk rate_limit_per_second={limit}" + (
        f", server allows {server_limit}/s (AIMD)" if server_limit != limit else "")
    return throttle_row(name, server_limit, secs, stats(url))


def throttled_prefect(url: str, limit: int, seconds: float, threads: int = 16) -> dict[str, Any]:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import rate_limit

    name = f"bench-prefect-rl-{limit}-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=limit, active=True)
        )
    configure(url, limit)
    wait_server_idle()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))
    lock = threading.Lock()

    def worker(http: httpx.Client) -> None:
        while time.monotonic() < stop:
            rate_limit(name, occupy=1, strict=True)
            with lock:
                i = next(counter)
            http.get(f"/limited/{i}")

    with httpx.Client(base_url=url, limits=httpx.Limits(max_connections=threads), timeout=30) as http:
        started = time.perf_counter()
        pool = [threading.Thread(target=worker, args=(http,)) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        secs = time.perf_counter() - started
    return throttle_row(f"Prefect per-call rate_limit ({threads} threads)", limit, secs, stats(url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_bulk", description=__doc__.split("\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--throttled-seconds", type=float, default=12.0)
    parser.add_argument("--skip-throttled", action="store_true")
    parser.add_argument("--chunk-only", action="store_true",
                        help="only the hot loop (process_api_chunk vs gathers, no Prefect), best of --repeat (at least 3)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the unthrottled/hot-loop variants (best kept)")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile one chunk of N GETs on both paths")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "WARNING")
    api, url = start_api()
    if args.profile or args.chunk_only:
        try:
            if args.profile:
                for lean in (False, True):
                    profile_chunk(url, args.profile, args.concurrency, lean=lean)
            else:
                print_table(f"Hot loop: {args.requests:,} GETs x {args.concurrency}, one chunk, no Prefect",
                            chunk_level(url, args.requests, args.concurrency, max(args.repeat, 3)))
        finally:
            api.terminate()
            api.wait(timeout=10)
        return 0
    try:
        with prefect_server():
            print(f"bench API at {url}; {args.requests:,} GETs at concurrency {args.concurrency}", flush=True)
            print_table(f"Unthrottled (best of {args.repeat})",
                        unthrottled(url, args.requests, args.concurrency, args.repeat))
            if not args.skip_throttled:
                rows = []
                for limit in (50, 500):
                    rows.append(throttled_api_bulk(url, limit, args.throttled_seconds))
                    print(f"  {rows[-1]}", flush=True)
                    rows.append(throttled_prefect(url, limit, 10.0))
                    print(f"  {rows[-1]}", flush=True)
                rows.append(throttled_api_bulk(url, 500, args.throttled_seconds, server_limit=400))
                print(f"  {rows[-1]}", flush=True)
                print_table("Throttled (server answers 429 above the limit in each wall second)", rows)
    finally:
        api.terminate()
        api.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
