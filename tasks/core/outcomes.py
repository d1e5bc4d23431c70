"""Item outcomes, chunk reports, the run summary, and the dead-letter file.

Every item ends as succeeded, failed or skipped. Chunk tasks return a small :class:`ChunkReport`
(counts plus the failed items); the flow folds reports into a :class:`RunSummary` and appends the
failures to ``dead_letter.jsonl``. Invariant: ``succeeded + failed + skipped == total``.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_serializer

from tasks.core.errors import ConfigError, SourceError
from tasks.core.exactjson import JsonNumber, dumps_exact, jsonable
from tasks.core.redact import redact_text
from tasks.core.sources import jsonl_records

Status = Literal["succeeded", "failed", "skipped"]
MAX_MESSAGE_CHARS = 2000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class FailedItem(BaseModel):
    """One failed item as it goes to the dead-letter file.

    ``item`` is the user's item exactly as it came from the source (replay feeds it back as it is);
    ``message`` is what batchflows writes *about* it, so credentials are masked there.
    """

    item: Any
    chunk: int
    position: int = Field(description="Index of the item inside its chunk.")
    attempts: int
    error_type: str
    message: str
    category: str
    status: int | None = Field(None, description="HTTP status of the last answer (API flows), if there was one.")
    time: str = Field(default_factory=_now)

    @classmethod
    def from_exception(cls, item: Any, exc: BaseException, *, chunk: int, position: int, attempts: int) -> FailedItem:
        status = getattr(exc, "status", None)
        return cls(
            item=item,
            chunk=chunk,
            position=position,
            attempts=attempts,
            error_type=type(exc).__name__,
            message=redact_text(str(exc) or repr(exc))[:MAX_MESSAGE_CHARS],
            category=str(getattr(exc, "category", None) or _category_of(exc)),
            status=status if isinstance(status, int) else None,
        )


def _category_of(exc: BaseException) -> str:
    from tasks.core.errors import FatalError, ItemError, RetryableError

    if isinstance(exc, FatalError):
        return "fatal"
    if isinstance(exc, RetryableError):
        return "retries_exhausted"
    if isinstance(exc, ItemError):
        return "item_error"
    return "exception"


class ChunkReport(BaseModel):
    """What one chunk task returns: small, JSON-able, cached by Prefect for resume.

    ``content_hash`` is the chunk's content when it ran: a rerun compares it with what the source
    holds at that position now. A report with ``complete=False`` (a fatal error stopped the chunk;
    ``not_reached`` items were never attempted) is not a finished chunk: the run drops its record,
    so a rerun runs the chunk again and its journal skips what was done.
    """

    index: int
    size: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    not_reached: int = 0
    failures: list[FailedItem] = Field(default_factory=list)
    duration_s: float = 0.0
    output_path: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="Flow-specific counters.")
    resumed: bool = False
    content_hash: str = ""
    complete: bool = True
    stop_reason: str | None = Field(None, description="The fatal error that stopped the chunk (redacted).")

    def check(self) -> None:
        total = self.succeeded + self.failed + self.skipped + self.not_reached
        if total != self.size:
            msg = f"chunk {self.index}: {total} outcomes for {self.size} items (lost items); this is a bug"
            raise AssertionError(msg)


class ChunkTiming(BaseModel):
    index: int
    size: int
    duration_s: float


class ErrorSummary(BaseModel):
    error_type: str
    category: str
    count: int
    example: str


class RunSummary(BaseModel):
    """The result of a run, returned by every flow and shown as the final artifact."""

    flow: str
    run_key: str
    flow_run_id: str | None = None
    state: Literal["Completed", "Failed", "Cancelled"] = "Completed"
    message: str = ""
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    remaining: int | None = Field(
        0, description="Input items never reached because the run stopped early (None: unknown)."
    )
    chunks_total: int = 0
    chunks_resumed: int = 0
    chunks_failed: int = 0
    duration_s: float = 0.0
    items_per_second: float = 0.0
    dead_letter_path: str | None = None
    output_path: str | None = None
    run_dir: str | None = Field(None, description="This run's state: records, journals, dead letters, summary.")
    top_errors: list[ErrorSummary] = Field(default_factory=list)
    slowest_chunks: list[ChunkTiming] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)
    _collected: list[Any] | None = PrivateAttr(default=None)

    @field_serializer("output_path", "dead_letter_path", "run_dir", "message")
    def _shown_text(self, value: str | None) -> str | None:
        """summary.json and every dump say where things are without a credential a URL may carry."""
        return None if value is None else redact_text(value)

    @field_serializer("extra")
    def _shown_extra(self, value: dict[str, Any]) -> dict[str, Any]:
        return {k: redact_text(v) if isinstance(v, str) else v for k, v in value.items()}

    @property
    def ok(self) -> bool:
        return self.state == "Completed"

    def results(self) -> Iterator[Any]:
        """The output rows of this run in input order, read lazily part by part (resumed chunks included).

        Rows are as written: ``{"item", "result"}`` for batch_map, one row per call for api_bulk, the
        records for api_extract, the transformed rows for file_transform. A run without ``output`` raises
        ConfigError saying how to keep results."""
        from tasks.core.results import iter_results

        return iter_results(self.output_path, flow=self.flow, chunks_total=self.chunks_total)

    def dead_letters(self) -> Iterator[dict[str, Any]]:
        """This run's dead-letter records (``item`` exactly as it came, ``error``, ``category``, ``attempts``)."""
        path = self.dead_letter_path
        if not path or (self.failed == 0 and not Path(path).is_file()):
            return iter(())
        return read_dead_letters(path)

    def rejects(self) -> Iterator[dict[str, Any]]:
        """file_transform's rejected rows, each field as the text it was, with ``_reject_reason``."""
        from tasks.core.results import iter_rejects

        return iter_rejects(self.output_path, flow=self.flow)

    @property
    def collected(self) -> list[Any]:
        """The rows of a run called from Python with ``collect=True`` (same rows as :meth:`results`)."""
        if self._collected is None:
            msg = (f"this {self.flow} run was not called with collect=True: pass collect=True (small runs) or "
                   "iterate summary.results() over a run with output=<folder>")
            raise ConfigError(msg)
        return self._collected

    @property
    def success_ratio(self) -> float:
        attempted = self.succeeded + self.failed
        return 1.0 if attempted == 0 else self.succeeded / attempted

    def counts_line(self) -> str:
        rem = "" if self.remaining == 0 else f", {self.remaining if self.remaining is not None else 'unknown'} not reached"
        return (
            f"{self.total} items: {self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped{rem}"
            f" in {self.chunks_total} chunks ({self.chunks_resumed} resumed) in {self.duration_s:.1f}s"
            f" ({self.items_per_second:,.0f} items/s)"
        )

    def render_text(self) -> str:
        """A plain-text report for terminals and logs."""
        counts = self.counts_line()
        reason = redact_text(self.message.replace(counts, "").strip())
        lines = [f"{self.flow} run {self.run_key!r}: {self.state}" + (f" - {reason}" if reason else ""), f"  {counts}"]
        if self.output_path:
            lines.append(f"  output:       {redact_text(self.output_path)}")
        if self.dead_letter_path and self.failed:
            lines.append(f"  dead letters: {redact_text(self.dead_letter_path)}")
        if self.run_dir:
            lines.append(f"  state:        {redact_text(self.run_dir)}")
        for key, value in self.extra.items():
            lines.append(f"  {key}: {redact_text(str(value))}")
        if self.top_errors:
            lines.append("  top errors:")
            lines.extend(f"    {e.count:>7} x {e.error_type} [{e.category}]: {e.example}" for e in self.top_errors)
        if self.slowest_chunks:
            slow = ", ".join(f"#{c.index} {c.duration_s:.2f}s" for c in self.slowest_chunks)
            lines.append(f"  slowest chunks: {slow}")
        return "\n".join(lines)


class SummaryBuilder:
    """Folds chunk reports into a RunSummary without keeping the reports (bounded memory)."""

    def __init__(self, flow: str, run_key: str, *, top_n: int = 5) -> None:
        self.summary = RunSummary(flow=flow, run_key=run_key)
        self._errors: Counter[tuple[str, str]] = Counter()
        self._examples: dict[tuple[str, str], str] = {}
        self._slowest: list[ChunkTiming] = []
        self._top_n = top_n
        self.not_reached = 0  # items inside chunks that a fatal error stopped before they ran

    def add(self, report: ChunkReport) -> None:
        s = self.summary
        s.total += report.size - report.not_reached
        self.not_reached += report.not_reached
        s.succeeded += report.succeeded
        s.failed += report.failed
        s.skipped += report.skipped
        s.chunks_total += 1
        s.chunks_resumed += int(report.resumed)
        for key, value in report.extra.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                s.extra[key] = s.extra.get(key, 0) + value
        for failure in report.failures:
            key = (failure.error_type, failure.category)
            self._errors[key] += 1
            self._examples.setdefault(key, failure.message[:300])
        if not report.resumed:
            self._slowest.append(ChunkTiming(index=report.index, size=report.size, duration_s=report.duration_s))
            self._slowest = sorted(self._slowest, key=lambda c: c.duration_s, reverse=True)[: self._top_n]

    def add_failed_chunk(self, index: int, size: int, failures: list[FailedItem]) -> None:
        self.add(ChunkReport(index=index, size=size, failed=size, failures=failures))
        self.summary.chunks_failed += 1

    def finish(self, duration_s: float) -> RunSummary:
        s = self.summary
        s.duration_s = round(duration_s, 3)
        processed = s.total
        s.items_per_second = round(processed / duration_s, 1) if duration_s > 0 else 0.0
        s.top_errors = [
            ErrorSummary(error_type=k[0], category=k[1], count=n, example=self._examples[k])
            for k, n in self._errors.most_common(self._top_n)
        ]
        s.slowest_chunks = list(self._slowest)
        if s.succeeded + s.failed + s.skipped != s.total:  # pragma: no cover - guarded by ChunkReport.check
            msg = f"summary counts do not add up: {s.counts_line()}"
            raise AssertionError(msg)
        return s


class DeadLetterWriter:
    """Appends failed items to a JSONL file, one line each, flushed per chunk."""

    def __init__(self, path: Path, *, flow: str, run_key: str, handler: str | None) -> None:
        self.path = path
        self.count = 0
        self._context = {"flow": flow, "run_key": run_key, "handler": handler}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("w", encoding="utf-8")

    def write(self, failures: Iterable[FailedItem]) -> None:
        for failure in failures:
            # the item as it came (NaN stays NaN, 12.50 read from a JSON-lines file stays 12.50): not through
            # pydantic's JSON mode, which writes a non-finite float as null
            record = {"item": failure.item, **failure.model_dump(mode="json", exclude={"item"}), **self._context}
            try:
                line = dumps_exact(record, jsonable)
            except (TypeError, ValueError, RecursionError) as exc:  # a non-str or tuple dict key, a cycle: not JSON
                record["item"] = repr(failure.item)
                record["item_written_as"] = f"repr: the item is not JSON ({type(exc).__name__}: {exc})"
                line = dumps_exact(record, jsonable)
            else:
                typed = typed_form(failure.item)
                if typed is not None:  # a Decimal, date, tuple...: "item" shows it, "item_typed" gives it back
                    line = dumps_exact({"item": record.pop("item"), "item_typed": typed, **record}, jsonable)
            self._fh.write(line + "\n")
            self.count += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)


def read_dead_letters(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a dead-letter file (``~`` expanded); a malformed line is a SourceError with its line
    number."""
    p = Path(path).expanduser()
    if not p.is_file():
        msg = f"dead-letter file {str(p)!r} does not exist; it is written only when a run has failed items"
        raise SourceError(msg)
    with p.open(encoding="utf-8") as fh:
        for lineno, record in jsonl_records(fh, str(p)):
            if not isinstance(record, dict) or "item" not in record:
                msg = f"{p}:{lineno}: not a dead-letter record (no 'item' key)"
                raise SourceError(msg)
            if "item_typed" in record:
                try:
                    record["item"] = from_typed(record.pop("item_typed"))
                except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
                    msg = f"{p}:{lineno}: 'item_typed' is not a typed item ({type(exc).__name__}: {exc})"
                    raise SourceError(msg) from None
            yield record


# --------------------------------------------------------------------------- the items' typed form

class _Untyped(Exception):
    """The item holds a value outside the typed form's closed set: it gets no typed form."""


def typed_form(item: Any) -> Any | None:
    """The item as JSON that keeps the types JSON has none for, or None when it needs none (plain JSON) or holds a
    value outside the closed set (a model, a path: written as :func:`tasks.core.exactjson.jsonable` makes it).

    Closed set, nested anywhere: ``Decimal``, ``datetime`` (naive or aware; a ``ZoneInfo`` zone by its key),
    ``date``, ``time``, ``timedelta``, ``UUID``, ``bytes``, ``bytearray``, ``tuple``, ``set``, ``frozenset``, each as an object
    with one ``$`` key (``{"$decimal": "15.50"}``); a dict of the item with a key starting with ``$`` is wrapped
    as ``{"$dict": {...}}``, so nothing of the item reads as a tag. Only JSON and these tags: reading it runs no
    code (no pickle)."""
    tagged = [False]
    try:
        typed = _to_typed(item, tagged)
    except (_Untyped, RecursionError):
        return None
    return typed if tagged[0] else None


def _to_typed(value: Any, tagged: list[bool]) -> Any:
    if value is None or isinstance(value, str | int | float | JsonNumber):
        return value  # bool, int, float and str subclasses (JsonFloat, enums of them) write as their values
    if isinstance(value, list):
        return [_to_typed(v, tagged) for v in value]
    if isinstance(value, dict):
        inner = {k: _to_typed(v, tagged) for k, v in value.items()}
        return {"$dict": inner} if any(k.startswith("$") for k in inner) else inner
    if type(value) is tuple:
        tagged[0] = True
        return {"$tuple": [_to_typed(v, tagged) for v in value]}
    if type(value) in (set, frozenset):
        tagged[0] = True
        return {f"${type(value).__name__}": [_to_typed(v, tagged) for v in value]}
    encode = _SCALARS.get(type(value))
    if encode is None or (type(value) is dt.time and not isinstance(value.tzinfo, dt.timezone | None)):
        raise _Untyped  # a time's ZoneInfo has no offset without a date: it would come back naive
    tagged[0] = True
    return encode(value)


def _datetime_typed(value: dt.datetime) -> dict[str, Any]:
    typed: dict[str, Any] = {"$datetime": value.isoformat()}
    if isinstance(value.tzinfo, zoneinfo.ZoneInfo) and value.tzinfo.key:
        typed["zone"] = value.tzinfo.key
    if value.fold:
        typed["fold"] = 1
    return typed


_SCALARS: dict[type, Callable[[Any], dict[str, Any]]] = {
    Decimal: lambda v: {"$decimal": str(v)},
    dt.datetime: _datetime_typed,
    dt.date: lambda v: {"$date": v.isoformat()},
    dt.time: lambda v: {"$time": v.isoformat()},
    dt.timedelta: lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    uuid.UUID: lambda v: {"$uuid": str(v)},
    bytes: lambda v: {"$bytes": base64.b64encode(v).decode()},
    bytearray: lambda v: {"$bytearray": base64.b64encode(v).decode()},
}


def _datetime_of(typed: dict[str, Any]) -> dt.datetime:
    value = dt.datetime.fromisoformat(typed["$datetime"])
    if "zone" in typed:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(typed["zone"]))
    return value.replace(fold=1) if typed.get("fold") else value


_DECODE: dict[str, Callable[[Any], Any]] = {
    "$decimal": lambda v: Decimal(v["$decimal"]),
    "$datetime": _datetime_of,
    "$date": lambda v: dt.date.fromisoformat(v["$date"]),
    "$time": lambda v: dt.time.fromisoformat(v["$time"]),
    "$timedelta": lambda v: dt.timedelta(*v["$timedelta"]),
    "$uuid": lambda v: uuid.UUID(v["$uuid"]),
    "$bytes": lambda v: base64.b64decode(v["$bytes"], validate=True),
    "$bytearray": lambda v: bytearray(base64.b64decode(v["$bytearray"], validate=True)),
    "$tuple": lambda v: tuple(from_typed(x) for x in v["$tuple"]),
    "$set": lambda v: {from_typed(x) for x in v["$set"]},
    "$frozenset": lambda v: frozenset(from_typed(x) for x in v["$frozenset"]),
    "$dict": lambda v: {k: from_typed(x) for k, x in v["$dict"].items()},
}


def from_typed(typed: Any) -> Any:
    """The item a :func:`typed_form` was made from (ValueError, TypeError or KeyError for a malformed one)."""
    if isinstance(typed, list):
        return [from_typed(v) for v in typed]
    if not isinstance(typed, dict):
        return typed
    tags = [k for k in typed if k.startswith("$")]
    if not tags:
        return {k: from_typed(v) for k, v in typed.items()}
    if len(tags) > 1 or tags[0] not in _DECODE:
        raise ValueError(f"unknown tag {tags[0]!r}" if len(tags) == 1 else f"several tags {tags}")
    return _DECODE[tags[0]](typed)


__all__ = [
    "ChunkReport",
    "ChunkTiming",
    "DeadLetterWriter",
    "ErrorSummary",
    "FailedItem",
    "RunSummary",
    "Status",
    "SummaryBuilder",
    "from_typed",
    "read_dead_letters",
    "typed_form",
]
