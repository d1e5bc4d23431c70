"""api_extract incremental: each run asks only for records changed since the last complete run.

``incremental={"param": "updated_since", "record_field": "updated_at"}``: a run sends the stored watermark
as the query parameter ``param`` (nothing, or ``initial``, on the first run), tracks the maximum of
``record_field`` over the records it writes (ISO date-times compared as instants, numbers as numbers, exactly,
and kept as the API wrote them), and when it ends complete stores that maximum (tasks.core.watermarks). Values
of another kind than the watermark's (a ``0`` "never" sentinel among date-times) are not candidates: the run
counts them and logs a warning. The watermark it started from and the
maximum so far are checkpointed with the paginator state after every part, so a killed run resumes with the
same request parameters: no gap, no record twice. A failed run stores nothing: the next one asks again from
the old watermark. Each incremental run writes its parts to ``<output>/run-<run_key>/`` (a run starts its
part numbers at 0 and would otherwise replace the previous run's parts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.api.paginators import dig
from tasks.core import redact_text
from tasks.core.exactjson import JsonNumber
from tasks.core.watermarks import (
    Newest,
    from_json_value,
    lag_seconds,
    later,
    read_watermark,
    save_watermark,
    to_json_value,
)


class ApiIncremental(BaseModel):
    """Which query parameter carries the watermark and which record field moves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    param: Annotated[str, Field(min_length=1, max_length=200, description=(
        "Query parameter that receives the last run's maximum, e.g. 'updated_since'."))]
    record_field: Annotated[str, Field(min_length=1, max_length=500, description=(
        "Dotted path of the field in a record whose maximum becomes the next watermark, e.g. 'updated_at'."))]
    initial: Annotated[str | int | float | None, Field(description=(
        "Value sent on the first run (default: the parameter is not sent, everything is extracted)."))] = None


def newest_of(records: list[Any], record_field: str) -> Newest | None:
    """The newest value of ``record_field`` of each kind over ``records`` (records without it are skipped), or
    None when no record has it. A number is kept as the API wrote it (``1767225625.999999999`` stays that, not
    the double ``1767225626.0``), so the next run asks from exactly the newest record."""
    seen = Newest()
    for record in records:
        seen.add(dig(record, record_field, default=None))
    return seen if seen.counts else None


def keys_of(records: list[Any], *, limit: int = 30) -> list[str]:
    """The top-level keys the records have (the first 100 records'), to name them when ``record_field`` is none."""
    keys = {str(k) for record in records[:100] if isinstance(record, dict) for k in record}
    return sorted(keys)[:limit]


def _shown(value: Any) -> Any:
    """A watermark for the summary (a JSON value, as its artifact table is): a number a double would rewrite
    as its text, exactly."""
    return value.text if type(value) is JsonNumber else value


@dataclass
class ExtractWatermark:
    """One incremental run's watermark: where it started (``before``) and the values of ``record_field`` it wrote."""

    spec: ApiIncremental
    flow: str
    stream: str
    reset: bool = False
    before: Any = None
    seen: Newest = field(default_factory=Newest)
    resumed: bool = field(default=False)
    keys_seen: list[str] | None = None  # the records' keys when a part had records but none with record_field

    def start(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """Take the checkpointed state (a resumed run) or the stored watermark; return the query params to add."""
        if saved is not None:
            self.before, self.resumed = from_json_value(saved.get("before")), True
            if "seen" in saved:
                self.seen = Newest.from_json(saved["seen"])
            else:  # a checkpoint of an older version: the maximum so far only
                self.seen.add(from_json_value(saved.get("newest")))
        else:
            stored = None if self.reset else read_watermark(self.flow, self.stream)
            self.before = stored.get("value") if stored else None
        start = self.before if self.before is not None else self.spec.initial
        return {} if start is None else {self.spec.param: start}

    @property
    def kind(self) -> str | None:
        return self.seen.kind(self.before)

    @property
    def newest(self) -> Any:
        """The newest value of the watermark's kind the run wrote."""
        return self.seen.best.get(self.kind)  # type: ignore[arg-type]

    def saw(self, newest: Newest | None, keys: list[str] | None = None) -> None:
        self.seen.merge(newest)
        if keys is not None:
            self.keys_seen = sorted({*(self.keys_seen or ()), *keys})

    def checkpoint(self) -> dict[str, Any]:
        return {"before": to_json_value(self.before), "newest": to_json_value(self.newest),
                "seen": self.seen.to_json()}

    def finish(self, summary: Any, *, complete: bool, run_key: str, log: Any) -> None:
        """Store the new watermark when the run is complete; state both in the summary (and its artifact)."""
        after = later(self.before, self.newest)
        if complete:
            save_watermark(self.flow, self.stream, {"value": after, "param": self.spec.param,
                                                    "record_field": self.spec.record_field}, run_key=run_key)
        shown = after if complete else self.before
        summary.extra.update({"watermark_before": _shown(self.before), "watermark_after": _shown(shown),
                              "lag_s": lag_seconds(shown), "incremental_stream": self.stream})
        kept = "" if complete else " (kept: the run did not complete; the next run asks from the old watermark)"
        log.info(redact_text(f"watermark {self.spec.record_field!r}: {self.before!r} -> {shown!r}{kept}"))
        if self.newest is None and self.keys_seen is not None:
            log.warning(redact_text(
                f"incremental record_field {self.spec.record_field!r}: none of the {summary.succeeded} record(s) "
                f"written has a value there, so the watermark cannot move and every run extracts the same records "
                f"again; the records have the keys {self.keys_seen}: set record_field to the one holding the "
                "update time (a dotted path for a nested field)"))
        self._warn_other_kinds(log)

    def _warn_other_kinds(self, log: Any) -> None:
        kind = self.kind
        others = sum(n for k, n in self.seen.counts.items() if k != kind)
        if not others:
            return
        kinds = ", ".join(f"{n} {k}" for k, n in self.seen.counts.items())
        why = "the stored watermark's kind" if self.before is not None else "the kind most values have, the first seen of a tie"
        log.warning(redact_text(
            f"incremental record_field {self.spec.record_field!r} holds values of more than one kind ({kinds}): "
            f"the watermark is the newest {kind} value ({why}); the {others} other value(s) do not compare with "
            f"it and were not taken as the watermark (their records were written). If the API changed the "
            "field's format, start over with reset_incremental=True"))


__all__ = ["ApiIncremental", "ExtractWatermark", "keys_of", "newest_of"]
