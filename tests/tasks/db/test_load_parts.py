"""tasks/db/load_parts.py: one part file = one transaction (upsert on the key) in PostgreSQL, SQLite and
MySQL/MariaDB; a retried part never duplicates rows and the values arrive as they were in the part."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tasks.db.conn import connect
from tasks.db.load_parts import count_rows, load_part


@pytest.fixture(params=["pg", "sqlite", "mysql"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'l.db'}"
    return str(request.getfixturevalue("pg_url" if request.param == "pg" else "mysql_url"))


def test_a_retried_part_never_duplicates_rows(tmp_path: Path, target_url: str) -> None:
    part = tmp_path / "part-00000.parquet"
    pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "ü"], "amount": [1.5, None, 3.0]}).write_parquet(part)
    assert load_part(part, 0, target_url, "loaded", "id").succeeded == 3
    assert load_part(part, 0, target_url, "loaded", "id").succeeded == 3  # a retried part
    assert count_rows(target_url, "loaded") == 3


def test_values_arrive_as_they_were_and_a_changed_part_updates(tmp_path: Path, target_url: str) -> None:
    part = tmp_path / "part-00001.parquet"
    when = dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    frame = pl.DataFrame({
        "code": ["A-1", "Basic monthly"], "n": [2**40, None], "ok": [True, False],
        "day": [dt.date(2026, 1, 31), None], "at": [when, None],
        "price": pl.Series([Decimal("12.34"), Decimal("-0.01")], dtype=pl.Decimal(10, 2)),
        "note": ["", None],
    })
    frame.write_parquet(part)
    assert load_part(part, 1, target_url, "typed", "code").succeeded == 2
    frame.with_columns(pl.col("n").fill_null(7)).write_parquet(part)
    assert load_part(part, 1, target_url, "typed", "code").succeeded == 2
    with connect(target_url, "target") as db:
        rows = db.all(f"SELECT {', '.join(db.q(c) for c in frame.columns)} FROM {db.q('typed')} "
                      f"ORDER BY {db.q('code')}")
    assert [r[0] for r in rows] == ["A-1", "Basic monthly"]
    assert [r[1] for r in rows] == [2**40, 7]
    assert [bool(r[2]) for r in rows] == [True, False]
    assert str(rows[0][3]) == "2026-01-31" and rows[1][3] is None
    assert str(rows[0][4]).startswith("2026-03-01") and "12:30:15.123456" in str(rows[0][4])
    assert [Decimal(str(r[5])) for r in rows] == [Decimal("12.34"), Decimal("-0.01")]
    assert rows[0][6] == "" and rows[1][6] is None
