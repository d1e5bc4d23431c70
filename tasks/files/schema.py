"""Schemas for file_transform and the validator that splits rows into good rows and rejects.

Text inputs are read as strings and cast here, one vectorized expression per column, so a value that
does not fit its type becomes a reject with a reason instead of failing the chunk. Type names are a
small closed set (see ``ALLOWED_TYPES``) so deployments can declare them as plain JSON.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tasks.core import ConfigError

ALLOWED_TYPES = ("int64", "uint64", "float64", "str", "bool", "date", "datetime", "datetime[<tz>]", "decimal(<p>,<s>)")
SOURCE_FILE = "_source_file"
LINE = "_line"
REJECT_REASON = "_reject_reason"
RAW = "_raw"
RESERVED_COLUMNS = (SOURCE_FILE, LINE, RAW, REJECT_REASON)

_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_DATETIME_TZ = re.compile(r"^datetime\[(.+)\]$")
_SIMPLE: dict[str, pl.DataType] = {
    "int64": pl.Int64(),
    "uint64": pl.UInt64(),
    "float64": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_OFFSET_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_BOOLS = {"true": True, "t": True, "1": True, "yes": True, "y": True}
_BOOLS |= {"false": False, "f": False, "0": False, "no": False, "n": False}
# a number as polars' str -> decimal cast reads it: sign, whole digits, fraction digits, exponent
_NUMBER = r"^[+-]?([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?$"
_WIDE_INTEGERS = (pl.Int128, pl.UInt128)
_WIDER_INTEGER_TEXT = r"^\s*[+-]?[0-9]{39,}\s*$"  # 39 digits or more: maybe past int128
_LONG_INTEGER_TEXT = r"^\s*[+-]?[0-9]{16}"  # 16 digits or more: maybe past 2**53 (9007199254740992)
_NARROW_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16, pl.UInt32)  # a double holds them all
FLOAT_EXACT = 2.0**53  # every integer up to it in magnitude is a double; past it, not every one
PAST_MICROS = r"\.[0-9]{6}[0-9]*[1-9]"  # a fraction of a second with a non-zero digit past the 6th


def polars_dtype(type_name: str) -> pl.DataType:
    """The polars dtype of a schema type name; ConfigError listing the allowed names otherwise."""
    name = type_name.strip().lower() if isinstance(type_name, str) else type_name
    if name in _SIMPLE:
        return _SIMPLE[name]
    if m := _DECIMAL.match(name):
        precision, scale = int(m[1]), int(m[2])
        if not 0 < precision <= 38 or scale > precision:
            msg = f"type {type_name!r}: decimal needs 0 < precision <= 38 and scale <= precision"
            raise ConfigError(msg)
        return pl.Decimal(precision, scale)
    if m := _DATETIME_TZ.match(type_name.strip()):
        tz = m[1].strip()
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            msg = f"type {type_name!r}: unknown time zone {tz!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
            raise ConfigError(msg) from None
        return pl.Datetime("us", tz)
    msg = f"unknown column type {type_name!r}; allowed types are {', '.join(ALLOWED_TYPES)}"
    raise ConfigError(msg)


def type_name_of(dtype: pl.DataType) -> str:
    """The schema type name that best holds a polars dtype (used when inferring a schema): every value of
    the dtype fits, so a value the inference saw is never rejected (an integer wider than int64 becomes uint64
    or decimal(38,0), whose digits are exact; see tasks.files.read for the choice by the values)."""
    if isinstance(dtype, pl.UInt64):
        return "uint64"
    if isinstance(dtype, _WIDE_INTEGERS):
        return "decimal(38,0)"
    if dtype.is_integer():
        return "int64"
    if dtype.is_float():
        return "float64"
    if isinstance(dtype, pl.Boolean):
        return "bool"
    if isinstance(dtype, pl.Date):
        return "date"
    if isinstance(dtype, pl.Datetime):
        return f"datetime[{dtype.time_zone}]" if dtype.time_zone else "datetime"
    if isinstance(dtype, pl.Decimal) and dtype.precision is not None:
        return f"decimal({dtype.precision},{dtype.scale})"
    return "str"


class Schema(BaseModel):
    """Column types plus constraints. Columns of the file that are not listed stay as read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    columns: dict[str, str] = Field(description="column -> type, e.g. {'id': 'int64', 'ts': 'datetime[UTC]'}")
    not_null: list[str] = Field(default_factory=list, description="Columns that must have a value.")
    unique_key: list[str] = Field(default_factory=list, description=(
        "Columns whose combination is unique within each chunk (the first row wins, a repeat is rejected); a "
        "key repeated in another chunk or file is not checked."))
    json_keys: list[str] | None = Field(None, description=(
        "JSON lines: the keys a line may have, in output order; the schema's columns not among them come after "
        "them, and a line with any other key is rejected. None: the keys in the first MiB of the chunk's files. "
        "file_transform sets it from its first JSON-lines file, so every part has the same columns."))
    inferred: bool = Field(False, description=(
        "The types were inferred from the first rows (no schema given): reject reasons say so."))

    @field_validator("columns")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for column, type_name in value.items():
            try:
                polars_dtype(type_name)
            except ConfigError as exc:
                msg = f"column {column!r}: {exc}"
                raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _no_duplicates(self) -> Schema:
        for field in ("not_null", "unique_key"):
            names = getattr(self, field)
            if len(set(names)) != len(names):
                msg = f"{field} lists a column twice: {names}"
                raise ValueError(msg)
        return self

    @model_serializer(mode="wrap")
    def _without_unset_extras(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``json_keys`` and ``inferred`` only when set: a schema's JSON (part of a run's identity) stays as
        it was for schemas that do not use them."""
        data = handler(self)
        if self.json_keys is None:
            data.pop("json_keys", None)
        if not self.inferred:
            data.pop("inferred", None)
        return data

    def dtypes(self) -> dict[str, pl.DataType]:
        return {c: polars_dtype(t) for c, t in self.columns.items()}


def parse_schema(spec: Schema | Mapping[str, Any] | str | None) -> Schema | None:
    """Accept a Schema, its dict/JSON form, or a bare ``{column: type}`` mapping; ConfigError if invalid."""
    if spec is None or isinstance(spec, Schema):
        return spec
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            msg = f'schema is not valid JSON ({exc}); pass e.g. \'{{"columns": {{"id": "int64"}}}}\''
            raise ConfigError(msg) from None
    if not isinstance(spec, Mapping):
        msg = f"schema must be a mapping, got {type(spec).__name__}"
        raise ConfigError(msg)
    if "columns" not in spec and all(isinstance(v, str) for v in spec.values()):
        spec = {"columns": dict(spec)}
    try:
        return Schema.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'schema'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        msg = f"invalid schema: {problems}"
        raise ConfigError(msg) from None


def _decimal_places(value: pl.Expr) -> pl.Expr:
    """Digits after the point that a decimal needs to hold a number's text exactly (``12.555`` -> 3, ``12.50``
    -> 1, ``1.25e1`` -> 1, ``1200`` -> 0 or less); null for text that is not a number (the cast refuses it).
    Exact for any form, but slow (a regex with groups): only for a batch with an exponent."""
    parts = value.str.extract_groups(_NUMBER)
    fraction = parts.struct.field("2").fill_null("")
    digits = pl.concat_str([parts.struct.field("1"), fraction])
    significant = digits.str.strip_chars_end("0")
    trailing_zeros = digits.str.len_chars().cast(pl.Int64) - significant.str.len_chars().cast(pl.Int64)
    exponent = parts.struct.field("3").cast(pl.Int64, strict=False).fill_null(0)
    places = fraction.str.len_chars().cast(pl.Int64) - exponent - trailing_zeros
    return pl.when(significant == "").then(pl.lit(0, pl.Int64)).otherwise(places)


def _finer_than_micros(text: pl.Expr) -> pl.Expr:
    """Text of a time with a non-zero digit past the microseconds (``10:00:00.123456789``): a datetime keeps
    microseconds, so parsing it would drop them. One regex, also run by the typed fast path."""
    return text.str.contains(PAST_MICROS)


def inexact_integer_text(text: pl.Expr, target: pl.DataType) -> pl.Expr:
    """Integer text (``9007199254740993``) whose float is another integer (``9007199254740992.0``): the integer
    does not come back from the float. Text with a point or an exponent takes the nearest double (as ``0.1``
    does); integer text past int128 counts as changed (it all but always is)."""
    whole = text.str.strip_chars().cast(pl.Int128, strict=False)
    wider = whole.is_null() & text.str.contains(_WIDER_INTEGER_TEXT)
    return whole.cast(target).cast(pl.Int128, strict=False).ne_missing(whole) | wider


def out_of_float_range(text: pl.Expr, target: pl.DataType) -> pl.Expr:
    """Number text the float ``target`` cannot hold: finite but past its range (the cast gives an infinity:
    ``1e400``) or non-zero but below it (the cast gives 0: ``1e-400``). ``inf``, ``nan`` and zeros are kept."""
    value = text.str.strip_chars()
    cast = value.cast(target, strict=False)
    overflow = cast.is_infinite() & ~value.str.contains("(?i)inf")
    underflow = (cast == 0) & value.str.contains("^[^eE]*[1-9]")
    return overflow | underflow


def _inexact_integer(col: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr | None:
    """A typed integer (or a decimal's whole value) that the float ``target`` holds as another integer, or
    None when every value of ``source`` fits exactly (int32 and smaller, floats, anything not a number)."""
    if isinstance(source, pl.Decimal):
        whole = col.cast(pl.Int128, strict=False)
        integral = whole.cast(source, strict=False).eq_missing(col)
        return integral & col.cast(target, strict=False).cast(pl.Int128, strict=False).ne_missing(whole)
    if not source.is_integer() or isinstance(source, _NARROW_INTEGERS):
        return None
    cast = col.cast(target, strict=False)
    return col.is_not_null() & cast.cast(source, strict=False).ne_missing(col)


def _rounds(
    col: pl.Expr, source: pl.DataType, target: pl.DataType, *, exponents: bool = False, integers: bool = True
) -> pl.Expr | None:
    """Where a cast would change the value, or None when it never does. polars' cast rounds or truncates
    silently; such a value is rejected instead.

    Text to decimal: a non-zero digit past the scale after the point (one regex). A number with an exponent
    counts as rounding unless ``exponents`` (then its digits are counted, slower): the typed fast path steps
    aside for it, the careful path passes ``exponents`` for a batch that has one. Text to datetime: a non-zero
    digit past the microseconds. Text to float: an integer past 2**53 the float would make another one,
    unless the caller saw no integer text that long (``integers=False``), and with ``exponents`` (the batch
    has text with an exponent or of 300 characters or more) a finite number past the float's range (it would
    be an infinity) or a non-zero one below it (0). Typed values (Parquet): see :func:`_changes`."""
    if isinstance(source, pl.String):
        if isinstance(target, pl.Datetime):
            return _finer_than_micros(col)
        if target.is_float():
            checks = [*([inexact_integer_text(col, target)] if integers else []),
                      *([out_of_float_range(col, target)] if exponents else [])]
            return pl.any_horizontal(checks) if checks else None
        if not isinstance(target, pl.Decimal):
            return None
        if not exponents:
            return col.str.contains(rf"\.[0-9]{{{target.scale}}}[0-9]*[1-9]|[eE]")
        plain = col.str.contains(rf"\.[0-9]{{{target.scale}}}[0-9]*[1-9]")
        places = _decimal_places(col.str.strip_chars())
        return pl.when(col.str.contains("[eE]")).then(places > target.scale).otherwise(plain)
    return _changes(col, source, target)


def _changes(col: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr | None:
    """Where the cast of a typed value would change it (``1.5`` -> int64 ``1``, ``2`` -> bool ``true``, a
    datetime with a time -> date, nanoseconds -> a datetime's microseconds, a decimal's digits past the target
    scale): its value does not come back from the target type. None when it never does. A float64 target
    takes the nearest double (as the text ``0.1`` does) except for an integer it would make another integer
    (``9007199254740993`` -> ``9007199254740992.0``), a str target the value's text."""
    if source == target or isinstance(target, pl.String):
        return None
    if target.is_float():
        return _inexact_integer(col, source, target)
    if isinstance(source, pl.Decimal) and isinstance(target, pl.Decimal) and (source.scale or 0) <= target.scale:
        return None
    if isinstance(source, pl.Datetime) and isinstance(target, pl.Datetime):
        return col.dt.nanosecond() % 1000 != 0 if source.time_unit == "ns" else None
    if not (source.is_numeric() or isinstance(source, pl.Boolean | pl.Date | pl.Datetime)):
        return None  # nested, binary, text-like: the cast refuses them (null), a reject saying so
    cast = col.cast(target, strict=False)
    return cast.is_not_null() & cast.cast(source, strict=False).ne_missing(col)


def _unless_rounding(cast: pl.Expr, rounds: pl.Expr | None) -> pl.Expr:
    """``cast``, null where ``rounds`` (see :func:`_rounds`): a value the cast would round is rejected instead."""
    return cast if rounds is None else pl.when(rounds).then(None).otherwise(cast)


def _cast_string(col: pl.Expr, dtype: pl.DataType, *, exponents: bool = False, integers: bool = True) -> pl.Expr:
    rounds = _rounds(col, pl.String(), dtype, exponents=exponents, integers=integers)
    return _unless_rounding(_parse_string(col, dtype), rounds)


def _parse_string(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    value = col.str.strip_chars()
    if isinstance(dtype, pl.Boolean):
        return value.str.to_lowercase().replace_strict(_BOOLS, default=None, return_dtype=pl.Boolean)
    if isinstance(dtype, pl.Date):
        return value.str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    if isinstance(dtype, pl.Datetime):
        naive = _naive_datetime(value)
        if dtype.time_zone is None:
            return naive
        offset = pl.coalesce([value.str.strptime(pl.Datetime("us", "UTC"), f, strict=False) for f in _OFFSET_FORMATS])
        local = naive.dt.replace_time_zone(dtype.time_zone, ambiguous="null", non_existent="null")
        return pl.coalesce([offset.dt.convert_time_zone(dtype.time_zone), local])
    if isinstance(dtype, pl.String):
        return col
    return value.cast(dtype, strict=False)


def _naive_datetime(value: pl.Expr) -> pl.Expr:
    return pl.coalesce([value.str.strptime(pl.Datetime("us"), f, strict=False) for f in _NAIVE_FORMATS])


def _dst_gap(col: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr | None:
    """Where a local time (text without an offset, a naive typed datetime) is skipped or repeated by the
    target's zone (a daylight-saving change): no single instant, so it is rejected rather than guessed."""
    if not isinstance(target, pl.Datetime) or target.time_zone is None:
        return None
    if isinstance(source, pl.String):
        naive = _naive_datetime(col.str.strip_chars())
    elif isinstance(source, pl.Datetime) and source.time_zone is None:
        naive = col
    else:
        return None
    local = naive.dt.replace_time_zone(target.time_zone, ambiguous="null", non_existent="null")
    return naive.is_not_null() & local.is_null()


def _cast_any(
    col: pl.Expr, source: pl.DataType, target: pl.DataType, *, exponents: bool = False, integers: bool = True
) -> pl.Expr:
    if source == target:
        return col
    if isinstance(source, pl.String):
        return _cast_string(col, target, exponents=exponents, integers=integers)
    if isinstance(target, pl.Datetime) and isinstance(source, pl.Datetime) and target.time_zone:
        if source.time_zone is None:
            moved = col.dt.replace_time_zone(target.time_zone, ambiguous="null", non_existent="null").cast(target)
        else:
            moved = col.dt.convert_time_zone(target.time_zone).cast(target)
        return _unless_rounding(moved, _rounds(col, source, target))
    return _unless_rounding(col.cast(target, strict=False), _rounds(col, source, target))


def _batch_checks(raw: pl.DataFrame, name: str, source: pl.DataType, target: pl.DataType) -> dict[str, bool]:
    """What a batch's text needs checked beyond the quick checks: ``exponents`` (a decimal target, text with an
    exponent: its digits are counted; a float target, text with an exponent or of 300 characters or more: it
    may be past the float's range) and ``integers`` (a float target, integer text of 16 digits or more, which
    may be past 2**53). Each is one look at the batch, so a batch without them pays nothing more."""
    if not isinstance(source, pl.String):
        return {}
    text = raw.get_column(name)
    if isinstance(target, pl.Decimal):
        return {"exponents": bool(text.str.contains("[eE]").any())}
    if target.is_float():
        long = text.str.len_bytes() >= 16
        return {"integers": bool(text.filter(long).str.contains(_LONG_INTEGER_TEXT).any()),
                "exponents": bool((text.str.contains("[eE]") | (text.str.len_bytes() >= 300)).any())}
    return {}


def check_column_names(columns: Iterable[str], source: str) -> None:
    """ConfigError for an input column named like a column file_transform adds (``_source_file``, ``_line``,
    ``_raw``, ``_reject_reason``): the two would clash in the output or the rejects."""
    for name in columns:
        if name in RESERVED_COLUMNS:
            msg = (
                f"column {name!r} of {source} has a name file_transform uses for its own columns "
                f"({', '.join(RESERVED_COLUMNS)}: lineage and rejects); rename it in the file before the run "
                "(a transform sees the columns only after they are read, so it cannot rename it)"
            )
            raise ConfigError(msg)


class RowValidator:
    """Casts batches to the schema and splits them into (good, rejects); keeps unique_key state.

    One validator serves one chunk, so ``unique_key`` is enforced within a chunk (first row wins);
    uniqueness across chunks needs a global pass and is not checked here. A batch that carries its rows' text
    (``_raw``: JSON lines) gives rejects that are that text, not the values as read.
    """

    def __init__(
        self, schema: Schema | None, columns: dict[str, pl.DataType], *, source: str, inferred: bool = False
    ) -> None:
        self.schema = schema or Schema(columns={})
        self.columns = columns
        check_column_names(columns, source)
        names = list(columns)
        listed = [*self.schema.columns, *self.schema.not_null, *self.schema.unique_key]
        unknown = sorted({c for c in listed if c not in columns})
        if unknown:
            msg = f"schema column(s) {unknown} not in {source}; columns are {names}"
            raise ConfigError(msg)
        self.targets = {
            c: polars_dtype(self.schema.columns[c]) if c in self.schema.columns else d for c, d in columns.items()
        }
        hinted = inferred or self.schema.inferred
        self._hint = " (type inferred from the first rows; pass a schema to set it)" if hinted else ""
        self._seen: pl.DataFrame | None = None

    @property
    def output_schema(self) -> dict[str, pl.DataType]:
        return {**self.targets, SOURCE_FILE: pl.String(), LINE: pl.Int64()}

    def split(self, raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Return (good rows cast to the schema, rejects with raw values and ``_reject_reason``)."""
        casts: list[pl.Expr] = []
        reasons: list[pl.Expr] = []
        for name, source in self.columns.items():
            target = self.targets[name]
            col = pl.col(name)
            checks = _batch_checks(raw, name, source, target)
            casts.append(_cast_any(col, source, target, **checks).alias(f"\x00{name}"))
            if source != target:
                bad_value = self._bad_value(name, source, target, **checks)
                reasons.append(pl.when(col.is_not_null() & pl.col(f"\x00{name}").is_null()).then(bad_value))
            if name in self.schema.not_null:
                reasons.append(pl.when(col.is_null()).then(pl.lit(f"{name}: null but listed in not_null")))
        df = raw.with_columns(casts).with_columns(
            pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias(REJECT_REASON)
            if reasons
            else pl.lit("").alias(REJECT_REASON)
        )
        if self.schema.unique_key:
            df = self._mark_duplicates(df)
        is_bad = pl.col(REJECT_REASON) != ""
        good = df.filter(~is_bad).select(
            *[pl.col(f"\x00{c}").alias(c) for c in self.columns], SOURCE_FILE, pl.col(LINE).cast(pl.Int64)
        )
        as_read = [RAW] if RAW in raw.columns else list(self.columns)
        rejects = df.filter(is_bad).select(*as_read, SOURCE_FILE, pl.col(LINE).cast(pl.Int64), REJECT_REASON)
        return good, rejects

    def _bad_value(
        self, name: str, source: pl.DataType, target: pl.DataType, *, exponents: bool = False, integers: bool = True
    ) -> pl.Expr:
        """Why a value did not cast: not of the type, (a decimal) more digits after the point than it keeps, (a
        datetime) digits past the microseconds, (a float) an integer it would make another integer."""
        tname = self.schema.columns.get(name, type_name_of(target))
        col = pl.col(name)
        value = col.cast(pl.String)
        not_type = pl.concat_str([pl.lit(f"{name}: '"), value, pl.lit(f"' is not {tname}{self._hint}")])
        if (gap := _dst_gap(col, source, target)) is not None and isinstance(target, pl.Datetime):
            why = (f"' is a local time that {target.time_zone} skips or repeats (a daylight-saving change), so no "
                   "single instant; give it a UTC offset (e.g. +01:00)")
            not_type = pl.when(gap).then(pl.concat_str([pl.lit(f"{name}: '"), value, pl.lit(why)])).otherwise(not_type)
        rounds = _rounds(col, source, target, exponents=exponents, integers=integers)
        if rounds is None or not isinstance(target, pl.Decimal | pl.Datetime | pl.Float64 | pl.Float32):
            return not_type  # a typed value another type would change (1.5 as int64): not of that type
        if target.is_float():
            why_float = pl.when(rounds).then(self._inexact(name, source, target)).otherwise(not_type)
            if exponents and isinstance(source, pl.String):
                past = out_of_float_range(col, target)
                why_float = pl.when(past).then(self._out_of_range(name, target)).otherwise(why_float)
            return why_float
        if isinstance(target, pl.Datetime):
            why = f"has digits past the microseconds; {tname} keeps microseconds and would drop them"
        else:
            why = f"has more than {target.scale} digit(s) after the decimal point; {tname} would round it"
        too_fine = pl.concat_str([pl.lit(f"{name}: '"), value, pl.lit(f"' {why}{self._hint}")])
        return pl.when(rounds).then(too_fine).otherwise(not_type)

    def _inexact(self, name: str, source: pl.DataType, target: pl.DataType) -> pl.Expr:
        """Why an integer is not cast to a float: the float would be another integer (past 2**53)."""
        col = pl.col(name)
        as_float = (col.str.strip_chars() if isinstance(source, pl.String) else col).cast(target, strict=False)
        tname = self.schema.columns.get(name, type_name_of(target))
        why = f"' is an integer {tname} cannot hold exactly (it would be "
        fix = "); declare the column int64, uint64, decimal(38,0) or str to keep it"
        return pl.concat_str([pl.lit(f"{name}: '"), col.cast(pl.String), pl.lit(why), as_float.cast(pl.String),
                              pl.lit(fix + self._hint)])

    def _out_of_range(self, name: str, target: pl.DataType) -> pl.Expr:
        """Why a number is not cast to a float: past its range (an infinity) or non-zero below it (0)."""
        col = pl.col(name)
        tname = self.schema.columns.get(name, type_name_of(target))
        why = f"' is out of the range of {tname} (it would be "
        fix = "); declare the column decimal(p,s) or str to keep it"
        return pl.concat_str([pl.lit(f"{name}: '"), col, pl.lit(why),
                              col.str.strip_chars().cast(target, strict=False).cast(pl.String), pl.lit(fix + self._hint)])

    def _mark_duplicates(self, df: pl.DataFrame) -> pl.DataFrame:
        keys = self.schema.unique_key
        cast_keys = [f"\x00{k}" for k in keys]
        ok = pl.col(REJECT_REASON) == ""
        df = df.with_columns(
            pl.when(ok).then(pl.struct(cast_keys)).otherwise(None).is_first_distinct().alias("\x00first")
        )
        dup = ok & ~pl.col("\x00first")
        if self._seen is not None and self._seen.height:
            dup = dup | (ok & pl.struct(cast_keys).is_in(self._seen.get_column("\x00key").implode()))
        label = f"duplicate unique_key ({', '.join(keys)})"
        df = df.with_columns(
            pl.when(dup).then(pl.lit(label)).otherwise(pl.col(REJECT_REASON)).alias(REJECT_REASON)
        ).drop("\x00first")
        fresh = df.filter(pl.col(REJECT_REASON) == "").select(pl.struct(cast_keys).alias("\x00key"))
        self._seen = fresh if self._seen is None else pl.concat([self._seen, fresh])
        return df


__all__ = [
    "ALLOWED_TYPES",
    "LINE",
    "RAW",
    "REJECT_REASON",
    "RESERVED_COLUMNS",
    "SOURCE_FILE",
    "RowValidator",
    "Schema",
    "check_column_names",
    "inexact_integer_text",
    "out_of_float_range",
    "parse_schema",
    "polars_dtype",
    "type_name_of",
]
