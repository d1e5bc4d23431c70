"""JSON that keeps numbers as the data wrote them: response bodies read by the API flows, written back out.

``json.loads`` turns every number with a fraction or an exponent into a double, and ``json.dumps`` writes the
double's shortest form: ``12.50`` comes out as ``12.5``, ``1e5`` as ``100000.0``, ``1e400`` as ``Infinity``
(not JSON at all), ``0.12345678901234567891`` loses its last digits. Outputs are the user's data, so a body
is read by :func:`loads_exact`: a number a double writes back exactly as it came stays a ``float`` (the common
case: ``12.5``, ``0.1``), any other becomes a :class:`JsonNumber` holding its text, and :func:`dumps_exact`
writes that text back. A ``JsonNumber`` compares, hashes and converts (``float()``) as its value, so
watermarks, polars (which reads it through ``__float__``) and messages keep working.

Integers are exact in Python already, except ``-0`` (read as ``0``), which a body holding ``-0`` keeps too
(an items file's ``-0`` is a :class:`JsonMinusZero`: the int 0 to the handler, ``-0`` in outputs).
Strings are values: an escape such as ``\\u00e9`` is written as the character (the same JSON string).

Items read from a JSON-lines file (:func:`loads_items`) go to the user's handler, so such a number is a
:class:`JsonFloat` there: a ``float`` to the handler that carries its text to output rows and dead letters.
"""

from __future__ import annotations

import base64
import codecs
import dataclasses
import functools
import json
import math
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python


@functools.total_ordering
class JsonNumber:
    """A JSON number kept as its text (``12.50``, ``1e5``, ``1e400``, ``NaN``) because a double would rewrite it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __float__(self) -> float:
        return float(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonNumber):
            return self.text == other.text or float(self) == float(other)
        if isinstance(other, int | float) and not isinstance(other, bool):
            return float(self) == other
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, JsonNumber | int | float) and not isinstance(other, bool):
            return float(self) < float(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(float(self))


def _float_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A ``parse_float``: the float when it writes back as the same text, else ``kind(text)`` (keeps the text)."""

    def parse(text: str) -> Any:
        value = float(text)
        return value if repr(value) == text else kind(text)

    return parse


_float = _float_or(JsonNumber)


def _int(text: str) -> int | JsonNumber:
    return JsonNumber(text) if text == "-0" else int(text)


_MINUS_ZERO = re.compile(r"-0(?![0-9.eE])")  # a -0 token, or text in a string that looks like one (dates do not)
_decode = json.JSONDecoder(parse_float=_float, parse_constant=JsonNumber).decode
_decode_minus_zero = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=JsonNumber).decode


def loads_exact(content: bytes | str, *, charset: str | None = None) -> Any:
    """``json.loads`` with every number kept as written (see the module docstring); raises ``ValueError`` as it.

    ``charset``: the encoding the bytes were declared in (an HTTP ``Content-Type``'s ``charset=``, e.g.
    ``iso-8859-1``). JSON is UTF-8 (RFC 8259) and servers often declare another charset for UTF-8 bytes, so the
    bytes are read as UTF-8 (or the UTF-16/32 ``json.loads`` detects) and in the declared charset only when they
    are not valid in that."""
    if isinstance(content, bytes):
        try:
            text = content.decode(json.detect_encoding(content), "surrogatepass")
        except UnicodeDecodeError:
            declared = _declared(charset)
            if declared is None:
                raise
            text = content.decode(declared)
    else:
        text = content
    return (_decode_minus_zero if _MINUS_ZERO.search(text) else _decode)(text)


@functools.lru_cache(maxsize=64)
def _declared(charset: str | None) -> str | None:
    """The codec of a declared charset that is not a UTF one (detection reads those, a BOM included); None when
    there is none or Python does not know it."""
    if not charset:
        return None
    try:
        name = codecs.lookup(charset.strip().strip("'\"")).name
    except LookupError:
        return None
    return None if name.startswith("utf") else name


class JsonFloat(float):
    """A number of a JSON-lines items file that a double would write differently (``12.50``, ``1e400``, ``NaN``):
    a float to the handler (its arithmetic gives plain floats), its text to output rows and dead letters."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> JsonFloat:
        self = super().__new__(cls, float(text))
        self.text = text
        _floats_made.set()
        return self

    def __reduce__(self) -> tuple[type[JsonFloat], tuple[str]]:  # pickled with its text (task runs, records)
        return JsonFloat, (self.text,)


# once a JsonFloat exists in this process, encoding walks each value (the C encoder writes a float subclass
# as its float, and offers no hook); until then, and in processes that never read one, it costs nothing
_floats_made = threading.Event()


_item_float = _float_or(JsonFloat)


class JsonMinusZero(int):
    """``-0`` of a JSON-lines items file: the int ``0`` to the handler, ``-0`` in output rows and dead letters."""

    text = "-0"

    def __new__(cls) -> JsonMinusZero:
        _floats_made.set()  # encoding now looks for it (the C encoder writes an int subclass as its int)
        return super().__new__(cls, 0)

    def __reduce__(self) -> tuple[type[JsonMinusZero], tuple[()]]:
        return JsonMinusZero, ()


def _item_int(text: str) -> int:
    return JsonMinusZero() if text == "-0" else int(text)
_decode_items = json.JSONDecoder(parse_float=_item_float, parse_constant=JsonFloat).decode
_decode_items_minus_zero = json.JSONDecoder(parse_float=_item_float, parse_int=_item_int,
                                            parse_constant=JsonFloat).decode


def loads_items(line: str) -> Any:
    """One item of a JSON-lines file: ``json.loads``'s value, a number a double would rewrite as a
    :class:`JsonFloat`, a ``-0`` as a :class:`JsonMinusZero` (the int 0 that writes ``-0``); raises
    ``json.JSONDecodeError``."""
    return (_decode_items_minus_zero if _MINUS_ZERO.search(line) else _decode_items)(line)


class _HasNumber(Exception):
    """Raised from the encoder's ``default`` when it meets a JsonNumber: the value takes the marking path."""


def _encoders(default: Callable[[Any], Any], separators: tuple[str, str] | None = None, *, allow_nan: bool = True
              ) -> tuple[Callable[[Any], str], Callable[[Any], str]]:
    """The C encoder (UTF-8 text, and all-ASCII for lone surrogates) calling ``default`` for values JSON has
    no type for, and stopping at a JsonNumber."""
    key = (default, separators, allow_nan)
    found = _ENCODERS.get(key)
    if found is None:
        def hook(value: Any) -> Any:
            if type(value) is JsonNumber:
                raise _HasNumber
            return default(value)

        options: dict[str, Any] = {"separators": separators, "allow_nan": allow_nan, "default": hook}
        found = _ENCODERS[key] = (json.JSONEncoder(ensure_ascii=False, **options).encode,
                                  json.JSONEncoder(**options).encode)
    return found


_ENCODERS: dict[tuple[Any, ...], tuple[Callable[[Any], str], Callable[[Any], str]]] = {}
_NONCE = secrets.token_hex(8)
_MARK = re.compile(r'"\\u0000' + _NONCE + r':(\d+)"')


def _marked(value: Any, texts: list[str]) -> Any:
    """``value`` with each JsonNumber, JsonFloat and JsonMinusZero replaced by a string no data holds (a NUL and this
    process's nonce)."""
    t = type(value)
    if t is JsonNumber or t is JsonFloat or t is JsonMinusZero:
        texts.append(value.text)
        return f"\x00{_NONCE}:{len(texts) - 1}"
    if isinstance(value, dict):
        return {k: _marked(v, texts) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_marked(v, texts) for v in value]
    return value


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _with_texts(value: Any, encode: Callable[[Any], str], *, finite: bool = False) -> str:
    """``encode(value)`` with each JsonNumber and JsonFloat written as its text (``finite``: NaN and infinities
    refused, as ``allow_nan=False`` refuses plain floats)."""
    texts: list[str] = []
    text = encode(_marked(value, texts))
    if finite and (bad := [t for t in texts if not math.isfinite(float(t))]):
        msg = f"Out of range float values are not JSON compliant: {bad[0]}"
        raise ValueError(msg)
    return _MARK.sub(lambda m: texts[int(m.group(1))], text) if texts else text


def dumps_exact(value: Any, default: Callable[[Any], Any] | None = str, *,
                separators: tuple[str, str] | None = None) -> str:
    """``json.dumps(value, default=default, separators=separators, ensure_ascii=False)`` writing each JsonNumber
    and JsonFloat as its text; a string holding a lone surrogate (``"\\ud800"`` is valid JSON) is written
    escaped, so the line stays UTF-8. ``default`` turns values JSON has no type for into JSON values (``str``:
    what outputs always did; None: a TypeError, as ``json.dumps``). A dict key that is not a str is a TypeError:
    ``json.dumps`` writes ``{1: "a"}`` as ``{"1": "a"}`` (and ``{2024: x, "2024": y}`` with a key twice), which
    reads back as other data."""
    encode, encode_ascii = _encoders(default or _not_serializable, separators)
    if _floats_made.is_set():
        text = _with_texts(value, encode)
    else:
        try:
            text = encode(value)
        except _HasNumber:
            text = _with_texts(value, encode)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _with_texts(value, encode_ascii)
    if _converted_key(separators).search(text) and (found := _non_str_key(value)) is not None:
        key = found[0]
        written = next(iter(json.loads(json.dumps({key: None}))))
        msg = f"dict key {key!r} ({type(key).__name__}) is not a str: JSON would write it as the string {written!r}"
        raise TypeError(msg)
    return text


@functools.lru_cache(maxsize=8)
def _converted_key(separators: tuple[str, str] | None) -> re.Pattern[str]:
    """A key as the C encoder writes an int, float, bool or None key (``"1": ``, ``"true": ``): a text holding
    none has only str keys, so only such a text is walked (:func:`_non_str_key`)."""
    key_separator = separators[1] if separators else ": "
    return re.compile(r'"(?=[-\dINtfn])(?:-?(?:\d[\d.eE+\-]*|Infinity)|NaN|true|false|null)"' + re.escape(key_separator))


def _non_str_key(value: Any) -> tuple[Any] | None:
    """The first dict key inside ``value`` that is not a str, as a 1-tuple (the key may be None); else None."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return (k,)
            if isinstance(v, dict | list | tuple) and (found := _non_str_key(v)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for v in value:
            if isinstance(v, dict | list | tuple) and (found := _non_str_key(v)) is not None:
                return found
    return None


def json_body(value: Any) -> bytes:
    """A request's JSON body as httpx writes it (compact, UTF-8; NaN, infinities and values JSON has no type for
    refused with ``ValueError`` / ``TypeError``), numbers of an items file as the file wrote them."""
    encode = _encoders(_not_serializable, (",", ":"), allow_nan=False)[0]
    if not _floats_made.is_set():
        try:
            return encode(value).encode()
        except _HasNumber:
            pass
    return _with_texts(value, encode, finite=True).encode()


def jsonable(value: Any) -> Any:
    """What pydantic's JSON mode makes of a value JSON has no type for (ISO dates and times, ``Decimal`` as its
    text, sets as lists, models as objects), else its ``str``: the dead letters' ``default`` (output rows have
    :func:`exact_jsonable`)."""
    try:
        return to_jsonable_python(value)
    except Exception:
        return str(value)


class UnwritableValue(TypeError):
    """A value of an output row that JSON cannot hold exactly (a plain object, bytes): its item fails
    (``unwritable_output``), never written as a repr or a guessed decoding."""


class _BytesValue(UnwritableValue):
    """Bytes in an output row: an item's are written tagged (:func:`dumps_row`), a result's fail it."""


_BYTES = (bytes, bytearray, memoryview)


def _shallow(value: Any, unknown: Callable[[Any], Any]) -> Any:
    """One level of a value JSON has no type for, as pydantic's JSON mode writes it (ISO dates and times,
    ``Decimal`` and ``UUID`` as text, enums as their values, models as objects); a dataclass's fields and a set's
    members are handed back unconverted, so bytes or an object nested in them reach the encoder's ``default``
    again instead of being decoded or written as ``str`` inside pydantic. ``unknown``: what becomes of a value
    pydantic cannot convert either."""
    if isinstance(value, _BYTES):
        kind = type(value).__name__
        msg = (f"a {kind} value has no exact JSON form (JSON has no bytes): decode it in the handler when it is text "
               "(value.decode()), or base64 it (base64.b64encode(value).decode())")
        raise _BytesValue(msg)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not hasattr(value, "__pydantic_serializer__"):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return list(value)
    try:
        return to_jsonable_python(value)
    except Exception:
        return unknown(value)


def _shown(value: Any) -> Any:
    """A value of an item as the dead letters show it (:func:`jsonable`), bytes raising :class:`_BytesValue`."""
    return _shallow(value, str)


def _no_json_form(value: Any) -> Any:
    kind = type(value)
    msg = (f"a {kind.__module__}.{kind.__qualname__} object has no JSON form: return a dict (e.g. of its fields), "
           "a list, a str, a number, a bool or None")
    raise UnwritableValue(msg)


def exact_jsonable(value: Any) -> Any:
    """The output rows' ``default``: :func:`jsonable`'s documented forms, but a value JSON cannot hold exactly
    (bytes or a bytearray anywhere, a plain object) raises :class:`UnwritableValue` saying what to return instead."""
    return _shallow(value, _no_json_form)


def _shown_item(value: Any) -> Any:
    """An output row's item as the dead letters show it, bytes tagged as in ``item_typed`` (``{"$bytes": ...}``:
    base64), never a repr or a decoding that may not be the bytes' own."""
    if isinstance(value, bytes | bytearray):
        return {f"${type(value).__name__}": base64.b64encode(value).decode()}
    return _shallow(value, str)


def dumps_row(row: Any) -> str:
    """One output row as a JSON line, exactly the user's values (:func:`exact_jsonable`; a value it cannot write
    raises TypeError). A batch_map row (``{"item", "result"}``) whose item holds bytes is written as a dead letter
    writes it: ``item`` shows each bytes value tagged and base64 (``{"$bytes": "/wA="}``), ``item_typed`` holds the
    whole item typed (:func:`tasks.core.outcomes.from_typed` gives it back); a result holding bytes raises."""
    try:
        return dumps_exact(row, exact_jsonable)
    except UnwritableValue as exc:
        if not (isinstance(row, dict) and row.keys() == {"item", "result"}):
            raise UnwritableValue(str(exc)) from None
    try:
        dumps_exact(row["result"], exact_jsonable)
    except UnwritableValue as exc:
        msg = f"the result: {exc}"
        raise UnwritableValue(msg) from None
    try:
        dumps_exact(row["item"], _shown)
    except _BytesValue:
        return _typed_row(row)
    return dumps_exact(row, _shown)  # the item as the dead letters show it (as before)


def _typed_row(row: dict[str, Any]) -> str:
    from tasks.core.outcomes import typed_form

    typed = typed_form(row["item"])
    if typed is None:
        msg = ("the item holds bytes and a value the dead letters' typed form has none for (a model, a memoryview, "
               "a time with a ZoneInfo zone): it cannot be written exactly; convert the item in the source")
        raise UnwritableValue(msg)
    return dumps_exact({"item": row["item"], "item_typed": typed, "result": row["result"]}, _shown_item)


__all__ = ["JsonFloat", "JsonMinusZero", "JsonNumber", "UnwritableValue", "dumps_exact", "dumps_row", "exact_jsonable",
           "json_body", "jsonable", "loads_exact", "loads_items"]
