"""Output part files of api_bulk / api_extract, and the run's credentials and rate limiter.

Why these three live together: they are what both API flows resolve once per process and share
between chunk tasks (threads), while everything per request lives in :mod:`tasks.api.client`.

* Parts: ``<output>/part-000017.jsonl`` or ``.parquet``, one per chunk (api_bulk) or per N pages
  (api_extract), written to a temp name and renamed, so a killed chunk leaves no half file and a
  rerun that writes the same part replaces it whole.
* Token: from a Prefect ``Secret`` block (``auth_secret="name"``) or ``BATCHFLOWS_HTTP_TOKEN``, and
  other credential headers from Secret blocks (``secret_headers={"X-Api-Key": "name"}``);
  registered for redaction the moment it is read. Cached per process for a few minutes so a chunk
  does not call the Prefect API, yet a rotated secret is picked up by the next runs.
* Limiter: one per process and run (local TokenBucket) or per process and name (SharedRateLimit),
  so every chunk task running here spends the same budget.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from tasks.api.request_spec import is_sensitive_header, is_sensitive_param, url_password
from tasks.core import (
    ConfigError,
    HttpSettings,
    TokenBucket,
    atomic_write,
    is_handle,
    output_write_error,
    register_object,
    register_secret,
    resolve_handle,
)
from tasks.core.exactjson import dumps_exact

ApiPartFormat = Literal["jsonl", "parquet"]
TOKEN_CACHE_S = 300.0
_UINT64_MAX = 2**64 - 1
_DECIMAL38_MAX = 10**38 - 1
LOCAL_HEADROOM = 0.02  # pace a local bucket 2 % under the limit: send-time jitter at a server's second edge

_tokens: dict[str, tuple[float, str]] = {}
_tokens_lock = threading.Lock()
_limiters: dict[tuple[str, str, float], Any] = {}
_limiters_lock = threading.Lock()


# --------------------------------------------------------------------------- parts


def part_path(output_dir: str | Path, index: int, fmt: ApiPartFormat) -> Path:
    return Path(output_dir) / f"part-{index:06d}.{fmt}"


def write_part(
    output_dir: str | Path, index: int, rows: Sequence[Any], fmt: ApiPartFormat, *,
    json_columns: Iterable[str] = (), schema: dict[str, Any] | None = None, encoded: bool = False,
) -> Path | str:
    """Write one part atomically and return its path (its URL in object storage: one PUT).

    JSONL: one JSON object per row (``encoded=True``: rows are JSON text already). Parquet: polars infers the columns from the rows; the columns in
    ``json_columns`` (arbitrary JSON such as response bodies) are stored as JSON text, an integer column past
    int64 as UInt64, Decimal(38, 0) or its digits as text (never Int128, which pyarrow cannot read), and rows
    that polars cannot type consistently fall back to one ``record`` column of JSON text.
    """
    if fmt not in ("jsonl", "parquet"):
        msg = f"output_format {fmt!r} is unknown; use 'jsonl' or 'parquet'"
        raise ConfigError(msg)
    if "://" in str(output_dir):  # object storage: one PUT of the finished part
        return _put_part(str(output_dir), index, rows, fmt, json_columns=json_columns, schema=schema, encoded=encoded)
    path = part_path(output_dir, index, fmt)
    try:
        if fmt == "jsonl":
            with atomic_write(path, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write((row if encoded else dumps_exact(row)) + "\n")
        else:
            frame = _frame(rows, tuple(json_columns), schema)
            with atomic_write(path, "wb") as fh:
                frame.write_parquet(fh)
    except OSError as exc:  # read-only, disk full, a file in the way: every later part would fail too
        raise output_write_error(exc, output_dir, writing=True) or exc from None
    return path


def _put_part(output_dir: str, index: int, rows: Sequence[Any], fmt: ApiPartFormat, *, json_columns: Iterable[str],
              schema: dict[str, Any] | None, encoded: bool) -> str:
    import io

    from tasks.core.objoutput import put_part

    if fmt == "jsonl":
        data = "".join((row if encoded else dumps_exact(row)) + "\n"
                       for row in rows).encode()
    else:
        buffer = io.BytesIO()
        _frame(rows, tuple(json_columns), schema).write_parquet(buffer)
        data = buffer.getvalue()
    return put_part(output_dir, f"part-{index:06d}.{fmt}", data)


def _frame(rows: Sequence[dict[str, Any]], json_columns: tuple[str, ...], schema: dict[str, Any] | None) -> Any:
    import polars as pl

    def dump(value: Any) -> str:
        return dumps_exact(value)

    if json_columns:
        rows = [{k: dump(v) if k in json_columns else v for k, v in row.items()} for row in rows]
    if rows and not all(isinstance(row, dict) for row in rows):
        return pl.DataFrame({"record": [dump(row) for row in rows]}, schema={"record": pl.String})
    try:
        try:
            frame = pl.DataFrame(rows, schema=schema, infer_schema_length=None, strict=schema is None)
        except OverflowError:  # an integer past 128 bits: its column as text, the other columns typed
            rows = _huge_ints_as_text(rows)
            frame = pl.DataFrame(rows, schema=schema, infer_schema_length=None, strict=schema is None)
    except Exception:  # mixed types across records: keep every record, as JSON text
        return pl.DataFrame({"record": [dump(row) for row in rows]}, schema={"record": pl.String})
    return _narrow_wide_ints(frame, rows)


def _narrow_wide_ints(frame: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """``frame`` without Int128/UInt128, which Parquet readers (pyarrow) cannot open: such a column becomes
    UInt64 if its values fit, else Decimal(38, 0), else text of its digits (file_transform's inference); a
    nested column holding one becomes the JSON text of its values. Every value keeps every digit."""
    import polars as pl

    casts = {}
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Int128 | pl.UInt128):
            low, high = frame[name].min(), frame[name].max()
            if low is None or (low >= 0 and high <= _UINT64_MAX):
                casts[name] = pl.col(name).cast(pl.UInt64)
            elif low >= -_DECIMAL38_MAX and high <= _DECIMAL38_MAX:
                casts[name] = pl.col(name).cast(pl.Decimal(38, 0))
            else:
                casts[name] = pl.col(name).cast(pl.String)
        elif dtype.is_nested() and "Int128" in str(dtype):
            values = [None if (v := row.get(name)) is None else dumps_exact(v) for row in rows]
            casts[name] = pl.Series(name, values, dtype=pl.String)
    return frame.with_columns(**casts) if casts else frame


def _huge_ints_as_text(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with every column that holds an integer past Decimal(38, 0) (anywhere in it) as text: integers
    as their digits, other values as their JSON text (strings as they are)."""
    huge = {name for row in rows for name, value in row.items() if _holds_huge_int(value)}

    def text(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        return str(value) if type(value) is int else dumps_exact(value)

    return [{k: text(v) if k in huge else v for k, v in row.items()} for row in rows]


def _holds_huge_int(value: Any) -> bool:
    if type(value) is int:
        return abs(value) > _DECIMAL38_MAX
    if isinstance(value, dict):
        return any(_holds_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_huge_int(v) for v in value)
    return False


def remove_parts_from(output_dir: str | Path, first_index: int) -> list[Path | str]:
    """Delete parts numbered ``first_index`` and up (written after the last checkpoint by a killed run); only
    names :func:`write_part` writes (``part-000017.jsonl``): ``part-7.jsonl`` or ``part-000017.jsonl.bak`` stay."""
    from tasks.core.results import part_index

    if "://" in str(output_dir):
        from tasks.core.objoutput import delete_parts, output_store

        store = output_store(str(output_dir))
        stale = [name for name in store.list("")
                 if "/" not in name and (index := part_index(name)) is not None and index >= first_index]
        delete_parts(str(output_dir), stale)
        return [store.where(name) for name in stale]
    root = Path(output_dir)
    removed = []
    if not root.is_dir():
        return removed
    for path in root.glob("part-*.*"):
        index = part_index(path.name)
        if index is not None and index >= first_index:
            path.unlink(missing_ok=True)
            removed.append(path)
    for tmp in root.glob(".part-*.tmp"):
        tmp.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------- credentials


def resolve_token(auth_secret: str | None, *, settings: HttpSettings | None = None) -> str | None:
    """The bearer token: the Secret block's value, else ``BATCHFLOWS_HTTP_TOKEN``, else None (no auth)."""
    if not auth_secret:
        token = (settings or HttpSettings()).token
        raw = token.get_secret_value() if token is not None else None
        register_secret(raw)
        return raw or None
    return _cached_secret(auth_secret, what=f"auth_secret {auth_secret!r}")


def resolve_secrets(secrets: Mapping[str, str] | None, *, what: str = "secret_headers") -> dict[str, str]:
    """Values from Prefect Secret blocks (``{"X-Api-Key": "block-name"}``), registered for redaction.

    A value may also be an in-process handle (``mem:...``): the Python entry points move credential
    headers and query parameters there so they never become flow-run parameters. ``what`` names
    the parameter in errors (``secret_headers`` or ``secret_params``).
    """
    resolved: dict[str, str] = {}
    for name, source in (secrets or {}).items():
        if is_handle(source):
            value = str(resolve_handle(source, what=f"{what}[{name!r}]"))
            register_secret(value)
        else:
            value = _cached_secret(source, what=f"{what}[{name!r}] = {source!r}")
        resolved[name] = value
    return resolved


def split_credential_headers(headers: dict[str, str] | None) -> tuple[dict[str, str] | None, dict[str, str]]:
    """(plain headers, {credential header: in-process handle}) for the Python entry points.

    The values are registered for redaction and parked in this process (tasks.core.loader), so the flow
    run's parameters carry only ``mem:`` handles, never the credentials themselves.
    """
    return _split(headers, is_sensitive_header)


def split_credential_params(url: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """(url without credential query parameters, plain params, {credential param: handle}) for the Python
    entry points: ``?api_key=...`` in the URL or in ``params`` never becomes a flow-run parameter."""
    base, _, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    kept, moved = [], {}
    for pair in query.split("&"):  # the other pairs stay as written
        parsed = parse_qsl(pair, keep_blank_values=True)
        if parsed and is_sensitive_param(parsed[0][0]):
            moved[parsed[0][0]] = parsed[0][1]
        elif pair:
            kept.append(pair)
    if moved:
        url = base + ("?" + "&".join(kept) if kept else "") + hash_ + fragment
    merged = {**moved, **(params or {})} if moved else params
    plain, handles = _split(merged, is_sensitive_param)
    return url, plain, handles


def split_url_password(url: str) -> tuple[str, str | None]:
    """(url without ``user:password@``, the ``Authorization: Basic ...`` value it stood for) for the Python
    entry points; ``(url, None)`` when the URL holds no password. The password and the header value are
    registered for redaction. The value is the one the clients build from a URL's userinfo (httpx's BasicAuth)."""
    password = url_password(url)
    if password is None:
        return url, None
    start = url.index("//") + 2  # the netloc follows the first "//"
    netloc = urlsplit(url).netloc
    user = unquote(netloc.rpartition("@")[0].partition(":")[0])
    register_secret(password)
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    register_secret(header.removeprefix("Basic "))
    return url[:start] + url[start:].replace(netloc, netloc.rpartition("@")[2], 1), header


def keep_credentials_in_process(values: dict[str, Any], handles: list[str]) -> None:
    """``python_entry`` prepare hook of the API flows: credential headers (and credential query parameters of
    ``url`` / ``params`` or ``base_url``) given in Python move to ``secret_headers`` / ``secret_params`` as ``mem:``
    handles that stay in this process; a password in ``base_url`` / ``url`` moves there too, as the
    ``Authorization: Basic`` header it stands for. The handles are appended to ``handles`` for release after
    the run."""
    for key in ("base_url", "url"):
        if isinstance(values.get(key), str):
            values[key], basic = split_url_password(values[key])
            if basic is not None:  # it wins over another Authorization, as the clients' basic auth did
                headers = {k: v for k, v in (values.get("headers") or {}).items() if k.lower() != "authorization"}
                values["headers"] = {**headers, "Authorization": basic}
    plain, secret = split_credential_headers(values.get("headers"))
    if secret:
        values["headers"] = plain
        values["secret_headers"] = {**(values.get("secret_headers") or {}), **secret}
        handles.extend(secret.values())
    if "url" in values:
        values["url"], params, moved = split_credential_params(values["url"], values.get("params"))
        if moved:
            values["params"] = params
            _add_secret_params(values, moved, handles)
    if isinstance(values.get("base_url"), str):  # api_bulk: base_url's own query goes on every request
        values["base_url"], _, moved = split_credential_params(values["base_url"], None)
        _add_secret_params(values, moved, handles)


def _add_secret_params(values: dict[str, Any], moved: dict[str, str], handles: list[str]) -> None:
    if moved:
        values["secret_params"] = {**(values.get("secret_params") or {}), **moved}
        handles.extend(moved.values())


def _split(values: dict[str, Any] | None, sensitive: Any) -> tuple[dict[str, Any] | None, dict[str, str]]:
    plain: dict[str, Any] = {}
    handles: dict[str, str] = {}
    for name, value in (values or {}).items():
        if sensitive(name) and value is not None:
            register_secret(str(value))
            handles[name] = register_object(str(value))
        else:
            plain[name] = value
    return (plain or None) if values is not None else None, handles


def _cached_secret(name: str, *, what: str) -> str:
    now = time.monotonic()
    with _tokens_lock:
        cached = _tokens.get(name)
        if cached is not None and now - cached[0] < TOKEN_CACHE_S:
            return cached[1]
    value = _load_secret(name, what=what)
    register_secret(value)
    with _tokens_lock:
        _tokens[name] = (now, value)
    return value


def _load_secret(name: str, *, what: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except Exception as exc:
        msg = (
            f"{what}: the Prefect Secret block could not be loaded ({type(exc).__name__}: {exc}); "
            f"create it with `Secret(value=...).save({name!r})` or `prefect block create secret`, or check PREFECT_API_URL"
        )
        raise ConfigError(msg) from None
    if isinstance(value, dict) and isinstance(value.get("token"), str):
        value = value["token"]
    if not isinstance(value, str) or not value:
        msg = f"{what} must hold a non-empty string (or {{'token': '...'}}), not {type(value).__name__}"
        raise ConfigError(msg)
    return value


# --------------------------------------------------------------------------- rate limiter


def process_limiter(rate_per_second: float | None, name: str | None, *, scope: str) -> Any:
    """The limiter every chunk of this process shares: None, a local TokenBucket, or a SharedRateLimit.

    A local bucket is per ``scope`` (the run key), so one run's AIMD state never slows another run in
    the same worker; a shared limit is per name, because the name *is* the shared budget.
    """
    if rate_per_second is None:
        if name:
            msg = f"rate_limit_name={name!r} needs rate_limit_per_second too (the budget of the shared limit)"
            raise ConfigError(msg)
        return None
    if not rate_per_second > 0:
        msg = f"rate_limit_per_second must be > 0, got {rate_per_second!r}; omit it to run unthrottled"
        raise ConfigError(msg)
    key = ("shared", name, float(rate_per_second)) if name else ("local", scope, float(rate_per_second))
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            if name:
                from tasks.core import SharedRateLimit

                limiter = SharedRateLimit(name, rate_per_second)
            else:
                limiter = TokenBucket(rate_per_second * (1 - LOCAL_HEADROOM))
            _limiters[key] = limiter
    return limiter


__all__ = [
    "LOCAL_HEADROOM",
    "ApiPartFormat",
    "part_path",
    "process_limiter",
    "remove_parts_from",
    "resolve_secrets",
    "resolve_token",
    "split_credential_headers",
    "split_credential_params",
    "split_url_password",
    "write_part",
]
