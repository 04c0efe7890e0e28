"""Convoy-kept secrets, answered to the agent whose desired state names them — sealed.

A workload's spec carries `convoy:<name>` only as a reference (`Program.secret_env`); the
agent that applies it asks here, on its runtime's own subject
`convoy.<i>.req.<runtime>.secret` (natsauth.secret_subject: NATS lets only that runtime's
agent publish there, so the subject says who asks), with the secret's name, the workload
(application, service, channel) and an X25519 public key it made for this request
(`secrets_pb2.SecretRequest`). The answer (`SecretAnswer`) is the value sealed to that key
(services.secrets.sealing), or a typed refusal:

- NOT_REFERENCED — the runtime's current desired state (the same fold the desired-state
  responder answers from, `DesiredState`) has no live intent for that workload whose
  secret environment names the secret: an agent learns only the secrets its own
  workloads are given, and none of another runtime's;
- MISSING — no Convoy-kept secret of that name (set it, and the retry works);
- UNAVAILABLE — this process cannot read it (no keyring, a key it does not hold);
- INVALID — a malformed request.

Like the desired-state responder, it answers only on a reply that belongs to the asking
runtime (`natsauth.reply_belongs_to`); anything else is logged and dropped. The value is
read with the API's keyring, given by the composition as a resolver
(`SecretSealer.resolver`); it is never logged, and in clear only in this process's memory
for the moment it takes to seal it. Requests share the queue group `convoy-secrets`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore import bus, natsauth
from eventstore.errors import ConvoyError
from eventstore.tasks import describe
from schemas.convoy.v1 import convergence_pb2, secrets_pb2
from services.api.desired import DesiredState
from services.secrets import sealing
from services.secrets.references import SecretUnavailable

log = structlog.get_logger("convoy.api.secretdelivery")

QUEUE = "convoy-secrets"

Resolve = Callable[[str], str]
"""A Convoy-kept secret's value by name; raises SecretUnavailable (`retryable` True: no
such secret yet; False: it cannot be read here)."""


def referenced(desired: DesiredState, runtime: str, request: secrets_pb2.SecretRequest) -> bool:
    """Does `runtime`'s current desired state give the workload `convoy:<name>`? Only a
    live (not DELETE) intent counts, in any namespace of the runtime."""
    for intent in desired.intents(runtime):
        spec = intent.spec
        if intent.action == convergence_pb2.INTENT_ACTION_DELETE:
            continue
        if (spec.application, spec.service, spec.channel) != (request.application, request.service, request.channel):
            continue
        for program in spec.programs:
            for ref in program.secret_env.values():
                if ref.WhichOneof("source") == "convoy" and ref.convoy == request.name:
                    return True
    return False


class SecretResponder:
    """`await start()` … `await stop()` (or `async with`)."""

    def __init__(self, *, nc: Client, instance: str, desired: DesiredState, resolve: Resolve) -> None:
        self._nc = nc
        self.instance = bus.validate_instance(instance)
        self._desired = desired
        self._resolve = resolve
        self._sub: Subscription | None = None
        self.delivered = 0
        self.refused = 0
        """Typed refusals answered."""
        self.dropped = 0
        """Requests left unanswered: not a secret subject, or a reply not the runtime's."""

    async def start(self) -> None:
        self._sub = await bus.guarded(
            "subscribing to secret requests",
            lambda: self._nc.subscribe(natsauth.secret_subjects(self.instance), queue=QUEUE, cb=self._on_request),
        )

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as error:  # noqa: BLE001 - a closed connection has no subscriptions left
                log.debug("unsubscribe failed", error=str(error))

    async def __aenter__(self) -> SecretResponder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            runtime = natsauth.runtime_of_secret(self.instance, msg.subject)
            if runtime is None or not natsauth.reply_belongs_to(self.instance, runtime, msg.reply):
                self.dropped += 1
                log.warning(
                    "secret request dropped: not a secret subject, or its reply does not belong to the asking runtime",
                    subject=msg.subject, reply=msg.reply[:200],
                )
                return
            answer = await self.answer(runtime, msg.data)
            await self._nc.publish(msg.reply, answer.SerializeToString())
        except ConvoyError as error:
            log.warning("secret request not answered", subject=msg.subject, error=str(error))
        except Exception as error:  # noqa: BLE001 - a callback must never kill the subscription
            log.error("secret answer failed", subject=msg.subject, error=describe(error))

    async def answer(self, runtime: str, data: bytes) -> secrets_pb2.SecretAnswer:
        """The answer to `runtime`'s request `data` (a serialized SecretRequest)."""
        request = secrets_pb2.SecretRequest()
        try:
            request.ParseFromString(data)
        except DecodeError:
            return self._refuse(runtime, "", secrets_pb2.SECRET_REFUSAL_INVALID, "the request is not a SecretRequest")
        ref = f"convoy:{request.name}"
        if not request.name:
            return self._refuse(runtime, ref, secrets_pb2.SECRET_REFUSAL_INVALID, "the request names no secret")
        await self._desired.caught_up()
        if not referenced(self._desired, runtime, request):
            return self._refuse(
                runtime, ref, secrets_pb2.SECRET_REFUSAL_NOT_REFERENCED,
                f"secret {ref}: runtime {runtime!r}'s desired state gives no workload "
                f"{request.application}/{request.service} in channel {request.channel!r} that secret",
            )
        try:
            value = self._resolve(request.name)
        except SecretUnavailable as error:
            kind = secrets_pb2.SECRET_REFUSAL_MISSING if error.retryable else secrets_pb2.SECRET_REFUSAL_UNAVAILABLE
            return self._refuse(runtime, ref, kind, str(error))
        try:
            sealed = sealing.seal(request.public_key, value, instance=self.instance, runtime=runtime, name=request.name)
        except sealing.SealingError as error:
            return self._refuse(runtime, ref, secrets_pb2.SECRET_REFUSAL_INVALID, f"secret {ref}: {error}")
        del value
        self.delivered += 1
        log.info("secret delivered sealed", runtime=runtime, reference=ref, application=request.application,
                 service=request.service, channel=request.channel)
        return secrets_pb2.SecretAnswer(
            sealed=secrets_pb2.SealedSecret(
                ephemeral_public_key=sealed.ephemeral_public_key, nonce=sealed.nonce, ciphertext=sealed.ciphertext
            )
        )

    def _refuse(self, runtime: str, ref: str, kind: int, message: str) -> secrets_pb2.SecretAnswer:
        self.refused += 1
        log.warning("secret request refused", runtime=runtime, reference=ref,
                    refusal=secrets_pb2.SecretRefusal.Name(kind), reason=message)  # type: ignore[arg-type]
        return secrets_pb2.SecretAnswer(refused=kind, message=message)  # type: ignore[arg-type]
