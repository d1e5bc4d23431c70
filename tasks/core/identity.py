"""Stable identities: canonical hashes of items and chunks, and the identity of a handler.

Resume rests on these. A chunk's record is found again by its *position* in the run; its *content
hash* proves that the source still holds the same items there. Both must come out the same in every
process and on every machine, so nothing here uses ``hash()``, ``id()``, ``str()`` of arbitrary
objects or dict insertion order:

* JSON-like values are encoded canonically with their types: dict keys sorted (``{1: x}`` differs
  from ``{"1": x}``), ``1`` differs from ``1.0`` and ``True``, tuples from lists, sets sorted,
  floats by their shortest repr, plus dates and times, ``Decimal``, ``bytes``, ``UUID``, enums,
  paths, dataclasses, pydantic models and named tuples.
* Anything else is refused up front (:class:`UnhashableItem`, naming the type and the way out:
  ``item_key=`` returning a JSON-like key per item, or items converted to plain values).
* A handler's identity is its import path plus what is bound to it and changes its behaviour:
  ``functools.partial`` arguments, closure cells, default arguments, the instance of a bound method
  or of a callable object. Parts that cannot be hashed stably (a client object in a closure) are
  reported so the run can say once that ``cache_version`` is the way to mark a changed handler.
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import inspect
import marshal
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal

from tasks.core.errors import ConfigError

DIGEST_SIZE = 16


class UnhashableItem(ConfigError):
    """An item (or a bound handler argument) has no stable canonical encoding."""


class _Refused(Exception):
    def __init__(self, type_name: str, where: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name
        self.where = where


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _enc(value: Any, out: list[str], where: str) -> None:  # one flat dispatch: this runs per item
    t = type(value)
    if t is str:
        out.append(f"s{len(value)}:{value}")
    elif t is int:
        out.append(f"i{value};")
    elif t is dict:
        out.append("{")
        try:
            keys = sorted(value)
            plain = all(type(k) is str for k in keys)
        except TypeError:  # keys of several types: order them by their encodings
            plain = False
        if plain:
            for k in keys:
                out.append(f"s{len(k)}:{k}")
                _enc(value[k], out, where)
        else:
            pairs = []
            for k, v in value.items():
                key: list[str] = []
                _enc(k, key, where)
                pairs.append(("".join(key), v))
            pairs.sort(key=lambda p: p[0])
            for k, v in pairs:
                out.append(k)
                _enc(v, out, where)
        out.append("}")
    elif value is None:
        out.append("n")
    elif t is float:
        out.append(f"d{value!r};")
    elif t is bool:
        out.append("t" if value else "f")
    elif t is list:
        out.append("[")
        for v in value:
            _enc(v, out, where)
        out.append("]")
    elif t is tuple:
        out.append("(")
        for v in value:
            _enc(v, out, where)
        out.append(")")
    else:
        _enc_other(value, out, where)


def _enc_other(value: Any, out: list[str], where: str) -> None:
    if isinstance(value, enum.Enum):
        out.append(f"e{_qualname(value)}:")
        _enc(value.value, out, where)
    elif isinstance(value, bool):
        out.append("t" if value else "f")
    elif isinstance(value, int):
        out.append(f"i{int(value)};")
    elif isinstance(value, float):
        out.append(f"d{float(value)!r};")
    elif isinstance(value, str):
        _enc(str(value), out, where)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(f"b{len(raw)}:{raw.hex()}")
    elif isinstance(value, dt.datetime):
        out.append(f"T{value.isoformat()};")
    elif isinstance(value, dt.date):
        out.append(f"D{value.isoformat()};")
    elif isinstance(value, dt.time):
        out.append(f"H{value.isoformat()};")
    elif isinstance(value, dt.timedelta):
        out.append(f"R{value.days},{value.seconds},{value.microseconds};")
    elif isinstance(value, Decimal):
        out.append(f"m{value};")
    elif isinstance(value, uuid.UUID):
        out.append(f"u{value};")
    elif isinstance(value, PurePath):
        out.append(f"p{value.as_posix()};")
    elif isinstance(value, set | frozenset):
        parts = []
        for v in value:
            one: list[str] = []
            _enc(v, one, where)
            parts.append("".join(one))
        out.append("<" + "".join(sorted(parts)) + ">")
    elif isinstance(value, tuple) and hasattr(type(value), "_fields"):  # a NamedTuple
        out.append(f"c{_qualname(value)}")
        _enc(dict(zip(type(value)._fields, value, strict=True)), out, where)
    elif isinstance(value, dict):  # subclasses (OrderedDict, defaultdict, ...) hash as their contents
        _enc(dict(value), out, where)
    elif isinstance(value, list):
        _enc(list(value), out, where)
    elif isinstance(value, tuple):
        _enc(tuple(value), out, where)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.append(f"c{_qualname(value)}")
        _enc({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out, where)
    elif _is_pydantic(value):
        out.append(f"c{_qualname(value)}")
        _enc(dict(value), out, where)  # field values as they are (types kept), not a lossy dump
    else:
        raise _Refused(_qualname(value), where)


def _refusal(exc: _Refused) -> str:
    return (f"{exc.where} is or holds a {exc.type_name}, which has no stable encoding (its str() or repr() may "
            "change between processes), so batchflows cannot tell on a resume whether it is the same item; pass "
            "item_key=<a function returning a JSON-like key per item>, or give plain values (dicts, lists, str, "
            "numbers, dates), dataclasses or pydantic models")


def _is_pydantic(value: Any) -> bool:
    return hasattr(type(value), "model_fields") and hasattr(value, "model_dump")


def canonical(value: Any, *, where: str = "value") -> str:
    """The canonical text encoding of ``value`` (raises UnhashableItem for types without one)."""
    out: list[str] = []
    try:
        _enc(value, out, where)
    except _Refused as exc:
        raise UnhashableItem(_refusal(exc)) from None
    except RecursionError:
        msg = f"{where} is nested too deeply (or refers to itself) to be hashed; pass item_key=... returning a key"
        raise UnhashableItem(msg) from None
    return "".join(out)


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE).hexdigest()


def value_hash(value: Any, *, where: str = "value") -> str:
    """A stable hex digest of a JSON-like value (see :func:`canonical`)."""
    return digest(canonical(value, where=where))


def chunk_hash(items: Iterable[Any], *, index: int = 0, item_key: Callable[[Any], Any] | None = None) -> str:
    """The content hash of a chunk: its items (or their ``item_key``), in order.

    A chunk of plain ints or of plain strings, the commonest items, is hashed from packed values instead of
    one canonical encoding per item: ints within 32 bits from their ``marshal`` encoding (version 2: no
    object references, so the bytes depend on the values alone; each int is a type byte and four bytes, which
    also proves that every item is a plain int), other ints within 64 bits as 8-byte values, strings as
    their lengths and text. Each packed input starts with a zero byte and a letter, which no canonical
    encoding does, so no two kinds of input meet. Hashes of earlier versions: :func:`legacy_chunk_hashes`.
    """
    keys = items if item_key is None else [item_key(item) for item in items]
    form = _legacy.get()
    if isinstance(keys, list) and keys and form != "canonical":
        packed = _packed(keys)
        if packed is not None:
            h = hashlib.blake2b(digest_size=DIGEST_SIZE)
            for part in packed:
                h.update(part)
            return h.hexdigest()
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    if isinstance(keys, list) and keys and set(map(type, keys)) == {int}:
        h.update("".join(map("i{};\x1e".format, keys)).encode())  # the same bytes as the loop below writes
        return h.hexdigest()
    out: list[str] = []  # the encodings of many items, hashed in one update (the same bytes as one per item)
    for position, key in enumerate(keys):
        t = type(key)
        if t is int:  # the common keys inline (exactly what _enc writes for them)
            out.append(f"i{key};\x1e")
            continue
        if t is str:
            out.append(f"s{len(key)}:{key}\x1e")
            continue
        try:
            _enc(key, out, "")
        except _Refused as exc:
            what = "the item_key of item" if item_key is not None else "item"
            exc.where = f"{what} {position} of chunk {index}" + (f" ({exc.where})" if exc.where else "")
            raise UnhashableItem(_refusal(exc)) from None
        out.append("\x1e")
        if len(out) >= 65_536:
            h.update("".join(out).encode("utf-8", "surrogatepass"))
            out.clear()
    h.update("".join(out).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _marshalled_ints(keys: list[Any]) -> bytes | None:
    """``marshal`` (version 2) of a list of plain ints within 32 bits; None for any other list. In that version
    a list is ``[`` and its length, then each int ``i`` and four bytes: so a type byte ``i`` every five bytes
    from the sixth, and nothing else, proves that every item was one (a bool, a bigger int, a float or a str
    is written otherwise, an int subclass not at all)."""
    try:
        data = marshal.dumps(keys, 2)
    except ValueError:  # an object marshal has no type for
        return None
    n = len(keys)
    if len(data) != 5 + 5 * n or data[5::5] != b"i" * n:
        return None
    return data


def _packed(keys: list[Any]) -> tuple[bytes | memoryview, ...] | None:
    """The packed input of a list of plain ints or plain strings (None for any other list); inside
    ``legacy_chunk_hashes("packed")`` ints as batchflows 0.12-0.14 packed them (8 bytes each, whatever their size)."""
    first = type(keys[0])
    if first is int and _legacy.get() is None and (data := _marshalled_ints(keys)) is not None:
        return b"\x00m", data
    if first is not int and first is not str:
        return None
    kinds = set(map(type, keys))
    if kinds == {int}:
        try:
            values = array.array("q", keys)
        except OverflowError:  # beyond 64 bits: the canonical encoding
            return None
        return b"\x00q", memoryview(values).cast("B")
    if kinds == {str}:
        lengths = array.array("q", map(len, keys))
        return b"\x00s", memoryview(lengths).cast("B"), "".join(keys).encode("utf-8", "surrogatepass")
    return None


HashForm = Literal["packed", "canonical"]
LEGACY_FORMS: tuple[HashForm, ...] = ("packed", "canonical")


@contextlib.contextmanager
def legacy_chunk_hashes(form: HashForm = "canonical") -> Iterator[None]:
    """Inside: :func:`chunk_hash` hashes chunks as an earlier version did, so a run that version recorded is
    recognized (run.py asks when a recorded hash differs): ``"packed"`` as batchflows 0.12-0.14 did (every
    chunk of plain ints as 8-byte values), ``"canonical"`` as 0.11 and earlier did (every item encoded
    canonically). The forms to try are :data:`LEGACY_FORMS`."""
    token = _legacy.set(form)
    try:
        yield
    finally:
        _legacy.reset(token)


_legacy: contextvars.ContextVar[HashForm | None] = contextvars.ContextVar("batchflows_legacy_chunk_hash",
                                                                           default=None)


# --------------------------------------------------------------------------- handler identity


@dataclasses.dataclass(frozen=True)
class Identity:
    """``text`` goes into cache keys; ``unstable`` lists bound parts that could not be hashed."""

    name: str
    text: str
    unstable: tuple[str, ...] = ()

    def note(self) -> str | None:
        if not self.unstable:
            return None
        return (f"handler {self.name}: {', '.join(self.unstable)} cannot be hashed stably, so changing it does "
                "not change the run's identity; when you change it, also change cache_version, or the finished "
                "chunks of this run_key are reused")


def callable_name(fn: Any) -> str:
    """``module:qualname`` of a callable (of the function under a partial or a bound method)."""
    if isinstance(fn, str):
        return fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.ismethod(fn):
        fn = fn.__func__
    target = fn if (inspect.isfunction(fn) or inspect.isbuiltin(fn) or isinstance(fn, type)) else type(fn)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{qualname}"


def handler_identity(fn: Any) -> Identity:
    """The identity of a handler: import path plus bound arguments (see the module docstring)."""
    unstable: list[str] = []
    text = _identity(fn, unstable, depth=0)
    return Identity(name=callable_name(fn), text=digest(text), unstable=tuple(dict.fromkeys(unstable)))


def _state(label: str, value: Any, unstable: list[str], depth: int) -> str:
    if callable(value) and not isinstance(value, type) and (
            inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial)):
        return _identity(value, unstable, depth + 1)
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, type):
        return f"class {_qualname(value)}"
    try:
        return canonical(value, where=label)
    except UnhashableItem:
        unstable.append(f"{label} ({_qualname(value)})")
        return f"unstable {_qualname(value)}"


def _identity(fn: Any, unstable: list[str], depth: int) -> str:
    if isinstance(fn, str):
        return f"path {fn}"
    if depth > 8:
        return f"deep {callable_name(fn)}"
    if isinstance(fn, functools.partial):
        args = _state("a partial's positional arguments", list(fn.args), unstable, depth)
        kwargs = _state("a partial's keyword arguments", dict(fn.keywords), unstable, depth)
        return f"partial({_identity(fn.func, unstable, depth + 1)}; {args}; {kwargs})"
    if inspect.ismethod(fn):
        owner = _instance_state(fn.__self__, unstable, depth)
        return f"method({_identity(fn.__func__, unstable, depth + 1)} of {owner})"
    if inspect.isfunction(fn):
        parts = [f"function {callable_name(fn)}"]
        code = fn.__code__
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the def)
                continue
            parts.append(f"{name}={_state(f'closure cell {name!r}', value, unstable, depth)}")
        if fn.__defaults__:
            parts.append("defaults=" + _state("default arguments", list(fn.__defaults__), unstable, depth))
        if fn.__kwdefaults__:
            parts.append("kwdefaults=" + _state("keyword defaults", dict(fn.__kwdefaults__), unstable, depth))
        return "; ".join(parts)
    if inspect.isbuiltin(fn) or isinstance(fn, type):
        return f"builtin {callable_name(fn)}"
    return f"object({_instance_state(fn, unstable, depth)})"  # a callable instance


def _instance_state(obj: Any, unstable: list[str], depth: int) -> str:
    label = f"the instance of {_qualname(obj)}"
    if isinstance(obj, type):
        return f"class {_qualname(obj)}"
    try:
        return canonical(obj, where=label)
    except UnhashableItem:
        pass
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        parts = [f"{_qualname(obj)}"]
        for name in sorted(attrs):
            parts.append(f"{name}={_state(f'attribute {name!r} of {_qualname(obj)}', attrs[name], unstable, depth)}")
        return "{" + "; ".join(parts) + "}"
    unstable.append(label)
    return f"unstable {_qualname(obj)}"


__all__ = [
    "LEGACY_FORMS",
    "HashForm",
    "Identity",
    "UnhashableItem",
    "callable_name",
    "canonical",
    "chunk_hash",
    "digest",
    "handler_identity",
    "legacy_chunk_hashes",
    "value_hash",
]
