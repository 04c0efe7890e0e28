"""SetSecret, DeleteSecret and RotateSecretKey: values Convoy keeps for whoever needs them.

The value never reaches `decide`'s output: the shell encrypts it with the keyring before
deciding (`Minted.sealed`), and the event records only the key id, nonce and ciphertext.
So the log, the bus and every API answer hold no value; the keys live in the keyring,
outside the log. Setting a secret again always records a new ciphertext (a fresh nonce:
equal values are not recognisable in the log, by design).

Rotation: the shell adds a key to the keyring and re-encrypts every current secret under
it; `decide` checks that the re-encryption covers exactly the current secrets under the
new key, and records them as SecretSet events (cause "rotated") with one
SecretKeyRotated. Keys the rotation retires are named in that event; the shell removes
them from the keyring only after it is recorded.
"""

from __future__ import annotations

from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2
from services.api.domain import streams
from services.api.domain.commands import Command, Decision, StreamEvent
from services.api.domain.errors import BadCommandContext, InvalidArgument, NotFound, Problems
from services.api.domain.secretrefs import check_secret_name
from services.api.domain.state import State
from services.api.domain.validation import q

MAX_SECRET_BYTES: Final = 64 * 1024


def set_secret(state: State, request: api_pb2.SetSecretRequest, command: Command) -> Decision:
    problems = Problems()
    check_secret_name(problems, "name", request.name)
    if not request.value:
        problems.add("value", "required: the secret's value (it is encrypted before anything is recorded)")
    elif len(request.value.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
        problems.add("value", f"is larger than {MAX_SECRET_BYTES} bytes")  # never echo the value
    problems.raise_if_any()
    sealed = command.minted.sealed
    if len(sealed) != 1 or sealed[0].name != request.name or not sealed[0].key_id or not sealed[0].ciphertext:
        raise BadCommandContext("SetSecret needs the value sealed by the keyring for this name (Minted.sealed)")
    s = sealed[0]
    event = events_pb2.SecretSet(name=s.name, key_id=s.key_id, nonce=s.nonce, ciphertext=s.ciphertext, cause="set")
    return Decision.of(streams.secret(request.name), event)


def delete_secret(state: State, request: api_pb2.DeleteSecretRequest, command: Command) -> Decision:
    problems = Problems()
    check_secret_name(problems, "name", request.name)
    problems.raise_if_any()
    if request.name not in state.secrets:
        raise NotFound(f"secret {q(request.name)} does not exist")
    return Decision.of(streams.secret(request.name), events_pb2.SecretDeleted(name=request.name))


def rotate_secret_key(state: State, request: api_pb2.RotateSecretKeyRequest, command: Command) -> Decision:
    minted = command.minted
    if not minted.secret_key_id:
        raise BadCommandContext("RotateSecretKey needs the new key's id (Minted.secret_key_id)")
    if minted.secret_key_id in minted.retired_key_ids:
        raise InvalidArgument.at("retire_old_keys", "the new current key cannot be retired")
    names = sorted(s.name for s in minted.sealed)
    if names != sorted(state.secrets) or any(s.key_id != minted.secret_key_id for s in minted.sealed):
        raise BadCommandContext(
            "RotateSecretKey needs every current secret re-encrypted under the new key (Minted.sealed); "
            f"got {len(names)} for {len(state.secrets)} secrets"
        )
    out = [
        StreamEvent(
            streams.secret(s.name),
            events_pb2.SecretSet(name=s.name, key_id=s.key_id, nonce=s.nonce, ciphertext=s.ciphertext, cause="rotated"),
        )
        for s in sorted(minted.sealed, key=lambda s: s.name)
    ]
    rotated = events_pb2.SecretKeyRotated(
        key_id=minted.secret_key_id, previous_key_id=minted.previous_key_id, retired_key_ids=minted.retired_key_ids
    )
    out.append(StreamEvent(streams.keyring(), rotated))
    return Decision(tuple(out))
