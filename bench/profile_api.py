"""Where a request's microseconds go in api_bulk's hot loop (``python -m bench.profile_api``).

Two measurements over the bench API (``bench.api_bulk``'s loopback uvicorn app, in its own process):

1. **CPU per request without a profiler**: this process's CPU time (``time.process_time``) and wall time for N
   GETs at 64 in flight, plain ``aiohttp.ClientSession`` gather (the transport alone) beside
   ``process_api_chunk`` on the lean path (one chunk, no Prefect; with a chunk journal as in a run), the
   variants interleaved over ``--rounds`` rounds. The API server has its own process (and, on 2 cores, its
   own core), so the client's CPU per request is what caps the rate, and it is far less noisy on a shared
   machine than req/s.
2. **Own time per request by component under cProfile** (builtins charged to their caller's component),
   the gather and the lean path side by side: the transport's and the event loop's share, and ours
   (request building, redaction, classification, the per-request deadline, the retry wrapper, outcomes
   and the journal line, the worker loop). cProfile inflates call-heavy code ~2-3x: read the split.

    python -m bench.profile_api --requests 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.api_bulk import chunk_job, gather_aiohttp, start_api

COMPONENTS = (  # (label, substring of the file path, function names or None for all), first match wins
    ("request building (request_spec, url, headers)", "tasks/api/request_spec.py", None),
    ("request building (request_spec, url, headers)", "tasks/api/lean.py", {"url_of", "_headers", "_request_of",
                                                                            "request_of", "_target"}),
    ("request building (request_spec, url, headers)", "urllib/parse.py", None),
    ("redaction", "tasks/core/redact.py", None),
    ("classification (status, body, kept headers)", "tasks/api/client.py", None),
    ("classification (status, body, kept headers)", "json/", None),
    ("classification (status, body, kept headers)", "tasks/api/lean.py", {"__init__", "text", "decode_text",
                                                                          "_parsed_body"}),
    ("classification (status, body, kept headers)", "orjson", None),
    ("per-request deadline (asyncio.timeout; the watchdog)", "asyncio/timeouts.py", None),
    ("per-request deadline (asyncio.timeout; the watchdog)", "tasks/api/lean.py", {"watch", "finished", "_check",
                                                                                   "sooner"}),
    ("cookie store checks", "tasks/api/lean.py", {"_has_cookie", "holds", "header_for", "filter_cookies"}),
    ("cookie store checks", "aiohttp/cookiejar.py", None),
    ("retry wrapper (RetryPolicy.acall)", "tasks/core/retry.py", None),
    ("outcomes + journal line", "tasks/core/items.py", None),
    ("outcomes + journal line", "tasks/core/journal.py", None),
    ("worker loop (tasks/api/bulk.py)", "tasks/api/bulk.py", None),
    ("lean client glue (send, follow, once)", "tasks/api/lean.py", None),
    ("aiohttp + yarl + multidict", "aiohttp/", None),
    ("aiohttp + yarl + multidict", "yarl/", None),
    ("aiohttp + yarl + multidict", "multidict/", None),
    ("aiohttp + yarl + multidict", "propcache/", None),
    ("aiohttp + yarl + multidict", "http/cookies.py", None),
    ("the gather itself (semaphore, coroutine)", "bench/api_bulk.py", None),
    ("event loop, sockets, tasks", "asyncio/", None),
    ("event loop, sockets, tasks", "selectors.py", None),
    ("event loop, sockets, tasks", "socket.py", None),
)


def _component(filename: str, name: str) -> str:
    for label, part, names in COMPONENTS:
        if part in filename and (names is None or name in names):
            return label
    return "other (Python)"


def by_component(stats: pstats.Stats, n: int) -> dict[str, float]:
    """Own time per request in microseconds by component; a built-in's time goes to its callers' components in
    proportion to the time it spent under each (its own frame has no file)."""
    totals: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, tt, _ct, callers) in raw.items():
        if filename != "~":
            totals[_component(filename, name)] += tt
            continue
        if "socket" in name and ("send" in name or "recv" in name):
            totals["socket send/recv syscalls"] += tt
            continue
        if ("select" in name and "poll" in name) or "epoll" in name:
            totals["event loop, sockets, tasks"] += tt
            continue
        under = sum(c[2] for c in callers.values()) or 0.0
        if not callers or under <= 0:
            totals["other (built-ins)"] += tt
            continue
        for (cfile, _cl, cname), c in callers.items():
            totals[_component(cfile, cname) if cfile != "~" else "other (built-ins)"] += tt * c[2] / under
    return {k: 1e6 * v / n for k, v in totals.items()}


def lean_chunk(url: str, n: int, concurrency: int, journal_dir: Path | None) -> int:
    """process_api_chunk on one chunk of ``n`` items, with a chunk journal in ``journal_dir`` as a run has."""
    import uuid

    from tasks.api.bulk import process_api_chunk
    from tasks.core import Chunk, ChunkRef

    ref = None
    if journal_dir is not None:
        ref = ChunkRef(key=uuid.uuid4().hex, index=0, journal=str(journal_dir / f"{uuid.uuid4().hex}.journal"))
    report = process_api_chunk(Chunk(0, [{"id": i} for i in range(n)]), chunk_job(url, concurrency, lean=True), ref)
    return report.succeeded


def cpu_per_request(url: str, n: int, concurrency: int, rounds: int, journal_dir: Path | None) -> None:
    variants: dict[str, Callable[[], int]] = {
        "gather, plain aiohttp.ClientSession": lambda: asyncio.run(gather_aiohttp(url, n, concurrency)),
        "process_api_chunk, lean path": lambda: lean_chunk(url, n, concurrency, journal_dir),
    }
    cpu: dict[str, list[float]] = defaultdict(list)
    rate: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for name, fn in variants.items():
            c0, w0 = time.process_time(), time.perf_counter()
            ok = fn()
            c1, w1 = time.process_time(), time.perf_counter()
            assert ok == n, (name, ok)
            cpu[name].append(1e6 * (c1 - c0) / n)
            rate[name].append(n / (w1 - w0))
    print(f"\n## CPU per request without a profiler ({n:,} GETs x {concurrency}, {rounds} rounds, interleaved)")
    print(f"{'variant':40s} {'us CPU/req (min-max)':>24s} {'req/s (min-max)':>20s}")
    for name in variants:
        print(f"{name:40s} {min(cpu[name]):10.1f} - {max(cpu[name]):8.1f}   {min(rate[name]):8,.0f} - {max(rate[name]):8,.0f}")
    gather, lean = min(cpu["gather, plain aiohttp.ClientSession"]), min(cpu["process_api_chunk, lean path"])
    print(f"lean / gather CPU per request (best of each): {lean / gather:.2f} (rate bound ~{gather / lean:.2f}x)")
    per_round = [g / lean_ for g, lean_ in zip(rate["process_api_chunk, lean path"],
                                               rate["gather, plain aiohttp.ClientSession"], strict=True)]
    print("lean / gather req/s per round: " + ", ".join(f"{r:.2f}x" for r in per_round))


def profiled(url: str, n: int, concurrency: int, journal_dir: Path | None, top: int) -> None:
    runs: dict[str, Callable[[], int]] = {
        "gather": lambda: asyncio.run(gather_aiohttp(url, n, concurrency)),
        "lean": lambda: lean_chunk(url, n, concurrency, journal_dir),
    }
    split: dict[str, dict[str, float]] = {}
    for name, fn in runs.items():
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        fn()
        profile.disable()
        stats = pstats.Stats(profile)
        split[name] = by_component(stats, n)
        if top and name == "lean":
            print(f"\n## lean path: top {top} functions by own time")
            stats.sort_stats("tottime").print_stats(top)
    labels = sorted({k for s in split.values() for k in s}, key=lambda k: -split["lean"].get(k, 0.0))
    print(f"\n## own CPU time per request by component under cProfile, microseconds ({n:,} GETs x {concurrency})")
    print(f"{'component':50s} {'gather':>9s} {'lean':>9s}")
    for label in labels:
        print(f"{label:50s} {split['gather'].get(label, 0.0):9.1f} {split['lean'].get(label, 0.0):9.1f}")
    print(f"{'total':50s} {sum(split['gather'].values()):9.1f} {sum(split['lean'].values()):9.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_api", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=0, help="also print the lean path's top N functions")
    parser.add_argument("--no-journal", action="store_true", help="no chunk journal (the bench's --chunk-only)")
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args(argv)
    api, url = start_api()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            journal_dir = None if args.no_journal else Path(tmp)
            lean_chunk(url, 500, args.concurrency, journal_dir)  # warm: imports, SSL context
            asyncio.run(gather_aiohttp(url, 500, args.concurrency))
            cpu_per_request(url, args.requests, args.concurrency, args.rounds, journal_dir)
            if not args.skip_profile:
                profiled(url, args.requests, args.concurrency, journal_dir, args.top)
    finally:
        api.terminate()
        api.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
