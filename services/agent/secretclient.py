"""The agent's side of Convoy-kept secrets: asking the control plane for one, sealed.

A workload's secret environment may name `convoy:<name>`, a value only the control
plane's keyring opens. The process runtimes (secretenv.py) resolve such a reference
through `SecretClient.fetch`, which the agent's composition gives them: it makes an X25519
key for this one request, asks on the runtime's own subject
(`natsauth.secret_subject`; the agent's credential may publish nowhere else's) and
receives on its own inbox (the connection's `inbox_prefix`), and opens the sealed answer
(services.secrets.sealing). The value is returned to the caller only — held in memory
and handed to the workload's process environment, never written to state files nor
logged — and the request's private key is dropped with the client's frame.

Every failure is a `SecretUnavailable` naming the reference and saying whether trying
again can help: a secret not set yet, or a control plane that does not answer, may
succeed later; a reference the runtime's desired state does not give the workload, or an
answer that does not open, will not.
"""

from __future__ import annotations

import contextlib

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client

from eventstore import bus, natsauth
from eventstore.errors import ConvoyError
from schemas.convoy.v1 import secrets_pb2
from services.agent.runtimes.base import Workload
from services.secrets import sealing
from services.secrets.references import SecretUnavailable

RETRYABLE = frozenset({secrets_pb2.SECRET_REFUSAL_MISSING, secrets_pb2.SECRET_REFUSAL_UNAVAILABLE})


class SecretClient:
    """`await client.fetch(workload, name)`: the secretenv `convoy` callback."""

    def __init__(self, *, nc: Client, instance: str, runtime: str, timeout: float = 5.0) -> None:
        self._nc = nc
        self.instance = bus.validate_instance(instance)
        self.runtime = runtime
        self._timeout = timeout
        self.fetched = 0

    async def fetch(self, workload: Workload, name: str) -> str:
        ref = f"convoy:{name}"
        key = sealing.RequestKey()
        request = secrets_pb2.SecretRequest(
            name=name,
            application=workload.key.application,
            service=workload.key.service,
            channel=workload.spec.channel or workload.channel,
            public_key=key.public,
        )
        subject = natsauth.secret_subject(self.instance, self.runtime)
        inbox = self._nc.new_inbox()
        try:
            sub = await bus.guarded("subscribing for a secret", lambda: self._nc.subscribe(inbox, max_msgs=1))
        except ConvoyError as error:
            raise SecretUnavailable(f"secret {ref}: cannot reach the control plane ({error})", retryable=True) from None
        try:
            await bus.guarded(
                "asking for a secret", lambda: self._nc.publish(subject, request.SerializeToString(), reply=inbox)
            )
            msg = await sub.next_msg(timeout=self._timeout)
        except (ConvoyError, TimeoutError, nats.errors.TimeoutError):
            raise SecretUnavailable(
                f"secret {ref}: the control plane did not answer within {self._timeout}s", retryable=True
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if (msg.headers or {}).get("Status") == "503":
            raise SecretUnavailable(f"secret {ref}: nobody answers secret requests; is the control plane up?", retryable=True)
        try:
            answer = secrets_pb2.SecretAnswer.FromString(msg.data)
        except DecodeError:
            raise SecretUnavailable(f"secret {ref}: the control plane's answer is not a SecretAnswer", retryable=True) from None
        outcome = answer.WhichOneof("outcome")
        if outcome == "refused":
            reason = secrets_pb2.SecretRefusal.Name(answer.refused)
            raise SecretUnavailable(
                f"secret {ref}: the control plane refused it ({reason}: {answer.message})",
                retryable=answer.refused in RETRYABLE,
            )
        if outcome != "sealed":
            raise SecretUnavailable(f"secret {ref}: the control plane's answer holds neither a value nor a refusal", retryable=True)
        sealed = sealing.Sealed(answer.sealed.ephemeral_public_key, answer.sealed.nonce, answer.sealed.ciphertext)
        try:
            value = key.open(sealed, instance=self.instance, runtime=self.runtime, name=name)
        except sealing.SealingError as error:
            raise SecretUnavailable(str(error), retryable=False) from None
        self.fetched += 1
        return value
