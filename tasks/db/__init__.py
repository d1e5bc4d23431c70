"""Database migrations (PostgreSQL <-> SQLite): what the flows and other packages may use.

See tasks.db.plan for the building blocks and the module list; tasks.db.migrate holds db_migrate's range
tasks and phases, tasks.db.ledger the exactly-once range ledger, tasks.db.load_parts part files -> table.
"""

from tasks.db.conn import (
    Dialect,
    Endpoint,
    TableName,
    UrlLike,
    connect,
    parse_db_url,
    parse_key,
    parse_table_name,
    redacted_url,
    validate_identifier,
    validate_query,
)
from tasks.db.copier import MODES, CopyFormat, Mode, RangeResult, Transform, copy_range, read_range, resolve_transform
from tasks.db.deferred_key import key_builder
from tasks.db.incremental import (
    WATERMARK_TABLE,
    Deletes,
    IncrementalJob,
    clear_watermark,
    incremental_job,
    index_watermark,
    read_watermark,
    watermark_column,
)
from tasks.db.ledger import LEDGER_TABLE, LedgerEntry, ensure_ledger, ledger_table
from tasks.db.load_parts import count_rows, load_parts
from tasks.db.migrate import (
    PLAN_VERSION,
    CopyJob,
    MigrationSummary,
    RangeMismatch,
    copy_and_verify,
    fingerprint,
    planned_ranges,
    resolve_url,
    verify_only,
)
from tasks.db.physical import require_key, resume_note
from tasks.db.plan import MigrationPlan, TargetResult, create_target, plan_migration
from tasks.db.query_source import query_source
from tasks.db.schema import KeyRange, SourceSchema, plan_ranges, reflect
from tasks.db.session import shared_connections
from tasks.db.typemap import ColumnInfo
from tasks.db.verify import RangeCheck, verify_range, verify_ranges

__all__ = [
    "LEDGER_TABLE",
    "MODES",
    "PLAN_VERSION",
    "WATERMARK_TABLE",
    "ColumnInfo",
    "CopyFormat",
    "CopyJob",
    "Deletes",
    "Dialect",
    "Endpoint",
    "IncrementalJob",
    "KeyRange",
    "LedgerEntry",
    "MigrationPlan",
    "MigrationSummary",
    "Mode",
    "RangeCheck",
    "RangeMismatch",
    "RangeResult",
    "SourceSchema",
    "TableName",
    "TargetResult",
    "Transform",
    "UrlLike",
    "clear_watermark",
    "connect",
    "copy_and_verify",
    "copy_range",
    "count_rows",
    "create_target",
    "ensure_ledger",
    "fingerprint",
    "incremental_job",
    "index_watermark",
    "key_builder",
    "ledger_table",
    "load_parts",
    "parse_db_url",
    "parse_key",
    "parse_table_name",
    "plan_migration",
    "plan_ranges",
    "planned_ranges",
    "query_source",
    "read_range",
    "read_watermark",
    "redacted_url",
    "reflect",
    "require_key",
    "resolve_transform",
    "resolve_url",
    "resume_note",
    "shared_connections",
    "validate_identifier",
    "validate_query",
    "verify_only",
    "verify_range",
    "verify_ranges",
    "watermark_column",
]
