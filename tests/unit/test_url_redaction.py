"""`redact_url` hides the password of every address shape Convoy is given and leaves
everything else readable (eventstore.redaction)."""

from __future__ import annotations

import pytest

from eventstore.redaction import redact_text, redact_url


@pytest.mark.parametrize(
    ("given", "printed"),
    [
        ("postgresql://convoy:pw@127.0.0.1:5432/postgres", "postgresql://convoy:***@127.0.0.1:5432/postgres"),
        ("postgres://u:p%40ss@db/convoy", "postgres://u:***@db/convoy"),
        ("nats://agent:pw@h:4222", "nats://agent:***@h:4222"),
        ("nats://a:p1@h1:4222,nats://a:p2@h2:4222", "nats://a:***@h1:4222,nats://a:***@h2:4222"),
        ("tls://a:p@h:4222", "tls://a:***@h:4222"),
        ("redis://:pw@h", "redis://:***@h"),
        ("postgresql://u:raw@pass/word@host/db", "postgresql://u:***@host/db"),  # a raw @: more hidden, not less
        ("postgresql://db/convoy?sslmode=require&password=pw&x=1", "postgresql://db/convoy?sslmode=require&password=***&x=1"),
        ("https://hooks.example/h?token=abc#f", "https://hooks.example/h?token=***#f"),
        ("host=db user=convoy password=pw dbname=convoy", "host=db user=convoy password=*** dbname=convoy"),
        ("host=db password = 'p w\\' x' dbname=convoy", "host=db password = *** dbname=convoy"),
    ],
)
def test_the_password_is_hidden_and_the_rest_stays(given: str, printed: str) -> None:
    assert redact_url(given) == printed


@pytest.mark.parametrize(
    "plain",
    ["nats://127.0.0.1:4222", "http://host:80/path", "http://user@host/", "postgresql:///convoy", "token_id=abc",
     "mypassword=x", ""],
)
def test_addresses_without_a_password_are_unchanged(plain: str) -> None:
    assert redact_url(plain) == plain


def test_urls_inside_free_text() -> None:
    text = "connect to nats://u:pw@h:1 failed; then postgresql://c:pw2@db/x (password=pw3)"
    assert redact_text(text) == "connect to nats://u:***@h:1 failed; then postgresql://c:***@db/x (password=***)"
