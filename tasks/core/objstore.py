"""Run state in object storage: ``BATCHFLOWS_STATE_DIR=s3://bucket/prefix``.

Machines of a cluster share no disk; they share object storage. The state of a run key lives under
``<prefix>/runs/<flow>/<run_key>/`` in the bucket, and every object there is written by **one PUT of the
finished bytes**: S3 has no rename, and a PUT is atomic (a reader sees the old object, the new one, or
none, never a part). A run works in a per-machine local cache (:func:`cache_dir`), pulls its run key's
prefix when it starts (after taking the lease, tasks.core.lease) and pushes each file at the point where
it becomes durable locally (tasks.core.state.RunDir.push).

Credentials and endpoint come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, profiles and
instance roles too: boto3's usual chain). A bad URL, an unreachable endpoint, missing credentials or a
missing bucket end in a :class:`ConfigError` naming the state URL and what to do; secret values are
never part of a message.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.core.errors import ConfigError, FatalError
from tasks.core.redact import redact_text, register_secret

SCHEMES = ("s3", "s3a")


class StateStoreError(FatalError):
    """Object storage refused or failed a state read or write in the middle of a run."""


class PreconditionFailed(Exception):
    """A conditional PUT lost: the object exists (If-None-Match) or changed (If-Match)."""


def is_url(value: str | os.PathLike[str] | None) -> bool:
    """Whether a state dir setting names object storage (``scheme://...``) rather than a local path."""
    return value is not None and "://" in str(value)


@dataclass(frozen=True)
class Obj:
    """One object as read: its bytes, ETag, last change and the server's clock when it answered."""

    data: bytes
    etag: str
    last_modified: datetime
    server_now: datetime


@dataclass
class ObjectStore:
    """A bucket and key prefix reached with boto3; keys below are relative to the prefix."""

    url: str
    bucket: str
    prefix: str
    role: str = "state dir"  # or "output": named in messages
    _client: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_url(cls, url: str, *, role: str = "state dir") -> ObjectStore:
        parts = urlsplit(url)
        shown = redact_text(url)
        if parts.scheme not in SCHEMES or not parts.netloc or "@" in parts.netloc:
            what = "BATCHFLOWS_STATE_DIR" if role == "state dir" else role
            msg = (f"{what} {shown!r} is not a URL batchflows can use: give a local path or "
                   "s3://bucket/prefix (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, "
                   "never from the URL; another endpoint from AWS_ENDPOINT_URL)")
            raise ConfigError(msg)
        if "?" in url or "#" in url:
            what = "BATCHFLOWS_STATE_DIR" if role == "state dir" else role
            msg = (f"{what} {shown!r} has a query string or fragment ('?...' or '#...'): it is not part of an S3 "
                   "key and would be dropped; give s3://bucket/prefix alone (credentials come from "
                   "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, never from the URL)")
            from tasks.core.stored_params import mask_run_parameters

            bare = url.partition("#")[0].partition("?")[0]
            mask_run_parameters({url: f"{bare}?***"}, what=what, secret="URL query")  # a flow parameter, maybe
            raise ConfigError(msg)
        return cls(url=shown.rstrip("/"), bucket=parts.netloc, prefix=parts.path.strip("/"), role=role)

    # ------------------------------------------------------------------ client and errors

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
        register_secret(os.environ.get("AWS_SESSION_TOKEN"))
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 4, "mode": "standard"},
                        max_pool_connections=32)
        session = boto3.session.Session()
        return session.client("s3", config=config, region_name=session.region_name or "us-east-1")

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def where(self, rel: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(rel)}" if rel else self.url

    def error(self, exc: BaseException, doing: str, *, at_start: bool = False) -> ConfigError | StateStoreError:
        """``exc`` from boto3 as a clear error naming the state URL and what to do (no secret in it)."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.role} {self.url!r}" + (" (BATCHFLOWS_STATE_DIR)" if self.role == "state dir" else "")
        endpoint = redact_text(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            what = (f"{where}: no AWS credentials found while {doing}; set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role) for every worker")
        elif isinstance(exc, EndpointConnectionError) or type(exc).__name__ in {
                "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}:
            what = (f"{where}: the object storage endpoint {endpoint} cannot be reached while {doing} "
                    f"({type(exc).__name__}); check AWS_ENDPOINT_URL and the network")
        elif isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in {"NoSuchBucket", "404"} or (status == 404 and doing.startswith("checking")):
                what = f"{where}: bucket {self.bucket!r} does not exist at {endpoint}; create it or fix the URL"
            elif code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}:
                what = (f"{where}: access denied while {doing} ({code}); check the credentials in "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may read, write and list "
                        f"s3://{self.bucket}/{self.prefix}")
            else:
                what = f"{where}: object storage answered {code or status} while {doing}"
        else:
            what = f"{where}: {type(exc).__name__} while {doing}: {exc}"
        what = redact_text(what)
        if at_start:
            return ConfigError(what + ". Nothing was run")
        return StateStoreError(what + ". The run stopped; rerun with the same run_key once storage is back")

    def check(self) -> None:
        """Prove the bucket is reachable with these credentials (a ConfigError before any work)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self.error(exc, "checking the bucket", at_start=True) from None

    # ------------------------------------------------------------------ objects

    def put(self, rel: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """One PUT of the finished bytes; returns the new ETag. PreconditionFailed when a condition loses."""
        from botocore.exceptions import ClientError

        extra: dict[str, str] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data, **extra)
        except ClientError as exc:
            if _code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                raise PreconditionFailed(rel) from None
            raise self.error(exc, f"writing {self.where(rel)}") from None
        except Exception as exc:
            raise self.error(exc, f"writing {self.where(rel)}") from None
        return str(answer["ETag"])

    def get(self, rel: str) -> Obj | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
            data = answer["Body"].read()
        except ClientError as exc:
            if _code(exc) in {"NoSuchKey", "404"}:
                return None
            raise self.error(exc, f"reading {self.where(rel)}") from None
        except Exception as exc:
            raise self.error(exc, f"reading {self.where(rel)}") from None
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else answer["LastModified"]
        return Obj(data=data, etag=str(answer["ETag"]), last_modified=answer["LastModified"], server_now=now)

    def delete(self, rel: str, *, if_match: str | None = None) -> None:
        from botocore.exceptions import ClientError

        extra = {"IfMatch": if_match} if if_match is not None else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel), **extra)
        except ClientError as exc:
            if _code(exc) in {"PreconditionFailed", "412"}:
                raise PreconditionFailed(rel) from None
            if _code(exc) not in {"NoSuchKey", "404"}:
                raise self.error(exc, f"deleting {self.where(rel)}") from None
        except Exception as exc:
            raise self.error(exc, f"deleting {self.where(rel)}") from None

    def list(self, rel_prefix: str) -> dict[str, str]:
        """Keys (relative to ``rel_prefix``) under ``rel_prefix/`` with their ETags."""
        return {name: etag for name, (etag, _) in self.entries(rel_prefix).items()}

    def entries(self, rel_prefix: str) -> dict[str, tuple[str, datetime]]:
        """Keys (relative to ``rel_prefix``) under ``rel_prefix/`` with their ETags and last changes."""
        rel = rel_prefix.strip("/")
        base = self.key(rel) + "/" if rel else (f"{self.prefix}/" if self.prefix else "")
        found: dict[str, tuple[str, datetime]] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for entry in page.get("Contents", []):
                    found[entry["Key"][len(base):]] = (str(entry["ETag"]), entry["LastModified"])
        except Exception as exc:
            raise self.error(exc, f"listing {self.where(rel_prefix)}") from None
        return found

    def delete_many(self, rels: list[str]) -> None:
        """Delete objects, 1,000 per request."""
        for start in range(0, len(rels), 1000):
            batch = [{"Key": self.key(rel)} for rel in rels[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self.error(exc, f"deleting under {self.where(rels[start].rsplit('/', 1)[0])}") from None

    # ------------------------------------------------------------------ files

    def push_file(self, path: Path, rel: str) -> str | None:
        """PUT a finished local file as object ``rel`` (one request); None when the file is gone."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return self.put(rel, data)

    def pull(self, rel_prefix: str, local: Path, *, skip: tuple[str, ...] = (), keep: tuple[str, ...] = ()
             ) -> dict[str, str]:
        """Download every object under ``rel_prefix/`` into ``local`` (same relative paths, each written
        atomically, 16 at a time); names starting with one of ``skip`` are left out, and so are files this
        machine already holds with the same bytes (their MD5 is the object's ETag) and, for names starting
        with one of ``keep``, files it holds at all. Returns the objects (name -> ETag)."""
        from concurrent.futures import ThreadPoolExecutor

        listed = {name: etag for name, etag in self.list(rel_prefix).items()
                  if name and not name.startswith(skip) and ".." not in Path(name).parts}
        wanted = [name for name, etag in listed.items() if _md5_etag(local / name) != etag.strip('"')
                  and not (name.startswith(keep) and (local / name).exists())]
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="batchflows-pull") as pool:
            list(pool.map(lambda name: self._fetch(f"{rel_prefix.strip('/')}/{name}", local / name), wanted))
        return listed

    def _fetch(self, rel: str, path: Path) -> None:
        from tasks.core.state import atomic_write

        obj = self.get(rel)
        if obj is None:  # deleted between the listing and the read
            return
        with atomic_write(path, "wb") as fh:
            fh.write(obj.data)


def _md5_etag(path: Path) -> str | None:
    try:
        return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    except OSError:
        return None


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def cache_dir(url: str, configured: Path | None = None) -> Path:
    """This machine's working copy of the state at ``url``: ``BATCHFLOWS_STATE_CACHE`` or
    ``<PREFECT_HOME>/batchflows-cache/<hash of the URL>`` (absolute)."""
    if configured is not None:
        return configured.expanduser().resolve()
    from prefect.settings import get_current_settings

    digest = hashlib.blake2b(url.rstrip("/").encode(), digest_size=8).hexdigest()
    return (Path(get_current_settings().home).expanduser() / "batchflows-cache" / digest).resolve()


__all__ = ["SCHEMES", "Obj", "ObjectStore", "PreconditionFailed", "StateStoreError", "cache_dir", "is_url"]
