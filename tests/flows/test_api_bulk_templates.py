"""api_bulk templates and answers as users meet them, on both transports: format specs in templates (a value one
cannot take fails that item alone), dot segments kept as one path segment, JSON in a declared charset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.api_bulk import api_bulk
from tasks.core.errors import ConfigError
from tests.tasks.api.loopback import Seen, raw_api

TRANSPORTS = ["aiohttp", "httpx"]


def _echo(request: Seen) -> tuple[int, dict[str, str], Any]:
    return 200, {}, {"path": request.target, "body": request.body.decode()}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_format_spec_in_path_template_works_and_a_value_it_cannot_take_fails_alone(tmp_path: Path, transport: str):
    items = [{"id": 5}, {"id": "abc"}, {"id": 1234567}]
    with raw_api(_echo) as (url, seen):
        summary = api_bulk(items, base_url=f"{url}/v1", path_template="/u/{id:05d}", transport=transport,
                           output=tmp_path / "out", raise_on_failure=False, retries=0)
    assert (summary.total, summary.succeeded, summary.failed) == (3, 2, 1), summary.render_text()
    assert sorted(r.target for r in seen) == ["/v1/u/00005", "/v1/u/1234567"]
    (dead,) = summary.dead_letters()
    assert dead["item"] == {"id": "abc"} and dead["category"] == "bad_item" and dead["attempts"] == 0
    assert "{id:05d}" in dead["message"] and "Unknown format code 'd'" in dead["message"], dead["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_format_spec_in_json_template_works_and_a_value_it_cannot_take_fails_alone(tmp_path: Path, transport: str):
    items = [{"amt": 12.5, "n": "x"}, {"amt": "x", "n": "y"}, {"amt": 3, "n": "z"}]
    with raw_api(_echo) as (url, seen):
        summary = api_bulk(items, base_url=url, method="POST", path_template="/pay",
                           json_template={"a": "{amt:.2f}", "raw": "{amt}", "who": "{n!r}"}, transport=transport,
                           output=tmp_path / "out", raise_on_failure=False, retries=0)
    assert (summary.succeeded, summary.failed) == (2, 1), summary.render_text()
    assert sorted(json.loads(r.body)["a"] for r in seen) == ["12.50", "3.00"]
    assert {json.loads(r.body)["who"] for r in seen} == {"'x'", "'z'"}
    (dead,) = summary.dead_letters()
    assert dead["item"] == {"amt": "x", "n": "y"} and dead["category"] == "bad_item"
    assert "{amt:.2f}" in dead["message"]


@pytest.mark.parametrize(("template", "match"), [
    ("/u/{id!x}", r"\{id!x\} is not a conversion"),
    ("/u/{id:{width}}", r"format spec of \{id\} holds a placeholder"),
])
def test_templates_that_cannot_work_are_refused_up_front(template: str, match: str):
    with raw_api(_echo) as (url, seen):
        with pytest.raises(ConfigError, match=match):
            api_bulk([{"id": 1}], base_url=url, path_template=template)
        with pytest.raises(ConfigError, match=match):
            api_bulk([{"id": 1}], base_url=url, method="POST", path_template="/p", json_template={"a": template})
    assert seen == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dot_values_stay_one_path_segment(tmp_path: Path, transport: str):
    items = [{"id": ".."}, {"id": "."}, {"id": "a/.."}, {"id": "..."}]
    with raw_api(_echo) as (url, seen):
        summary = api_bulk(items, base_url=f"{url}/v1", path_template="/users/{id}", transport=transport,
                           output=tmp_path / "out")
    assert summary.ok
    sent = ["/v1/users/%2E%2E", "/v1/users/%2E", "/v1/users/a%2F..", "/v1/users/..."]
    assert sorted(r.target for r in seen) == sorted(sent)
    assert [r["url"] for r in summary.results()] == [f"{url}{path}" for path in sent]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("output", [True, False], ids=["kept", "checked"])
def test_json_in_a_declared_charset_is_read_in_it(tmp_path: Path, transport: str, output: bool):
    """Latin-1 bytes declared so are read in it; UTF-8 bytes declared as Latin-1 (a common slip) stay UTF-8."""
    text = '{"name": "José", "amount": 12.50}'
    bodies = {"/1": text.encode("iso-8859-1"), "/2": text.encode("utf-8")}
    declared = {"Content-Type": "application/json; charset=iso-8859-1"}
    with raw_api(lambda r: (200, declared, bodies[r.target])) as (url, _):
        summary = api_bulk([{"id": 1}, {"id": 2}], base_url=url, transport=transport, retries=0,
                           raise_on_failure=False, output=tmp_path / "out" if output else None)
    assert summary.ok and summary.succeeded == 2, summary.message
    if output:
        assert [r["body"] for r in summary.results()] == [{"name": "José", "amount": 12.5}] * 2
        (part,) = (tmp_path / "out").glob("part-*.jsonl")
        assert part.read_text().count('"body": {"name": "José", "amount": 12.50}') == 2
