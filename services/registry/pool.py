"""One `RegistryClient` per declared registry, rebuilt when its declaration changes.

Clients carry what must outlive a call — the token cache per scope, the request budget
(`requests_per_second`) — so every caller in a process (the API resolving a deploy's
images, the follower polling) shares one per registry. Credentials are resolved from the
declaration's `SecretRef` when a client is built, on this machine (services.secrets);
a client whose credentials were refused is rebuilt on the next use, so a rotated
password file is picked up.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.convoy.v1 import resources_pb2
from services.registry.client import RegistryClient
from services.secrets import references

SecretResolver = Callable[[resources_pb2.SecretRef], str]


class RegistryPool:
    def __init__(self, *, secrets: SecretResolver = references.resolve, timeout: float = 10.0, max_attempts: int = 4) -> None:
        self._secrets = secrets
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._clients: dict[str, tuple[bytes, RegistryClient]] = {}
        self._retired: list[RegistryClient] = []

    def client(self, registry: resources_pb2.Registry) -> RegistryClient:
        """The client for `registry` as declared now. Raises SecretUnavailable when its
        password reference cannot be resolved here."""
        fingerprint = registry.SerializeToString(deterministic=True)
        held = self._clients.get(registry.name)
        if held is not None and held[0] == fingerprint:
            return held[1]
        password = self._secrets(registry.password) if registry.HasField("password") else None
        client = RegistryClient(
            name=registry.name,
            url=registry.url,
            username=registry.username or None,
            password=password,
            requests_per_second=registry.requests_per_second or None,
            timeout=self._timeout,
            max_attempts=self._max_attempts,
        )
        if held is not None:
            self._retired.append(held[1])
        self._clients[registry.name] = (fingerprint, client)
        return client

    def forget(self, name: str) -> None:
        """Drop a registry's client (its credentials were refused: rebuild on next use)."""
        held = self._clients.pop(name, None)
        if held is not None:
            self._retired.append(held[1])

    async def close(self) -> None:
        clients = [c for _, c in self._clients.values()] + self._retired
        self._clients.clear()
        self._retired.clear()
        for client in clients:
            await client.close()
