"""api_extract end to end against the real loopback test API: the four paginators, resume after SIGKILL,
bad pages named in the errors, Parquet parts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.api_extract import api_extract
from tasks.core.errors import ConfigError
from tasks.core.outcomes import RunSummary, read_dead_letters
from tests.fixtures.api_server import DATASET_SIZE, ApiServer, decimal_record
from tests.run_flow import finish, start_flow, summary_in
from tests.tasks.api.test_paginators import scripted_api

ROOT = Path(__file__).resolve().parents[2]
ALL_IDS = list(range(DATASET_SIZE))


def ids_in(out: Path) -> list[int]:
    return [json.loads(line)["id"] for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


@pytest.mark.parametrize(
    ("style", "kwargs", "requests"),
    [
        ("offset", {"paginator": "offset"}, 24 + 1),  # 24 pages, then the empty page ends it
        ("page", {"paginator": "page"}, 24 + 1),
        ("cursor", {"paginator": "cursor", "cursor_path": "meta.next_cursor", "records_path": "result.items"}, 24),
        ("link", {"paginator": "link_header", "records_path": ""}, 24),
    ],
)
def test_each_paginator_extracts_every_record_once(
    api_server: ApiServer, tmp_path: Path, style: str, kwargs: dict[str, Any], requests: int
):
    out = tmp_path / "out"
    summary = api_extract(f"{api_server.url}/pages/{style}", output=out, page_size=10, pages_per_part=5, **kwargs)
    assert summary.ok, summary.render_text()
    assert ids_in(out) == ALL_IDS
    assert summary.total == summary.succeeded == DATASET_SIZE
    assert summary.extra["pages"] == 24
    assert len(api_server.requests) == requests
    assert len(list(out.glob("part-*.jsonl"))) == 5  # 24 pages / 5 per part


def test_max_pages_and_rerun_after_completion_fetches_nothing(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"output": out, "page_size": 7, "pages_per_part": 2, "max_pages": 5, "run_key": "capped"}
    first = api_extract(f"{api_server.url}/pages/offset", **kwargs)
    assert first.ok and ids_in(out) == list(range(35)) and len(api_server.requests) == 5
    again = api_extract(f"{api_server.url}/pages/offset", **kwargs)
    assert again.ok and again.succeeded == 35 and again.chunks_resumed == 3
    assert len(api_server.requests) == 5 and ids_in(out) == list(range(35))


def test_failed_page_is_named_in_the_message_and_dead_letter(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"output": out, "page_size": 50, "pages_per_part": 1, "run_key": "bad-path",
                              "records_path": "data", "retry_backoff_s": 0.01}
    # the cursor endpoint has no "data": page 1 fails, nothing is written
    bad = api_extract(f"{api_server.url}/pages/cursor", paginator="cursor", cursor_path="meta.next_cursor",
                      **{**kwargs, "run_key": "no-records"}, raise_on_failure=False)
    assert not bad.ok and "page 1" in bad.message and "'data'" in bad.message and "result" in bad.message
    (dead,) = read_dead_letters(bad.dead_letter_path)
    assert dead["item"]["page"] == 1 and dead["category"] == "records_path_missing"
    text = api_extract(f"{api_server.url}/malformed/x", **{**kwargs, "run_key": "not-json"}, raise_on_failure=False)
    assert not text.ok and "page 1" in text.message and "not JSON" in text.message
    assert "check the URL" in text.message and "expect=" not in text.message  # api_extract has no expect


def test_refused_credentials_stop_the_extraction(api_server: ApiServer, tmp_path: Path):
    summary = api_extract(f"{api_server.url}/status/401", output=tmp_path / "out", retry_backoff_s=0.01, raise_on_failure=False)
    assert not summary.ok and "credentials were refused" in summary.message
    assert ".." not in summary.message and ".;" not in summary.message, summary.message
    assert len(api_server.requests) == 1


def test_parquet_parts(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "pq"
    summary = api_extract(f"{api_server.url}/pages/page", output=out, paginator="page", page_size=40,
                          output_format="parquet")
    assert summary.ok
    frame = pl.read_parquet(sorted(out.glob("part-*.parquet")))
    assert frame["id"].to_list() == ALL_IDS and frame.columns == ["id", "name"]


def test_a_server_capping_its_page_size_is_named_once_with_the_numbers(
        api_server: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    summary = api_extract(f"{api_server.url}/pages/offset?cap=10", output=tmp_path / "out", page_size=100,
                          pages_per_part=5)
    assert summary.ok and ids_in(tmp_path / "out") == ALL_IDS  # nothing lost, only slower
    assert summary.extra["records_per_page_seen"] == 10
    warnings = [r.getMessage() for r in caplog.records if "caps its page size" in r.getMessage()]
    assert len(warnings) == 1 and "page_size=100 was asked" in warnings[0] and "set page_size=10" in warnings[0]
    caplog.clear()
    plain = api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "plain", page_size=10, pages_per_part=5)
    assert "records_per_page_seen" not in plain.extra
    assert not [r for r in caplog.records if "caps its page size" in r.getMessage()]


def test_bad_parameters_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a valid http"):
        api_extract("ftp://x/y", output=tmp_path)
    with pytest.raises(ConfigError, match="cursor_path"):
        api_extract("http://127.0.0.1:1/x", output=tmp_path, paginator="cursor")
    with pytest.raises(ConfigError, match="page_size"):
        api_extract("http://127.0.0.1:1/x", output=tmp_path, page_size=0)


def test_a_server_ignoring_the_pagination_fails_naming_the_page(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    summary = api_extract(f"{api_server.url}/pages/offset", output=out, page_size=50,
                          paginator_options={"offset_param": "skip"}, pages_per_part=1, raise_on_failure=False)
    assert not summary.ok
    assert "page 2" in summary.message and "exactly the 50 records of page 1" in summary.message
    assert api_server.count("/pages/offset") == 2
    assert ids_in(out) == list(range(50))  # page 1 was written once; the repeat was not
    (dead,) = read_dead_letters(summary.dead_letter_path)
    assert dead["category"] == "pagination_stuck" and dead["item"]["page"] == 2 and dead["status"] is None
    with pytest.raises(ConfigError, match="do not apply to paginator 'offset'"):
        api_extract(f"{api_server.url}/pages/offset", output=out, paginator_options={"page_param": "p"})


def test_checkpoint_of_another_extraction_is_refused(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    assert api_extract(f"{api_server.url}/pages/offset", output=out, page_size=100, run_key="same").ok
    with pytest.raises(ConfigError, match="different extraction"):
        api_extract(f"{api_server.url}/pages/page", output=out, page_size=100, run_key="same")


@pytest.mark.slow
def test_sigkill_mid_extraction_then_rerun_has_no_duplicates_and_no_gaps(api_server: ApiServer, tmp_path: Path):
    out = tmp_path / "out"
    params = {"url": f"{api_server.url}/pages/cursor", "paginator": "cursor", "cursor_path": "meta.next_cursor",
              "records_path": "result.items", "page_size": 5, "pages_per_part": 2, "params": {"delay": "0.05"},
              "output": str(out), "run_key": "killed-extract"}
    proc = start_flow("flows.api_extract:api_extract", params)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.jsonl"))) < 4:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no parts written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = ids_in(out)
    assert 0 < len(before) < DATASET_SIZE, "the run finished before it was killed; the test proves nothing"
    fetched_before = len(api_server.requests)

    rerun = start_flow("flows.api_extract:api_extract", params)
    output = finish(rerun, timeout=120)
    assert rerun.returncode == 0, output
    summary = summary_in(output, RunSummary)
    assert ids_in(out) == ALL_IDS  # no duplicate, no gap
    assert summary.total == summary.succeeded == DATASET_SIZE and summary.chunks_resumed >= 3
    pages = -(-DATASET_SIZE // 5)
    # the rerun fetched only pages after the last checkpoint (at most the part in flight again)
    assert pages <= len(api_server.requests) <= pages + 2 + 2, (fetched_before, len(api_server.requests))


def test_credential_query_parameters_are_refused_as_deployment_parameters(api_server: ApiServer, tmp_path: Path):
    from flows.api_extract import api_extract_flow

    with pytest.raises(ConfigError, match=r"\['api_key'\] carry credentials.*secret_params="):
        api_extract_flow(url=f"{api_server.url}/pages/offset?api_key=abcd1234", output=str(tmp_path))
    with pytest.raises(ConfigError, match=r"\['access_token'\] carry credentials"):
        api_extract_flow(url=f"{api_server.url}/pages/offset", output=str(tmp_path), params={"access_token": "x"})


def test_record_numbers_reach_the_parts_as_the_api_wrote_them(api_server: ApiServer, tmp_path: Path):
    """JSONL parts hold each record as the page wrote it (12.50, 7e-2); Parquet columns are typed doubles."""
    out = tmp_path / "out"
    summary = api_extract(f"{api_server.url}/pages/decimal", output=out, page_size=50)
    assert summary.ok and summary.succeeded == DATASET_SIZE, summary.render_text()
    lines = [line for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert lines == [decimal_record(i) for i in range(DATASET_SIZE)]

    pq = tmp_path / "pq"
    assert api_extract(f"{api_server.url}/pages/decimal", output=pq, page_size=50, output_format="parquet").ok
    frame = pl.read_parquet(sorted(pq.glob("part-*.parquet")))
    assert frame.schema["amount"] == pl.Float64
    assert frame["amount"].to_list() == [json.loads(decimal_record(i))["amount"] for i in range(DATASET_SIZE)]


def _ten(page: int) -> list[dict[str, int]]:
    return [{"id": page * 100 + i} for i in range(10)]


def test_a_next_link_holding_a_comma_is_followed_to_the_last_page(tmp_path: Path):
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        nxt = {"Link": f'<http://{host}/items?page={page + 1}&fields=id,name>; rel="next"'} if page < 3 else {}
        return _ten(page), nxt

    with scripted_api(route) as (url, seen):
        summary = api_extract(f"{url}/items?fields=id,name", paginator="link_header", records_path="",
                              output=tmp_path / "out")
    assert summary.ok and summary.extra["pages"] == 3 and len(seen) == 3
    assert ids_in(tmp_path / "out") == [r["id"] for p in (1, 2, 3) for r in _ten(p)]


def _cursor_route(empty: set[int], *, loop_at: int | None = None) -> Any:
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        c = int(query.get("cursor") or 0)
        nxt = c if c == loop_at else c + 1 if c < 4 else None
        return {"data": [] if c in empty else _ten(c), "meta": {"next": None if nxt is None else str(nxt)}}, {}

    return route


def test_a_cursor_walk_goes_on_past_an_empty_page_with_a_next_cursor(tmp_path: Path):
    with scripted_api(_cursor_route({2})) as (url, seen):
        summary = api_extract(f"{url}/items", paginator="cursor", cursor_path="meta.next", page_size=10,
                              pages_per_part=2, output=tmp_path / "out")
    assert summary.ok and summary.state == "Completed" and len(seen) == 5
    assert ids_in(tmp_path / "out") == [r["id"] for c in (0, 1, 3, 4) for r in _ten(c)]
    assert (summary.total, summary.extra["pages"]) == (40, 5)


def test_a_cursor_returned_twice_in_a_row_fails_naming_the_page_and_the_rerun_sends_nothing(tmp_path: Path):
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"paginator": "cursor", "cursor_path": "meta.next", "page_size": 10, "output": out,
                              "run_key": "loop", "raise_on_failure": False}
    with scripted_api(_cursor_route(set(), loop_at=2)) as (url, seen):
        summary = api_extract(f"{url}/items", **kwargs)
        assert not summary.ok and "page 4 would repeat the request of page 3" in summary.message, summary.message
        assert ids_in(out) == [r["id"] for c in (0, 1, 2) for r in _ten(c)] and len(seen) == 3  # each page once
        (dead,) = read_dead_letters(summary.dead_letter_path)
        assert dead["category"] == "pagination_stuck" and dead["item"]["page"] == 4
        again = api_extract(f"{url}/items", **kwargs)
        assert not again.ok and "page 4 would repeat" in again.message and len(seen) == 3


def _cap_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "caps its page size" in r.getMessage()]


def test_a_short_last_page_is_not_taken_for_a_capped_page_size(
        api_server: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # 237 records in pages of 10: the 24th holds 7, and the empty page that ends the walk is in the next part
    summary = api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "out", page_size=10, pages_per_part=1)
    assert summary.ok and ids_in(tmp_path / "out") == ALL_IDS
    assert "records_per_page_seen" not in summary.extra and not _cap_warnings(caplog)


@pytest.mark.parametrize("pages_per_part", [100, 1, 5])
def test_a_capping_server_is_named_when_the_walk_fits_in_one_part_too(
        api_server: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, pages_per_part: int):
    summary = api_extract(f"{api_server.url}/pages/offset?cap=7", output=tmp_path / "out", page_size=10,
                          pages_per_part=pages_per_part)
    assert summary.ok and ids_in(tmp_path / "out") == ALL_IDS
    assert summary.extra["records_per_page_seen"] == 7
    (warning,) = _cap_warnings(caplog)
    assert "answers about 7 record(s) per page where page_size=10 was asked" in warning
    assert "the 33 page(s) before the last" in warning and "set page_size=7" in warning


def test_a_url_password_is_sent_as_basic_auth_and_never_stored(
        api_server: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import base64

    import httpx

    password = "Pw-extract-9c1f"
    url = f"http://reader:{password}@127.0.0.1:{api_server.port}/pages/offset"
    summary = api_extract(url, output=tmp_path / "out", page_size=100, run_key="basic")
    assert summary.ok and ids_in(tmp_path / "out") == ALL_IDS
    basic = "Basic " + base64.b64encode(f"reader:{password}".encode()).decode()
    assert {r.headers.get("authorization") for r in api_server.requests} == {basic}
    response = httpx.get(f"{os.environ['PREFECT_API_URL']}/flow_runs/{summary.flow_run_id}", timeout=10)
    stored = json.dumps(response.json()["parameters"])
    assert password not in stored and basic.split()[1] not in stored and "mem:" in stored
    assert f"127.0.0.1:{api_server.port}/pages/offset" in stored
    shown = [summary.render_text(), summary.model_dump_json(), *(r.getMessage() for r in caplog.records)]
    assert not [text for text in shown if password in text]
    # a rerun with the same URL resumes the same extraction (the stored URL is stable)
    assert api_extract(url, output=tmp_path / "out", page_size=100, run_key="basic").chunks_resumed >= 1


def test_a_url_password_as_a_deployment_parameter_is_refused(api_server: ApiServer, tmp_path: Path):
    from flows.api_extract import api_extract_flow

    url = f"http://reader:Pw-extract-9c1f@127.0.0.1:{api_server.port}/pages/offset"
    with pytest.raises(ConfigError, match=r"url .* holds a password.*secret_headers=\{'Authorization'") as info:
        api_extract_flow(url=url, output=str(tmp_path))
    assert "Pw-extract-9c1f" not in str(info.value) and api_server.requests == []


def _pages_route(pages: dict[int, list[dict[str, Any]]]) -> Any:
    def route(path: str, query: dict[str, str], host: str) -> tuple[Any, dict[str, str]]:
        return {"data": pages.get(int(query["page"]), [])}, {}

    return route


def test_parquet_integers_past_64_bits_are_readable_and_keep_every_digit(tmp_path: Path):
    """Integers past int64 were an Int128 column pyarrow cannot open (results() and collect raised), and one
    past 128 bits turned the whole part into one ``record`` column: now UInt64 / Decimal(38, 0) / text."""
    from decimal import Decimal

    import pyarrow.parquet as pq

    huge = 2**128 + 1
    pages = {1: [{"id": 1, "big": 2**64, "u": 2**63}, {"id": 2, "big": -5, "u": 7}],
             2: [{"id": 3, "big": huge, "name": "c"}]}
    with scripted_api(_pages_route(pages)) as (url, _):
        summary = api_extract(f"{url}/items", paginator="page", page_size=2, pages_per_part=1,
                              output=tmp_path / "out", output_format="parquet", collect=True)
    assert summary.ok and summary.succeeded == 3, summary.render_text()
    first, second = (pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*.parquet")))
    assert [str(t) for t in first.schema.types] == ["int64", "decimal128(38, 0)", "uint64"]
    assert second.column_names == ["id", "big", "name"] and str(second.schema.field("id").type) == "int64"
    expected = [{"id": 1, "big": Decimal(2**64), "u": 2**63}, {"id": 2, "big": Decimal(-5), "u": 7},
                {"id": 3, "big": str(huge), "name": "c"}]
    assert summary.collected == expected and list(summary.results()) == expected


def test_parquet_parts_typed_differently_read_back_as_one(tmp_path: Path):
    """Each part's types come from its own records (amt int64 then double, note null then text): results()
    and polars' diagonal_relaxed concat read the folder as one dataset."""
    pages = {1: [{"id": 1, "amt": 3, "note": None}, {"id": 2, "amt": 5, "note": None}],
             2: [{"id": 3, "amt": 12.5, "note": "x"}]}
    with scripted_api(_pages_route(pages)) as (url, _):
        summary = api_extract(f"{url}/items", paginator="page", page_size=2, pages_per_part=1,
                              output=tmp_path / "out", output_format="parquet")
    assert summary.ok and summary.succeeded == 3, summary.render_text()
    rows = list(summary.results())
    assert rows == [{"id": 1, "amt": 3.0, "note": None}, {"id": 2, "amt": 5.0, "note": None},
                    {"id": 3, "amt": 12.5, "note": "x"}]
    assert [type(r["amt"]) for r in rows] == [float] * 3
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    frame = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
    assert frame.schema == pl.Schema({"id": pl.Int64, "amt": pl.Float64, "note": pl.String})
