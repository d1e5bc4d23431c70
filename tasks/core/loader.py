"""Resolve ``"pkg.mod:fn"`` import paths with clear errors; keep in-process objects behind handles."""

from __future__ import annotations

import importlib
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tasks.core.errors import ConfigError

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MEM_PREFIX = "mem:"
_registry: dict[str, Any] = {}
_registry_lock = threading.Lock()


def register_object(obj: Any) -> str:
    """Keep an in-memory object (iterable, generator, callable) in this process; return a ``mem:`` handle.

    Prefect serializes flow parameters before the flow body runs, which consumes iterators and cannot
    carry closures to the API; a handle is a plain string that can, while the object stays here.
    """
    handle = f"{MEM_PREFIX}{uuid.uuid4().hex}"
    with _registry_lock:
        _registry[handle] = obj
    return handle


def release_object(handle: str) -> None:
    with _registry_lock:
        _registry.pop(handle, None)


def is_handle(value: object) -> bool:
    return isinstance(value, str) and value.startswith(MEM_PREFIX)


def resolve_handle(handle: str, *, what: str = "object") -> Any:
    with _registry_lock:
        if handle not in _registry:
            msg = (
                f"{what} handle {handle!r} is not registered in this process; in-memory {what}s work only "
                "when the flow is called from Python in the same process (use 'pkg.mod:fn' for deployments)"
            )
            raise ConfigError(msg)
        return _registry[handle]


def is_import_path(value: object) -> bool:
    return isinstance(value, str) and bool(_IMPORT_PATH.match(value))


def load_object(path: str, *, what: str = "object") -> Any:
    """Import ``"pkg.mod:attr.sub"``; every failure is a ConfigError saying what to fix."""
    if not is_import_path(path):
        msg = f"{what} {path!r} is not an import path; use 'package.module:function'"
        raise ConfigError(msg)
    module_name, _, attr_path = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        msg = f"{what} {path!r}: module {exc.name!r} cannot be imported; check the spelling and that it is installed"
        raise ConfigError(msg) from None
    except Exception as exc:
        msg = f"{what} {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        raise ConfigError(msg) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            msg = f"{what} {path!r}: {part!r} not found in {module_name!r}; it has {names}"
            raise ConfigError(msg) from None
    return obj


def load_callable(spec: str | Callable[..., Any], *, what: str = "handler") -> Callable[..., Any]:
    if is_handle(spec):
        fn = resolve_handle(spec, what=what)  # type: ignore[arg-type]
    else:
        fn = load_object(spec, what=what) if isinstance(spec, str) else spec
    if not callable(fn):
        msg = f"{what} {spec!r} is a {type(fn).__name__}, not a callable; pass a function or 'pkg.mod:fn'"
        raise ConfigError(msg)
    return fn


__all__ = [
    "MEM_PREFIX",
    "is_handle",
    "is_import_path",
    "load_callable",
    "load_object",
    "register_object",
    "release_object",
    "resolve_handle",
]
