"""A database query as a batch_map source: the rows of one SELECT, streamed by keyset on a key column.

``query_source(url, "SELECT id, email FROM users WHERE active", key="id")`` reads the rows in pages of
``page_rows``: ``SELECT * FROM (<query>) AS q [WHERE q.<key> > <last key>] ORDER BY q.<key> LIMIT n``,
one short read-only transaction per page (no long-running transaction, no server-side cursor), so
memory stays at one page whatever the table's size and a table that is written meanwhile is read
consistently per page. The key must be unique and not null in the query's result (a primary key,
an id): rows are ordered and resumed by it. Each row is a dict of column -> value as the driver returns
it (int, str, Decimal, datetime, ...).

The URL is a SQLAlchemy URL (``postgresql+psycopg://...``, ``sqlite:///path``), ``"secret:<block>"`` (a
Prefect Secret block holding it) or None (``BATCHFLOWS_DB_SOURCE_URL``); its password is registered for
redaction at once and never leaves the process as a flow parameter (see batch_map's ``query``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import SecretStr

from tasks.core import SourceError
from tasks.core.sources import Source
from tasks.db.conn import Db, connect, parse_db_url, validate_identifier, validate_query

PAGE_ROWS = 10_000


def query_source(url: str | SecretStr | None, query: str, *, key: str, page_rows: int = PAGE_ROWS) -> Source:
    """The rows of ``query`` as a :class:`Source` (see the module docstring); bad arguments raise ConfigError."""
    from tasks.db.migrate import resolve_url

    resolved = resolve_url(url, None, what="source_url")
    endpoint = parse_db_url(resolved)
    text = validate_query(query)
    column = validate_identifier(key, what="query key column")
    label = f"query on {endpoint.describe()}"

    def run(sql: Callable[[Db], str], params: tuple[Any, ...], what: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with connect(endpoint, "source") as db:
            cur = db.raw.cursor()
            try:
                cur.execute(sql(db), params)
                return [d[0] for d in cur.description], cur.fetchall()
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                msg = f"{label}: {what} failed: {type(exc).__name__}: {first}"
                raise SourceError(msg) from None
            finally:
                cur.close()

    def iterate() -> Iterator[dict[str, Any]]:
        names, _ = run(lambda db: f"SELECT * FROM ({text}) AS q LIMIT 0", (), "the query")  # columns, before any page
        if column not in names:
            msg = (f"{label}: the query's result has no column {column!r} (columns: {names}); pass one of them as "
                   "query_key (batch_map's parameter; key= of query_source)")
            raise SourceError(msg)
        at = names.index(column)
        last: Any = None
        while True:
            def page(db: Db, after: bool = last is not None) -> str:
                where = f" WHERE q.{db.q(column)} > {db.ph}" if after else ""
                return f"SELECT * FROM ({text}) AS q{where} ORDER BY q.{db.q(column)} LIMIT {int(page_rows)}"

            what = f"the page after {column}={last!r}" if last is not None else "the first page"
            _, rows = run(page, (last,) if last is not None else (), what)
            for row in rows:
                if row[at] is None:
                    msg = f"{label}: a row has {column} NULL; the key column must be unique and not null"
                    raise SourceError(msg)
                yield dict(zip(names, row, strict=True))
            if len(rows) < page_rows:
                return
            last = rows[-1][at]

    return Source(label=label, total=None, iterate=iterate)


__all__ = ["PAGE_ROWS", "query_source"]
