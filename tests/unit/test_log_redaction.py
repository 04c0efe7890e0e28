"""Secrets never reach a log line: secret-bearing keys are redacted, token / bearer /
URL-password shapes are scrubbed from any string, and ids that merely name a secret
(`token_id`) stay readable — checked through the real structlog configuration."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from cli import logging as convoy_logging

SECRET = "cvy_tok-0123abcd_S3cr3tS3cr3tS3cr3tS3cr3t"



def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_token_passed_as_a_log_field_is_redacted(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("convoy.test")
    log.info(
        "issued",
        token=SECRET,
        token_id="tok-0123abcd",
        authorization=f"Bearer {SECRET}",
        password="hunter2",
        credential_secret="abc",
        headers={"Authorization": "Basic dXNlcjpwYXNz", "Accept": "json"},
    )
    text = json_logs.getvalue()
    assert SECRET not in text and "hunter2" not in text and "dXNlcjpwYXNz" not in text and '"abc"' not in text
    [line] = lines(json_logs)
    assert line["token"] == line["authorization"] == line["password"] == line["credential_secret"] == "***"
    assert line["token_id"] == "tok-0123abcd"
    assert line["headers"] == {"Authorization": "***", "Accept": "json"}
    assert line["level"] == "info" and line["event"] == "issued" and "timestamp" in line


def test_secret_shapes_in_free_text_are_scrubbed(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("convoy.test")
    log.warning(
        f"could not authenticate with {SECRET}",
        error="connect to postgresql://convoy:pa55word@127.0.0.1:5432/convoy failed",
        attempts=["Bearer abc.def.ghi", 3],
    )
    text = json_logs.getvalue()
    assert SECRET not in text and "pa55word" not in text and "abc.def.ghi" not in text
    [line] = lines(json_logs)
    assert line["event"] == "could not authenticate with cvy_tok-0123abcd_***"
    assert line["error"] == "connect to postgresql://convoy:***@127.0.0.1:5432/convoy failed"
    assert line["attempts"] == ["Bearer ***", 3]


def test_bound_context_is_merged_and_redacted_too(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("convoy.test")
    with structlog.contextvars.bound_contextvars(correlation_id="c-1", secret="s"):
        log.info("inside")
    [line] = lines(json_logs)
    assert line["correlation_id"] == "c-1" and line["secret"] == "***"


def test_key_classification() -> None:
    secret = ["token", "admin_token", "password", "system_password", "Authorization", "credential", "api-key",
              "token_secret", "credential_secret"]
    naming = ["token_id", "credential_id", "credential_file", "token_name", "tokens_count", "event", "position"]
    assert [k for k in secret if not convoy_logging.is_secret_key(k)] == []
    assert [k for k in naming if convoy_logging.is_secret_key(k)] == []


def test_the_format_comes_from_the_flag_or_the_environment() -> None:
    assert convoy_logging.resolve_format(None, {}) == "console"
    assert convoy_logging.resolve_format(None, {"CONVOY_LOG_FORMAT": "JSON"}) == "json"
    assert convoy_logging.resolve_format("console", {"CONVOY_LOG_FORMAT": "json"}) == "console"
    with pytest.raises(Exception, match="not one of"):
        convoy_logging.resolve_format("xml", {})


def test_url_credentials_of_every_shape_are_scrubbed_from_fields_and_exceptions(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("convoy.test")
    try:
        raise ConnectionError("cannot reach nats://agent:Ex-C3pt10n-pw@10.0.0.1:4222")
    except ConnectionError:
        log.exception(
            "connect failed",
            servers="nats://a:Pw-One@h1:4222,nats://a:Pw-Two@h2:4222",
            dsn="host=db user=convoy password=Pw-Three dbname=convoy",
            url="postgresql://db/convoy?sslmode=require&password=Pw-Four",
            nested={"hook": "https://hooks.example/x?token=Pw-Five"},
        )
    text = json_logs.getvalue()
    for secret in ("Ex-C3pt10n-pw", "Pw-One", "Pw-Two", "Pw-Three", "Pw-Four", "Pw-Five"):
        assert secret not in text, (secret, text)
    [line] = lines(json_logs)
    assert line["servers"] == "nats://a:***@h1:4222,nats://a:***@h2:4222"
    assert line["dsn"] == "host=db user=convoy password=*** dbname=convoy"
    assert "nats://agent:***@10.0.0.1:4222" in text


def test_console_tracebacks_are_scrubbed_too(json_logs: io.StringIO) -> None:  # (restores logging after)
    out = io.StringIO()
    convoy_logging.configure("console", stream=out)
    try:
        raise ConnectionError("cannot reach postgresql://convoy:C0ns0le-pw@db:5432/convoy")
    except ConnectionError:
        structlog.get_logger("convoy.test").exception("connect failed")
    assert "C0ns0le-pw" not in out.getvalue() and "convoy:***@db" in out.getvalue(), out.getvalue()


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("BEARER abc.def", "BEARER ***"),
        ("sent bAsIc dXNlcjpwYXNz", "sent bAsIc ***"),
        (f"é {SECRET}", "é cvy_tok-0123abcd_***"),
        ("café Bearer abc", "café Bearer ***"),
        ("nothing to hide here", "nothing to hide here"),
    ],
)
def test_scrub_skips_a_pattern_only_when_its_word_is_absent(text: str, scrubbed: str) -> None:
    # scrub() runs a pattern only on text holding its leading word (any case); these
    # are the shapes that fast path must still catch.
    assert convoy_logging.scrub(text) == scrubbed
