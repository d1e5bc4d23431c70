from __future__ import annotations

import pytest
from pydantic import SecretStr

from tasks.core.redact import MASK, credentials_in, redact, redact_text, register_secret


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


def test_a_url_password_with_an_unescaped_at_is_masked_whole() -> None:
    text = "cannot connect: postgresql://user:s3cret@Pa55word-xyz@127.0.0.1:5432/db?x=a@b and mail me@example.com"
    out = redact_text(text)
    assert "s3cret" not in out and "Pa55word" not in out
    assert "postgresql://user:***@127.0.0.1:5432/db?x=a@b and mail me@example.com" in out
    assert credentials_in(text) == {"s3cret@Pa55word-xyz"}
    assert redact_text("https://host:8080/users/@me") == "https://host:8080/users/@me"  # no password: untouched


def test_words_about_data_are_not_masked_credentials_are() -> None:
    """'token expired' and 'Basic monthly' are a user's words; a value after Bearer, a credential-looking value
    after Basic or token, and token=/token: assignments are masked."""
    for text in ["token expired once", "Basic monthly subscription", "the Basic Subscription plan",
                 "refresh the token before it expires", "the bearer of bad news", "use token abcdefgh"]:
        assert redact_text(text) == text
    assert redact_text("401 for token Bearer abcdefghijkl") == "401 for token Bearer ***"
    assert redact_text("Authorization: Basic abcdefgh") == "Authorization: Basic ***"
    assert redact_text("sent Basic dXNlcjpwYXNz and token ghp_16C7e42F292c6912") == "sent Basic *** and token ***"
    assert redact_text("Basic Zm9vOmJhcg== refused") == "Basic *** refused"
    assert redact_text('token=abc123 access_token: "xyz" {"refresh_token": "qq7"}') == (
        'token=*** access_token: "***" {"refresh_token": "***"}')


HEADER_CREDENTIALS = {  # as headers are written: the value is masked whatever it looks like
    "Authorization: Bearer abc.def": "Authorization: Bearer ***",
    "Authorization: Bearer abcdefghijk": "Authorization: Bearer ***",
    "authorization=Basic dXNlcjpwdw==": "authorization=Basic ***",
    "Authorization: Basic abcdefgh": "Authorization: Basic ***",
    "Authorization:Bearer abc": "Authorization:Bearer ***",
    "Authorization = token xyz": "Authorization = token ***",
    "Proxy-Authorization: Basic abc": "Proxy-Authorization: Basic ***",
    "headers {'Authorization': 'token xyz'}": "headers {'Authorization': 'token ***'}",
    '{"Authorization": "Bearer abcdefgh", "Accept": "json"}': '{"Authorization": "Bearer ***", "Accept": "json"}',
    "{'authorization': 'xyz', 'accept': 'json'}": "{'authorization': '***', 'accept': 'json'}",
    "X-Api-Key: k3y": "X-Api-Key: ***",
    "Cookie: sid=abc": "Cookie: ***",
    "the authorization ghp_16C7e42F292c6912 was refused": "the authorization *** was refused",  # no ':', opaque
    "authorization Basic dXNlcjpwdw== refused": "authorization Basic *** refused",
}


@pytest.mark.parametrize(("text", "masked"), HEADER_CREDENTIALS.items(), ids=list(HEADER_CREDENTIALS))
def test_credential_headers_are_masked_in_every_written_form(text: str, masked: str) -> None:
    assert redact_text(text) == masked


@pytest.mark.parametrize("text", [
    "authorization failed for user bob", "Authorization failed", "authorization required",
    "Authorization header missing", "the authorization token expired", "the ['Authorization'] header carries it",
    "proxy-authorization required", "cookie consent banner", "check the api-key setting",
    "Authorization Basic monthly plan",
])
def test_header_names_in_prose_are_words_not_credentials(text: str) -> None:
    """The header rule masks a value after ``Authorization:`` / ``=`` (and a credential-looking one after the bare
    name, as 'token' and 'Basic' are handled); the word 'authorization' in a sentence keeps the sentence."""
    assert redact_text(text) == text
    assert redact({"message": text}) == {"message": text}
