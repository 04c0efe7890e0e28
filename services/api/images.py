"""Resolving a Deploy's registry images to digests, just before it is decided.

`decide` is pure, so the registry is asked here, in the shell: for every image the
release would pin (`releases.deploy_images`), the manifest's digest (a HEAD with every
manifest media type in Accept; services.registry.client). The answers go into the
command (`Command.images`); the decision records them in the release. A registry's
refusal is the deploy's refusal, and nothing is recorded:

- the tag or repository does not exist → NOT_FOUND, naming image, registry and status;
- the registry refused Convoy's credentials, or answered nonsense → FAILED_PRECONDITION
  (an operator must fix the registry declaration or the registry);
- the registry is down, slow or rate-limiting → UNAVAILABLE: retry later.
"""

from __future__ import annotations

import structlog

from eventstore.errors import Unavailable
from schemas.convoy.v1 import api_pb2
from services.api.domain import FailedPrecondition, NotFound, State
from services.api.domain.releases import deploy_images
from services.api.domain.validation import q
from services.registry import errors as registry_errors
from services.registry.pool import RegistryPool
from services.secrets.references import SecretUnavailable

log = structlog.get_logger("convoy.api.images")


class ImageResolver:
    def __init__(self, *, pool: RegistryPool) -> None:
        self._pool = pool

    async def resolve(self, state: State, request: api_pb2.DeployRequest) -> dict[str, str]:
        digests: dict[str, str] = {}
        for want in deploy_images(state, request):
            if want.image in digests:
                continue
            where = f"image {q(want.image)} (registry {q(want.registry.name)})"
            try:
                client = self._pool.client(want.registry)
                assert want.reference.tag is not None
                manifest = await client.resolve(want.reference.repository, want.reference.tag)
            except SecretUnavailable as e:
                raise FailedPrecondition(f"{where}: the registry's credentials cannot be read here: {e}") from None
            except (registry_errors.ManifestUnknown, registry_errors.NameUnknown) as e:
                raise NotFound(f"{where} does not exist: {e}; nothing was recorded — push it or fix the tag") from None
            except registry_errors.Unauthorized as e:
                self._pool.forget(want.registry.name)
                raise FailedPrecondition(
                    f"{where}: {e}; nothing was recorded — fix the registry's username/password"
                ) from None
            except registry_errors.RegistryError as e:
                if e.retryable:
                    raise Unavailable(f"{where}: {e}; nothing was recorded — retry later") from None
                raise FailedPrecondition(f"{where}: {e}; nothing was recorded") from None
            digests[want.image] = manifest.digest
            log.info("image resolved", image=want.image, registry=want.registry.name, digest=manifest.digest)
        return digests
