from __future__ import annotations

from pydantic import SecretStr

from tasks.core.redact import MASK, redact, redact_text, register_secret


def test_url_passwords_tokens_and_headers_are_masked() -> None:
    text = (
        "postgresql://bob:hunter2@db:5432/x https://api/x?api_key=abc123&page=2 "
        "Authorization: Bearer abcdefghijk"
    )
    out = redact_text(text)
    assert "hunter2" not in out and "abc123" not in out and "abcdefghijk" not in out
    assert "bob:***@db:5432" in out and "page=2" in out


def test_registered_secret_values_are_masked_anywhere() -> None:
    register_secret(SecretStr("s3cr3t-token-value"))
    assert "s3cr3t" not in redact_text("error: token s3cr3t-token-value refused")
    assert redact({"note": "x s3cr3t-token-value y"}) == {"note": f"x {MASK} y"}


def test_sensitive_keys_are_masked_whole() -> None:
    assert redact({"headers": {"Authorization": "Basic Zm9vOmJhcg==", "Accept": "json"}}) == {
        "headers": {"Authorization": MASK, "Accept": "json"}
    }
