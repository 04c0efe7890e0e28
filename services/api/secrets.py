"""The API's side of Convoy-kept secrets: sealing before `decide`, listing, and reading a
value back for the control plane's own use.

`decide` is pure and never sees a key, so the writer asks this shell for what a secret
command needs: SetSecret's value encrypted by the keyring, or — for RotateSecretKey — a
new current key and every current secret re-encrypted under it (decrypted from the
ciphertext the catalog holds, sealed again). Keys a rotation retires are removed from the
keyring only after the rotation is recorded (`after_commit`), so a failed append never
leaves history without its key.

`resolver` turns the keyring and the catalog into the `convoy=` callback of
`services.secrets.references.resolve`, for the control plane's own credentials
(registries, ticketing systems). ListSecrets answers names, key ids and who/when from the
secret streams — never a value, never a ciphertext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Final

from google.protobuf.message import Message

from eventstore.types import EventStore
from schemas.convoy.v1 import api_pb2
from services.api.domain import State
from services.api.domain.commands import Minted, SealedSecret
from services.api.domain.errors import FailedPrecondition
from services.api.domain.state import SecretRecord
from services.api.domain.streams import secret as secret_stream
from services.api.paging import paginate
from services.secrets.keyring import Keyring, KeyringError, Sealed
from services.secrets.references import SecretUnavailable

SEALING: Final = frozenset({"SetSecret", "RotateSecretKey"})
"""The commands whose decision reads sealed values from `Minted`."""


class NoKeyring(FailedPrecondition):
    """This API process was composed without a keyring."""


class SecretSealer:
    """What the writer calls around `decide` for the secret commands."""

    def __init__(self, *, keyring: Keyring | None) -> None:
        self._keyring = keyring

    def _ring(self) -> Keyring:
        if self._keyring is None:
            raise NoKeyring(
                "this API has no keyring configured, so it cannot keep secrets; start it with a state "
                "directory (convoy up) or a keyring file (CONVOY_KEYRING)"
            )
        return self._keyring

    def before(self, method: str, request: Message) -> None:
        """Run once per command before deciding: a rotation adds the new key first."""
        if method == "RotateSecretKey":
            try:
                self._ring().rotate()
            except KeyringError as e:
                raise FailedPrecondition(str(e)) from None

    def mint(self, method: str, request: Message, state: State, minted: Minted) -> Minted:
        """`minted` with the sealed values `decide` needs. Synchronous: called between
        reading the speculative state and enqueuing the write."""
        ring = self._ring()
        if method == "SetSecret":
            assert isinstance(request, api_pb2.SetSecretRequest)
            if not request.value:
                return minted  # decide refuses it, naming the field
            s = ring.seal(request.name, request.value)
            return replace(minted, sealed=(SealedSecret(request.name, s.key_id, s.nonce, s.ciphertext),))
        assert isinstance(request, api_pb2.RotateSecretKeyRequest)
        current = ring.current_key_id
        try:
            resealed = tuple(_reseal(ring, record) for record in state.secrets.values())
        except KeyringError as e:
            raise FailedPrecondition(f"cannot re-encrypt: {e}") from None
        retired = tuple(k for k in ring.key_ids() if k != current) if request.retire_old_keys else ()
        return replace(
            minted, sealed=resealed, secret_key_id=current, previous_key_id=state.secret_key_id, retired_key_ids=retired
        )

    def after_commit(self, method: str, minted: Minted) -> None:
        if method == "RotateSecretKey" and minted.retired_key_ids:
            self._ring().retire(list(minted.retired_key_ids))

    def resolver(self, state: Callable[[], State]) -> Callable[[str], str]:
        """The `convoy=` callback of `services.secrets.references.resolve`."""

        def resolve(name: str) -> str:
            record = state().secrets.get(name)
            if record is None:
                raise SecretUnavailable(f"secret convoy:{name}: no such Convoy-kept secret (SetSecret)", retryable=True)
            try:
                return self._ring().open(name, Sealed(record.key_id, record.nonce, record.ciphertext))
            except (KeyringError, NoKeyring) as e:
                raise SecretUnavailable(f"secret convoy:{name}: {e}", retryable=False) from None

        return resolve


def _reseal(ring: Keyring, record: SecretRecord) -> SealedSecret:
    value = ring.open(record.name, Sealed(record.key_id, record.nonce, record.ciphertext))
    s = ring.seal(record.name, value)
    return SealedSecret(record.name, s.key_id, s.nonce, s.ciphertext)


async def list_secrets(store: EventStore, state: State, request: api_pb2.ListSecretsRequest) -> api_pb2.ListSecretsResponse:
    page, token = paginate(sorted(state.secrets.values(), key=lambda s: s.name), lambda s: (s.name,), request.page, "secrets")
    out = api_pb2.ListSecretsResponse(next_page_token=token, current_key_id=state.secret_key_id)
    for record in page:
        info = out.secrets.add(name=record.name, key_id=record.key_id, cause=record.cause)
        recorded = await store.read_stream(secret_stream(record.name))
        if recorded:
            info.updated_by = recorded[-1].actor
            info.updated_at.FromDatetime(recorded[-1].recorded_at)
    return out
