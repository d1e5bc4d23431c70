"""api_extract and the query string, as users write it: a credential parameter in the URL (the run resumes, the
watermark is found, next links carry it, nothing stored holds it), repeated parameters, a page in a declared
charset, an incremental record_field no record has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.api_extract import api_extract
from tasks.core.outcomes import read_dead_letters
from tests.tasks.api.loopback import Seen, raw_api

KEY = "Kq-7f3a91-secret"
INCREMENTAL = {"param": "updated_since", "record_field": "updated_at"}
ROWS = [{"id": 1, "updated_at": "2026-01-01T00:00:00Z"}, {"id": 2, "updated_at": "2026-01-02T00:00:00Z"}]


def lines(out: Path) -> list[str]:
    return [line for part in sorted(out.rglob("part-*.jsonl")) for line in part.read_text().splitlines()]


def _changes(request: Seen) -> tuple[int, dict[str, str], Any]:
    if request.query.get("api_key") != [KEY]:
        return 401, {}, {"error": "no key"}
    since = request.query.get("updated_since", [""])[0]
    offset = int(request.query["offset"][0])
    return 200, {}, {"data": [r for r in ROWS if r["updated_at"] >= since][offset:offset + 10]}


@pytest.mark.parametrize("where", ["url", "params"])
def test_a_credential_query_parameter_keeps_the_watermark_and_the_run_key(tmp_path: Path, where: str):
    with raw_api(_changes) as (url, seen):
        def extract(run_key: str) -> Any:
            target, params = ((f"{url}/items?api_key={KEY}", None) if where == "url"
                              else (f"{url}/items", {"api_key": KEY}))
            return api_extract(target, params=params, output=tmp_path / "out", run_key=run_key,
                               incremental=INCREMENTAL)

        first, second = extract("first"), extract("second")
        assert first.ok and second.ok and first.total == 2, first.render_text()
        # the second run finds the first one's watermark and asks only from there
        assert second.extra["incremental_stream"] == first.extra["incremental_stream"]
        assert second.extra["watermark_before"] == "2026-01-02T00:00:00Z" and second.total == 1
        assert seen[-2].query["updated_since"] == ["2026-01-02T00:00:00Z"]
        # the same run_key again resumes the finished run instead of refusing "a different extraction"
        sent = len(seen)
        again = extract("second")
        assert again.ok and again.chunks_resumed == 1 and len(seen) == sent


def test_a_repeated_query_parameter_is_sent_with_every_value(tmp_path: Path):
    def route(request: Seen) -> tuple[int, dict[str, str], Any]:
        offset = int(request.query["offset"][0])
        return 200, {}, {"data": [{"id": offset}] if offset == 0 else []}

    with raw_api(route) as (url, seen):
        summary = api_extract(f"{url}/items?status=open&status=closed&q=a%20b", output=tmp_path / "out")
    assert summary.ok and summary.total == 1 and len(seen) == 2
    assert [r.query["status"] for r in seen] == [["open", "closed"]] * 2
    assert all(r.target.startswith("/items?status=open&status=closed&q=a+b&offset=") for r in seen), seen


def _linked(*, echo: bool, fail_at: list[int]) -> Any:
    """Pages 1-4 linked by ``Link`` headers (the next link repeats the key when ``echo``); page ``fail_at`` answers
    500 once; a request without the key gets 401."""
    def route(request: Seen) -> tuple[int, dict[str, str], Any]:
        if request.query.get("api_key") != [KEY]:
            return 401, {}, {"error": "no key"}
        page = int(request.query.get("page", ["1"])[0])
        if fail_at and page == fail_at[0]:
            fail_at.clear()
            return 500, {}, {"error": "down"}
        nxt = f"/items?page={page + 1}" + (f"&api_key={KEY}" if echo else "")
        return 200, ({"Link": f'<{nxt}>; rel="next"'} if page < 4 else {}), {"data": [{"page": page}]}

    return route


@pytest.mark.parametrize("echo", [True, False], ids=["link-repeats-key", "link-without-key"])
def test_next_links_get_the_credential_parameter_and_nothing_stored_holds_it(tmp_path: Path, echo: bool):
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"paginator": "link_header", "page_size": 1, "pages_per_part": 1, "retries": 0,
                              "output": out, "run_key": "links", "raise_on_failure": False}
    with raw_api(_linked(echo=echo, fail_at=[3])) as (url, seen):
        first = api_extract(f"{url}/items?api_key={KEY}", **kwargs)
        assert not first.ok and "page 3" in first.message and "credentials" not in first.message, first.message
        (dead,) = read_dead_letters(first.dead_letter_path)
        assert dead["item"]["state"]["next_url"] == f"{url}/items?page=3"
        run_dir = Path(first.dead_letter_path).parent
        stored = {p.name: p.read_text() for p in run_dir.rglob("*") if p.is_file()}
        assert "checkpoint.json" in stored and not [name for name, text in stored.items() if KEY in text]
        again = api_extract(f"{url}/items?api_key={KEY}", **kwargs)
    assert again.ok, again.message
    assert [json.loads(line)["page"] for line in lines(out)] == [1, 2, 3, 4]
    assert len(seen) == 5 and all(r.query.get("api_key") == [KEY] for r in seen), [r.target for r in seen]


def test_a_json_page_in_a_declared_charset_is_read_in_it(tmp_path: Path):
    page = '{"data": [{"name": "José Müller", "amount": 12.50}]}'.encode("iso-8859-1")

    def route(request: Seen) -> tuple[int, dict[str, str], Any]:
        if request.query["offset"] != ["0"]:
            return 200, {}, {"data": []}
        return 200, {"Content-Type": "application/json; charset=ISO-8859-1"}, page

    with raw_api(route) as (url, _):
        summary = api_extract(f"{url}/items", output=tmp_path / "out", retries=0)
    assert summary.ok and summary.total == 1, summary.message
    assert lines(tmp_path / "out") == ['{"name": "José Müller", "amount": 12.50}']


def test_an_incremental_record_field_no_record_has_is_named_with_the_keys_they_have(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with raw_api(lambda r: (200, {}, {"data": ROWS if r.query["offset"] == ["0"] else []})) as (url, _):
        summary = api_extract(f"{url}/items", output=tmp_path / "out",
                              incremental={"param": "updated_since", "record_field": "updatedAt"})
    assert summary.ok and summary.total == 2 and summary.extra["watermark_after"] is None
    (warning,) = [r.getMessage() for r in caplog.records if "record_field 'updatedAt'" in r.getMessage()]
    assert "none of the 2 record(s)" in warning and "['id', 'updated_at']" in warning


def test_records_with_the_incremental_field_give_no_such_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with raw_api(lambda r: (200, {}, {"data": ROWS if r.query["offset"] == ["0"] else []})) as (url, _):
        summary = api_extract(f"{url}/items", output=tmp_path / "out", incremental=INCREMENTAL)
    assert summary.ok and summary.extra["watermark_after"] == "2026-01-02T00:00:00Z"
    assert not [r for r in caplog.records if "none of the" in r.getMessage()]
