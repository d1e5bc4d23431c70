"""Keep secrets out of logs, artifacts, outputs and dead letters.

Two layers: patterns that look like credentials (passwords in URLs, bearer tokens, ``token=``/``api_key=``
query parameters, Authorization headers) and exact values registered at run time with
:func:`register_secret` (tokens read from Secret blocks or settings).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from pydantic import SecretStr

MASK = "***"

# the password runs to the last '@' before the host: an unescaped '@' in it must not leave its tail in the text
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+(?:@[^@/?#\s]*)*)@")
# "Bearer <value>" always; "Basic <value>" and "token <value>" only when the value looks like a credential
# (:func:`_opaque`): "Basic monthly subscription" and "token expired" are words about data
_SCHEME = re.compile(r"(?i)\b((?:bearer|basic|token)(?:\s+(?:bearer|basic|token))?)\s+(?P<value>[A-Za-z0-9\-._~+/]{6,}=*)")
_TOKEN_ASSIGNMENT = re.compile(  # token=..., "access_token": "...", token: ...
    r"(?i)(\b(?:access_|refresh_|id_|auth_|api_)?token\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}]+")
CREDENTIAL_PARAMS = frozenset({
    "access_token", "token", "api_key", "apikey", "api-key", "key", "secret", "password", "passwd", "pwd", "sig",
    "signature", "client_secret", "auth", "refresh_token",
})  # query parameters that carry credentials: masked in text, kept out of flow-run parameters
_QUERY = re.compile(
    r"(?i)([?&;](?:" + "|".join(sorted(map(re.escape, CREDENTIAL_PARAMS), key=len, reverse=True)) + r")=)[^&#\s\"']+"
)
_HEADER_NAME = r"\b(?:proxy-authorization|authorization|x-api-key|api-key|cookie)\b"
_AUTH_SCHEME = r"(?:(?:bearer|basic|token|digest|negotiate)\s+)?"
# a header as headers are written (``Authorization: Bearer x``, ``authorization=Basic x``, ``{'Authorization': 'x'}``):
# its value is masked whatever it looks like
_HEADER = re.compile(rf"(?i)({_HEADER_NAME}[\"']?\s*[:=]\s*[\"']?{_AUTH_SCHEME})[^\s\"',}}]+")
# the name in prose, no ':' or '=': only a value that looks like a credential (:func:`_opaque`) is masked;
# "authorization failed for user bob" and "the authorization token expired" are words
_HEADER_IN_PROSE = re.compile(rf"(?i)({_HEADER_NAME}\s+{_AUTH_SCHEME})(?P<value>[^\s\"',}}]+)")
_SENSITIVE_KEYS = frozenset(
    {"authorization", "x-api-key", "api-key", "api_key", "apikey", "password", "passwd", "token", "access_token",
     "refresh_token", "client_secret", "secret", "cookie", "proxy-authorization"}
)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | SecretStr | None) -> None:
    """Remember an exact secret value so every later redaction masks it (values under 4 chars are ignored)."""
    if value is None:
        return
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(raw) >= 4:
        with _lock:
            _secrets.add(raw)


class RedactingFilter(logging.Filter):
    """Masks credentials in the records of a logger batchflows does not own (httpx logs every request URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def redact_logs(names: tuple[str, ...] = ("httpx", "httpcore")) -> None:
    """Attach one :class:`RedactingFilter` to each of these loggers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def redact_text(text: str) -> str:
    """Mask credentials in free text (messages, URLs, tracebacks)."""
    out = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    out = _QUERY.sub(lambda m: m.group(1) + MASK, out)
    out = _SCHEME.sub(_masked_scheme, out)
    out = _TOKEN_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, out)
    out = _HEADER.sub(lambda m: m.group(1) + MASK, out)
    out = _HEADER_IN_PROSE.sub(lambda m: m.group(1) + MASK if _opaque(m["value"]) else m.group(0), out)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def _masked_scheme(m: re.Match[str]) -> str:
    return f"{m.group(1)} {MASK}" if "bearer" in m.group(1).lower() or _opaque(m["value"]) else m.group(0)


def _opaque(value: str) -> bool:
    """A credential rather than a word: base64 padding, or 8+ characters mixing digits and letters or cases
    (``dXNlcjpwYXNz``, ``ghp_16C7e42F``, ``s3cr3t-value``; not ``expired``, ``monthly`` or ``Subscription``)."""
    core = value.rstrip("=")
    if len(core) < 8:
        return False
    if core != value:
        return True
    letters = any(c.isalpha() for c in core)
    return (letters and any(c.isdigit() for c in core)) or (
        any(c.isupper() for c in core[1:]) and any(c.islower() for c in core))


def redact(value: Any) -> Any:
    """Redact a JSON-like value recursively; values under sensitive keys are masked whole."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and k.lower() in _SENSITIVE_KEYS and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def credentials_in(value: Any) -> set[str]:
    """Credential values a request-like value carries: strings under sensitive keys, URL passwords and
    credential query parameters (``?api_key=...``). For masking them where they come back (a response
    body echoing its request) without registering every item's values process-wide."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(m["pw"] for m in _URL_PASSWORD.finditer(value))
        found.update(m.group(0)[len(m.group(1)):] for m in _QUERY.finditer(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.lower() in _SENSITIVE_KEYS and isinstance(v, str | int):
                found.add(str(v))
            else:
                found |= credentials_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= credentials_in(v)
    return {f for f in found if len(f) >= 4}


def mask_values(value: Any, secrets: set[str]) -> Any:
    """``value`` with every occurrence of ``secrets`` masked in its strings (JSON-like values)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: mask_values(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_values(v, secrets) for v in value]
    return value


__all__ = ["CREDENTIAL_PARAMS", "MASK", "RedactingFilter", "credentials_in", "mask_values", "redact", "redact_logs",
           "redact_text", "register_secret"]
