"""Issue 15's fast paths against real PostgreSQL 15: ranges cut by walking the key's index (the same ranges as
the one-pass window query), an upsert over an existing copy that leaves unchanged rows alone (byte-exact: a
json value re-spaced or -0.0 for 0.0 is a change) and skips unchanged ranges, and connections reused within a run."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import psycopg
import pytest

from tasks.core import SourceError
from tasks.db import KeyRange, copy_range, create_target, parse_db_url, plan_ranges, reflect, shared_connections
from tasks.db import schema as schema_mod
from tasks.db.schema import cut_points, key_expr, range_predicate
from tasks.db.session import connect
from tests.tasks.db.test_migration import CHUNK, all_ok, key_values, pg_exec


def _one_pass(url: str, table: str, chunk_rows: int, key: str | None = None) -> list[KeyRange]:
    """The ranges the window-function query cuts (what plan_ranges did before the index walk)."""
    schema = reflect(url, table, key=key)
    cols = schema.key_columns()
    with connect(url, "source") as db:
        where, params = range_predicate(db, cols, KeyRange(index=0))
        bounds, total = cut_points(db, schema.relation(db.dialect), [db.q(k) for k in schema.key],
                                   ", ".join(key_expr(db, cols)), where, params, chunk_rows)
        uppers = [[schema_mod.decode_key(db, c, v) for c, v in zip(cols, row, strict=True)] for row in bounds]
    return schema_mod.chain_ranges(uppers, total, chunk_rows)


@pytest.mark.parametrize("steps", [256, 2])
def test_index_walk_cuts_the_same_ranges_as_one_pass(steps: int, pg_items: str, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    monkeypatch.setattr(schema_mod, "_WALK_STEPS", steps)  # 2: the walk hands the rest to the one-pass query
    pg_exec(pg_items, "CREATE TABLE c (a int, b text COLLATE \"C\", v int, PRIMARY KEY (a, b)); "
                      "INSERT INTO c SELECT mod(g, 7), 'k' || g, g FROM generate_series(1, 500) g; "
                      "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10); "
                      "CREATE TABLE e (id int PRIMARY KEY)")
    for table, chunk, key in (("items", CHUNK, None), ("items", 1, None), ("items", 10_000, None), ("c", 17, None),
                              ("t", 5, None), ("t", 3, None), ("e", 5, None)):
        schema = reflect(pg_items, table, key=key)
        with connect(pg_items, "source") as db:
            assert schema_mod._walkable(db, schema), table
        assert plan_ranges(pg_items, table, chunk_rows=chunk) == _one_pass(pg_items, table, chunk), (table, chunk)
    assert [(r.lower, r.upper, r.estimated_rows) for r in plan_ranges(pg_items, "t", chunk_rows=5)] == \
        [(None, [5], 5), ([5], None, 5)]


def test_sqlite_keys_are_walked_too(sqlite_items: str) -> None:
    """SQLite: the walk's ``LIMIT 1 OFFSET n`` over the key's b-tree gives the window query's ranges (0.015 s
    instead of 0.8 s for 1M keys, measured), for the rowid key and for a composite primary key."""
    import sqlite3

    with sqlite3.connect(sqlite_items.removeprefix("sqlite:///")) as conn:
        conn.execute("CREATE TABLE c (a INTEGER, b TEXT, v INTEGER, PRIMARY KEY (a, b))")
        conn.executemany("INSERT INTO c VALUES (?, ?, ?)", [(g % 7, f"k{g}", g) for g in range(1, 501)])
    for table, chunk in (("items", CHUNK), ("items", 1), ("items", 10_000), ("c", 17)):
        schema = reflect(sqlite_items, table)
        with connect(sqlite_items, "source") as db:
            assert schema_mod._walkable(db, schema), table
        assert plan_ranges(sqlite_items, table, chunk_rows=chunk) == _one_pass(sqlite_items, table, chunk)


def test_keys_the_walk_leaves_to_the_one_pass_query(pg_items: str) -> None:
    """A key without a unique index in that order (or text compared as bytes, ``COLLATE "C"``, in a database
    of another collation): the window query cuts them."""
    pg_exec(pg_items, "CREATE TABLE s (name text PRIMARY KEY, v int); "
                      "INSERT INTO s SELECT 'n' || g, g FROM generate_series(1, 50) g")
    with connect(pg_items, "source") as db:
        assert not schema_mod._walkable(db, reflect(pg_items, "items", key="uid"))  # unique in data, no index
        text = reflect(pg_items, "s")  # walked only where the column compares as bytes already
        assert schema_mod._walkable(db, text) == (not text.column("name").collate_c)
    assert plan_ranges(pg_items, "items", key="uid", chunk_rows=CHUNK) == _one_pass(pg_items, "items", CHUNK, "uid")
    assert plan_ranges(pg_items, "s", chunk_rows=7) == _one_pass(pg_items, "s", 7)


def _versions(url: str) -> dict[int, str]:
    return dict(pg_exec(url, "SELECT id, xmin::text FROM items"))


def test_upsert_over_a_copy_rewrites_only_changed_rows(pg_items: str, pg_target: str) -> None:
    create_target(pg_items, pg_target, "items")
    ranges = plan_ranges(pg_items, "items", chunk_rows=CHUNK)
    for r in ranges:
        copy_range(pg_items, pg_target, "items", r, mode="append")
    before = _versions(pg_target)
    # equal as values but not as bytes (must be written: data is exact), a real change, and a new row
    pg_exec(pg_items, """UPDATE items SET raw = '{"b":1,   "a": [1, "ß"]}' WHERE id = 2""")
    pg_exec(pg_items, "UPDATE items SET score = '-0' WHERE id = 5; UPDATE items SET name = 'changed' WHERE id = 7")
    pg_exec(pg_target, "UPDATE items SET score = 0 WHERE id = 5")  # equal to -0 as a number, not as bytes
    after_target_edit = _versions(pg_target)
    pg_exec(pg_items, "INSERT INTO items (id, label) VALUES (3000, 'new')")
    results = [copy_range(pg_items, pg_target, "items", r, mode="upsert") for r in ranges]
    assert sum(r.rows_written for r in results) == len(key_values()) + 1  # every row is upserted (counted)
    # a range holding a difference is merged; the others are found equal where they lie and write nothing
    touched = {r.index for r in ranges for k in (2, 5, 7, 3000) if (r.lower is None or r.lower[0] < k)
               and (r.upper is None or k <= r.upper[0])}
    assert {r.index: r.path for r in results} == {
        r.index: "copy-binary" if r.index in touched else "unchanged" for r in ranges}
    assert len(touched) < len(ranges)
    after = _versions(pg_target)
    changed = {k for k in after if after[k] != after_target_edit.get(k)}
    assert changed == {2, 5, 7, 3000}, changed
    assert {k for k in before if before[k] != after[k]} == {2, 5, 7}
    query = "SELECT id, raw::text, score::text, name FROM items WHERE id IN (2, 5, 7, 3000) ORDER BY id"
    assert pg_exec(pg_items, query) == pg_exec(pg_target, query)
    all_ok(pg_items, pg_target)


@pytest.mark.parametrize("digest", ["binary", "text"])
def test_a_range_is_skipped_only_when_every_value_is_the_same(digest: str, pg_url: str, pg_target: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An upsert range whose rows the target holds already is not written (its ledger row alone would commit);
    one whose values differ only in their bytes (numeric scale, a float's last bit even where the databases
    print floats rounded, json spacing) is merged, and then the target holds the source's bytes. Both digests:
    of the binary COPY image (the same column types on both sides) and of the record text (any others)."""
    from tasks.db import copier, unchanged

    if digest == "text":
        monkeypatch.setattr(copier, "unchanged_rows", lambda *a, same_types: unchanged.unchanged_rows(
            *a, same_types=False))
    pg_exec(pg_url, "CREATE TABLE n (id int PRIMARY KEY, v numeric, f float8, j json); INSERT INTO n SELECT g, "
                    "g / 4.0, g / 10.0, json_build_object('g', g) FROM generate_series(1, 40) g")
    for url in (pg_url, pg_target):  # floats printed rounded to 15 digits: 0.1 and the next double look alike
        pg_exec(url, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET extra_float_digits = 0', "
                     "current_database()); END $$")
    create_target(pg_url, pg_target, "n")
    ranges = plan_ranges(pg_url, "n", chunk_rows=10)
    assert len(ranges) == 4
    for r in ranges:
        copy_range(pg_url, pg_target, "n", r, mode="append")
    before = dict(pg_exec(pg_target, "SELECT id, xmin::text FROM n"))
    assert {copy_range(pg_url, pg_target, "n", r, mode="upsert").path for r in ranges} == {"unchanged"}
    assert dict(pg_exec(pg_target, "SELECT id, xmin::text FROM n")) == before
    pg_exec(pg_target, "UPDATE n SET v = 1.00 WHERE id = 4")  # source 1.0
    pg_exec(pg_target, "UPDATE n SET f = 1.1000000000000003 WHERE id = 11")  # the next double after 1.1
    pg_exec(pg_url, """UPDATE n SET j = '{"g" :  35}' WHERE id = 35""")
    assert pg_exec(pg_target, "SELECT f = 1.1 FROM n WHERE id = 11") == [(False,)]
    paths = [copy_range(pg_url, pg_target, "n", r, mode="upsert").path for r in ranges]
    assert paths == ["copy-binary", "copy-binary", "unchanged", "copy-binary"]
    query = "SELECT id, v::text, float8send(f), j::text FROM n ORDER BY id"
    assert pg_exec(pg_url, query) == pg_exec(pg_target, query)


def test_connections_are_reused_within_a_run(pg_items: str) -> None:
    ep = parse_db_url(pg_items)
    with shared_connections() as pool:
        with connect(pg_items, "source") as a:
            first = a.raw
            a.raw.execute("SELECT 1")  # a transaction left open: rolled back when the step ends
            with connect(pg_items, "source") as nested:  # in use above: a connection of its own
                second = nested.raw
                assert second is not first
        with connect(ep, "source") as b:  # the newest idle one
            assert b.raw is first
            assert b.raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with connect(pg_items, "target") as other:  # another role: another connection
            assert other.raw not in (first, second)
        with pytest.raises(ZeroDivisionError), connect(pg_items, "source") as c:
            assert c.raw is first
            _ = 1 / 0
        assert first.closed  # a step that raised never hands its connection out again
        with connect(pg_items, "source") as d:  # the other idle one
            assert d.raw is second
        seen: list[Any] = []

        def step_in_another_thread() -> None:
            with connect(pg_items, "source") as e:
                seen.append(e.raw)

        worker = threading.Thread(target=contextvars.copy_context().run, args=(step_in_another_thread,))
        worker.start()
        worker.join()
        assert seen == [second]  # a task runner's thread takes what the flow's thread left idle
        assert pool.opened == 3
    assert second.closed  # all closed when the run ends
    with connect(pg_items, "source") as e:  # outside a run: a connection per step, as before
        outside = e.raw
    assert outside.closed


def test_a_read_only_step_opens_no_transaction(pg_items: str) -> None:
    """``read_only``: each statement in autocommit (no BEGIN round trip before it, no ROLLBACK after); the
    connection goes back to the pool transactional, for the next step that writes."""
    idle, in_tx = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
    with shared_connections() as pool:
        with connect(pg_items, "source", read_only=True) as db:
            assert db.all("SELECT count(*) FROM items")[0][0] > 0
            assert db.raw.info.transaction_status == idle
            first = db.raw
        with connect(pg_items, "source") as db:
            assert db.raw is first and not db.raw.autocommit
            db.all("SELECT 1")
            assert db.raw.info.transaction_status == in_tx
        assert pool.opened == 1
    with connect(pg_items, "source", read_only=True) as db:  # outside a run too
        db.all("SELECT 1")
        assert db.raw.info.transaction_status == idle


def test_a_run_opens_few_connections(pg_items: str, pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.db_migrate import db_migrate

    opened: list[Any] = []
    real = psycopg.connect

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(kwargs.get("dbname"))
        return real(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", counting)
    summary = db_migrate(pg_items, pg_target, "items", chunk_rows=CHUNK, max_concurrency=1)
    assert summary.ok, summary.render_text()
    # before: a connection per step (reflections, target check, ledger, planning) and two per range, then one
    # per database and thread plus verify's two per range (10 here); now one per database: planning in the
    # flow's thread, then every range's copy and verify in the task runner's threads take it in turn
    assert summary.ranges_total == 4
    assert len(opened) == 2, opened


def test_a_source_failing_midway_through_the_relay_writes_nothing(pg_url: str, pg_target: str) -> None:
    """The relay reads libpq directly (tasks.db.relay.relay): a COPY that fails after its first blocks raises
    the server's error, the range's transaction writes nothing, and the connections serve the next step."""
    pg_exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                    "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    query = "SELECT id, v, 1 / (id - 15000) AS boom FROM t"  # division by zero at row 15,000 (~3 MB in)
    pg_exec(pg_target, "CREATE TABLE q (id int PRIMARY KEY, v text, boom int)")
    with shared_connections():
        # a DataError from the relay sends the range to the row path, which names the failed read
        with pytest.raises(SourceError, match="reading the source failed: division by zero"):
            copy_range(pg_url, pg_target, None, KeyRange(index=0), query=query, key="id", target_table="q",
                       mode="append")
        assert pg_exec(pg_target, "SELECT count(*) FROM q") == [(0,)]
        ok = "SELECT id, v, 1 AS boom FROM t"
        res = copy_range(pg_url, pg_target, None, KeyRange(index=0), query=ok, key="id", target_table="q",
                         mode="append")
        assert res.rows_written == 20000 and res.path == "copy-binary"
