"""Turn items into HTTP requests: full request specs or templates, idempotency keys, base_url checks.

Kept apart from the client so it stays pure (no sockets) and cheap to test. Rules:

* An item is a **full request spec** when it is a mapping with ``path`` or ``url`` and only the keys
  ``method, path, url, params, json, headers``. Anything else is **data** rendered into the
  template's ``path_template`` (``"/users/{id}"``, values percent-encoded as one path segment) and
  ``json_template`` (any JSON-able structure; a string leaf that is exactly ``"{name}"`` takes the
  item's value with its type, other string leaves are formatted as text).
* A placeholder missing from the item is an ``ItemError`` naming it and the item's keys: that item
  fails, the run goes on.
* Non-GET/HEAD requests get an ``Idempotency-Key`` derived from method, target and body, so retries
  and resumed runs send the same key and the server can drop duplicates.
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tasks.core import CREDENTIAL_PARAMS, ConfigError, ItemError, redact_text
from tasks.core.stored_params import mask_run_parameters, mask_url_password

SPEC_KEYS = frozenset({"method", "path", "url", "params", "json", "headers"})
SENSITIVE_HEADER_WORDS = ("auth", "cookie", "token", "secret", "password", "api-key", "apikey", "api_key", "signature",
                          "credential", "session", "private")
_PLAIN_KEY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})  # sent by batchflows itself, no secret
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_URL = TypeAdapter(AnyHttpUrl)


@dataclass(frozen=True)
class RequestSpec:
    """One concrete request. ``url`` is a path (joined to the client's base_url) or an absolute URL."""

    method: str
    url: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class RequestTemplate(BaseModel):
    """How data items become requests (the api_bulk parameters of the same names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field("GET", description="HTTP method for templated items.")
    path_template: str = Field("/{id}", description="Path with {placeholders} filled from each item.")
    json_template: Any = Field(None, description="JSON body whose string leaves may hold {placeholders}.")
    headers: dict[str, str] | None = Field(None, description="Extra headers on every request.")
    idempotency_keys: bool = Field(True, description="Send Idempotency-Key on non-GET requests.")
    idempotency_namespace: str = Field(
        "", description="Mixed into keys; set it (e.g. to a run_key) to make two runs' keys differ."
    )


def validate_base_url(base_url: str) -> str:
    """Return ``base_url`` without a trailing slash, or raise ConfigError saying what is wrong."""
    try:
        _URL.validate_python(base_url)
    except ValidationError as exc:
        reason = "; ".join(e["msg"] for e in exc.errors())
        msg = (
            f"base_url {redact_text(str(base_url))!r} is not a valid http(s) URL ({reason}); "
            "expected something like 'https://api.example.com/v1'"
        )
        raise ConfigError(msg) from None
    return base_url.rstrip("/")


def is_sensitive_header(name: str) -> bool:
    """True for headers that carry credentials (Authorization, Cookie, X-Api-Key, X-Auth-Token, and any name
    ending in ``key`` such as Azure's Ocp-Apim-Subscription-Key or X-Functions-Key, but Idempotency-Key)."""
    low = name.lower().strip()
    if low in _PLAIN_KEY_HEADERS:
        return False
    return low.endswith("key") or any(word in low for word in SENSITIVE_HEADER_WORDS)


def is_sensitive_param(name: str) -> bool:
    """True for query parameters that carry credentials (``api_key``, ``access_token``, ``sig``, ...)."""
    return name.lower() in CREDENTIAL_PARAMS


def refuse_sensitive_params(url: str, params: Mapping[str, Any] | None, *, flow: str, what: str = "url/params") -> None:
    """ConfigError for credential query parameters in flow parameters (Prefect stores and shows those);
    ``what`` names the parameters (in the warning when masking their stored values fails)."""
    in_url = [key for key, _ in parse_qsl(url.partition("?")[2], keep_blank_values=True) if is_sensitive_param(key)]
    names = sorted({*in_url, *(k for k in (params or {}) if is_sensitive_param(k))})
    if names:
        pairs = [pair for pair in url.partition("?")[2].partition("#")[0].split("&")
                 if is_sensitive_param(unquote(pair.partition("=")[0]))]
        values = [str(v) for k, v in (params or {}).items() if is_sensitive_param(k) and v is not None]
        mask_run_parameters({**{pair: pair.partition("=")[0] + "=***" for pair in pairs}, **dict.fromkeys(values, "***")},
                            what=what, secret="credential query parameter(s)")
    _refuse_credentials(names, what="query parameter(s)", instead="secret_params", flow=flow)


def url_password(url: str) -> str | None:
    """The password of ``user:password@`` in a URL (percent-decoded, as it is sent), or None."""
    try:
        password = urlsplit(url).password
    except ValueError:  # an invalid port or host: validate_base_url names it
        return None
    return unquote(password) if password else None


_BASIC_AUTH_ADVICE = ("drop user:password@ from it, save the header value 'Basic <base64 of user:password>' in a "
                      "Prefect Secret block and pass secret_headers={'Authorization': '<Secret block name>'}. The Python "
                      "function moves it out of the parameters itself.")


def refuse_url_password(url: str, *, what: str, flow: str, advice: str = _BASIC_AUTH_ADVICE) -> None:
    """ConfigError for a URL with a password given as a flow parameter (Prefect stores and shows those), once the
    password is masked in the run's stored parameters; ``advice`` says what to do instead."""
    if url_password(url) is not None:
        mask_run_parameters({url: mask_url_password(url)}, what=what, secret="password")
        msg = (f"{flow}: {what} {redact_text(url)!r} holds a password, and flow parameters are stored by Prefect and "
               f"shown in its UI and API; {advice}")
        raise ConfigError(msg)


def refuse_sensitive_headers(headers: Mapping[str, str] | None, *, flow: str) -> None:
    """ConfigError for credential headers given as flow parameters (Prefect stores and shows those)."""
    names = sorted(name for name in (headers or {}) if is_sensitive_header(name))
    if names and headers:
        mask_run_parameters(dict.fromkeys((str(headers[n]) for n in names if headers[n]), "***"), what="headers",
                            secret="credential header(s)")
    _refuse_credentials(names, what="header(s)", instead="secret_headers", flow=flow,
                        bearer=" (or auth_secret='<block>' for a bearer token)")


def _refuse_credentials(names: list[str], *, what: str, instead: str, flow: str, bearer: str = "") -> None:
    if names:
        example = {name: "<Secret block name>" for name in names}
        msg = (
            f"{flow}: {what} {names} carry credentials, and flow parameters are stored by Prefect and shown in its "
            f"UI and API; save each value in a Prefect Secret block and pass {instead}={example}{bearer}. "
            "The Python function moves them out of the parameters itself."
        )
        raise ConfigError(msg)


def check_template(node: Any, where: str) -> None:
    """Malformed templates are a ConfigError before any request (missing item keys are per-item errors)."""
    if isinstance(node, str):
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(node) if name is not None]
        except ValueError as exc:
            msg = f"{where} {node!r} is malformed ({exc}); use {{name}} placeholders and {{{{ }}}} for literal braces"
            raise ConfigError(msg) from None
        if any(name == "" for name, _, _ in fields):
            msg = f"{where} {node!r} has an empty {{}} placeholder; name it after an item key, e.g. {{id}}"
            raise ConfigError(msg)
        for name, spec, conv in fields:
            if conv not in (None, "r", "s", "a"):
                msg = f"{where} {node!r}: {{{name}!{conv}}} is not a conversion; use !r, !s or !a (or none)"
                raise ConfigError(msg)
            if "{" in spec:
                msg = (f"{where} {node!r}: the format spec of {{{name}}} holds a placeholder ({spec!r}); "
                       "write the spec out, e.g. {amount:.2f}")
                raise ConfigError(msg)
    elif isinstance(node, dict):
        for value in node.values():
            check_template(value, where)
    elif isinstance(node, list | tuple):
        for value in node:
            check_template(value, where)


def is_request_spec(item: Any) -> bool:
    """True when ``item`` is a full request spec rather than data for the templates."""
    return isinstance(item, Mapping) and ("path" in item or "url" in item) and set(item) <= SPEC_KEYS


def build_request(item: Any, template: RequestTemplate | None = None) -> RequestSpec:
    """The request for one item (see the module docstring for the rules)."""
    template = template or RequestTemplate()
    if is_request_spec(item):
        method = str(item.get("method") or template.method).upper()
        url, params = _merge_query(str(item.get("url") or item.get("path")), item.get("params"))
        spec = RequestSpec(
            method=method,
            url=url,
            params=params,
            json=item.get("json"),
            headers={**(template.headers or {}), **dict(item.get("headers") or {})},
        )
    else:
        if not isinstance(item, Mapping):
            item = {"id": item}
        spec = RequestSpec(
            method=template.method.upper(),
            url=_render_path(template.path_template, item),
            json=render_json(template.json_template, item) if template.json_template is not None else None,
            headers=dict(template.headers or {}),
        )
    if (template.idempotency_keys and spec.method not in IDEMPOTENT_METHODS
            and not any(k.lower() == "idempotency-key" for k in spec.headers)):
        spec.headers["Idempotency-Key"] = idempotency_key(spec, namespace=template.idempotency_namespace)
    return spec


def path_renderer(template: RequestTemplate) -> Callable[[Any], str | None] | None:
    """item -> the path :func:`build_request` gives it, for a template whose requests differ only in their path:
    no ``json_template``, no template headers, no ``Idempotency-Key`` (an idempotent method, or keys off). The
    function returns None for an item that is a full request spec (build it with :func:`build_request`) and raises
    what build_request raises for a placeholder the item lacks. None when the template is not of that kind.

    Why: api_bulk's hot loop builds one request per item; for the common ``GET /users/{id}`` this skips the
    RequestSpec, its header dict and the spec checks (a quarter of the loop's own CPU per request, measured)."""
    method = template.method.upper()
    if template.json_template is not None or template.headers or (
            template.idempotency_keys and method not in IDEMPOTENT_METHODS):
        return None
    text = template.path_template
    names = _parsed(text)
    plain = _plain(text)

    def render(item: Any) -> str | None:
        if type(item) is dict or isinstance(item, Mapping):
            if ("path" in item or "url" in item) and set(item) <= SPEC_KEYS:
                return None
        else:
            item = {"id": item}
        if not names:
            return text.format_map({})
        if plain:
            return text.format_map({name: _segment(_lookup(item, name, text)) for name in names})
        return _render(text, item, _segment)

    return render


def _segment(value: Any) -> str:
    """One path segment, percent-encoded (``quote(safe="")``; plain ASCII letters and digits pass as they are).
    A whole segment ``.`` or ``..`` has its dots encoded (``%2E%2E``): URL parsers remove such dot-segments
    (RFC 3986 section 5.2.4), which would send the request to another resource."""
    text = str(value)
    if text.isascii() and text.isalnum():
        return text
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def _merge_query(url: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """Fold the URL's own query into ``params`` (httpx would drop it when params are given)."""
    if not params:
        return url, None
    if "?" not in url:
        return url, dict(params)
    base, query = url.split("?", 1)
    return base, {**query_params(query), **params}


def query_params(query: str) -> dict[str, str | list[str]]:
    """A query string as params for httpx, every value kept: a repeated key (``a=1&a=2``) becomes a list, which
    httpx sends as the same repeated key."""
    merged: dict[str, str | list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        previous = merged.get(key)
        if previous is None:
            merged[key] = value
        else:
            merged[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
    return merged


def idempotency_key(spec: RequestSpec, *, namespace: str = "") -> str:
    """Deterministic key of a request: same method, target, params and body -> same key, in any run."""
    canonical = json.dumps(
        [namespace, spec.method, spec.url, spec.params, spec.json], sort_keys=True, separators=(",", ":"), default=str
    )
    return "bf-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def template_names(node: Any) -> list[str]:
    """Every ``{placeholder}`` name in a template (a string, or the string leaves of JSON)."""
    if isinstance(node, str):
        return _placeholders(node)
    if isinstance(node, Mapping):
        return [n for v in node.values() for n in template_names(v)]
    if isinstance(node, list | tuple):
        return [n for v in node for n in template_names(v)]
    return []


def _placeholders(text: str) -> list[str]:
    return list(_parsed(text))


_Field = tuple[str, str | None, str | None, str | None]  # literal text, placeholder name, format spec, conversion


@functools.lru_cache(maxsize=512)
def _fields(text: str) -> tuple[_Field, ...]:
    """A template parsed once per template (a chunk renders the same one per item)."""
    try:
        return tuple(string.Formatter().parse(text))
    except ValueError as exc:
        msg = f"template {text!r} is malformed ({exc}); use {{name}} placeholders and {{{{ }}}} for literal braces"
        raise ConfigError(msg) from None


@functools.lru_cache(maxsize=512)
def _parsed(text: str) -> tuple[str, ...]:
    """A template's placeholder names."""
    return tuple(name for _, name, _, _ in _fields(text) if name is not None)


@functools.lru_cache(maxsize=512)
def _plain(text: str) -> bool:
    """Whether ``str.format_map`` renders the template as :func:`_render` does: bare ``{name}`` placeholders only
    (no format spec, no conversion, no ``.``/``[`` that format_map would take for attribute or index access)."""
    return all(name is None or (not spec and conv is None and "." not in name and "[" not in name)
               for _, name, spec, conv in _fields(text))


def _render(text: str, item: Mapping[str, Any], place: Callable[[Any], str]) -> str:
    """The template with each placeholder's value converted and formatted as ``str.format`` would, then
    ``place``d (percent-encoded as a path segment, or as it is in JSON text). A value its format spec or
    conversion refuses (``{id:05d}`` with ``"abc"``) is an ItemError naming the placeholder: that item fails."""
    out: list[str] = []
    for literal, name, spec, conv in _fields(text):
        out.append(literal)
        if name is None:
            continue
        value = _lookup(item, name, text)
        if spec or conv is not None:
            value = _formatted(value, name, spec or "", conv, text)
        out.append(place(value))
    return "".join(out)


_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}


def _formatted(value: Any, name: str, spec: str, conv: str | None, text: str) -> str:
    try:
        return format(_CONVERSIONS[conv](value) if conv is not None else value, spec)
    except (ValueError, TypeError, KeyError) as exc:
        shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        msg = (f"placeholder {shown} of template {text!r} cannot format the item's {name!r} "
               f"{redact_text(repr(value))[:200]} ({exc})")
        raise ItemError(msg, category="bad_item") from None


def _lookup(item: Mapping[str, Any], name: str, text: str) -> Any:
    if name == "":
        msg = f"template {text!r} has an empty {{}} placeholder; name it after an item key, e.g. {{id}}"
        raise ConfigError(msg)
    if name not in item:
        keys = sorted(map(str, item))
        msg = f"placeholder {{{name}}} of template {text!r} is not a key of the item; the item has keys {keys}"
        raise ItemError(msg, category="bad_item")
    return item[name]


def _render_path(text: str, item: Mapping[str, Any]) -> str:
    names = _parsed(text)
    if not names:
        return text.format_map({})  # "{{" -> "{"
    if _plain(text):
        return text.format_map({name: _segment(_lookup(item, name, text)) for name in names})
    return _render(text, item, _segment)


def render_json(node: Any, item: Mapping[str, Any]) -> Any:
    if isinstance(node, str):
        names = _parsed(node)
        if len(names) == 1 and node == "{" + names[0] + "}":
            return _lookup(item, names[0], node)
        if not names:
            return node.format_map({})
        if _plain(node):
            return node.format_map({name: _lookup(item, name, node) for name in names})
        return _render(node, item, _text)
    if isinstance(node, Mapping):
        return {key: render_json(value, item) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [render_json(value, item) for value in node]
    return node


def _text(value: Any) -> str:
    return format(value, "")  # what format_map writes for a bare {name}


__all__ = [
    "IDEMPOTENT_METHODS",
    "SENSITIVE_HEADER_WORDS",
    "SPEC_KEYS",
    "RequestSpec",
    "RequestTemplate",
    "build_request",
    "check_template",
    "idempotency_key",
    "is_request_spec",
    "is_sensitive_header",
    "is_sensitive_param",
    "path_renderer",
    "query_params",
    "refuse_sensitive_headers",
    "refuse_sensitive_params",
    "refuse_url_password",
    "render_json",
    "template_names",
    "url_password",
    "validate_base_url",
]
