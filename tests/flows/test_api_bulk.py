"""api_bulk end to end against the real loopback test API (tests/fixtures/api_server.py).

Every test asserts what the server saw (exact request counts), that no item is lost
(succeeded + failed + skipped == total, output ids == expected ids), and what went to the dead letters.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.blocks.system import Secret

from flows.api_bulk import api_bulk
from tasks.core import summary_from_state
from tasks.core.errors import ConfigError
from tasks.core.outcomes import RunSummary, read_dead_letters
from tests.fixtures.api_server import NUMBERS_BODY, ApiServer
from tests.run_flow import finish, start_flow, summary_in
from tests.tasks.api.loopback import Seen, raw_api
from tests.tasks.db.test_dburl import stored_for_run

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-BULK-SECRET-7f3a9c"
FAST = {"retry_backoff_s": 0.01}


def output_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def dead_letters(summary: RunSummary) -> list[dict[str, Any]]:
    return list(read_dead_letters(summary.dead_letter_path)) if summary.dead_letter_path else []


def test_mixed_outcomes_exact_requests_outputs_and_dead_letters(api_server: ApiServer, tmp_path: Path):
    ok = [{"path": f"/ok/{i}"} for i in range(20)]
    items = [
        *ok,
        {"path": "/fail/t1?times=2&status=503"},  # 3 requests, succeeds
        {"path": "/retry-after/r1?times=1&after=0.1"},  # 2 requests, succeeds
        {"path": "/reset/x1?times=1"},  # 2 requests, succeeds
        {"path": "/fail/p1?times=9&status=503"},  # retries exhausted: 1 + 2 requests, failed
        {"path": "/status/404"},  # 1 request, failed at once
        {"path": "/status/422"},  # 1 request, failed at once
        {"path": "/malformed/m1"},  # 1 request, not JSON: failed
        {"path": "/text/t1"},  # text body kept as text
    ]
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=7, max_concurrency=2,
                       item_concurrency=4, retries=2, min_success_ratio=0.5, **FAST)
    assert summary.ok, summary.render_text()
    assert (summary.total, summary.succeeded, summary.failed, summary.skipped) == (28, 24, 4, 0)
    assert summary.chunks_total == 4
    assert api_server.count("/ok/") == 20
    assert api_server.count("/fail/t1") == 3
    assert api_server.count("/retry-after/r1") == 2
    assert api_server.count("/reset/x1") == 2
    assert api_server.count("/fail/p1") == 3
    assert api_server.count("/status/404") == api_server.count("/status/422") == api_server.count("/malformed") == 1
    assert len(api_server.requests) == 20 + 3 + 2 + 2 + 3 + 1 + 1 + 1 + 1
    assert summary.extra["http_requests"] == len(api_server.requests)

    rows = output_rows(out)
    assert sorted(r["item"]["path"] for r in rows) == sorted(
        [i["path"] for i in ok] + [items[20]["path"], items[21]["path"], items[22]["path"], "/text/t1"]
    )
    by_path = {r["item"]["path"]: r for r in rows}
    assert by_path["/ok/3"]["status"] == 200 and by_path["/ok/3"]["body"]["id"] == "3"
    assert by_path["/ok/3"]["elapsed_ms"] > 0
    assert by_path["/text/t1"]["body"] == "plain t1"

    dead = {d["item"]["path"]: d for d in dead_letters(summary)}
    assert set(dead) == {"/fail/p1?times=9&status=503", "/status/404", "/status/422", "/malformed/m1"}
    assert dead["/status/404"]["attempts"] == 1 and "404" in dead["/status/404"]["message"]
    assert "scripted" in dead["/status/404"]["message"]  # body excerpt
    assert dead["/fail/p1?times=9&status=503"]["attempts"] == 3
    assert dead["/malformed/m1"]["category"] == "http_bad_json"
    # the HTTP status of the last answer is its own field (None when there was no answer to read)
    assert {path: d["status"] for path, d in dead.items()} == {
        "/fail/p1?times=9&status=503": 503, "/status/404": 404, "/status/422": 422, "/malformed/m1": 200,
    }


def test_templates_post_idempotency_keys_stable_across_retries_and_runs(api_server: ApiServer, tmp_path: Path):
    items = [{"id": f"u{i}", "name": f"user {i}", "times": 1 if i % 3 == 0 else 0} for i in range(9)]
    items.append({"name": "no id"})  # placeholder {id} missing: an item error naming it
    kwargs: dict[str, Any] = {"base_url": api_server.url, "method": "POST", "path_template": "/fail/{id}?times={times}",
                              "json_template": {"user": {"name": "{name}", "id": "{id}"}, "source": "bf"},
                              "chunk_size": 4, "min_success_ratio": 0.5, **FAST}
    first = api_bulk(items, output=tmp_path / "a", run_key="post-a", **kwargs)
    assert (first.succeeded, first.failed) == (9, 1), first.render_text()
    posts = [r for r in api_server.requests if r.path.startswith("/fail/")]
    assert len(posts) == 9 + 3  # three items failed once with 503 then succeeded
    keys: dict[str, set[str]] = {}
    for r in posts:
        keys.setdefault(r.path, set()).add(r.headers["idempotency-key"])
    assert all(len(v) == 1 for v in keys.values())  # the same key on the retry
    assert len({next(iter(v)) for v in keys.values()}) == 9  # and a different key per item
    body = json.loads(next(r.body for r in posts if r.path == "/fail/u1"))
    assert body == {"user": {"name": "user 1", "id": "u1"}, "source": "bf"}
    (dead,) = dead_letters(first)
    assert "{id}" in dead["message"] and "'name'" in dead["message"] and dead["category"] == "bad_item"

    api_server.reset()
    second = api_bulk(items, output=tmp_path / "b", run_key="post-b", **kwargs)
    assert second.succeeded == 9
    keys_again = {r.path: r.headers["idempotency-key"] for r in api_server.requests}
    assert keys_again == {p: next(iter(v)) for p, v in keys.items()}  # stable across runs (and resumes)


def test_rerun_with_same_run_key_sends_nothing_again(api_server: ApiServer, tmp_path: Path):
    items = [{"id": i} for i in range(30)]
    kwargs: dict[str, Any] = {"base_url": api_server.url, "path_template": "/ok/{id}", "chunk_size": 10,
                              "output": tmp_path / "out", "run_key": "resume-me"}
    first = api_bulk(items, **kwargs)
    assert first.ok and first.succeeded == 30 and api_server.count("/ok/") == 30
    again = api_bulk(items, **kwargs)
    assert again.ok and again.chunks_resumed == 3 and again.succeeded == 30
    assert api_server.count("/ok/") == 30  # nothing re-sent
    assert sorted(r["item"]["id"] for r in output_rows(tmp_path / "out")) == list(range(30))


def test_refused_credentials_stop_the_run(api_server: ApiServer, tmp_path: Path):
    items = [{"path": "/status/401"}] * 40
    summary = api_bulk(items, base_url=api_server.url, chunk_size=10, max_concurrency=1, item_concurrency=2,
                       output=tmp_path / "out", **FAST, raise_on_failure=False)
    assert not summary.ok
    assert "credentials were refused" in summary.message
    assert ".." not in summary.message and ".." not in summary.render_text(), summary.message
    sent = api_server.count("/status/401")
    assert sent <= 2  # the in-flight requests only, none retried
    assert summary.failed == sent and summary.succeeded == 0  # only the items that got the answer failed
    assert summary.remaining == 40 - sent  # the rest of the chunk and the chunks never submitted
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_fatal_answer_mid_chunk_keeps_what_succeeded_and_the_rerun_sends_only_the_rest(
        api_server: ApiServer, tmp_path: Path):
    """A token that expires mid-run: done items stay done (outputs, counts), the rerun after the fix sends the rest."""
    out = tmp_path / "out"
    items = [{"path": f"/ok/{i}"} for i in range(25)]
    items[12] = {"path": "/fail/12?times=1&status=401"}  # refused once: the server's credentials get fixed
    first = api_bulk(items, base_url=api_server.url, chunk_size=10, max_concurrency=1, item_concurrency=1,
                     output=out, run_key="expired", **FAST, raise_on_failure=False)
    assert not first.ok and (first.succeeded, first.failed, first.remaining) == (12, 1, 12)
    assert [d["status"] for d in dead_letters(first)] == [401]
    assert sorted(int(r["item"]["path"].split("/")[2]) for r in output_rows(out)) == list(range(12))
    second = api_bulk(items, base_url=api_server.url, chunk_size=10, max_concurrency=1, item_concurrency=1,
                      output=out, run_key="expired", **FAST)
    assert second.ok and second.succeeded == 25 and second.chunks_resumed == 1
    sent = Counter(r.path for r in api_server.requests)
    assert sent.pop("/fail/12") == 2 and set(sent.values()) == {1} and len(sent) == 24  # nothing else sent twice
    assert sorted(int(r["item"]["path"].split("/")[2].split("?")[0]) for r in output_rows(out)) == list(range(25))


def test_secret_block_token_is_sent_and_never_stored_or_logged(
    api_server: ApiServer, tmp_path: Path, state_dir: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    name = f"bf-test-token-{uuid.uuid4().hex[:6]}"
    Secret(value=TOKEN).save(name, overwrite=True)
    items = [
        {"path": "/ok/a", "params": {"q": "Basic monthly"}},
        {"path": "/fail/b?times=9&status=400&note=x"},  # dead-lettered with its URL
        {"path": "/ok/c", "json": {"password": "the item's own value"}, "method": "POST"},
    ]
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    summary = api_bulk(items, base_url=api_server.url, auth_secret=name, output=out, min_success_ratio=0.5, **FAST)
    assert (summary.succeeded, summary.failed) == (2, 1), summary.render_text()
    assert {r.headers.get("authorization") for r in api_server.requests} == {f"Bearer {TOKEN}"}
    for path in [*state_dir.rglob("*"), *out.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert TOKEN not in summary.model_dump_json()
    assert dead_letters(summary)[0]["message"].count("400") >= 1


def test_parquet_output_and_file_source(api_server: ApiServer, tmp_path: Path):
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(25)))
    out = tmp_path / "pq"
    summary = api_bulk(source, base_url=api_server.url, path_template="/ok/{id}", chunk_size=10,
                       output=out, output_format="parquet")
    assert summary.ok and summary.succeeded == 25
    frame = pl.read_parquet(sorted(out.glob("part-*.parquet")))
    assert frame.height == 25 and set(frame["status"]) == {200}
    assert sorted(json.loads(b)["id"] for b in frame["body"]) == sorted(str(i) for i in range(25))


def test_local_rate_limit_is_smooth_and_within_the_limit(api_server: ApiServer):
    rate = 40
    api_server.reset(rate_limit_per_second=rate)
    items = [{"path": f"/limited/{i}"} for i in range(100)]
    started = time.monotonic()
    summary = api_bulk(items, base_url=api_server.url, rate_limit_per_second=rate, chunk_size=25,
                       max_concurrency=4, item_concurrency=8, **FAST)
    elapsed = time.monotonic() - started
    assert summary.ok and summary.succeeded == 100
    assert sum(api_server.limited_rejected().values()) <= 1
    times = sorted(r.time for r in api_server.requests)
    # one bucket for all 4 chunks (4 buckets would take ~0.6 s); thread scheduling on a busy machine can
    # bunch a few sends at the ends of the short window, hence the 10 % tolerance on the first-to-last rate
    assert (len(times) - 1) / (times[-1] - times[0]) <= rate * 1.1
    assert elapsed >= 100 / rate * 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"base_url": "not a url"}, "base_url"),
     ({"base_url": "http://127.0.0.1:1", "path_template": "/x/{}"}, "empty"),
     ({"base_url": "http://127.0.0.1:1", "chunk_size": 0}, "chunk_size"),
     ({"base_url": "http://127.0.0.1:1", "rate_limit_name": "x"}, "rate_limit_per_second"),
     ({"base_url": "http://127.0.0.1:1", "auth_secret": "bf-no-such-secret"}, "bf-no-such-secret")],
)
def test_bad_parameters_are_config_errors_naming_them(kwargs: dict[str, Any], match: str):
    with pytest.raises(ConfigError, match=match):
        api_bulk([{"id": 1}], **kwargs)


@pytest.mark.slow
def test_two_processes_share_a_named_rate_limit(api_server: ApiServer):
    rate, per_run = 25, 75
    api_server.reset(rate_limit_per_second=1000)  # the server does not enforce: we count what arrives
    name = f"bf-test-bulk-{uuid.uuid4().hex[:8]}"
    runs = [
        start_flow("flows.api_bulk:api_bulk", {
            "items": [{"path": f"/limited/{p}-{i}"} for i in range(per_run)], "base_url": api_server.url,
            "rate_limit_per_second": rate, "rate_limit_name": name, "chunk_size": 25, "max_concurrency": 2,
            "item_concurrency": 8, "run_key": f"shared-{p}"})
        for p in range(2)
    ]
    for proc in runs:
        out = finish(proc, timeout=120)
        assert proc.returncode == 0, out
        assert summary_in(out, RunSummary).succeeded == per_run
    per_second = Counter(int(r.time) for r in api_server.requests)
    assert sum(per_second.values()) == 2 * per_run
    # whole seconds only; a single unshared run would already send `rate` per second on its own
    assert max(per_second.values()) <= rate + 1, sorted(per_second.items())
    times = sorted(r.time for r in api_server.requests)
    assert (len(times) - 1) / (times[-1] - times[0]) <= rate * 1.05


@pytest.mark.slow
def test_chunks_in_worker_processes_send_every_request_once(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    items = [{"path": f"/ok/{i}"} for i in range(40)]
    summary = api_bulk(items, base_url=api_server.url, output=out, chunk_size=10, max_concurrency=2,
                       item_concurrency=4, task_runner="processes", rate_limit_per_second=200)
    assert summary.ok and (summary.total, summary.succeeded, summary.chunks_total) == (40, 40, 4)
    assert Counter(r.path for r in api_server.requests) == Counter(f"/ok/{i}" for i in range(40))
    assert [r["item"]["path"] for r in output_rows(out)] == [f"/ok/{i}" for i in range(40)]


def test_credential_headers_given_in_python_cannot_go_to_worker_processes(api_server: ApiServer):
    with pytest.raises(ConfigError, match="Secret blocks"):
        api_bulk([{"path": "/ok/1"}], base_url=api_server.url, headers={"Authorization": "Bearer x"},
                 task_runner="processes")
    assert api_server.count("/") == 0


def _flow_run_parameters(flow_run_id: str) -> str:
    import httpx

    response = httpx.get(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return json.dumps(response.json()["parameters"])


def test_credential_headers_never_become_flow_run_parameters(api_server: ApiServer, tmp_path: Path):
    """Python callers may pass X-Api-Key in headers: it is sent, yet Prefect never stores it."""
    items = [{"path": f"/ok/{i}"} for i in range(3)]
    summary = api_bulk(items, base_url=api_server.url, headers={"X-Api-Key": TOKEN, "X-Trace": "t1"}, **FAST)
    assert summary.ok, summary.render_text()
    assert {(r.headers.get("x-api-key"), r.headers.get("x-trace")) for r in api_server.requests} == {(TOKEN, "t1")}
    stored = _flow_run_parameters(summary.flow_run_id)
    assert TOKEN not in stored and "X-Api-Key" in stored and "mem:" in stored  # a process-local handle only
    assert "t1" in stored  # ordinary headers stay ordinary parameters


def test_secret_headers_come_from_secret_blocks(api_server: ApiServer, tmp_path: Path):
    name = f"bf-test-key-{uuid.uuid4().hex[:6]}"
    Secret(value=TOKEN).save(name, overwrite=True)
    summary = api_bulk([{"path": "/ok/1"}, {"path": "/status/404"}], base_url=api_server.url,
                       secret_headers={"X-Api-Key": name}, min_success_ratio=0.5, **FAST)
    assert (summary.succeeded, summary.failed) == (1, 1), summary.render_text()
    assert {r.headers.get("x-api-key") for r in api_server.requests} == {TOKEN}
    assert TOKEN not in _flow_run_parameters(summary.flow_run_id)
    with pytest.raises(ConfigError, match=r"secret_headers\['X-Api-Key'\] = 'bf-no-such-block'.*could not be loaded"):
        api_bulk([{"path": "/ok/1"}], base_url=api_server.url, secret_headers={"X-Api-Key": "bf-no-such-block"})


def test_credential_headers_as_deployment_parameters_are_refused(api_server: ApiServer):
    from flows.api_bulk import api_bulk_flow
    from flows.api_extract import api_extract_flow

    with pytest.raises(ConfigError, match=r"\['Authorization'\] carry credentials.*secret_headers=") as info:
        api_bulk_flow(items=[1], base_url=api_server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match=r"\['X-Auth-Token'\] carry credentials"):
        api_extract_flow(url=f"{api_server.url}/pages/offset", output="/tmp/x", headers={"X-Auth-Token": TOKEN})
    for name in ("Ocp-Apim-Subscription-Key", "X-Functions-Key", "X-Goog-Api-Key", "X-Session-Id"):  # Azure, Google
        with pytest.raises(ConfigError, match=rf"\['{name}'\] carry credentials"):
            api_bulk_flow(items=[1], base_url=api_server.url, headers={name: TOKEN, "Idempotency-Key": "plain"})
    assert api_server.requests == []



def test_an_unwritable_output_is_refused_before_any_request(api_server: ApiServer, tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should go")
    with pytest.raises(ConfigError, match="not-a-dir"):
        api_bulk([{"path": "/ok/1"}], base_url=api_server.url, output=blocker / "out")
    assert api_server.requests == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_response_numbers_reach_the_outputs_as_the_api_wrote_them(api_server: ApiServer, tmp_path: Path,
                                                                  transport: str):
    """12.50 stays 12.50 (not 12.5), 1e400 stays 1e400 (not Infinity), -0 and 20 digits stay: the body is data."""
    keys = [f"k{i}" for i in range(6)]
    out = tmp_path / "out"
    summary = api_bulk([{"path": f"/numbers/{k}"} for k in keys], base_url=api_server.url, output=out,
                       chunk_size=4, transport=transport, **FAST)
    assert summary.ok and summary.succeeded == 6, summary.render_text()
    lines = [line for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert [line.endswith(f'"body": {NUMBERS_BODY % k}}}') for k, line in zip(keys, lines, strict=True)] == [True] * 6
    assert [json.loads(line)["body"]["plan"] for line in lines] == ["Basic monthly"] * 6  # user data: never redacted

    pq = tmp_path / "pq"
    summary = api_bulk([{"path": f"/numbers/{k}"} for k in keys], base_url=api_server.url, output=pq,
                       output_format="parquet", run_key=f"pq-{transport}", **FAST)
    assert summary.ok, summary.render_text()
    frame = pl.read_parquet(sorted(pq.glob("part-*.parquet")))
    assert frame["body"].to_list() == [NUMBERS_BODY % k for k in keys]  # the JSON column: the body's own text


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_request_bodies_from_an_items_file_carry_its_numbers_and_a_given_content_type(
        api_server: ApiServer, tmp_path: Path, transport: str):
    lines = ['{"method": "POST", "path": "/ok/a", "json": {"amount": 12.50, "n": 1e5, "plain": 2.5, "z": -0}}',
             '{"method": "PATCH", "path": "/ok/b", "json": [0.10, "Basic monthly"]}']
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = api_bulk(str(source), base_url=api_server.url, output=out, transport=transport,
                       headers={"Content-Type": "application/merge-patch+json"}, **FAST)
    assert summary.ok and summary.succeeded == 2, summary.render_text()
    sent = {r.path: r for r in api_server.requests}
    assert sent["/ok/a"].body == b'{"amount":12.50,"n":1e5,"plain":2.5,"z":-0}'
    assert sent["/ok/b"].body == b'[0.10,"Basic monthly"]'
    assert {r.headers["content-type"] for r in sent.values()} == {"application/merge-patch+json"}
    rows = [line for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert sorted(row.split('"item": ')[1].split(', "method"')[0] for row in rows) == sorted(lines)


def _flow_run_artifacts(flow_run_id: str) -> str:
    import httpx

    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 50, "offset": 0}
    response = httpx.post(f"{os.environ['PREFECT_API_URL']}/artifacts/filter", json=body, timeout=10)
    response.raise_for_status()
    return json.dumps(response.json())


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_base_url_password_is_sent_as_basic_auth_and_never_stored_or_shown(
        api_server: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str):
    import base64

    password = "Pw-bulk-4e7d21"
    base_url = f"http://bob:{password}@127.0.0.1:{api_server.port}"
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    summary = api_bulk([{"path": "/ok/1"}, {"path": "/status/404"}], base_url=base_url, output=out,
                       transport=transport, min_success_ratio=0.5, **FAST)
    assert (summary.succeeded, summary.failed) == (1, 1), summary.render_text()
    basic = "Basic " + base64.b64encode(f"bob:{password}".encode()).decode()
    assert [r.headers.get("authorization") for r in api_server.requests] == [basic, basic]
    stored = _flow_run_parameters(summary.flow_run_id)
    assert password not in stored and basic.split()[1] not in stored and "mem:" in stored
    assert f'"http://127.0.0.1:{api_server.port}"' in stored
    (dead,) = dead_letters(summary)
    shown = [summary.render_text(), summary.model_dump_json(), dead["message"], _flow_run_artifacts(summary.flow_run_id),
             *(r.getMessage() for r in caplog.records), *(p.read_text() for p in out.glob("part-*"))]
    assert not [text for text in shown if password in text or basic.split()[1] in text]


def test_a_base_url_password_is_refused_as_a_deployment_parameter_and_for_worker_processes(api_server: ApiServer):
    from flows.api_bulk import api_bulk_flow

    base_url = f"http://bob:Pw-bulk-4e7d21@127.0.0.1:{api_server.port}"
    with pytest.raises(ConfigError, match=r"base_url .* holds a password.*secret_headers=\{'Authorization'") as info:
        api_bulk_flow(items=[{"path": "/ok/1"}], base_url=base_url)
    assert "Pw-bulk-4e7d21" not in str(info.value)
    with pytest.raises(ConfigError, match=r"base_url password.*Secret blocks"):
        api_bulk([{"path": "/ok/1"}], base_url=base_url, task_runner="processes")
    assert api_server.requests == []


def test_a_chunk_past_its_timeout_keeps_the_rows_of_the_requests_it_finished(api_server: ApiServer, tmp_path: Path):
    """chunk_timeout_s fails the chunk as a whole: the requests that answered before are counted as succeeded
    and their rows are in the output (a rerun with the run_key sends only the rest)."""
    items = [{"path": f"/ok/{k}"} for k in range(4)] + [{"path": "/slow/s?delay=20"}]
    out = tmp_path / "out"
    s = api_bulk(items, base_url=api_server.url, path_template="{path}", output=out, item_concurrency=1,
                 chunk_size=5, chunk_timeout_s=6, chunk_retries=0, min_success_ratio=0.5, run_key="timeout-rows",
                 **FAST)
    assert (s.succeeded, s.failed) == (4, 1), s.render_text()
    assert [r["body"]["id"] for r in s.results()] == ["0", "1", "2", "3"]


QUERY_KEY = "qkey-bulk-5c81e0"


def _items_api(seen: Seen) -> tuple[int, dict[str, str], Any]:
    """/v1/items/<id>: 200 with the id, 404 for an id with "missing"; POST /v1/bulk: one result per record."""
    if seen.path == "/v1/bulk":
        return 200, {}, [{"id": r["id"], "status": 201} for r in json.loads(seen.body)["records"]]
    name = seen.path.removeprefix("/v1/items/")
    return (404, {}, {"error": f"no item {name}"}) if "missing" in name else (200, {}, {"id": name})


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_base_url_query_goes_after_each_path_and_its_credential_stays_in_the_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str):
    """base_url=".../v1?version=2&api_key=K" from Python: every path joins /v1 and the query follows it (an item's
    own parameter wins), the key is sent yet never stored by Prefect, and what is written about the requests shows
    the path with only the key masked."""
    items = [{"id": "1-ok"}, {"id": "2-missing"}, {"path": "/items/3-ok", "params": {"page": "1"}},
             {"path": "/items/4-ok?version=3"}]
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    with raw_api(_items_api) as (url, seen):
        summary = api_bulk(items, base_url=f"{url}/v1?version=2&api_key={QUERY_KEY}", path_template="/items/{id}",
                           output=out, transport=transport, min_success_ratio=0.5, **FAST)
    assert (summary.total, summary.succeeded, summary.failed) == (4, 3, 1), summary.render_text()
    assert sorted(r.target for r in seen) == [
        f"/v1/items/1-ok?version=2&api_key={QUERY_KEY}", f"/v1/items/2-missing?version=2&api_key={QUERY_KEY}",
        f"/v1/items/3-ok?version=2&page=1&api_key={QUERY_KEY}", f"/v1/items/4-ok?version=3&api_key={QUERY_KEY}"]
    stored = _flow_run_parameters(summary.flow_run_id)
    assert QUERY_KEY not in stored and f'"base_url": "{url}/v1?version=2"' in stored and "mem:" in stored
    (dead,) = dead_letters(summary)
    assert dead["item"] == {"id": "2-missing"} and dead["status"] == 404
    assert "GET " + f"{url}/v1/items/2-missing?version=2&api_key=***" in dead["message"], dead["message"]
    rows = {r["item"]["id"] if "id" in r["item"] else r["item"]["path"]: r for r in output_rows(out)}
    assert rows["1-ok"]["url"] == f"{url}/v1/items/1-ok?version=2&api_key=***"
    assert rows["1-ok"]["body"] == {"id": "1-ok"} and rows["/items/4-ok?version=3"]["body"] == {"id": "4-ok"}
    shown = [summary.render_text(), summary.model_dump_json(), dead["message"], _flow_run_artifacts(summary.flow_run_id),
             *(r.getMessage() for r in caplog.records), *(p.read_text() for p in out.glob("part-*"))]
    assert not [text for text in shown if QUERY_KEY in text]


def test_a_base_url_credential_as_a_deployment_parameter_is_refused_and_masked_in_the_stored_run():
    from flows.api_bulk import api_bulk_flow

    with raw_api(_items_api) as (url, seen):
        base_url = f"{url}/v1?version=2&api_key={QUERY_KEY}"
        with pytest.raises(ConfigError, match=r"\['api_key'\] carry credentials.*secret_params=") as info:
            api_bulk_flow(items=[{"id": "1-ok"}], base_url=base_url)
        assert QUERY_KEY not in str(info.value)
        state = api_bulk_flow(items=[{"id": "1-ok"}], base_url=base_url, return_state=True)
        assert state.is_failed() and "secret_params=" in (state.message or "")
        with pytest.raises(ConfigError, match=r"query parameters.*secret_params=\{'api_key'"):
            api_bulk([{"id": "1-ok"}], base_url=base_url, task_runner="processes")
    assert seen == []
    stored = stored_for_run(state.state_details.flow_run_id)
    assert stored["parameters"]["base_url"] == f"{url}/v1?version=2&api_key=***"
    assert QUERY_KEY not in json.dumps(stored)


def test_secret_params_from_a_secret_block_go_on_every_request_batches_included(tmp_path: Path):
    """The deployment's way: secret_params={'api_key': '<block>'} sends the block's value on every request (here
    multi-item POSTs) after base_url's own query; Prefect stores the block name only."""
    from flows.api_bulk import api_bulk_flow

    name = f"bf-test-qkey-{uuid.uuid4().hex[:6]}"
    Secret(value=QUERY_KEY).save(name, overwrite=True)
    with raw_api(_items_api) as (url, seen):
        state = api_bulk_flow(items=[{"id": i} for i in range(5)], base_url=f"{url}/v1?version=2", method="POST",
                              path_template="/bulk", json_template={"records": "{items}"}, batch_size=2,
                              secret_params={"api_key": name}, output=str(tmp_path / "out"), return_state=True)
    summary = summary_from_state(state)
    assert (summary.succeeded, summary.failed) == (5, 0), summary.render_text()
    assert [r.target for r in seen] == [f"/v1/bulk?version=2&api_key={QUERY_KEY}"] * 3
    stored = _flow_run_parameters(summary.flow_run_id)
    assert QUERY_KEY not in stored and name in stored
    assert not [line for line in (tmp_path / "out").glob("part-*") if QUERY_KEY in line.read_text()]



def _string_status_bulk(request: Seen) -> tuple[int, dict[str, str], Any]:
    answers = {"a": {"status": "201"}, "b": {"status": "422", "message": "invalid email"}, "c": {"status_code": 400.0},
               "d": {"status_code": "503", "message": "try later"}, "e": {"status": "queued"}}
    records = json.loads(request.body)["records"]
    return 207, {}, {"results": [{"email": r["email"], **answers[r["email"]]} for r in records]}


def test_bulk_record_statuses_given_as_strings_or_floats_are_errors_from_400(tmp_path: Path):
    items = [{"email": e} for e in "abcde"]
    with raw_api(_string_status_bulk) as (url, seen):
        s = api_bulk(items, base_url=url, method="POST", path_template="/bulk", json_template={"records": "{items}"},
                     batch_size=5, results_path="results", result_key="email", output=tmp_path / "out", retries=2,
                     raise_on_failure=False, **FAST)
    assert (s.total, s.succeeded, s.failed) == (5, 2, 3)
    assert [[r["email"] for r in json.loads(q.body)["records"]] for q in seen] == [list("abcde"), ["d"], ["d"]]
    dead = sorted(dead_letters(s), key=lambda d: d["item"]["email"])
    assert [(d["item"]["email"], d["category"], d["status"]) for d in dead] == [
        ("b", "record_error", 422), ("c", "record_error", 400), ("d", "record_retryable", 503)]
    rows = sorted(output_rows(tmp_path / "out"), key=lambda r: r["item"]["email"])
    assert [(r["item"]["email"], r["status"], r["body"]) for r in rows] == [
        ("a", 201, {"email": "a", "status": "201"}), ("e", 207, {"email": "e", "status": "queued"})]


def test_bulk_answer_holding_a_records_key_twice_fails_that_record_naming_it(tmp_path: Path):
    def twice(request: Seen) -> tuple[int, dict[str, str], Any]:
        return 207, {}, {"results": [{"id": 1, "status": 201}, {"id": 1, "status": 422}, {"id": 2, "status": 201}]}

    with raw_api(twice) as (url, _):
        s = api_bulk([{"id": 1}, {"id": 2}], base_url=url, method="POST", path_template="/bulk",
                     json_template={"records": "{items}"}, batch_size=5, results_path="results", result_key="id",
                     output=tmp_path / "out", raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed) == (1, 1)
    [dead] = dead_letters(s)
    assert (dead["item"], dead["category"], dead["status"]) == ({"id": 1}, "result_key_ambiguous", 207)
    assert "id=1 is held by 2 results" in dead["message"]
    assert [r["item"] for r in output_rows(tmp_path / "out")] == [{"id": 2}]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_an_item_json_cannot_carry_fails_alone_as_a_bad_item_one_request_each(transport: str) -> None:
    """Without batch_size a NaN or a date in the body failed as category 'exception' with a bare message."""
    import datetime as dt

    bodies = [{"id": 1}, {"id": 2, "v": float("nan")}, {"id": 3, "v": dt.date(2026, 1, 1)}, {"id": 4}]
    items = [{"method": "POST", "path": f"/things/{b['id']}", "json": b} for b in bodies]
    with raw_api(lambda q: (201, {}, {"ok": True})) as (url, seen):
        s = api_bulk(items, base_url=url, transport=transport, raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed) == (2, 2) and len(seen) == 2  # the bad ones never sent, nor retried
    dead = sorted(s.dead_letters(), key=lambda d: d["item"]["path"])
    assert [(d["item"]["path"], d["category"]) for d in dead] == [("/things/2", "bad_item"), ("/things/3", "bad_item")]
    assert dead[0]["message"] == "the item's request cannot be built: ValueError: Out of range float values are not JSON compliant"
    assert dead[1]["message"] == "the item's request cannot be built: TypeError: Object of type date is not JSON serializable"
