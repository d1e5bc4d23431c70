"""Settings by concern, read from the environment (``BATCHFLOWS_*``) with pydantic-settings.

Each class is instantiated where it is used (``EngineSettings()``), so a changed environment variable
takes effect on the next run without a restart. A value a setting does not accept raises
:class:`~tasks.core.errors.SettingError` (a ConfigError, so it is never retried) naming the variable, its
value (masked for secrets) and the expected form, wherever the class is instantiated.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.errors import SettingError

if TYPE_CHECKING:
    from tasks.core.objstore import ObjectStore

_KINDS: dict[Any, str] = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
                          Path: "a path", SecretStr: "text"}
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


class _Settings(BaseSettings):
    """Base of the settings classes: a bad value is a SettingError naming its variable, not a ValidationError."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingError(_describe(type(self), exc, values)) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``: ``BATCHFLOWS_MEMORY_LIMIT_MB``."""
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def expected_form(field: FieldInfo) -> str:
    """What a setting accepts, in words: ``a whole number > 0 (default 1500)``."""
    kinds = [_KINDS.get(a, getattr(a, "__name__", str(a))) for a in typing.get_args(field.annotation) or
             (field.annotation,) if a is not type(None)]
    bounds = [f"{op} {getattr(m, attr)}" for m in field.metadata for attr, op in _BOUNDS
              if getattr(m, attr, None) is not None]
    default = "" if _is_secret(field) else f" (default {field.default})"
    return f"{' or '.join(dict.fromkeys(kinds))} {' and '.join(bounds)}".strip() + default


def _is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *typing.get_args(field.annotation))


def _describe(cls: type[_Settings], exc: ValidationError, given: dict[str, Any]) -> str:
    from tasks.core.redact import MASK, redact_text

    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        field = cls.model_fields.get(name)
        if field is None:
            parts.append(f"{cls.__name__}: {redact_text(str(err['msg']))}")
            continue
        value = MASK if _is_secret(field) else redact_text(repr(err.get("input")))
        where = f"{cls.__name__}({name}={value})" if name in given else f"{cls.env_name(name)}={value}"
        parts.append(f"{where} is not accepted: {redact_text(str(err['msg']))}; expected {expected_form(field)}")
    return "bad setting: " + "; ".join(parts)


class EngineSettings(_Settings):
    """The chunk engine: where state lives and the defaults of batch_map."""

    model_config = SettingsConfigDict(env_prefix="BATCHFLOWS_", extra="ignore")

    state_dir: Path | str | None = Field(None, description=(
        "Run records, journals, checkpoints and dead letters: a local path or s3://bucket/prefix (object storage "
        "shared by every machine). Default: <PREFECT_HOME>/batchflows (absolute, so every worker of this machine "
        "finds the same state whatever its working directory)."))
    state_cache: Path | None = Field(None, description=(
        "With state in object storage: this machine's working copy of it. Default: "
        "<PREFECT_HOME>/batchflows-cache/<hash of the URL>."))
    state_lease_s: float = Field(60.0, ge=3, description=(
        "With state in object storage: how long a run's lease on its run key lasts without renewal (renewed every "
        "third of it); a killed holder's key is taken over after this long."))
    state_journal_push_s: float = Field(5.0, ge=0, description=(
        "With state in object storage: push the item journals of chunks in flight this often (0: never); "
        "a run taken over on another machine repeats only the items finished since the last push."))
    concurrency_lease_s: float = Field(300.0, ge=60, description=(
        "Lease of a global concurrency slot a chunk holds (concurrency_limit), renewed while the chunk runs: a "
        "chunk whose process dies gives its slot back this long after the last renewal (Prefect's minimum: 60)."))
    chunk_size: int = Field(500, gt=0, description="Default items per chunk (batch_map, api_bulk).")
    max_concurrency: int = Field(4, gt=0, description="Default chunk tasks in flight (batch_map, replay).")
    memory_limit_mb: int = Field(
        1500, gt=0, description="Pause submitting new chunks while the flow process RSS is above this."
    )
    progress_interval_s: float = Field(1.0, gt=0, description="Minimum seconds between progress updates.")
    state_retention_days: int = Field(30, gt=0, description=(
        "Run directories not touched for this many days are removed by `python -m tasks.core.state cleanup`."))
    flow_retry_delay_s: float = Field(10.0, ge=0, description=(
        "Seconds before a run with flow_retries left runs again (times the attempt number)."))

    def state_url(self) -> str | None:
        """The object storage URL of the state, or None when it is a local directory."""
        from tasks.core.objstore import is_url

        return str(self.state_dir).rstrip("/") if is_url(self.state_dir) else None

    def object_store(self) -> ObjectStore | None:
        """The state's object store (checked reachable: a ConfigError naming the URL if not), or None."""
        from tasks.core.objstore import ObjectStore

        url = self.state_url()
        if url is None:
            return None
        store = ObjectStore.from_url(url)
        store.check()
        return store

    def resolved_state_dir(self) -> Path:
        """The state dir as an absolute path (see ``state_dir``); with object storage, this machine's cache."""
        url = self.state_url()
        if url is not None:
            from tasks.core.objstore import cache_dir

            return cache_dir(url, self.state_cache)
        if self.state_dir is not None:
            return Path(self.state_dir).expanduser().resolve()
        from prefect.settings import get_current_settings

        return (Path(get_current_settings().home).expanduser() / "batchflows").resolve()


class HttpSettings(_Settings):
    """HTTP clients of api_bulk / api_extract."""

    model_config = SettingsConfigDict(env_prefix="BATCHFLOWS_HTTP_", extra="ignore")

    timeout_s: float = Field(30.0, gt=0, description="Default total timeout of one request (api_bulk, api_extract).")
    connect_timeout_s: float = Field(10.0, gt=0, description="Timeout to open a connection.")
    token: SecretStr | None = Field(None, description="Bearer token used when no Secret block is named.")
    user_agent: str = Field("batchflows/0.1", description="User-Agent header sent with every request.")
    max_retry_after_s: float = Field(300.0, gt=0, description="Longest Retry-After honored before failing.")


class FileSettings(_Settings):
    """file_transform."""

    model_config = SettingsConfigDict(env_prefix="BATCHFLOWS_FILES_", extra="ignore")

    chunk_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Target bytes of input per chunk.")
    max_concurrency: int = Field(2, gt=0, description="Default file chunks in flight.")


class DbSettings(_Settings):
    """db_migrate. URLs may carry passwords: they are SecretStr and never logged."""

    model_config = SettingsConfigDict(env_prefix="BATCHFLOWS_DB_", extra="ignore")

    source_url: SecretStr | None = Field(None, description="Default source SQLAlchemy URL.")
    target_url: SecretStr | None = Field(None, description="Default target SQLAlchemy URL.")
    chunk_rows: int = Field(50_000, gt=0, description="Default rows per range.")
    connect_timeout_s: int = Field(10, gt=0, description="Seconds to wait for a connection.")
    columnar: bool = Field(True, description=(
        "MySQL/MariaDB and SQLite -> PostgreSQL without a transform: read ranges as Arrow columns and COPY them "
        "as CSV (tasks.db.columnar); false forces the row-by-row path."))


class NotifySettings(_Settings):
    """Notifications and metrics at the end of a run."""

    model_config = SettingsConfigDict(env_prefix="BATCHFLOWS_NOTIFY_", extra="ignore")

    webhook_url: SecretStr | None = Field(None, description="POST the run summary here when a run ends.")
    pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway (http://host:9091): run metrics are pushed when a run ends."
    )


__all__ = ["DbSettings", "EngineSettings", "FileSettings", "HttpSettings", "NotifySettings"]
