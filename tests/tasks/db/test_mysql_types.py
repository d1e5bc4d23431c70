"""tasks/db/mysql_types.py: the DDL of created MySQL/MariaDB tables. A key's text columns share InnoDB's
3072-byte key (4 bytes a utf8mb4 character) with its other columns, so every created key fits; a key that
cannot fit is a ConfigError naming the table and its columns. Each DDL runs on the real server."""

from __future__ import annotations

import re

import pytest

from tasks.core import ConfigError
from tasks.db.conn import TableName
from tasks.db.mysql_types import create_table_mysql, mysql_type
from tasks.db.typemap import ColumnInfo
from tests.tasks.db.test_mysql import my_exec


def col(name: str, kind: str, **more: object) -> ColumnInfo:
    return ColumnInfo(name=name, kind=kind, **more)  # type: ignore[arg-type]


def types_of(ddl: str) -> dict[str, str]:
    return dict(re.findall(r"^  `([^`]+)` (\S+?)(?: |,?$)", ddl, re.M))


CASES = [  # (key columns, the types they get)
    ([col("a", "bigint"), col("b", "text")], {"a": "BIGINT", "b": "VARCHAR(766)"}),
    ([col("b", "text"), col("c", "text")], {"b": "VARCHAR(384)", "c": "VARCHAR(384)"}),
    ([col("a", "varchar", length=20), col("b", "text"), col("c", "char", length=2000), col("u", "uuid")],
     {"a": "VARCHAR(20)", "b": "VARCHAR(356)", "c": "VARCHAR(356)", "u": "CHAR(36)"}),
    ([col("t", "timestamptz"), col("n", "numeric", precision=65, scale=30), col("b", "varchar", length=5000)],
     {"t": "DATETIME(6)", "n": "DECIMAL(65,30)", "b": "VARCHAR(758)"}),
    # MySQL -> MySQL: a latin1 VARCHAR(1000) key is 4000 bytes in utf8mb4; a CHAR(n) stays CHAR
    ([col("a", "integer", declared="mysql:int(11)"), col("b", "varchar", length=1000, declared="mysql:varchar(1000)"),
      col("c", "char", length=10, declared="mysql:char(10)")],
     {"a": "int(11)", "b": "VARCHAR(757)", "c": "CHAR(10)"}),
    ([col("b", "text")], {"b": "VARCHAR(768)"}),
]


@pytest.mark.parametrize(("key_cols", "expected"), CASES)
def test_text_key_columns_share_the_3072_byte_key_and_the_server_takes_it(
        key_cols: list[ColumnInfo], expected: dict[str, str], mysql_url: str) -> None:
    columns = [*key_cols, col("v", "text")]
    ddl = create_table_mysql(columns, [c.name for c in key_cols], TableName(name="k"))
    assert {n: t for n, t in types_of(ddl).items() if n != "v"} == expected, ddl
    assert types_of(ddl)["v"] == "LONGTEXT"  # only key columns are limited
    my_exec(mysql_url, ddl)  # InnoDB takes the key (it refused VARCHAR(768) beside a BIGINT)
    assert my_exec(mysql_url, "SELECT count(*) FROM information_schema.STATISTICS WHERE TABLE_NAME = 'k' AND "
                              "INDEX_NAME = 'PRIMARY' AND TABLE_SCHEMA = DATABASE()")[0][0] == len(key_cols)


def test_a_char_key_keeps_its_tag_and_a_lone_text_key_gets_the_whole_key() -> None:
    assert mysql_type(col("c", "char", length=10), is_key=True) == "VARCHAR(10) COMMENT 'batchflows:char'"
    assert mysql_type(col("b", "text"), is_key=True) == "VARCHAR(768)"
    assert mysql_type(col("b", "text")) == "LONGTEXT"


def test_a_key_that_cannot_fit_is_a_config_error_naming_table_and_columns() -> None:
    uuids = [col(f"u{i}", "uuid") for i in range(22)]  # 22 x CHAR(36) x 4 bytes = 3168 > 3072
    with pytest.raises(ConfigError, match=r"the key \('u0', 'u1', .*'u21'\) of public.wide cannot be a "
                                          r"MySQL/MariaDB primary key.*3072 bytes.*Create the target table yourself"):
        create_table_mysql(uuids, [c.name for c in uuids], TableName(schema_name="public", name="wide"))
    texts = [col("n", "bigint")] + [col(f"t{i}", "text") for i in range(800)]
    with pytest.raises(ConfigError, match="of t cannot be"):
        create_table_mysql(texts, [c.name for c in texts], TableName(name="t"))
