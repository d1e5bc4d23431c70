"""tasks/files/chunks.py: check_plan refuses before any work what every chunk would fail on."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tasks.core.errors import ConfigError
from tasks.files.chunks import check_plan
from tasks.files.process import TransformError, resolve_inputs


def _plan(src: Path, transform: object = None, **kwargs: object) -> object:
    return check_plan(resolve_inputs(str(src)), None, transform, partition_by=kwargs.pop("partition_by", []),
                      keep_lineage=False, **kwargs)


@pytest.mark.parametrize(("name", "text", "column"), [
    ("a.csv", "id,_line\n1,L-1\n", "_line"), ("a.csv", "id,_source_file,_raw\n1,x,y\n", "_source_file"),
    ("a.jsonl", '{"id":1,"_raw":"r"}\n', "_raw"), ("a.tsv", "id\t_reject_reason\n1\tr\n", "_reject_reason")])
def test_an_input_column_with_a_reserved_name_is_refused_naming_it_and_the_file(
        tmp_path: Path, name: str, text: str, column: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=rf"column '{column}' of {tmp_path / name} has a name .* rename it"):
        _plan(tmp_path / name)


def test_a_parquet_column_with_a_reserved_name_is_refused(tmp_path: Path) -> None:
    pl.DataFrame({"id": [1], "_line": [7]}).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(ConfigError, match=r"column '_line' of .*a\.parquet"):
        _plan(tmp_path / "a.parquet")


def test_columns_the_output_format_cannot_hold_are_refused(tmp_path: Path) -> None:
    pl.DataFrame({"id": [1], "tags": [["a", "b"]], "blob": [b"\x00\xff"]}).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(ConfigError, match=r"output_format 'csv' cannot hold column\(s\) 'tags' \(List\(String\)\), "
                                          r"'blob' \(Binary\); use output_format 'parquet'"):
        _plan(tmp_path / "a.parquet", output_format="csv")
    with pytest.raises(ConfigError, match=r"output_format 'jsonl' cannot hold column\(s\) 'blob' \(Binary\);"):
        _plan(tmp_path / "a.parquet", output_format="jsonl")
    _plan(tmp_path / "a.parquet", output_format="parquet")
    _plan(tmp_path / "a.parquet", "SELECT id, ARRAY_TO_STRING(tags, ',') AS tags FROM df", output_format="csv")
    _plan(tmp_path / "a.parquet", "SELECT id, tags FROM df", output_format="jsonl")


def typo_transform(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.with_column(pl.col("id"))  # type: ignore[attr-defined]  # the user's bug: with_columns


def test_a_transform_that_raises_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,amount\n1,2.5\n")
    with pytest.raises(TransformError, match=(
            r"transform 'tests.tasks.files.test_chunks:typo_transform' raised AttributeError: 'LazyFrame' object has "
            r"no attribute 'with_column' \(given df with columns \['id', 'amount'\]\); fix the transform")):
        _plan(tmp_path / "a.csv", "tests.tasks.files.test_chunks:typo_transform")
