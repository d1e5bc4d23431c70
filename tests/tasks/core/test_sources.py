from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from tasks.core.errors import ConfigError, SourceError
from tasks.core.loader import register_object
from tasks.core.sources import open_source


def write_jsonl(path: Path, rows: list[object]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def test_list_and_generator_sources() -> None:
    assert open_source([1, 2, 3]).total == 3
    gen = open_source(register_object(x for x in range(5)))
    assert gen.total is None
    assert list(gen) == [0, 1, 2, 3, 4]
    with pytest.raises(SourceError, match="already consumed"):
        list(gen)


def test_import_path_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BF_N", "7")
    assert list(open_source("tests.handlers:numbers")) == list(range(7))


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz"])
def test_jsonl_sources_count_and_stream(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, [{"id": i} for i in range(50)])
    src = open_source(str(path))
    assert src.total == 50
    assert [r["id"] for r in src] == list(range(50))


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.jsonl"
    with gzip.open(path, "wt") as fh:
        fh.write('{"a": 1}\n')
    assert list(open_source(str(path))) == [{"a": 1}]


def test_malformed_jsonl_line_is_reported_with_its_number_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:3: malformed JSON"):
        open_source(str(path))


def test_csv_and_tsv_sources(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name"])
        w.writerow([1, "a,b"])
        w.writerow([2, "multi\nline"])
    assert list(open_source(str(path))) == [{"id": "1", "name": "a,b"}, {"id": "2", "name": "multi\nline"}]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("id\tname\n1\tx\n")
    assert list(open_source(str(tsv))) == [{"id": "1", "name": "x"}]


def test_ragged_csv_row_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("id,name\n1,a\n2,b,extra\n")
    with pytest.raises(SourceError, match=r"ragged.csv:3: 3 fields where the header has 2"):
        open_source(str(path))


def test_parquet_source(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pl.DataFrame({"id": list(range(20)), "v": [f"v{i}" for i in range(20)]}).write_parquet(path, row_group_size=5)
    src = open_source(str(path))
    assert src.total == 20
    assert [r["id"] for r in src] == list(range(20))


def test_missing_file_and_unknown_format_and_bad_import_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        open_source(str(tmp_path / "data.xml"))
    with pytest.raises(ConfigError, match="cannot be imported"):
        open_source("no_such_pkg.mod:fn")
    with pytest.raises(ConfigError, match="not found in"):
        open_source("tests.handlers:no_such_fn")
    with pytest.raises(ConfigError, match="not a source of items"):
        open_source(register_object(42))
