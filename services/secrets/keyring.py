"""The keyring: the keys Convoy-kept secrets are encrypted under, kept outside the log.

The log (and every copy of it on the bus) holds a secret only as AES-256-GCM ciphertext
with the id of the key and the nonce (`SecretSet`); the keys live here, in a file only the
control plane reads (`secrets.keys` in the state directory, mode 0600, or a path an
operator provides, e.g. a mounted KMS-managed file). So a copy of the database or of a
JetStream stream without the keyring yields no secret. The secret's name is the
associated data: a ciphertext moved to another name does not decrypt.

Rotation adds a key and makes it current; the API then re-encrypts every secret under it
(new events). Old keys stay until retired, so history under them still decrypts; retiring
one is an explicit step, refused for a key the caller says is still needed.

`Keyring` is the Protocol the API uses; `FileKeyring` is the file implementation. A
KMS-backed keyring would implement the same operations. Several API processes of one
instance may share the file (a shared volume): it is created exclusively (the first one
wins, the others read it) and re-read whenever it changed, so a rotation by one process is
used by the others from their next operation.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventstore import securefile
from eventstore.errors import InvalidInput

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class KeyringError(Exception):
    """The keyring cannot do what was asked. `retryable` says whether trying again can
    help (a file that could not be written) or the request itself is wrong (a retired key,
    a wrong key, a damaged ciphertext). Messages name keys and secrets, never values."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


class Keyring(Protocol):
    @property
    def current_key_id(self) -> str: ...

    def key_ids(self) -> list[str]: ...

    def seal(self, name: str, value: str) -> Sealed: ...

    def open(self, name: str, sealed: Sealed) -> str: ...

    def rotate(self) -> str:
        """Add a key, make it current, return its id."""
        ...

    def retire(self, key_ids: list[str]) -> None:
        """Remove keys (never the current one)."""
        ...


class FileKeyring:
    """Keys in a JSON file: `{"current": id, "keys": {id: base64}}`, written atomically
    (a temporary file renamed over it) with mode 0600. Read on first use, and created
    then with one key when absent (an API that never keeps a secret writes no file)."""

    def __init__(self, *, path: Path) -> None:
        self.path = path
        self._keys: dict[str, bytes] = {}
        self._current = ""
        self._seen: tuple[int, int] | None = None

    def _ensure(self) -> None:
        """Load on first use, and again when the file changed (another API process of the
        instance sharing it rotated or retired a key)."""
        seen = self._stat()
        if self._current and (seen is None or seen == self._seen):
            return  # unchanged (or removed under us: the keys in memory are all there is)
        self._load()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def current_key_id(self) -> str:
        self._ensure()
        return self._current

    def key_ids(self) -> list[str]:
        self._ensure()
        return sorted(self._keys)

    def seal(self, name: str, value: str) -> Sealed:
        self._ensure()
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(self._keys[self._current]).encrypt(nonce, value.encode("utf-8"), name.encode("utf-8"))
        return Sealed(self._current, nonce, ciphertext)

    def open(self, name: str, sealed: Sealed) -> str:
        self._ensure()
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise KeyringError(
                f"secret {name!r} is encrypted under key {sealed.key_id!r}, which is not in the keyring at "
                f"{self.path} (retired, or another instance's keyring); set the secret again",
                retryable=False,
            )
        try:
            data = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, name.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise KeyringError(
                f"secret {name!r} does not decrypt with key {sealed.key_id!r}: a wrong key file or a damaged "
                "ciphertext; set the secret again",
                retryable=False,
            ) from None
        return data.decode("utf-8")

    def rotate(self) -> str:
        self._ensure()
        key_id = self._new_id()
        keys = {**self._keys, key_id: secrets.token_bytes(KEY_BYTES)}
        self._write(keys, key_id)
        self._keys, self._current = keys, key_id
        return key_id

    def retire(self, key_ids: list[str]) -> None:
        self._ensure()
        if self._current in key_ids:
            raise KeyringError(f"key {self._current!r} is the current key; rotate before retiring it", retryable=False)
        keys = {k: v for k, v in self._keys.items() if k not in key_ids}
        self._write(keys, self._current)
        self._keys = keys

    # -- the file ------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            key_id = f"k-{secrets.token_hex(6)}"
            if key_id not in self._keys:
                return key_id

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            key_id = self._new_id()
            keys = {key_id: secrets.token_bytes(KEY_BYTES)}
            if not self._write(keys, key_id, exclusive=True):
                return self._load()  # another process created it first: use that one
            self._keys, self._current = keys, key_id
            return None
        except OSError as e:
            raise KeyringError(f"cannot read the keyring {self.path}: {e.strerror}", retryable=True) from None
        try:
            document = json.loads(text)
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in document["keys"].items()}
            current = str(document["current"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyringError(
                f"the keyring {self.path} is not a keyring file ({{\"current\": id, \"keys\": {{id: base64}}}})",
                retryable=False,
            ) from None
        if current not in keys or any(len(v) != KEY_BYTES for v in keys.values()):
            raise KeyringError(
                f"the keyring {self.path} is damaged: its current key is missing or a key is not {KEY_BYTES} bytes",
                retryable=False,
            )
        self._keys, self._current = keys, current
        self._seen = self._stat()

    def _write(self, keys: dict[str, bytes], current: str, *, exclusive: bool = False) -> bool:
        """Write the file atomically; with `exclusive`, only if there is none yet (False
        when there was)."""
        document = {"current": current, "keys": {k: base64.b64encode(v).decode() for k, v in sorted(keys.items())}}
        text = json.dumps(document)
        try:
            if exclusive:
                if not securefile.create_private(self.path, text):
                    return False
            else:
                securefile.write_private(self.path, text)
            self._seen = self._stat()
            return True
        except InvalidInput as e:
            raise KeyringError(f"cannot write the keyring {self.path}: {e}", retryable=False) from None
        except OSError as e:
            raise KeyringError(f"cannot write the keyring {self.path}: {e.strerror}", retryable=True) from None
