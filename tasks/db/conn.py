"""Identifiers, URLs and connections for the db modules.

Why a separate layer: SQL is assembled only from identifiers quoted by :func:`quote` (each dialect's
quoting rule, the same as SQLAlchemy's ``quote_identifier``; a test holds the two equal) and from bound
parameters, so every user-supplied name is validated here first; and every connection is
opened here, so a failure is reported once, the same way, naming host and port but never the password.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import pymysql
from psycopg.types.json import set_json_loads
from pydantic import BaseModel, ConfigDict, SecretStr

from tasks.core import BatchflowsError, ConfigError, DbSettings, SourceError, redact_text, register_secret
from tasks.core.errors import InputNotFound
from tasks.core.params import validate_select
from tasks.db.dburl import parse_url
from tasks.db.values import raw_json

Dialect = Literal["postgresql", "sqlite", "mysql"]
Role = Literal["source", "target"]
UrlLike = str | SecretStr

_PLAIN = re.compile(r"^[^\W\d]\w{0,62}$")  # unicode letters, digits and _ (not starting with a digit)
_PLAIN_RULE = "letters (any script), digits and _, not starting with a digit"
_MAX_BYTES = 63  # PostgreSQL's identifier limit (longer names would be truncated silently)
_QUOTING = ('double quotes around any other name, "" for a quote inside: \'public."Odd Items"\', '
            '\'"Order ID"\'')
_QUOTE_CHAR = {"postgresql": '"', "sqlite": '"', "mysql": "`"}


# ---------------------------------------------------------------- identifiers


def validate_identifier(name: str, *, what: str = "column") -> str:
    """Return ``name`` (one exact name: mixed case, spaces, unicode and reserved words are fine; it is always
    quoted by the dialect's own quoting), or raise ConfigError saying what is not allowed."""
    if not isinstance(name, str) or not name:
        msg = f"{what} name {name!r} is empty or not a string"
        raise ConfigError(msg)
    if "\x00" in name or "%" in name:
        msg = f"{what} name {name!r} holds a NUL byte or '%', which batchflows does not support in names"
        raise ConfigError(msg)
    if len(name.encode("utf-8")) > _MAX_BYTES:
        msg = f"{what} name {name!r} is longer than {_MAX_BYTES} bytes (PostgreSQL would truncate it)"
        raise ConfigError(msg)
    return name


def split_names(text: str, *, sep: str, what: str) -> list[str]:
    """Split SQL-style name syntax: plain parts or double-quoted ones (``public."Odd Items"``,
    ``"Order ID",b``); every part validated. Plain parts are taken exactly as written."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, chars = i + 1, []
            while True:
                if j >= n:
                    msg = f"{what} {text!r} has an unclosed double quote; use {_QUOTING}"
                    raise ConfigError(msg)
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        chars.append('"')
                        j += 2
                        continue
                    break
                chars.append(text[j])
                j += 1
            part, i = "".join(chars), j + 1
        else:
            j = text.find(sep, i)
            j = n if j == -1 else j
            part = text[i:j].strip() if sep == "," else text[i:j]
            if not _PLAIN.match(part):
                msg = f"{what} {text!r} is not a plain name: use {_PLAIN_RULE} in each part, or {_QUOTING}"
                raise ConfigError(msg)
            i = j
        parts.append(validate_identifier(part, what=what))
        if sep == ",":
            while i < n and text[i] == " ":
                i += 1
        if i >= n:
            return parts
        if text[i] != sep:
            msg = f"{what} {text!r}: expected {sep!r} after {part!r}; use {_QUOTING}"
            raise ConfigError(msg)
        i += 1
        if sep == ",":
            while i < n and text[i] == " ":
                i += 1


def _shown(part: str) -> str:
    return part if _PLAIN.match(part) else '"' + part.replace('"', '""') + '"'


class TableName(BaseModel):
    """A validated, optionally schema-qualified table name."""

    model_config = ConfigDict(frozen=True)

    schema_name: str | None = None
    name: str

    def __str__(self) -> str:
        """``schema.table``, each part double-quoted when it is not plain: parses back to the same name."""
        return f"{_shown(self.schema_name)}.{_shown(self.name)}" if self.schema_name else _shown(self.name)

    def sql(self, dialect: Dialect) -> str:
        name = quote(self.name, dialect)
        return f"{quote(self.schema_name, dialect)}.{name}" if self.schema_name else name


def parse_table_name(name: str | TableName) -> TableName:
    """Parse ``table``, ``schema.table`` or their double-quoted forms (``public."Odd Items"``); anything else
    is a ConfigError that says what is allowed."""
    if isinstance(name, TableName):
        return name
    if not isinstance(name, str) or not name:
        msg = f"table name {name!r} is empty or not a string: pass 'table' or 'schema.table'"
        raise ConfigError(msg)
    parts = split_names(name, sep=".", what="table name")
    if len(parts) > 2:
        msg = f"table name {name!r} has {len(parts)} parts: pass 'table' or 'schema.table'"
        raise ConfigError(msg)
    return TableName(schema_name=parts[0], name=parts[1]) if len(parts) == 2 else TableName(name=parts[0])


def quote(name: str, dialect: Dialect) -> str:
    """Quote a name (reflected or validated) for ``dialect``: always quoted, the quote character doubled
    inside (names holding NUL or '%' are refused by :func:`validate_identifier`)."""
    c = _QUOTE_CHAR[dialect]
    return c + name.replace(c, c + c) + c


def parse_key(key: str | Sequence[str] | None) -> list[str] | None:
    """``"id"``, ``"a,b"``, ``'"Order ID",b'`` or ``["Order ID", "b"]`` (exact names) -> validated column names
    (None stays None)."""
    if key is None:
        return None
    if isinstance(key, str):
        names = split_names(key, sep=",", what="key column") if key.strip() else []
    else:
        names = [validate_identifier(k, what="key column") for k in key]
    if not names:
        msg = "key is empty: pass a column name, 'a,b' or a list of names"
        raise ConfigError(msg)
    return names


def validate_query(query: str) -> str:
    """A source query must be one SELECT (or WITH ... SELECT) statement; a trailing ';' is dropped."""
    return validate_select(query)


# ---------------------------------------------------------------- URLs and connections


@dataclass(frozen=True)
class Endpoint:
    """A parsed database URL. ``describe()`` names it without the password."""

    dialect: Dialect
    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.dialect == "sqlite":
            return f"SQLite file {self.database}"
        if self.dialect == "mysql":
            return f"MySQL/MariaDB at {self.host}:{self.port} (database {self.database!r}, user {self.user!r})"
        return f"PostgreSQL at {self.host}:{self.port} (database {self.database!r}, user {self.user!r})"


def parse_db_url(url: UrlLike) -> Endpoint:
    """Parse a SQLAlchemy URL (``postgresql[+psycopg]://...``, ``mysql[+pymysql]://...``, ``mariadb://...``
    or ``sqlite:///path``); the password is registered for redaction at once."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        parsed = parse_url(raw)
    except (ValueError, TypeError):
        msg = ("a database URL could not be parsed (not shown: it may hold a password); use "
               "postgresql+psycopg://user:pw@host:port/db, mysql+pymysql://user:pw@host:port/db or sqlite:///path")
        raise ConfigError(msg) from None
    register_secret(parsed.password if isinstance(parsed.password, str) else None)
    backend = parsed.backend
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            msg = "SQLite URL needs a file path (sqlite:///path/to/file.db); in-memory databases are per connection"
            raise ConfigError(msg)
        return Endpoint(dialect="sqlite", database=parsed.database)
    if backend in ("postgresql", "postgres"):
        if parsed.driver not in ("psycopg", "psycopg2", "postgresql", "postgres", ""):
            msg = f"PostgreSQL driver {parsed.driver!r} is not supported: use postgresql+psycopg://"
            raise ConfigError(msg)
        pw = SecretStr(str(parsed.password)) if parsed.password else None
        opts = tuple(sorted(parsed.query))
        return Endpoint(dialect="postgresql", database=parsed.database or "postgres", host=parsed.host or "localhost",
                        port=parsed.port or 5432, user=parsed.username, password=pw, options=opts)
    if backend in ("mysql", "mariadb"):
        driver = parsed.driver
        if driver not in ("pymysql", ""):
            msg = (f"MySQL driver {driver!r} is not supported: use mysql+pymysql:// (or mysql://, "
                   "mariadb://, which use PyMySQL too)")
            raise ConfigError(msg)
        if not parsed.database:
            msg = "a MySQL/MariaDB URL needs a database: mysql+pymysql://user:pw@host:port/database"
            raise ConfigError(msg)
        pw = SecretStr(str(parsed.password)) if parsed.password else None
        opts = tuple(sorted(parsed.query))
        return Endpoint(dialect="mysql", database=parsed.database, host=parsed.host or "localhost",
                        port=parsed.port or 3306, user=parsed.username, password=pw, options=opts)
    msg = (f"database {backend!r} is not supported: use PostgreSQL (postgresql+psycopg://), MySQL/MariaDB "
           "(mysql+pymysql://) or SQLite (sqlite:///)")
    raise ConfigError(msg)


def redacted_url(url: UrlLike) -> str:
    """The URL with its password masked, for logs and plans."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        return parse_url(raw).render()
    except (ValueError, TypeError):
        return redact_text(str(raw))


class Db:
    """An open connection plus the dialect facts SQL builders need (private to the db modules)."""

    def __init__(self, ep: Endpoint, raw: Any) -> None:
        self.ep = ep
        self.dialect: Dialect = ep.dialect
        self.raw = raw
        self.ph = "?" if ep.dialect == "sqlite" else "%s"

    def q(self, name: str) -> str:
        return quote(name, self.dialect)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, tuple(params))
            return list(cur.fetchall())
        finally:
            cur.close()


@contextmanager
def connect(url: UrlLike | Endpoint, role: Role, *, write: bool = False) -> Iterator[Db]:
    """Open a connection for one unit of work; connection failures become SourceError naming host and
    port (never the password). PostgreSQL sessions run in UTC; SQLite sources open read-only."""
    ep = url if isinstance(url, Endpoint) else parse_db_url(url)
    if ep.dialect == "postgresql":
        kwargs: dict[str, Any] = dict(ep.options)
        kwargs.setdefault("connect_timeout", DbSettings().connect_timeout_s)
        try:
            raw = psycopg.connect(
                host=ep.host, port=ep.port, dbname=ep.database, user=ep.user,
                password=ep.password.get_secret_value() if ep.password else None,
                options="-c TimeZone=UTC", application_name="batchflows", **kwargs,
            )
        except psycopg.OperationalError as exc:
            reason = redact_text(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            msg = (f"cannot connect to the {role} database: {ep.describe()}: {reason}. Check that the server "
                   "runs and accepts TCP connections there and that the user and password are right.")
            raise SourceError(msg) from None
        set_json_loads(raw_json, raw)  # JSON documents as their text: moved byte for byte, never re-serialized
    elif ep.dialect == "mysql":
        raw = _connect_mysql(ep, role)
    else:
        path = Path(ep.database)
        if not write and not path.exists():
            msg = f"{role} {ep.describe()} does not exist; check the path in the URL"
            raise InputNotFound(msg)
        try:
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                raw = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
            else:
                raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                      isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            msg = f"cannot open the {role} {ep.describe()}: {exc}"
            raise SourceError(msg) from None
    try:
        yield Db(ep, raw)
    finally:
        raw.close()


# ---------------------------------------------------------------- creating tables

_NO_SCHEMA = ("3F000", 1049)  # PostgreSQL invalid_schema_name, MySQL unknown database
_DENIED = ("42501", 1044, 1142)  # PostgreSQL insufficient_privilege, MySQL access denied to a database, a table
# MySQL: too many key parts, key too long, column too big, row too big, BLOB key, bad column, name too long
_REFUSED_DDL = (1070, 1071, 1074, 1118, 1170, 1166, 1059, 1103)


def missing_schema(ep: Endpoint, table: TableName) -> ConfigError:
    """The error for a target table in a schema (a MySQL/MariaDB database) that does not exist: db_migrate
    creates tables, not schemas."""
    schema, alone = table.schema_name or "", str(TableName(name=table.name))
    if ep.dialect == "sqlite":
        msg = (f"target table {table}: a SQLite file has no schema {schema!r} (its tables are in 'main'); pass "
               f"target_table={alone!r}")
    elif ep.dialect == "mysql":
        msg = (f"target table {table}: database {schema!r} does not exist in {ep.describe()}, or user {ep.user!r} "
               f"may not use it (in MySQL/MariaDB a schema is a database). Create it (CREATE DATABASE "
               f"{quote(schema, 'mysql')}) and grant the user access, or pass target_table={alone!r} for a table in "
               f"the URL's database {ep.database!r}. db_migrate creates tables, not databases")
    else:
        msg = (f"target table {table}: schema {schema!r} does not exist in {ep.describe()}. Create it first (CREATE "
               f"SCHEMA {quote(schema, 'postgresql')}) or pass a target_table in an existing schema. db_migrate "
               "creates tables, not schemas")
    return ConfigError(msg)


def _ddl_error(exc: Exception, ep: Endpoint, table: TableName) -> BatchflowsError:
    code: str | int | None = getattr(exc, "sqlstate", None)
    if isinstance(exc, pymysql.MySQLError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = str(exc.args[-1]) if exc.args else type(exc).__name__
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = redact_text(text)
    where = f"cannot create table {table} in {ep.describe()}: {reason}"
    if code in _NO_SCHEMA or (ep.dialect == "sqlite" and reason.startswith("unknown database")):
        return missing_schema(ep, table)
    if code in _DENIED or getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY":
        how = {"postgresql": f"GRANT CREATE ON SCHEMA {quote(table.schema_name or 'public', 'postgresql')}",
               "mysql": f"GRANT CREATE ON {quote(table.schema_name or ep.database, 'mysql')}.*",
               "sqlite": "write access to the file and its folder"}[ep.dialect]
        msg = (f"{where}. The target user needs the right to create tables there ({how}): db_migrate creates a "
               "missing target table and keeps its bookkeeping tables (_batchflows_ranges) beside it")
        return ConfigError(msg)
    if (isinstance(code, str) and code.startswith("42")) or code in _REFUSED_DDL:
        msg = (f"{where}. Create the target table yourself (db_migrate checks an existing table and writes into it), "
               "or choose other columns (query=) or another key (key=)")
        return ConfigError(msg)
    return SourceError(where)


@contextmanager
def creating(db: Db, table: TableName) -> Iterator[None]:
    """Run DDL that creates ``table``: a driver error becomes a ConfigError naming the table and what to do (a
    missing schema, a missing privilege, a definition the server refuses), anything else a SourceError."""
    try:
        yield
    except (psycopg.Error, pymysql.MySQLError, sqlite3.Error) as exc:
        raise _ddl_error(exc, db.ep, table) from None


# STRICT_ALL_TABLES: a value that does not fit is an error, never silently cut; NO_AUTO_VALUE_ON_ZERO: a key 0
# is stored as 0, not replaced by the next auto-increment value; no zero dates are ever written.
MYSQL_SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                  "NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO")


class _MySQLConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """PyMySQL's connection plus ``execute()`` (as sqlite3 and psycopg have), which the shared SQL code calls."""

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.cursor()
        cur.execute(sql, tuple(params) if params is not None else None)
        return cur


def _connect_mysql(ep: Endpoint, role: Role) -> Any:
    """A PyMySQL connection in UTC, utf8mb4, strict mode, transactions explicit (autocommit off)."""
    opts = dict(ep.options)
    try:
        return _MySQLConnection(
            host=ep.host, port=ep.port or 3306, user=ep.user, database=ep.database,
            password=ep.password.get_secret_value() if ep.password else "", charset="utf8mb4",
            autocommit=False, local_infile=opts.get("local_infile", "1") not in ("0", "false"),
            connect_timeout=int(opts.get("connect_timeout", DbSettings().connect_timeout_s)),
            init_command=f"SET time_zone = '+00:00', sql_mode = '{MYSQL_SQL_MODE}'",
        )
    except pymysql.MySQLError as exc:
        reason = redact_text(str(exc.args[-1]) if exc.args else type(exc).__name__)
        msg = (f"cannot connect to the {role} database: {ep.describe()}: {reason}. Check that the server "
               "runs and accepts TCP connections there, that the database exists and that the user and password "
               "are right.")
        raise SourceError(msg) from None


__all__ = [
    "MYSQL_SQL_MODE",
    "Db",
    "Dialect",
    "Endpoint",
    "Role",
    "TableName",
    "UrlLike",
    "connect",
    "creating",
    "missing_schema",
    "parse_db_url",
    "parse_key",
    "parse_table_name",
    "quote",
    "redacted_url",
    "split_names",
    "validate_identifier",
    "validate_query",
]
