"""api_bulk against loopback fault storms (tests/fixtures/api_server.py): 503 storms, 429 bursts with
Retry-After, TCP resets and stalls past the timeout.

Every case asserts that each item ends succeeded or dead-lettered (with the last HTTP status), that
the output holds each succeeded item exactly once, that the server saw what the retry policy allows
(never more than ``retries + 1`` requests per item, exact counts where the storm is deterministic)
and that the summary adds up.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from flows.api_bulk import api_bulk
from tasks.core.outcomes import RunSummary, read_dead_letters
from tests.fixtures.api_server import ApiServer

FAST: dict[str, Any] = {"retry_backoff_s": 0.01}
SERVER_SEED = 1234  # the api_server fixture's RNG seed (ApiServer.reset)


def output_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def dead_letters(summary: RunSummary) -> list[dict[str, Any]]:
    return list(read_dead_letters(summary.dead_letter_path)) if summary.dead_letter_path else []


def requests_per_key(server: ApiServer, route: str) -> Counter[str]:
    """Requests the server saw per item key of one route (``/route/{key}``)."""
    return Counter(r.path.split("/", 2)[2] for r in server.requests if r.path.startswith(f"/{route}/"))


def check_run(
    summary: RunSummary, items: list[dict[str, Any]], out: Path, *, succeeded: set[str], dead: set[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The invariants of every storm: each item succeeded xor dead-lettered, outputs once, counts add up."""
    paths = [i["path"] for i in items]
    assert len(set(paths)) == len(paths)
    assert succeeded | dead == set(paths) and not succeeded & dead
    assert summary.total == len(items)
    assert summary.succeeded + summary.failed + summary.skipped == summary.total, summary.render_text()
    assert (summary.succeeded, summary.failed, summary.skipped) == (len(succeeded), len(dead), 0), summary.render_text()
    rows = output_rows(out)
    got = [r["item"]["path"] for r in rows]
    assert Counter(got) == Counter(succeeded)  # each succeeded item exactly once, nothing else
    assert {r["status"] for r in rows} <= {200}
    assert all(r["body"]["id"] == r["item"]["path"].split("?")[0].split("/", 2)[2] for r in rows)
    letters = dead_letters(summary)
    by_path = {d["item"]["path"]: d for d in letters}
    assert len(by_path) == len(letters) and set(by_path) == dead  # each dead item exactly once
    return rows, by_path


def flaky_requests_until(successes: int, p: float) -> int:
    """Requests the seeded /flaky route takes until ``successes`` of them answered 200 (shared RNG)."""
    rng = random.Random(SERVER_SEED)
    sent = ok = 0
    while ok < successes:
        sent += 1
        ok += rng.random() >= p
    return sent


def flaky_sequential(n: int, p: float, retries: int) -> tuple[set[int], int]:
    """Items 0..n-1 sent one after the other, each at most ``retries + 1`` times: (dead items, requests)."""
    rng = random.Random(SERVER_SEED)
    dead, sent = set(), 0
    for i in range(n):
        for _ in range(retries + 1):
            sent += 1
            if rng.random() >= p:
                break
        else:
            dead.add(i)
    return dead, sent


# --------------------------------------------------------------------------- (a) 503 storm


def test_503_storm_with_enough_retries_everything_succeeds(api_server: ApiServer, tmp_path: Path) -> None:
    n, p, retries = 80, 0.3, 10
    items = [{"path": f"/flaky/{i}?p={p}"} for i in range(n)]
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=16, max_concurrency=2,
                       item_concurrency=4, retries=retries, **FAST)
    assert summary.ok, summary.render_text()
    check_run(summary, items, out, succeeded={i["path"] for i in items}, dead=set())
    per_key = requests_per_key(api_server, "flaky")
    assert set(per_key) == {str(i) for i in range(n)}
    assert max(per_key.values()) <= retries + 1
    # every request draws the next number of the server's seeded RNG and every item retries until its
    # 200: the total is where the n-th success falls in that sequence, whatever the interleaving
    total = flaky_requests_until(n, p)
    assert sum(per_key.values()) == total == summary.extra["http_requests"]
    assert total > n  # it really was a storm
    assert sum(c - 1 for c in per_key.values()) == total - n  # retries happened, and only for 503s


def test_503_storm_with_one_retry_dead_letters_with_status_503(api_server: ApiServer, tmp_path: Path) -> None:
    n, p, retries = 60, 0.3, 1
    items = [{"path": f"/flaky/{i}?p={p}"} for i in range(n)]
    out = tmp_path / "out"
    # one request in flight at a time: the seeded 503s fall on known items
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=15, max_concurrency=1,
                       item_concurrency=1, retries=retries, chunk_retries=0, min_success_ratio=0.5, **FAST)
    expected_dead, expected_requests = flaky_sequential(n, p, retries)
    assert expected_dead  # the storm dead-letters some items at this seed
    assert summary.ok, summary.render_text()
    dead = {f"/flaky/{i}?p={p}" for i in expected_dead}
    _, letters = check_run(summary, items, out, succeeded={i["path"] for i in items} - dead, dead=dead)
    for letter in letters.values():
        assert letter["status"] == 503 and letter["category"] == "http_503", letter
        assert letter["attempts"] == retries + 1 and "503" in letter["message"]
    per_key = requests_per_key(api_server, "flaky")
    assert max(per_key.values()) <= retries + 1
    assert all(per_key[str(i)] == retries + 1 for i in expected_dead)
    assert sum(per_key.values()) == expected_requests == summary.extra["http_requests"]


# --------------------------------------------------------------------------- (b) 429 + Retry-After


def test_429_bursts_honor_retry_after(api_server: ApiServer, tmp_path: Path) -> None:
    after, retries = 0.4, 3
    good = [{"path": f"/retry-after/g{i}?times=2&after={after}"} for i in range(12)]  # 2 x 429, then 200
    bad = [{"path": f"/retry-after/b{i}?times=9&after={after}"} for i in range(3)]  # 429 past the retries
    plain = [{"path": f"/retry-after/o{i}?times=0"} for i in range(5)]  # never throttled
    items = [*good, *bad, *plain]
    random.Random(7).shuffle(items)
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=5, max_concurrency=2,
                       item_concurrency=5, retries=retries, min_success_ratio=0.5, **FAST)
    assert summary.ok, summary.render_text()
    _, letters = check_run(summary, items, out, succeeded={i["path"] for i in good + plain},
                           dead={i["path"] for i in bad})
    for letter in letters.values():
        assert letter["status"] == 429 and letter["category"] == "http_429", letter
        assert letter["attempts"] == retries + 1

    per_key = requests_per_key(api_server, "retry-after")
    expected = {**{f"g{i}": 3 for i in range(12)}, **{f"b{i}": retries + 1 for i in range(3)},
                **{f"o{i}": 1 for i in range(5)}}
    assert dict(per_key) == expected  # exact: 429s are retried, each as told
    assert summary.extra["http_requests"] == sum(expected.values())
    times: dict[str, list[float]] = defaultdict(list)
    for r in api_server.requests:
        times[r.path.split("/", 2)[2]].append(r.time)
    for key, seen in times.items():
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        # the server stamps a request on arrival; the client waits `after` from the 429's arrival
        assert all(gap >= after for gap in gaps), (key, gaps)


# --------------------------------------------------------------------------- (c) connection resets


def test_connection_resets_are_retried(api_server: ApiServer, tmp_path: Path) -> None:
    retries = 3
    recover = [{"path": f"/reset/r{i}?times={1 + i % 3}"} for i in range(15)]  # 1-3 resets, then 200
    broken = [{"path": f"/reset/x{i}?times=9"} for i in range(3)]  # reset on every attempt
    plain = [{"path": f"/reset/o{i}?times=0"} for i in range(6)]
    items = [*recover, *broken, *plain]
    random.Random(3).shuffle(items)
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=6, max_concurrency=2,
                       item_concurrency=3, retries=retries, min_success_ratio=0.5, **FAST)
    assert summary.ok, summary.render_text()
    _, letters = check_run(summary, items, out, succeeded={i["path"] for i in recover + plain},
                           dead={i["path"] for i in broken})
    for letter in letters.values():
        assert letter["category"] == "http_connection_reset", letter
        assert letter["status"] is None  # no answer ever came
        assert letter["attempts"] == retries + 1
    per_key = requests_per_key(api_server, "reset")
    expected = {**{f"r{i}": 2 + i % 3 for i in range(15)}, **{f"x{i}": retries + 1 for i in range(3)},
                **{f"o{i}": 1 for i in range(6)}}
    assert dict(per_key) == expected  # a reset is retried, never silently resent by the pool
    assert summary.extra["http_requests"] == sum(expected.values())


# --------------------------------------------------------------------------- (d) stalls past the timeout


def test_stalls_past_the_timeout_are_bounded_and_dead_lettered(api_server: ApiServer, tmp_path: Path) -> None:
    stalled = [{"path": f"/slow/s{i}?delay=10"} for i in range(5)]
    fine = [{"path": f"/ok/k{i}"} for i in range(5)]
    items = [*stalled, *fine]
    out = tmp_path / "out"
    started = time.monotonic()
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=10, max_concurrency=1,
                       item_concurrency=10, timeout_s=1, retries=1, min_success_ratio=0.1, **FAST)
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # the client gives up at the timeout, never waits out the 10 s stall
    assert summary.ok, summary.render_text()
    _, letters = check_run(summary, items, out, succeeded={i["path"] for i in fine},
                           dead={i["path"] for i in stalled})
    for letter in letters.values():
        assert letter["category"] == "http_timeout", letter
        assert letter["attempts"] == 2 and letter["status"] is None
    assert dict(requests_per_key(api_server, "slow")) == {f"s{i}": 2 for i in range(5)}
    assert api_server.count("/ok/") == 5
