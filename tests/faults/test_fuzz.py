"""Bad inputs fuzzed with hypothesis: always a clear batchflows error naming the problem, never a deep traceback.

The up-front validation layer of every flow is fuzzed directly (fast, no flow run): each flow's parameter
model (the one declaration that the Prefect flow, the UI form and the Python function share), file_transform's
schema and inputs, db_migrate's table names and URLs, and item sources over random file contents. The only outcomes
allowed are success or a BatchflowsError (ConfigError, SourceError, ...) with a message; a KeyError,
TypeError, AttributeError or a library's own exception escaping is a failure showing the input.
A few end-to-end calls of the public functions close the file.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.api_bulk import ApiBulkParams, api_bulk
from flows.api_extract import ApiExtractParams
from flows.batch_map import BatchMapParams, batch_map
from flows.db_migrate import DbMigrateParams, db_migrate
from flows.file_transform import FileTransformParams, file_transform
from flows.replay import ReplayParams
from tasks.api.paginators import make_paginator
from tasks.core.errors import BatchflowsError, ConfigError, SourceError
from tasks.core.sources import open_source
from tasks.db.conn import parse_db_url, parse_table_name
from tasks.files.process import parse_schema, resolve_inputs

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "items; DROP TABLE x", '"a"."b"', "a.b.c.d", "ftp://x", "http://", "http://:0",
                     "http://h:99999/x", "postgresql://u:p@/db", "sqlite:///", "mem:nope", "pkg.mod:", ":fn", "é" * 300,
                     "../../etc/passwd", "{id", "{}", "{0}", "tcp://", "SELECT", "select * from t; delete from t"]),
)
anything = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**12), max_value=10**12),
              st.floats(allow_nan=True, allow_infinity=True), weird_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def clear_or_fine(fn: Callable[[], Any]) -> None:
    """Run ``fn``: success, or a BatchflowsError with a message; anything else fails with its input."""
    try:
        fn()
    except BatchflowsError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"


@FUZZ
@given(model=st.sampled_from([BatchMapParams, ReplayParams, FileTransformParams]), data=st.data())
def test_flow_parameters(model: Any, data: st.DataObject) -> None:
    params = data.draw(st.dictionaries(st.sampled_from(sorted(model.model_fields)), anything, max_size=4))
    clear_or_fine(lambda: model.parse(params))


@FUZZ
@given(base_url=weird_text, extra=st.dictionaries(st.sampled_from(sorted(ApiBulkParams.model_fields)), anything,
                                                   max_size=3))
def test_api_bulk_parameters(base_url: str, extra: dict[str, Any]) -> None:
    clear_or_fine(lambda: ApiBulkParams.parse({"items": [], "base_url": base_url, **extra}))


@FUZZ
@given(url=weird_text, paginator=st.one_of(st.sampled_from(["offset", "page", "cursor", "link_header"]), weird_text),
       options=st.dictionaries(st.sampled_from(["offset_param", "limit_param", "page_param", "size_param",
                                                "first_page", "cursor_param", "nope"]), anything, max_size=2),
       extra=st.dictionaries(st.sampled_from(sorted(ApiExtractParams.model_fields)), anything, max_size=3))
def test_api_extract_parameters(url: str, paginator: str, options: dict[str, Any], extra: dict[str, Any],
                                tmp_path: Path) -> None:
    params = {"output": str(tmp_path / "out"), **extra, "url": url, "paginator": paginator}
    clear_or_fine(lambda: ApiExtractParams.parse(params))
    clear_or_fine(lambda: make_paginator(paginator, page_size=10, cursor_path="next", **options))  # type: ignore[arg-type]


type_names = st.one_of(st.sampled_from(["int64", "float64", "str", "date", "datetime", "bool", "decimal(10,2)",
                                        "list[int]", "int", "INT64", "", "varchar(3)"]), weird_text)


@FUZZ
@given(st.one_of(anything, st.dictionaries(weird_text, type_names, max_size=4),
                 st.fixed_dictionaries({"columns": st.dictionaries(weird_text, type_names, max_size=3)},
                                       optional={"not_null": anything, "unique_key": anything})))
def test_file_transform_schemas(schema: Any) -> None:
    clear_or_fine(lambda: parse_schema(schema))


@FUZZ
@given(pattern=weird_text)
def test_file_transform_inputs(pattern: str, tmp_path: Path) -> None:
    clear_or_fine(lambda: resolve_inputs(pattern, output_dir=str(tmp_path / "out")))


@FUZZ
@given(table=st.one_of(st.none(), weird_text), query=st.one_of(st.none(), weird_text),
       target=st.one_of(st.none(), weird_text), key=st.one_of(st.none(), weird_text, st.lists(weird_text, max_size=3)),
       chunk_rows=st.integers(-5, 10**9), mode=st.one_of(st.sampled_from(["append", "upsert", "replace"]), weird_text),
       max_concurrency=st.integers(-2, 64), transform=anything)
def test_db_migrate_parameters(table: str | None, query: str | None, target: str | None, key: Any, chunk_rows: int,
                               mode: str, max_concurrency: int, transform: Any) -> None:
    clear_or_fine(lambda: DbMigrateParams.parse({
        "table": table, "query": query, "target_table": target, "key": key, "chunk_rows": chunk_rows, "mode": mode,
        "max_concurrency": max_concurrency, "transform": transform}))


@FUZZ
@given(st.one_of(weird_text, st.builds(lambda s, h, p, d: f"{s}://{h}{p}/{d}",
                                       st.sampled_from(["postgresql", "postgresql+psycopg", "sqlite", "mysql", "x"]),
                                       weird_text, st.sampled_from(["", ":5432", ":-1", ":abc"]), weird_text)))
def test_db_urls_and_table_names(text: str) -> None:
    clear_or_fine(lambda: parse_db_url(text))
    clear_or_fine(lambda: parse_table_name(text))


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
       suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".csv.gz", ".txt", ""]),
       gzipped=st.booleans())
def test_item_sources_over_random_file_contents(content: bytes, suffix: str, gzipped: bool, tmp_path: Path) -> None:
    path = tmp_path / f"items{suffix}"
    path.write_bytes(gzip.compress(content) if gzipped and suffix.endswith(".gz") else content)
    clear_or_fine(lambda: list(open_source(str(path))))


# --------------------------------------------------------------------------- end to end, public functions


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda tmp: batch_map([1, 2], "tests.handlers:double", chunk_size=0), ConfigError, "chunk_size"),
    (lambda tmp: batch_map(str(tmp / "missing.jsonl"), "tests.handlers:double"), SourceError, "missing.jsonl"),
    (lambda tmp: api_bulk([{"id": 1}], base_url="ftp://example.com"), ConfigError, "base_url"),
    (lambda tmp: file_transform(str(tmp / "nothing-*.csv"), tmp / "out"), SourceError, r"nothing-\*\.csv"),
    (lambda tmp: file_transform("é" * 300, tmp / "out"), SourceError, "cannot be read"),
    (lambda tmp: db_migrate(f"sqlite:///{tmp / 'a.db'}", f"sqlite:///{tmp / 'b.db'}", "items; DROP TABLE x"),
     ConfigError, "items; DROP TABLE x"),
    (lambda tmp: batch_map([1], "tests.handlers:double", max_concurrency=math.inf), ConfigError, "max_concurrency"),
])
def test_public_functions_refuse_bad_parameters_before_any_work(call: Callable[[Path], Any], error: type[Exception],
                                                                 match: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        call(tmp_path)
