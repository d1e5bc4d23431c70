"""Verify a migration range by range: row counts and a checksum computed identically on both sides.

A table without a key (tasks.db.physical) is compared whole: counts and the sum of the rows' digests,
streamed, independent of the order rows are stored in, every copy of an identical row counted.

Why in Python when the dialects differ: the two sides may be different databases (PostgreSQL numeric vs SQLite
text, timestamptz vs ISO text, jsonb vs JSON text). Both sides are read in key order, decoded into the
same canonical values (tasks.db.typemap) and hashed by the same code, so equal data gives equal checksums
in either direction. It also yields the first key whose row differs, which is what one wants to look at.
MySQL/MariaDB and PostgreSQL sides are first compared column by column as Arrow arrays (tasks.db.arrow_verify):
only a column whose arrays differ is decoded and canonicalized, with the same answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel

from tasks.core import ConfigError, redact_text
from tasks.db import arrow_rows, arrow_verify
from tasks.db.conn import Db, UrlLike, parse_db_url, parse_table_name
from tasks.db.copier import iter_rows, read_with_times
from tasks.db.physical import verify_scope
from tasks.db.refusals import shifted_array_key
from tasks.db.schema import (
    KeyRange,
    SourceSchema,
    Window,
    bind_key,
    decode_key,
    key_expr,
    plan_ranges,
    range_predicate,
    reflect,
)
from tasks.db.session import connect, submit_in_run
from tasks.db.typemap import ColumnInfo
from tasks.db.unchanged import binary_digest, identical_types
from tasks.db.values import coerce, key_to_json, row_canonicalizer, rows_checksum

_log = logging.getLogger(__name__)


class RangeCheck(BaseModel):
    """The verdict for one range; ``first_difference`` is the first key (in key order) that differs."""

    index: int
    count_src: int
    count_tgt: int
    checksum_src: str
    checksum_tgt: str
    ok: bool
    first_difference: list[Any] | None = None
    method: str = "python"
    kept: int = 0  # target-only rows of an incremental window the source deleted or changed since (not differences)


def _rows(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
          as_kinds: SourceSchema | None = None, *, arrow: bool = False, end_of_day: bool = False
          ) -> Iterator[tuple[Any, ...]]:
    """The range's rows in key order as canonical values, streamed; with ``as_kinds`` (the source's schema,
    when reading the target) a column whose kind differs is converted to the source's kind first.
    ``arrow``: a MySQL/MariaDB or PostgreSQL range through connectorx (tasks.db.arrow_rows; may raise part
    way). ``end_of_day``: see copier.read_with_times (PostgreSQL's time '24:00:00')."""
    fix = []
    if as_kinds is not None:
        for i, (mine, theirs) in enumerate(zip(schema.columns, as_kinds.columns, strict=True)):
            if mine.kind != theirs.kind or mine.element != theirs.element:
                fix.append((i, theirs))
    with connect(url, role) as db:  # type: ignore[arg-type]
        if arrow and not arrow_rows.readable(db, schema):
            raise arrow_rows.NotReadable(f"{schema.label()} has a column connectorx cannot read exactly")
        rows = arrow_rows.iter_rows(db, schema, rng) if arrow else iter_rows(db, schema, rng, end_of_day=end_of_day)
        for row in rows:
            if fix:
                vals = list(row)
                for i, col in fix:
                    vals[i] = coerce(col, vals[i]) if vals[i] is not None else None
                row = tuple(vals)
            yield row
        if db.dialect == "postgresql":
            db.raw.rollback()


def _row_digests(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
                 as_kinds: SourceSchema | None = None, end_of_day: bool = False) -> Iterator[tuple[list[Any], bytes]]:
    """(key, md5 of the row's canonical values) per row of the range, streamed."""
    key_pos = [schema.names.index(k) for k in schema.key]
    key_cols = schema.key_columns()
    canon = row_canonicalizer(as_kinds.columns if as_kinds is not None else schema.columns)
    md5 = hashlib.md5
    for row in _rows(url, schema, rng, role, as_kinds, end_of_day=end_of_day):
        key = [key_to_json(c, row[p]) for c, p in zip(key_cols, key_pos, strict=True)]
        yield key, md5(canon(row), usedforsecurity=False).digest()


def _columns_checksum(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
                      as_kinds: SourceSchema | None = None, json_as_text: bool = False) -> tuple[int, str]:
    """(count, checksum) of the range, column by column (see values.rows_checksum)."""
    checksum = rows_checksum(as_kinds.columns if as_kinds is not None else schema.columns, json_as_text=json_as_text)
    if parse_db_url(url).dialect in ("mysql", "postgresql"):
        try:
            return checksum(_rows(url, schema, rng, role, as_kinds, arrow=True))
        except Exception as exc:  # any surprise (or not readable there): the range again through PyMySQL
            _log.debug("range %s: read through PyMySQL (%s)", rng.index, redact_text(str(exc))[:200])
    return read_with_times(lambda end_of_day: checksum(_rows(url, schema, rng, role, as_kinds, end_of_day=end_of_day)),
                           schema)


def _digests(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
             as_kinds: SourceSchema | None = None) -> list[tuple[list[Any], bytes]]:
    return read_with_times(lambda end_of_day: list(_row_digests(url, schema, rng, role, as_kinds, end_of_day)), schema)


def _multiset(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
              as_kinds: SourceSchema | None = None) -> tuple[int, str]:
    """(count, order-independent checksum) of a table without a key, streamed (nothing kept per row): the
    sum of the rows' digests, so every copy of an identical row counts and the storage order does not."""
    def read(end_of_day: bool) -> tuple[int, str]:
        return _digest_sum(digest for _, digest in _row_digests(url, schema, rng, role, as_kinds, end_of_day))

    return read_with_times(read, schema)


def _digest_sum(digests: Iterable[bytes]) -> tuple[int, str]:
    """(count, order-independent checksum) of row digests, streamed: their sum modulo 2**128, so every copy of
    an identical row counts and the order does not."""
    n = total = 0
    for digest in digests:
        n += 1
        total += int.from_bytes(digest, "big")
    return n, f"sum:{total % (1 << 128):032x}"


# json texts jsonb refuses (a \u0000 escape, a lone surrogate escape): valid json, compared as their texts
_NOT_JSONB = (r"\\u0000|\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})"
              r"|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}")
_NOT_JSONB_SQL = _NOT_JSONB.replace("\\", "\\\\")  # in an E'' literal: the same whatever standard_conforming_strings


def _pg_canon_expr(db: Db, col: ColumnInfo, *, json_as_text: bool = False) -> str:
    """Server-side canonical text of a column; the same expression runs on both PostgreSQL sides, and
    normalizes what may legitimately differ (numeric scale, json vs jsonb, int4 vs int8 text is equal).
    A ``json`` document is its jsonb text (spacing and key order normalized), or its own text with
    ``json_as_text`` (both sides json: a copy keeps it) and where jsonb cannot hold it (``\\u0000``)."""
    q = db.q(col.name)
    if col.kind == "numeric":
        return f"trim_scale({q})::text"
    if col.kind == "json":
        return f"{q}::text" if json_as_text else \
            f"CASE WHEN {q}::text ~* E'{_NOT_JSONB_SQL}' THEN {q}::text ELSE {q}::jsonb::text END"
    if col.kind == "real":
        return f"{q}::float8::text"
    return f"{q}::text"


def _pg_record(db: Db, schema: SourceSchema, text_json: frozenset[str]) -> str:
    """The canonical record of a row (``ROW(...)``'s fields); ``text_json``: json columns compared as texts."""
    return ", ".join(_pg_canon_expr(db, c, json_as_text=c.name in text_json) for c in schema.columns)


def _pg_digests(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str, text_json: frozenset[str] = frozenset()
                ) -> list[tuple[list[Any], bytes]]:
    """(key, md5 of the row's canonical record text) per row, computed by the server (PG <-> PG only)."""
    key_cols = schema.key_columns()
    with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
        where, params = range_predicate(db, key_cols, rng)
        record = _pg_record(db, schema, text_json)
        keys = ", ".join(db.q(c.name) for c in key_cols)
        order = ", ".join(key_expr(db, key_cols))
        sql = (f"SELECT {keys}, md5(ROW({record})::text) FROM {schema.relation('postgresql')} "
               f"WHERE {where} ORDER BY {order}")
        cur = db.raw.cursor()
        cur.execute(sql, params)
        n = len(key_cols)
        out = [([key_to_json(c, v) for c, v in zip(key_cols, r[:n], strict=True)], bytes.fromhex(r[n]))
               for r in cur]
        db.raw.rollback()
    return out


def _pg_aggregate(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
                  text_json: frozenset[str] = frozenset()) -> tuple[int, str]:
    """(count, checksum) of a range computed entirely by the server: nothing but two values travels."""
    key_cols = schema.key_columns()
    with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
        where, params = range_predicate(db, key_cols, rng)
        record = _pg_record(db, schema, text_json)
        order = ", ".join(key_expr(db, key_cols))
        row = db.all(f"SELECT count(*), md5(string_agg(md5(ROW({record})::text), '' ORDER BY {order})) "
                     f"FROM {schema.relation('postgresql')} WHERE {where}", params)[0]
        db.raw.rollback()
    return int(row[0]), str(row[1] or hashlib.md5(b"", usedforsecurity=False).hexdigest())


def _pg_multiset(url: UrlLike, schema: SourceSchema, rng: KeyRange, role: str,
                 text_json: frozenset[str] = frozenset()) -> tuple[int, str]:
    """(count, order-independent checksum) for a table without a key: the sum of every row's md5 (as a
    64-bit number), so equal multisets of rows give equal sums whatever order the rows are stored in."""
    with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
        where, params = range_predicate(db, [], rng)
        record = _pg_record(db, schema, text_json)
        row = db.all(f"SELECT count(*), coalesce(sum(('x' || left(md5(ROW({record})::text), 16))::bit(64)::bigint"
                     f"::numeric), 0)::text FROM {schema.relation('postgresql')} WHERE {where}", params)[0]
        db.raw.rollback()
    return int(row[0]), f"sum:{row[1]}"


def _first_difference(a: list[tuple[list[Any], bytes]], b: list[tuple[list[Any], bytes]]) -> list[Any] | None:
    """The first key (source order, then target-only keys) whose row differs or is missing on one side."""
    other = {tuple(k): d for k, d in b}
    for k, d in a:
        if other.get(tuple(k)) != d:
            return k
    mine = {tuple(k) for k, _ in a}
    return next((k for k, _ in b if tuple(k) not in mine), None)


def _target_schema(source: SourceSchema, target_url: UrlLike, target_table: str) -> SourceSchema:
    tgt = reflect(target_url, parse_table_name(target_table), key=source.key, role="target")
    missing = [n for n in source.names if n not in tgt.names]
    if missing:
        msg = f"target table {target_table} lacks source columns {missing}; target columns are {tgt.names}"
        raise ConfigError(msg)
    return tgt.model_copy(update={"columns": [tgt.column(n) for n in source.names]})


def verify_range(source_url: UrlLike, target_url: UrlLike, table: str | None, rng: KeyRange, *,
                 target_table: str | None = None, query: str | None = None,
                 key: str | Sequence[str] | None = None, source_schema: SourceSchema | None = None,
                 target_schema: SourceSchema | None = None) -> RangeCheck:
    """Compare one range of source and target: counts, checksums and the first differing key.

    PostgreSQL on both sides: the server hashes each row's canonical record text (``method="sql"``,
    fast). Otherwise both sides are decoded and hashed by the same Python code (``method="python"``).
    Checksums are comparable only between the two sides of one check.

    Only the source's columns are compared (extra target columns are ignored). After a transform that
    changes values the checksums differ by design: compare counts only in that case.
    ``source_schema``/``target_schema`` (from :func:`reflect`) skip the per-range reflection; the target
    schema is narrowed to the source's columns here.
    """
    source = source_schema or reflect(source_url, table, query=query, key=key)
    if target_schema is None:
        target = _target_schema(source, target_url, target_table or table or "")
    else:
        target = target_schema.model_copy(update={"columns": [target_schema.column(n) for n in source.names],
                                                  "key": source.key})
    if not source.key and rng.scan != "all":
        msg = (f"{source.label()} has no key: verify compares the whole table (scan='all'), a physical range of "
               f"the source has no counterpart in the target (range {rng.index} is {rng.describe()})")
        raise ConfigError(msg)
    both_pg = parse_db_url(source_url).dialect == parse_db_url(target_url).dialect == "postgresql"
    with ThreadPoolExecutor(2) as pool:  # both sides at once: the waiting is in the databases
        if not source.key:  # the whole table as a multiset: counts and summed row digests
            if both_pg:
                n_a, cs_a, n_b, cs_b, _ = _pg_sides(pool, _pg_multiset, source_url, source, target_url, target, rng)
            else:
                fa = submit_in_run(pool, _multiset, source_url, source, rng, "source")
                fb = submit_in_run(pool, _multiset, target_url, target, rng, "target", as_kinds=source)
                (n_a, cs_a), (n_b, cs_b) = fa.result(), fb.result()
            return RangeCheck(index=rng.index, count_src=n_a, count_tgt=n_b, checksum_src=cs_a, checksum_tgt=cs_b,
                              ok=n_a == n_b and cs_a == cs_b, method="sql" if both_pg else "python")
        if both_pg:
            same = _pg_binary_same(pool, source_url, source, target_url, target, rng)
            if same is not None:
                n, digest = same
                return RangeCheck(index=rng.index, count_src=n, count_tgt=n, checksum_src=digest,
                                  checksum_tgt=digest, ok=True, method="binary")
            n_a, cs_a, n_b, cs_b, text_json = _pg_sides(pool, _pg_aggregate, source_url, source, target_url,
                                                        target, rng)
            ok = n_a == n_b and cs_a == cs_b
            first = None
            if not ok:
                da = submit_in_run(pool, _pg_digests, source_url, source, rng, "source", text_json)
                db_ = submit_in_run(pool, _pg_digests, target_url, target, rng, "target", text_json)
                if rng.window is not None:
                    return _window_check(source_url, source, rng, da.result(), db_.result(), "sql")
                first = _first_difference(da.result(), db_.result())
            return RangeCheck(index=rng.index, count_src=n_a, count_tgt=n_b, checksum_src=cs_a, checksum_tgt=cs_b,
                              ok=ok, first_difference=first, method="sql")
        arrays = _arrow_check(pool, source_url, source, target_url, target, rng)
        # json documents (not jsonb: PostgreSQL rewrites those) compared as their texts first, which a copy
        # keeps (~half the time of parsing each document); unequal texts may be equal values: then parsed
        as_text = any(c.kind == "json" and t.kind == "json" for c, t in zip(source.columns, target.columns, strict=True))
        if arrays is not None:
            n_a, cs_a, n_b, cs_b, ok = arrays
        for json_as_text in [] if arrays is not None else [True, False] if as_text else [False]:
            fa = submit_in_run(pool, _columns_checksum, source_url, source, rng, "source", None, json_as_text)
            fb = submit_in_run(pool, _columns_checksum, target_url, target, rng, "target", source, json_as_text)
            (n_a, cs_a), (n_b, cs_b) = fa.result(), fb.result()
            ok = n_a == n_b and cs_a == cs_b
            if ok or n_a != n_b:
                break
        first, kept = None, 0
        if not ok:  # read both again, a digest per row, for the first key that differs
            da = submit_in_run(pool, _digests, source_url, source, rng, "source")
            db_ = submit_in_run(pool, _digests, target_url, target, rng, "target", as_kinds=source)
            if rng.window is not None:
                check = _window_check(source_url, source, rng, da.result(), db_.result(), "")
                n_a, cs_a, n_b, cs_b, ok, first, kept = (check.count_src, check.checksum_src, check.count_tgt,
                                                         check.checksum_tgt, check.ok, check.first_difference,
                                                         check.kept)
            else:
                first = _first_difference(da.result(), db_.result())
        if ok and (shifted := _shifted_arrays(source_url, source, target_url, target, rng)) is not None:
            ok, first = False, shifted  # equal lists, but only PostgreSQL's side starts that array at another index
    return RangeCheck(index=rng.index, count_src=n_a, count_tgt=n_b, checksum_src=cs_a, checksum_tgt=cs_b,
                      ok=ok, first_difference=first, method="python" if arrays is None else "arrow", kept=kept)


Digests = list[tuple[list[Any], bytes]]


def _window_check(source_url: UrlLike, source: SourceSchema, rng: KeyRange, src: Digests, tgt: Digests,
                  method: str) -> RangeCheck:
    """An incremental range whose window differs on the two sides: the source's window rows against the
    target's rows of the same keys. A key the target holds in the window that the source no longer has there
    is not a difference when the source row is gone (deleted: ``deletes="ignore"`` and soft deletes keep it
    by design; a delete after compare_keys ran) or its watermark is now past the run's high bound (updated
    since the range committed; the next run carries it). Those keys are looked up in the source by key, so
    any other target-only row still counts; only the window's rows are read."""
    mine = {tuple(k) for k, _ in src}
    extra = {tuple(k) for k, _ in tgt if tuple(k) not in mine}
    kept = extra - _still_in_window(source_url, source, rng.window, extra) if extra and rng.window else set()
    tgt = [(k, d) for k, d in tgt if tuple(k) not in kept]
    ok = len(src) == len(tgt) and {tuple(k): d for k, d in src} == {tuple(k): d for k, d in tgt}
    return RangeCheck(index=rng.index, count_src=len(src), count_tgt=len(tgt), checksum_src=_digest_sum(d for _, d in src)[1],
                      checksum_tgt=_digest_sum(d for _, d in tgt)[1], ok=ok, first_difference=None if ok else _first_difference(src, tgt),
                      method=method or "python", kept=len(kept))


_LOOKUP_BATCH = 500


def _still_in_window(url: UrlLike, schema: SourceSchema, window: Window, keys: set[tuple[Any, ...]]
                     ) -> set[tuple[Any, ...]]:
    """Of ``keys``, those whose source row exists with a watermark up to the window's high bound (or NULL):
    the target's row of such a key is a real difference. One query per 500 keys, by key. Keys compare as
    typed values; a row read back that matches none of them keeps every key a difference (never a pass by
    mistake)."""
    upto = KeyRange(index=0, window=Window(column=window.column, high=window.high))
    cols = schema.key_columns()

    def typed(key: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(coerce(c, v) for c, v in zip(cols, key, strict=True))

    wanted = {typed(k): k for k in keys}
    found: set[tuple[Any, ...]] = set()
    todo = list(wanted.values())
    with connect(url, "source", read_only=True) as db:
        exprs = key_expr(db, cols)
        within, within_params = range_predicate(db, cols, upto)
        names = ", ".join(db.q(c.name) for c in cols)
        for start in range(0, len(todo), _LOOKUP_BATCH):
            batch = todo[start:start + _LOOKUP_BATCH]
            if len(cols) == 1:
                by_key = f"{exprs[0]} IN ({', '.join([db.ph] * len(batch))})"
            else:
                by_key = " OR ".join(["(" + " AND ".join(f"{e} = {db.ph}" for e in exprs) + ")"] * len(batch))
            params = [bind_key(db, c, v) for k in batch for c, v in zip(cols, k, strict=True)]
            rows = db.all(f"SELECT {names} FROM {schema.relation(db.dialect)} WHERE ({by_key}) AND {within}",
                          [*params, *within_params])
            found.update(typed([decode_key(db, c, v) for c, v in zip(cols, row, strict=True)]) for row in rows)
        if db.dialect != "sqlite":
            db.raw.rollback()
    if not found <= wanted.keys():
        return set(keys)
    return {wanted[k] for k in found}


def _shifted_arrays(source_url: UrlLike, source: SourceSchema, target_url: UrlLike, target: SourceSchema,
                    rng: KeyRange) -> list[Any] | None:
    """The first key whose PostgreSQL array has a lower bound other than 1, compared with a database without
    such arrays (SQLite, MySQL/MariaDB hold a JSON list): both read as the same list, yet they differ."""
    for url, schema, role in ((source_url, source, "source"), (target_url, target, "target")):
        if parse_db_url(url).dialect == "postgresql" and any(c.kind == "array" for c in schema.columns):
            with connect(url, role) as db:  # type: ignore[arg-type]
                key = shifted_array_key(db, schema, rng)
            return None if key is None else list(key.values())
    return None


def _pg_sides(pool: ThreadPoolExecutor, side: Callable[..., tuple[int, str]], source_url: UrlLike,
              source: SourceSchema, target_url: UrlLike, target: SourceSchema, rng: KeyRange
              ) -> tuple[int, str, int, str, frozenset[str]]:
    """(count_src, checksum_src, count_tgt, checksum_tgt, json columns compared as texts) by the servers.

    json documents that are json on both sides are compared as their texts first, which a copy keeps (and
    which jsonb may refuse: ``\\u0000``); only when those differ are they compared as jsonb documents
    (spacing and key order aside), where jsonb can hold them."""
    text_json = frozenset(c.name for c, t in zip(source.columns, target.columns, strict=True)
                          if c.kind == t.kind == "json")
    for as_text in [text_json, frozenset()] if text_json else [text_json]:
        fa = submit_in_run(pool, side, source_url, source, rng, "source", as_text)
        fb = submit_in_run(pool, side, target_url, target, rng, "target", as_text)
        (n_a, cs_a), (n_b, cs_b) = fa.result(), fb.result()
        if (n_a, cs_a) == (n_b, cs_b) or n_a != n_b:
            break
    return n_a, cs_a, n_b, cs_b, as_text


def _pg_binary_same(pool: ThreadPoolExecutor, source_url: UrlLike, source: SourceSchema, target_url: UrlLike,
                    target: SourceSchema, rng: KeyRange) -> tuple[int, str] | None:
    """(rows, digest) when both PostgreSQL sides' columns have identical types and the range's binary COPY images
    in key order are byte for byte equal (equal bytes of one type are equal values; tasks.db.unchanged), read
    at once: ~5x cheaper than the servers' record-text aggregates. None: those decide (a scale, a float's
    sign of zero, json spacing: unequal bytes may still be equal values)."""
    if not identical_types(source.columns, target.columns):
        return None

    def side(url: UrlLike, schema: SourceSchema, role: str) -> tuple[int, bytes]:
        with connect(url, role, read_only=True) as db:  # type: ignore[arg-type]
            cols = [db.q(c.name) for c in schema.columns]
            try:
                return binary_digest(db, schema.relation("postgresql"), cols, schema.key_columns(), rng)
            finally:
                db.raw.rollback()

    fa = submit_in_run(pool, side, source_url, source, "source")
    fb = submit_in_run(pool, side, target_url, target, "target")
    (n_a, d_a), (n_b, d_b) = fa.result(), fb.result()
    return (n_a, d_a.hex()) if (n_a, d_a) == (n_b, d_b) else None


def _arrow_check(pool: ThreadPoolExecutor, source_url: UrlLike, source: SourceSchema, target_url: UrlLike,
                 target: SourceSchema, rng: KeyRange) -> tuple[int, str, int, str, bool] | None:
    """Both sides read through connectorx at once and compared column by column (tasks.db.arrow_verify), when
    both are readable there; None: the row-by-row comparison decides."""
    fa = submit_in_run(pool, arrow_verify.read_side, source_url, source, rng, "source")
    fb = submit_in_run(pool, arrow_verify.read_side, target_url, target, rng, "target")
    try:
        a, b = fa.result(), fb.result()
        if a is None or b is None:
            return None
        n_a, cs_a, n_b, cs_b, ok, slow = arrow_verify.compare(source, a, target, b)
    except BaseException as exc:  # any surprise: the row-by-row comparison (which names a bad value's row)
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":  # a Rust panic: refused
            raise
        _log.debug("range %s: verified row by row (%s)", rng.index, redact_text(str(exc))[:200])
        return None
    if slow:
        _log.debug("range %s: columns %s compared as canonical values", rng.index, slow)
    return n_a, cs_a, n_b, cs_b, ok


def verify_ranges(source_url: UrlLike, target_url: UrlLike, table: str | None = None, *,
                  target_table: str | None = None, query: str | None = None,
                  key: str | Sequence[str] | None = None, ranges: Sequence[KeyRange] | None = None,
                  chunk_rows: int = 50_000) -> list[RangeCheck]:
    """Verify every range (planned from the source when ``ranges`` is None); works on existing tables
    without a migration having run. The flow fans these out as tasks; this is the sequential form."""
    todo = ranges if ranges is not None else plan_ranges(source_url, table, query=query, key=key,
                                                         chunk_rows=chunk_rows, verify_key=False)
    todo = verify_scope(todo)
    return [verify_range(source_url, target_url, table, r, target_table=target_table, query=query, key=key)
            for r in todo]


__all__ = ["RangeCheck", "verify_range", "verify_ranges"]
