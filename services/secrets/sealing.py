"""Sealing a Convoy-kept secret to one agent's request: what travels on the bus instead of
the value.

An agent that needs `convoy:<name>` makes an X25519 key for that one request and sends
the public half (services/agent/secretclient.py). The control plane answers with the
value sealed to it (services/api/secretdelivery.py): a fresh X25519 key of its own, the
ECDH shared secret stretched by HKDF-SHA256 into an AES-256-GCM key, the value encrypted
under it. Whoever else sees the answer — a subscriber on the reply subject, a recorded
copy of the traffic, the control plane's logs — holds neither private key and learns
nothing; the agent drops its private key once the answer is open (forward secrecy: no
long-lived key whose theft opens old answers).

Both the HKDF info and the GCM associated data bind `convoy-secret-v1`, the instance, the
runtime and the secret's name, so an answer cannot be replayed as another secret, to
another runtime or in another instance: it does not open there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONTEXT: Final = b"convoy-secret-v1"
PUBLIC_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class SealingError(Exception):
    """A key or a sealed answer is not usable (wrong size, wrong key, tampered, bound to
    another instance, runtime or name). Messages never carry a value."""


@dataclass(frozen=True, slots=True)
class Sealed:
    ephemeral_public_key: bytes
    nonce: bytes
    ciphertext: bytes


def binding(*, instance: str, runtime: str, name: str) -> bytes:
    """What the key derivation and the associated data bind: NUL-separated (none of the
    three may contain NUL: instance and runtime names are validated, secret names too)."""
    return b"\0".join([CONTEXT, instance.encode(), runtime.encode(), name.encode()])


class RequestKey:
    """The agent's side: a key for one request; `public` goes in the request."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def open(self, sealed: Sealed, *, instance: str, runtime: str, name: str) -> str:
        bound = binding(instance=instance, runtime=runtime, name=name)
        try:
            peer = X25519PublicKey.from_public_bytes(sealed.ephemeral_public_key)
            key = _derive(self._private.exchange(peer), bound)
            plain = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, bound)
        except (InvalidTag, ValueError) as error:
            raise SealingError(
                f"the sealed answer for secret convoy:{name} does not open with this request's key "
                f"({type(error).__name__})"
            ) from None
        try:
            return plain.decode()
        except UnicodeDecodeError:
            raise SealingError(f"secret convoy:{name}: the sealed value is not UTF-8 text") from None


def seal(public_key: bytes, value: str, *, instance: str, runtime: str, name: str) -> Sealed:
    """The control plane's side: `value` sealed to the requester's `public_key`."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise SealingError(f"the request's public key has {len(public_key)} bytes, not {PUBLIC_KEY_BYTES} (raw X25519)")
    try:
        peer = X25519PublicKey.from_public_bytes(public_key)
        ephemeral = X25519PrivateKey.generate()
        shared = ephemeral.exchange(peer)
    except ValueError as error:  # a low-order point gives an all-zero shared secret
        raise SealingError(f"the request's public key is not usable ({error})") from None
    bound = binding(instance=instance, runtime=runtime, name=name)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(_derive(shared, bound)).encrypt(nonce, value.encode(), bound)
    return Sealed(ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), nonce, ciphertext)


def _derive(shared: bytes, bound: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=bound).derive(shared)
