"""Database URLs (``dialect[+driver]://user:password@host:port/database?option=value``) parsed without
SQLAlchemy: the same grammar as SQLAlchemy's ``make_url`` (its pattern, percent-decoding of user,
password and database), so every URL the README shows parses as before, at no import cost (SQLAlchemy
took a third of a second of every db_migrate run's start).

One difference: a password holding an unescaped ``@`` runs to the last ``@`` before the host (as in browsers),
where ``make_url`` ends it at the first and takes its tail for the host (``user:s3cret@Pa55@db`` gave host
``Pa55@db``, which error messages then showed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, quote_plus, unquote

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

_PATTERN = re.compile(
    r"""
    (?P<name>[\w+]+)://
    (?:
        (?P<username>[^:/]*)
        (?::(?P<password>[^@]*(?:@[^@/?]*)*))?
    @)?
    (?:
        (?:
            \[(?P<ipv6host>[^/?]+)\] |
            (?P<ipv4host>[^/:?]+)
        )?
        (?::(?P<port>[^/?]*))?
    )?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True)
class DbUrl:
    """The parts of a database URL; ``password`` is plain text, never print the object."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"DbUrl({self.render()!r})"

    @property
    def backend(self) -> str:
        """``postgresql`` of ``postgresql+psycopg``."""
        return self.drivername.partition("+")[0]

    @property
    def driver(self) -> str:
        """``psycopg`` of ``postgresql+psycopg``; empty when the URL names none."""
        return self.drivername.partition("+")[2]

    def render(self) -> str:
        """The URL with the password shown as ``***`` (SQLAlchemy's ``render_as_string(hide_password=True)``)."""
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":***"
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += f":{self.port}"
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            s += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(self.query))
        return s


def parse_url(text: str) -> DbUrl:
    """Split ``text`` into its parts; ValueError when it is not a URL or an option is given twice."""
    m = _PATTERN.match(text) if isinstance(text, str) else None
    if m is None:
        msg = "not a database URL"
        raise ValueError(msg)
    parts = m.groupdict()
    query: list[tuple[str, str]] = []
    if parts["query"] is not None:
        query = parse_qsl(parts["query"])
        keys = [k for k, _ in query]
        if len(set(keys)) != len(keys):
            msg = "a URL option is given twice"
            raise ValueError(msg)
    port = parts["port"]
    return DbUrl(
        drivername=parts["name"],
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv4host"] or parts["ipv6host"],
        port=int(port) if port else None,
        database=unquote(parts["database"]) if parts["database"] is not None else None,
        query=tuple(query),
    )


def has_password(url: str) -> bool:
    """``user:password@`` or a ``?password=`` option in a URL (one that does not parse: any credential in it).
    The password is registered for redaction, so a message that quotes the URL masks it; a short one (too short
    to mask alone) as ``:password@``, which the URL pattern of redaction cannot see when it holds a '/' or a space."""
    from tasks.core import redact_text, register_secret

    try:
        parsed = parse_url(url)
    except (ValueError, TypeError):
        return redact_text(url) != url
    register_secret(parsed.password)
    if parsed.password and len(parsed.password) < 4:
        register_secret(f":{_PATTERN.match(url)['password']}@")  # type: ignore[index]
    return bool(parsed.password) or any(name.lower() == "password" for name, _ in parsed.query)


def refuse_plain_password(value: object, name: str, ways_out: str) -> object:
    """A URL given as plain text (a deployment's or the CLI's JSON parameters, a flow object called directly)
    must hold no password: Prefect stores flow parameters and shows them in its UI. A Python entry passes URLs
    as SecretStr, which Prefect stores masked; ``"secret:<block>"`` names a Secret block.

    Prefect stored the run's parameters before this check ran: inside a flow run they are overwritten with the
    password masked (:func:`scrub_run_parameters`) before the refusal is raised."""
    if isinstance(value, str) and not value.startswith("secret:") and has_password(value):
        scrub_run_parameters(value, name)
        msg = ("the URL holds a database password, and flow parameters are stored by Prefect and shown in its UI: "
               f"save the URL in a Prefect Secret block and {ways_out}")
        raise ValueError(msg)
    return value


def mask_password(url: str) -> str:
    """``url`` as written, its password shown as ``***`` (``user:***@``, ``?password=***``): the user still sees
    which URL it was, unlike :meth:`DbUrl.render`, which normalizes it."""
    from tasks.core import redact_text
    from tasks.core.stored_params import mask_url_password

    return redact_text(mask_url_password(url))


def scrub_run_parameters(url: str, name: str, *, client: SyncPrefectClient | None = None) -> None:
    """Replace ``url`` with :func:`mask_password` of it in the stored parameters of the current flow run (see
    :func:`tasks.core.stored_params.mask_run_parameters`: a failure is a warning, never the secret)."""
    from tasks.core.stored_params import mask_run_parameters

    mask_run_parameters({url: mask_password(url)}, what=repr(name), secret="database password", client=client)


