"""A PostgreSQL table db_migrate creates for an append gets its primary key after the load
(tasks.db.deferred_key), against real PostgreSQL 15: the mark, who builds the key, duplicates, odd names."""

from __future__ import annotations

import pytest

from tasks.core import ConfigError
from tasks.db import copy_range, create_target, key_builder, parse_table_name, plan_migration, plan_ranges
from tasks.db.deferred_key import pending_key
from tests.tasks.db.test_migration import CHUNK, pg_exec

PK = "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'"


def _has_key(url: str, table: str) -> bool:
    return pg_exec(url, PK, (table,)) == [(1,)]


def test_the_key_is_built_after_the_load_by_its_run(pg_items: str, pg_target: str) -> None:
    made = create_target(pg_items, pg_target, "items", defer_key="run-a")
    assert made.created and made.key_deferred and 'ADD PRIMARY KEY ("id")' in made.ddl
    assert not _has_key(pg_target, "items")
    assert pending_key(pg_target, parse_table_name("items")) == ("run-a", ["id"])
    assert pg_exec(pg_target, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'items'::regclass "
                              "AND attname = 'id'") == [(True,)]
    for r in plan_ranges(pg_items, "items", chunk_rows=CHUNK):
        copy_range(pg_items, pg_target, "items", r, mode="append")
    build = key_builder(pg_target, parse_table_name("items"), "run-a", created=False, key=["id"])
    assert build is not None and not _has_key(pg_target, "items")  # the same run (a rerun): after its load
    assert build() >= 0
    assert _has_key(pg_target, "items") and pending_key(pg_target, parse_table_name("items")) is None
    assert pg_exec(pg_target, "SELECT obj_description('items'::regclass, 'pg_class')") == [(None,)]


def test_another_run_builds_a_pending_key_before_it_writes(pg_items: str, pg_target: str) -> None:
    create_target(pg_items, pg_target, "items", defer_key="killed-run")
    first = plan_ranges(pg_items, "items", chunk_rows=CHUNK)[0]
    copy_range(pg_items, pg_target, "items", first, mode="append")  # then the run died
    assert key_builder(pg_target, parse_table_name("items"), "other-run", created=False, key=["id"]) is None
    assert _has_key(pg_target, "items")  # built at once: appending the same rows again now fails
    with pytest.raises(Exception, match="constraint"):
        copy_range(pg_items, pg_target, "items", first, mode="append")
    assert key_builder(pg_target, parse_table_name("items"), "other-run", created=False, key=["id"]) is None


def test_duplicate_rows_name_the_key_and_leave_the_mark(pg_items: str, pg_target: str) -> None:
    create_target(pg_items, pg_target, "items", defer_key="run-d")
    first = plan_ranges(pg_items, "items", chunk_rows=CHUNK)[0]
    for _ in range(2):  # appended twice without a ledger: only the key would have refused it
        copy_range(pg_items, pg_target, "items", first, mode="append")
    build = key_builder(pg_target, parse_table_name("items"), "run-d", created=False, key=["id"])
    assert build is not None
    with pytest.raises(ConfigError, match=r"primary key \['id'\], built after the load, cannot be added: key \[\d+\] "
                                          r"is there 2 times\. Remove the duplicate rows"):
        build()
    assert not _has_key(pg_target, "items") and pending_key(pg_target, parse_table_name("items")) is not None


def test_odd_names_and_the_dry_run(pg_url: str, pg_target: str) -> None:
    """A quoted name with a line break, a quote and a reserved word: the shown DDL's ``-- after the load``
    line is never run (it would end at the line break)."""
    pg_exec(pg_url, 'CREATE TABLE "we""ird\nname" ("select" int PRIMARY KEY, v text); '
                    'INSERT INTO "we""ird\nname" SELECT g, g::text FROM generate_series(1, 30) g')
    ref = '"we""ird\nname"'
    plan = plan_migration(pg_url, pg_target, ref, mode="append", chunk_rows=10)
    assert plan.ddl is not None and 'after the load: ALTER TABLE "we""ird\nname" ADD PRIMARY KEY ("select")' in plan.ddl
    assert "PRIMARY KEY" not in plan.ddl.split("-- after the load")[0]
    upsert = plan_migration(pg_url, pg_target, ref, mode="upsert", chunk_rows=10)
    assert upsert.ddl is not None and "after the load" not in upsert.ddl and 'PRIMARY KEY ("select")' in upsert.ddl
    create_target(pg_url, pg_target, ref, defer_key="r")
    for r in plan.ranges:
        copy_range(pg_url, pg_target, ref, r, mode="append")
    build = key_builder(pg_target, parse_table_name(ref), "r", created=True, key=["select"])
    assert build is not None
    build()
    assert _has_key(pg_target, 'public."we""ird\nname"')
    assert pg_exec(pg_target, f"SELECT count(*) FROM {ref}") == [(30,)]
