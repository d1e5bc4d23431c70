"""JSON that keeps numbers as the data wrote them: response bodies read by the API flows, written back out.

``json.loads`` turns every number with a fraction or an exponent into a double, and ``json.dumps`` writes the
double's shortest form: ``12.50`` comes out as ``12.5``, ``1e5`` as ``100000.0``, ``1e400`` as ``Infinity``
(not JSON at all), ``0.12345678901234567891`` loses its last digits. Outputs are the user's data, so a body
is read by :func:`loads_exact`: a number a double writes back exactly as it came stays a ``float`` (the common
case: ``12.5``, ``0.1``), any other becomes a :class:`JsonNumber` holding its text, and :func:`dumps_exact`
writes that text back. A ``JsonNumber`` compares, hashes and converts (``float()``) as its value, so
watermarks, polars (which reads it through ``__float__``) and messages keep working.

Integers are exact in Python already, except ``-0`` (read as ``0``), which a body holding ``-0`` keeps too.
Strings are values: an escape such as ``\\u00e9`` is written as the character (the same JSON string).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from typing import Any


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


def _float(text: str) -> float | JsonNumber:
    value = float(text)
    return value if repr(value) == text else JsonNumber(text)


def _int(text: str) -> int | JsonNumber:
    return JsonNumber(text) if text == "-0" else int(text)


_MINUS_ZERO = re.compile(r"-0(?![0-9.eE])")  # a -0 token, or text in a string that looks like one (dates do not)
_decode = json.JSONDecoder(parse_float=_float, parse_constant=JsonNumber).decode
_decode_minus_zero = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=JsonNumber).decode


def loads_exact(content: bytes | str) -> Any:
    """``json.loads`` with every number kept as written (see the module docstring); raises ``ValueError`` as it."""
    text = content.decode(json.detect_encoding(content), "surrogatepass") if isinstance(content, bytes) else content
    return (_decode_minus_zero if _MINUS_ZERO.search(text) else _decode)(text)


class _HasNumber(Exception):
    """Raised from the encoder's ``default`` when it meets a JsonNumber: the value takes the marking path."""


def _default(value: Any) -> str:
    if type(value) is JsonNumber:
        raise _HasNumber
    return str(value)  # what the outputs always did for values JSON has no type for (dates, decimals, paths)


_encode = json.JSONEncoder(ensure_ascii=False, default=_default).encode
_encode_ascii = json.JSONEncoder(default=_default).encode
_NONCE = secrets.token_hex(8)
_MARK = re.compile(r'"\\u0000' + _NONCE + r':(\d+)"')


def _marked(value: Any, texts: list[str]) -> Any:
    """``value`` with each JsonNumber replaced by a string no data holds (a NUL and this process's nonce)."""
    if type(value) is JsonNumber:
        texts.append(value.text)
        return f"\x00{_NONCE}:{len(texts) - 1}"
    if isinstance(value, dict):
        return {k: _marked(v, texts) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_marked(v, texts) for v in value]
    return value


def dumps_exact(value: Any) -> str:
    """``json.dumps(value, default=str, ensure_ascii=False)`` writing each JsonNumber as its text; a string
    holding a lone surrogate (``"\\ud800"`` is valid JSON) is written escaped, so the line stays UTF-8."""
    try:
        text = _encode(value)
    except _HasNumber:
        texts: list[str] = []
        text = _MARK.sub(lambda m: texts[int(m.group(1))], _encode(_marked(value, texts)))
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            texts = []
            text = _MARK.sub(lambda m: texts[int(m.group(1))], _encode_ascii(_marked(value, texts)))
    return text


def plain(value: Any) -> Any:
    """A JsonNumber as a float (watermarks, which are stored as JSON values); anything else as it is."""
    return float(value) if type(value) is JsonNumber else value


__all__ = ["JsonNumber", "dumps_exact", "loads_exact", "plain"]
