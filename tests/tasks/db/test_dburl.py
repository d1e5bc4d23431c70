"""tasks/db/dburl.py parses and renders database URLs exactly as SQLAlchemy's make_url did (SQLAlchemy is
installed with Prefect; batchflows no longer imports it at run time)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from tasks.db.dburl import parse_url

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
