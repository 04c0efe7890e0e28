"""services.secrets.sealing: a value sealed to one request's key opens with that key only,
and only for the instance, runtime and secret name it was sealed for."""

from __future__ import annotations

import dataclasses

import pytest

from services.secrets import sealing

BOUND = {"instance": "inst", "runtime": "rt-a", "name": "db-password"}


def test_a_sealed_value_opens_with_the_request_key_only() -> None:
    key = sealing.RequestKey()
    sealed = sealing.seal(key.public, "pä55-word", **BOUND)
    assert key.open(sealed, **BOUND) == "pä55-word"
    assert b"p\xc3\xa455-word" not in sealed.ciphertext + sealed.nonce + sealed.ephemeral_public_key
    with pytest.raises(sealing.SealingError, match="convoy:db-password"):
        sealing.RequestKey().open(sealed, **BOUND)
    # Each seal uses a fresh key and nonce: two answers share nothing.
    again = sealing.seal(key.public, "pä55-word", **BOUND)
    assert again.ephemeral_public_key != sealed.ephemeral_public_key and again.ciphertext != sealed.ciphertext


@pytest.mark.parametrize("field", ["instance", "runtime", "name"])
def test_an_answer_does_not_open_for_another_instance_runtime_or_name(field: str) -> None:
    key = sealing.RequestKey()
    sealed = sealing.seal(key.public, "v", **BOUND)
    with pytest.raises(sealing.SealingError):
        key.open(sealed, **{**BOUND, field: BOUND[field] + "x"})


@pytest.mark.parametrize("part", ["nonce", "ciphertext", "ephemeral_public_key"])
def test_a_tampered_answer_does_not_open(part: str) -> None:
    key = sealing.RequestKey()
    sealed = sealing.seal(key.public, "value", **BOUND)
    raw = bytearray(getattr(sealed, part))
    raw[0] ^= 1
    with pytest.raises(sealing.SealingError):
        key.open(dataclasses.replace(sealed, **{part: bytes(raw)}), **BOUND)


@pytest.mark.parametrize("public", [b"", b"\x01" * 31, b"\x00" * 32])
def test_an_unusable_public_key_is_refused(public: bytes) -> None:
    with pytest.raises(sealing.SealingError, match="public key"):
        sealing.seal(public, "value", **BOUND)
