"""Secrets never leak: every flow run with a token or a database password in play, some items failing.

For each flow the secret is a fresh value (so one test's redaction registry cannot mask another's),
actually used (the server saw the token, PostgreSQL checked the password), and then searched for in
everything a run leaves behind: the state dir, outputs, rejects and dead letters (parquet decoded),
the summary, captured stdout/stderr and log records, and on the Prefect server the flow run (its
parameters and state), its task runs, its logs, the newest logs and artifacts, and the server's
database file itself (events included). Found nowhere, or the test names where.

Credentials that are part of an item (an ``api_key`` in a request spec, a password in a JSON body) are the
user's data: outputs, dead-letter items and the journals/records that hold them keep them byte for byte.
They are searched for everywhere *except* in those data fields (``item``, ``body``, ``result``): never in a
message, a shown URL, a log, a summary, an artifact or the server.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psycopg
import pytest
from prefect.blocks.system import Secret
from psycopg import sql

from flows.api_bulk import api_bulk
from flows.api_extract import api_extract
from flows.batch_map import batch_map
from flows.db_migrate import db_migrate
from flows.file_transform import file_transform
from flows.replay import replay_dead_letters
from tasks.core.errors import ItemError
from tasks.core.outcomes import RunSummary, read_dead_letters
from tests import handlers
from tests.fixtures.api_server import DATASET_SIZE, ApiServer
from tests.tasks.db.test_migration import pg_exec

FAST: dict[str, Any] = {"retry_backoff_s": 0.01}


def fresh(label: str) -> str:
    return f"{label}-S3CR3T-{uuid.uuid4().hex[:10]}"


def save_secret(value: str) -> str:
    name = f"bf-test-leak-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name, overwrite=True)
    return name


# --------------------------------------------------------------------------- where secrets could end up


def api(path: str, body: dict[str, Any] | None = None) -> str:
    base = os.environ["PREFECT_API_URL"]
    response = httpx.post(base + path, json=body, timeout=30) if body is not None else httpx.get(base + path, timeout=30)
    response.raise_for_status()
    return response.text


def flush_logs() -> None:
    """Ship the log records still queued for the Prefect API (they are sent in the background)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def server_texts(flow_run_ids: list[str]) -> Iterator[tuple[str, str]]:
    """What the Prefect server holds about these runs: (where, text)."""
    flush_logs()
    for run_id in flow_run_ids:
        yield f"flow run {run_id}", api(f"/flow_runs/{run_id}")
        yield f"states of {run_id}", api(f"/flow_run_states/?flow_run_id={run_id}")
        yield f"task runs of {run_id}", api("/task_runs/filter", {
            "limit": 200, "offset": 0, "flow_runs": {"id": {"any_": [run_id]}}})
        logs = api("/logs/filter", {"limit": 200, "offset": 0, "sort": "TIMESTAMP_DESC",
                                    "logs": {"flow_run_id": {"any_": [run_id]}}})
        assert json.loads(logs), f"no logs of flow run {run_id} reached the server: the check would be empty"
        yield f"logs of {run_id}", logs
    yield "newest logs", api("/logs/filter", {"limit": 200, "offset": 0, "sort": "TIMESTAMP_DESC"})
    yield "artifacts", api("/artifacts/filter", {"limit": 200, "offset": 0, "sort": "CREATED_DESC"})


def server_database() -> Iterator[tuple[str, bytes]]:
    """The Prefect server's SQLite files (parameters, states, logs, artifacts, events)."""
    home = os.environ.get("PREFECT_HOME")
    if home:
        for path in Path(home).rglob("*.db*"):
            if path.is_file():
                yield str(path), path.read_bytes()


def file_texts(*roots: Path) -> Iterator[tuple[str, bytes]]:
    for root in roots:
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            yield str(path), path.read_bytes()
            if path.suffix == ".parquet":  # compressed columns: look at the decoded values too
                yield f"{path} (decoded)", pl.read_parquet(path).write_csv().encode()


DATA_FIELDS = ("item", "body", "result")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in DATA_FIELDS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def without_data(*roots: Path) -> Iterator[tuple[str, str]]:
    """Every file under ``roots`` with the user's data fields removed (what batchflows wrote *about* data)."""
    from prefect._internal.result_records import ResultRecord

    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.parent.name == "chunks":  # Prefect result records of chunk reports (failures hold items)
                result = ResultRecord.deserialize(path.read_bytes()).result
                yield str(path), json.dumps(_strip(result.model_dump(mode="json")) if hasattr(result, "model_dump")
                                            else repr(result))
            elif path.parent.name == "journal":  # "<position> <kind> <JSON>" lines
                lines = [line.split(" ", 2) for line in path.read_text().splitlines()[1:]]
                yield str(path), json.dumps([_strip(json.loads(p[2])) for p in lines if len(p) == 3])
            elif path.suffix == ".jsonl":
                yield str(path), json.dumps([_strip(json.loads(line)) for line in path.read_text().splitlines()])
            elif path.suffix == ".parquet":
                frame = pl.read_parquet(path)
                yield str(path), frame.drop([c for c in DATA_FIELDS if c in frame.columns]).write_csv()
            else:
                yield str(path), path.read_text(errors="replace")


def assert_never_found(secrets: list[str], *, summaries: list[RunSummary], roots: list[Path],
                       caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                       extra: list[str] = (), in_data: list[str] = ()) -> None:  # type: ignore[assignment]
    """``secrets`` (read by batchflows) are found nowhere; ``in_data`` (the items' own values) are found nowhere
    but in the data fields of outputs, dead letters, journals and chunk records."""
    out, err = capfd.readouterr()
    texts: list[tuple[str, str | bytes]] = [("stdout", out), ("stderr", err), ("log records", caplog.text)]
    texts += [(f"summary {s.flow}", s.model_dump_json()) for s in summaries]
    texts += [(f"extra {i}", t) for i, t in enumerate(extra)]
    texts += list(server_texts([s.flow_run_id for s in summaries if s.flow_run_id]))
    texts += list(server_database())
    files = list(file_texts(*roots))
    stripped = list(without_data(*roots))
    found = [
        f"{where}: ...{_around(text, secret)}..."
        for where, text in [*texts, *files]
        for secret in secrets
        if (secret.encode() if isinstance(text, bytes) else secret) in text
    ] + [
        f"{where} (outside the data fields): ...{_around(text, secret)}..."
        for where, text in [*texts, *stripped]
        for secret in in_data
        if (secret.encode() if isinstance(text, bytes) else secret) in text
    ]
    assert not found, "\n".join(found)


def _around(text: str | bytes, secret: str) -> str:
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    i = s.find(secret)
    return s[max(0, i - 120): i + len(secret) + 40].replace("\n", " ")


@pytest.fixture
def look(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# --------------------------------------------------------------------------- api_bulk


def test_api_bulk(api_server: ApiServer, tmp_path: Path, state_dir: Path, look: pytest.LogCaptureFixture,
                  capfd: pytest.CaptureFixture[str]) -> None:
    bearer, key, query = fresh("bearer"), fresh("xkey"), fresh("query")
    block = save_secret(bearer)
    items = [
        {"path": "/text/a", "params": {"api_key": query}},  # succeeds; the url column shows the query
        {"path": f"/text/b?api_key={query}"},
        {"path": f"/fail/c?times=9&status=503&api_key={query}"},  # retried, dead-lettered with its URL
        {"path": f"/status/404?api_key={query}"},  # dead-lettered at once, with the body excerpt
        {"path": f"/reset/d?times=9&api_key={query}"},  # transport errors name the URL
        {"path": "/ok/e", "params": {"n": 1}},
    ]
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, auth_secret=block, headers={"X-Api-Key": key, "X-Trace": "t"},
                       output=out, retries=1, min_success_ratio=0.1, run_key="leaky-bulk", **FAST)
    assert (summary.succeeded, summary.failed) == (3, 3), summary.render_text()
    assert {(r.headers.get("authorization"), r.headers.get("x-api-key")) for r in api_server.requests} \
        == {(f"Bearer {bearer}", key)}  # both credentials were really sent
    assert sum(r.query.get("api_key") == query for r in api_server.requests) == 2 + 2 + 1 + 2
    dead = list(read_dead_letters(summary.dead_letter_path or ""))
    assert {d["status"] for d in dead} == {503, 404, None}
    assert [d["item"] for d in dead] == items[2:5]  # the items exactly, their own api_key included
    assert_never_found([bearer, key], in_data=[query], summaries=[summary], roots=[tmp_path], caplog=look,
                       capfd=capfd)


def test_api_bulk_response_echoing_item_credentials(api_server: ApiServer, tmp_path: Path, state_dir: Path,
                                                    look: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    query, password = fresh("query"), fresh("json")
    items = [{"path": "/ok/a", "params": {"api_key": query}}, {"path": f"/ok/b?api_key={query}"},
             {"path": "/ok/c", "json": {"password": password}, "method": "POST"}]
    out = tmp_path / "out"
    summary = api_bulk(items, base_url=api_server.url, output=out, run_key="echo-bulk", **FAST)
    assert summary.ok and summary.succeeded == 3, summary.render_text()
    assert sum(r.query.get("api_key") == query for r in api_server.requests) == 2
    rows = [json.loads(line) for line in (out / "part-000000.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == items and rows[0]["body"]["query"] == {"api_key": query}  # data, exact
    assert all(query not in r["url"] for r in rows)  # the shown URL is batchflows' text: masked
    assert_never_found([], in_data=[query, password], summaries=[summary], roots=[tmp_path], caplog=look, capfd=capfd)


# --------------------------------------------------------------------------- api_extract


def test_api_extract(api_server: ApiServer, tmp_path: Path, state_dir: Path, look: pytest.LogCaptureFixture,
                     capfd: pytest.CaptureFixture[str]) -> None:
    bearer, key = fresh("bearer"), fresh("xkey")
    block = save_secret(bearer)
    good = api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "good", auth_secret=block,
                       headers={"X-Api-Key": key}, page_size=50, **FAST)
    assert good.ok and good.succeeded == DATASET_SIZE, good.render_text()
    bad = api_extract(f"{api_server.url}/fail/pages", output=tmp_path / "bad", auth_secret=block,
                      headers={"X-Api-Key": key}, params={"times": 99}, retries=1, chunk_retries=0, **FAST, raise_on_failure=False)
    assert not bad.ok and bad.failed >= 1, bad.render_text()
    assert {(r.headers.get("authorization"), r.headers.get("x-api-key")) for r in api_server.requests} \
        == {(f"Bearer {bearer}", key)}
    assert_never_found([bearer, key], summaries=[good, bad], roots=[tmp_path], caplog=look, capfd=capfd)


def test_api_extract_query_credentials(api_server: ApiServer, tmp_path: Path, state_dir: Path,
                                       look: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """An API taking its key as a query parameter (``?api_key=``), in the URL or in ``params``."""
    in_url, in_params = fresh("url"), fresh("params")
    summaries = [
        api_extract(f"{api_server.url}/pages/offset?api_key={in_url}", output=tmp_path / "a", page_size=100, **FAST),
        api_extract(f"{api_server.url}/pages/offset", output=tmp_path / "b", params={"api_key": in_params},
                    page_size=100, **FAST),
    ]
    assert all(s.ok and s.succeeded == DATASET_SIZE for s in summaries), [s.render_text() for s in summaries]
    assert {r.query.get("api_key") for r in api_server.requests} == {in_url, in_params}
    assert_never_found([in_url, in_params], summaries=summaries, roots=[tmp_path], caplog=look, capfd=capfd)


# --------------------------------------------------------------------------- batch_map and replay

DSN_PASSWORD = fresh("dsn")  # module level: the handlers below raise it (never registered for redaction)


def leaky_handler(x: int) -> int:
    """Fails every 4th item with a DSN and a token query in the message, like a real driver error."""
    if x % 4 == 1:
        raise ItemError(f"cannot reach postgresql://app:{DSN_PASSWORD}@db.internal:5432/prod for item {x}",
                        category="db_down")
    if x % 4 == 2:
        raise RuntimeError(f"GET https://api.example.com/v1/x?token={DSN_PASSWORD}&id={x} failed")
    return x * 10


def still_leaky_handler(x: int) -> int:
    if x % 8 == 1:
        raise ItemError(f"still down: postgresql://app:{DSN_PASSWORD}@db.internal/prod", category="db_down")
    return x * 10


def test_batch_map_and_replay(tmp_path: Path, state_dir: Path, look: pytest.LogCaptureFixture,
                              capfd: pytest.CaptureFixture[str]) -> None:
    first = batch_map(list(range(40)), leaky_handler, chunk_size=10, retries=1, min_success_ratio=0.1,
                      output=tmp_path / "out", run_key="leaky-map", **FAST)
    assert (first.succeeded, first.failed) == (20, 20), first.render_text()
    replayed = replay_dead_letters(first.dead_letter_path or "", still_leaky_handler, retries=0,
                                   min_success_ratio=0.1, output=str(tmp_path / "replayed"))
    assert (replayed.total, replayed.succeeded, replayed.failed) == (20, 15, 5), replayed.render_text()
    assert_never_found([DSN_PASSWORD], summaries=[first, replayed], roots=[tmp_path], caplog=look, capfd=capfd)


def fatal_handler(x: int) -> int:
    """Succeeds for a few items, then the 'database' refuses the credentials: a fatal error holding the DSN."""
    if x >= 6:
        from tasks.core.errors import FatalError

        raise FatalError(f"login refused by postgresql://app:{DSN_PASSWORD}@db.internal:5432/prod")
    return x


def failing_key(x: int) -> Any:
    """An item_key that breaks the whole chunk (not one item) with a credential in its message."""
    raise RuntimeError(f"lookup failed: GET https://api.example.com/keys?api_key={DSN_PASSWORD}")


def test_batch_map_fatal_and_whole_chunk_errors(tmp_path: Path, state_dir: Path, look: pytest.LogCaptureFixture,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """What Prefect records of a chunk task that stops or fails (task-run logs, state messages, the persisted
    exception) is redacted like everything else batchflows writes."""
    fatal = batch_map(list(range(20)), fatal_handler, chunk_size=5, max_concurrency=1, output=tmp_path / "out",
                      run_key="leaky-fatal", raise_on_failure=False)
    assert not fatal.ok and fatal.succeeded == 6 and fatal.failed == 1 and "***" in fatal.message
    broken = batch_map(list(range(10)), handlers.double, chunk_size=5, item_key=failing_key, chunk_retries=1,
                       min_success_ratio=0.0, run_key="leaky-chunk")
    assert broken.failed == 10 and {d["attempts"] for d in read_dead_letters(broken.dead_letter_path or "")} == {2}
    assert_never_found([DSN_PASSWORD], summaries=[fatal, broken], roots=[tmp_path], caplog=look, capfd=capfd)


# --------------------------------------------------------------------------- file_transform


def test_file_transform(tmp_path: Path, state_dir: Path, look: pytest.LogCaptureFixture,
                        capfd: pytest.CaptureFixture[str]) -> None:
    password = fresh("csv")
    src = tmp_path / "in" / "rows.csv"
    src.parent.mkdir()
    rows = ["id,amount,dsn"] + [f"{i},{i * 0.5},postgresql://u@h/db{i}" for i in range(50)]
    rows[8] = f"7,not-a-number,postgresql://u:{password}@h/db"  # rejected (amount), with a password in it
    rows[21] = f"20,1.5,postgresql://u:{password}@h/db"  # a good row holding a password: it is data, kept
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = file_transform(src, out, schema={"id": "int64", "amount": "float64", "dsn": "str"},
                             output_format="csv", min_success_ratio=0.5, run_key="leaky-files")
    assert (summary.total, summary.succeeded, summary.failed) == (50, 49, 1), summary.render_text()
    assert summary.extra["rows_rejected"] == 1
    # rows are the user's data: the good row and the rejected row are kept as they are (in the output and
    # in _rejects, so they can be fixed and rerun); the reason, logs, summary, artifacts and state never show it
    written = pl.read_csv(sorted(out.glob("part-*")), infer_schema=False)
    assert written.height == 49 and f"postgresql://u:{password}@h/db" in written["dsn"].to_list()
    rejects = sorted((out / "_rejects").glob("part-*"))
    rejected = pl.read_csv(rejects, infer_schema=False)
    assert rejected["id"].to_list() == ["7"] and rejected["dsn"].to_list() == [f"postgresql://u:{password}@h/db"]
    assert password not in rejected["_reject_reason"][0] and "amount" in rejected["_reject_reason"][0]
    data_files = {*out.glob("part-*"), *rejects}
    roots = [p for p in tmp_path.iterdir() if p.name not in {"in", "out"}]
    others = [p for p in out.rglob("*") if p.is_file() and p not in data_files]
    assert_never_found([password], summaries=[summary], roots=roots, caplog=look, capfd=capfd,
                       extra=[p.read_text(errors="replace") for p in others])


# --------------------------------------------------------------------------- db_migrate


@pytest.fixture
def pg_role(pg_cluster: Any) -> Iterator[tuple[str, str]]:
    """A login role with its own fresh password (the cluster checks passwords: scram-sha-256 over TCP)."""
    role, password = f"bf_leak_{uuid.uuid4().hex[:8]}", fresh("pg")
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    yield role, password  # the role stays (it owns objects in the test's throwaway databases)


def test_db_migrate(pg_cluster: Any, pg_role: tuple[str, str], tmp_path: Path, state_dir: Path,
                    look: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    role, password = pg_role
    source_db, target_db = pg_cluster.create_database(), pg_cluster.create_database()
    for db in (source_db, target_db):
        pg_exec(pg_cluster.url(db), sql.SQL("GRANT ALL ON DATABASE {} TO {}; GRANT ALL ON SCHEMA public TO {}")
                .format(sql.Identifier(db), sql.Identifier(role), sql.Identifier(role)).as_string())
    admin_src, admin_tgt = pg_cluster.url(source_db), pg_cluster.url(target_db)
    url = f"postgresql+psycopg://{role}:{password}@{pg_cluster.host}:{pg_cluster.port}/"
    wrong = f"postgresql+psycopg://{role}:not-{password}@{pg_cluster.host}:{pg_cluster.port}/{source_db}"
    with pytest.raises(Exception) as refused:  # the cluster really checks the password
        db_migrate(wrong, url + target_db, "items")
    assert "password authentication failed" in str(refused.value) or "password" in str(refused.value).lower()

    pg_exec(admin_src, "CREATE TABLE items (id bigint PRIMARY KEY, dsn text NOT NULL, amount numeric(12,2))")
    pg_exec(admin_src, "INSERT INTO items SELECT g, 'postgresql://u@h/db' || g, g FROM generate_series(1, 400) g")
    pg_exec(admin_src, f"ALTER TABLE items OWNER TO {role}")
    pg_exec(admin_tgt, "CREATE TABLE items (id bigint PRIMARY KEY, dsn text NOT NULL, amount numeric(12,2) "
                       "CHECK (amount < 250))")  # the ranges holding ids >= 250 fail
    pg_exec(admin_tgt, f"ALTER TABLE items OWNER TO {role}")
    failed = db_migrate(url + source_db, url + target_db, "items", chunk_rows=100, mode="append",
                        create_target=False, chunk_retries=0, run_key="leaky-db", raise_on_failure=False)
    assert not failed.ok and failed.ranges_failed == [2, 3], failed.render_text()
    block = save_secret(url + source_db)
    good = db_migrate(table="items", source_secret=block, target_url=url + target_db, target_table="copy",
                      chunk_rows=100, run_key="leaky-db-2")
    assert good.ok and good.succeeded == 400, good.render_text()
    with pytest.raises(Exception) as unreachable:
        db_migrate(url.replace(f":{pg_cluster.port}/", ":1/") + source_db, url + target_db, "items")
    assert_never_found([password], summaries=[failed, good], roots=[tmp_path], caplog=look, capfd=capfd,
                       extra=[str(refused.value), str(unreachable.value)])
