"""tasks/db/dburl.py parses and renders database URLs exactly as SQLAlchemy's make_url did (SQLAlchemy is
installed with Prefect; batchflows no longer imports it at run time), and refuses a plain URL holding a password
as a flow parameter, masking it where Prefect already stored it (a real Prefect server)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from sqlalchemy.engine import make_url

from tasks.core.redact import redact_text
from tasks.db.dburl import mask_password, parse_url, refuse_plain_password, scrub_run_parameters

URLS = [
    "postgresql+psycopg://user:pw@localhost:5432/db",
    "postgresql://u@h/db",
    "postgresql+psycopg://user:p%40ss%3Aw%2Fd@db.example.com:6543/my%20db?sslmode=require&connect_timeout=5",
    "postgresql+psycopg://user:pa ss+word@[::1]:5433/db",
    "postgresql+psycopg://:secret@host/db",
    "postgresql+psycopg://host",
    "mysql+pymysql://root:s3cr3t@127.0.0.1:3306/shop?charset=utf8mb4",
    "mariadb://u:p@h/d",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path/to/file.db",
    "sqlite:///C:/data/x.db",
    "sqlite://",
    "postgresql+psycopg://üser:pässwörd@hóst:1/dätabase",
    "postgresql+psycopg://u:pw@h/d@b?application_name=me@x",  # an '@' after the host stays where it is
    "postgresql+psycopg://us@er:pw/x@h:5/db",
]


@pytest.mark.parametrize("url", URLS)
def test_parts_and_rendering_match_sqlalchemy(url: str) -> None:
    ours, theirs = parse_url(url), make_url(url)
    assert ours.drivername == theirs.drivername
    assert ours.username == theirs.username
    assert ours.password == theirs.password
    assert ours.host == theirs.host
    assert ours.port == theirs.port
    assert ours.database == theirs.database
    assert dict(ours.query) == dict(theirs.query)
    assert ours.render() == theirs.render_as_string(hide_password=True)
    if ours.password:
        assert ours.password not in repr(ours)


@pytest.mark.parametrize(("url", "password", "host", "rendered"), [
    ("postgresql+psycopg://user:s3cret@Pa55word-xyz@127.0.0.1:5432/db", "s3cret@Pa55word-xyz", "127.0.0.1",
     "postgresql+psycopg://user:***@127.0.0.1:5432/db"),
    ("mysql+pymysql://user:p@ss:w0@rd@db.example.com/db", "p@ss:w0@rd", "db.example.com",
     "mysql+pymysql://user:***@db.example.com/db"),
    ("postgresql://user:a@b@[::1]:7/db", "a@b", "::1", "postgresql://user:***@[::1]:7/db"),
])
def test_a_password_with_an_unescaped_at_runs_to_the_last_at_before_the_host(url: str, password: str, host: str,
                                                                              rendered: str) -> None:
    """make_url ends the password at the first '@' and takes the rest for the host (``Pa55word-xyz@127.0.0.1``,
    which error messages then showed, or a port that is no number); browsers take the last '@' before the host,
    and so do we."""
    ours = parse_url(url)
    assert (ours.username, ours.password, ours.host, ours.database) == ("user", password, host, "db")
    assert ours.render() == rendered and repr(ours) == f"DbUrl({rendered!r})"


@pytest.mark.parametrize("bad", ["", "not a url", "localhost:5432/db", "postgresql://u:p@h:port/db",
                                 "postgresql://h/db?a=1&a=2"])
def test_unparseable_urls_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_url(bad)


def test_db_migrate_imports_neither_sqlalchemy_nor_the_dataframe_libraries() -> None:
    """A scheduled run starts from a fresh process: what it does not need, it does not import (polars only for a
    transform, pyarrow and connectorx only for a columnar range)."""
    heavy = ("sqlalchemy", "polars", "pyarrow", "connectorx")
    code = f"import sys, flows.db_migrate; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def stored_for_run(flow_run_id: UUID) -> dict[str, Any]:
    """What Prefect keeps about a flow run and shows in its UI and CLI: parameters, name, the messages of its
    states and its logs (read back from the API once the run's logs are sent)."""
    APILogHandler().flush()  # the run's logs are sent in batches
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        states = client.read_flow_run_states(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return {"parameters": run.parameters, "name": run.name, "states": [s.message for s in states],
            "logs": [log.message for log in logs]}


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://bob:Mask-me-9Q@127.0.0.1:1/shop?sslmode=disable", "postgresql://bob:***@127.0.0.1:1/shop?sslmode=disable"),
    ("mysql+pymysql://u:p%40ss%2Fw0rd@db/x", "mysql+pymysql://u:***@db/x"),  # as written: still percent-encoded
    ("postgresql://user:s3cret@Pa55word-xyz@127.0.0.1:5432/db", "postgresql://user:***@127.0.0.1:5432/db"),
    ("postgresql://u:a/b@h:5/db", "postgresql://u:***@h:5/db"),  # a '/' in it: no text pattern sees that one
    ("postgresql://u@h/db?password=Query-pw-1&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_mask_password_keeps_the_url_as_written_but_its_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


@pytest.mark.parametrize("password", ["q/z", "q z"])
def test_a_short_password_the_url_pattern_cannot_see_is_masked_once_refused(password: str) -> None:
    """Too short to be registered alone, and a '/' or a space hides it from redaction's URL pattern: the
    refusal's message (Prefect's state message and logs quote the value) must still not show it."""
    url = f"postgresql://u:{password}@h:5/db"
    with pytest.raises(ValueError, match="the URL holds a database password"):
        refuse_plain_password(url, "source_url", "use a Secret block")
    assert f":{password}@" not in redact_text(f"source_url: refused (got {url!r})")


@flow(persist_result=False)
def refuse_with_the_api_down(url: str) -> str:
    """A refusal whose masking of the stored parameters cannot reach the Prefect API (a server that went away)."""
    scrub_run_parameters(url, "source_url", client=SyncPrefectClient("http://127.0.0.1:1/api"))
    try:
        refuse_plain_password(url, "source_url", "use a Secret block")  # the run's own client: masked now
    except ValueError as refused:
        return str(refused)
    return "not refused"


def test_a_failed_masking_warns_and_never_hides_the_refusal(caplog: pytest.LogCaptureFixture,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    password = "Unmasked-pw-4Kz"
    state = refuse_with_the_api_down(f"postgresql://bob:{password}@127.0.0.1:1/shop", return_state=True)
    assert state.result().startswith("the URL holds a database password")
    run_id = state.state_details.flow_run_id
    stored = stored_for_run(run_id)
    out, err = capfd.readouterr()
    warning = f"the stored parameter 'source_url' of flow run {run_id} still holds the database password"
    texts = [caplog.text, out, err, *stored["logs"]]
    assert any(warning in t and "ConnectError" in t for t in texts), texts
    assert not [t for t in texts if password in t]
    assert stored["parameters"] == {"url": "postgresql://bob:***@127.0.0.1:1/shop"}
