"""When a NATS connection must use TLS, and when the server offers it (pure)."""

from __future__ import annotations

from pathlib import Path

from eventstore.natstls import NatsTls, offers_tls


def test_tls_is_required_by_a_tls_url_or_a_ca_file() -> None:
    assert not NatsTls().required_for(["nats://h:4222"])
    assert NatsTls().required_for(["nats://h1:4222", "tls://h2:4222"])
    assert NatsTls(Path("ca.pem")).required_for(["nats://h:4222"])


def test_a_server_offers_tls_when_it_requires_or_allows_it() -> None:
    assert offers_tls({"tls_required": True})
    assert offers_tls({"tls_available": True})
    assert not offers_tls({"tls_required": False})
    assert not offers_tls({})
