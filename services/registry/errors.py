"""What can go wrong when Convoy talks to a container registry, as one class per outcome.

The caller (discovery, a release resolving its images) must decide whether to try again
later or to tell a person their declaration is wrong, so every error carries `retryable`
and a message that names the registry, the repository, the reference and the HTTP status.
Registries' own error bodies (`{"errors": [{"code", "message"}]}`) go into the message.
"""

from __future__ import annotations


class RegistryError(Exception):
    """A registry call failed. `registry` is the registry's Convoy name, `status` the HTTP
    status when there was an answer, `retryable` whether trying again later can help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        registry: str,
        repository: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        hint = "retryable" if self.retryable else "not retryable"
        super().__init__(f'registry "{registry}": {message}; {hint}')


class ManifestUnknown(RegistryError):
    """The tag or digest does not exist in the repository."""


class NameUnknown(RegistryError):
    """The repository does not exist (or is not visible to these credentials)."""


class Unauthorized(RegistryError):
    """The registry (or its token service) refused the credentials."""


class RateLimited(RegistryError):
    """The registry kept answering 429 after every retry. `retry_after` is the delay the
    registry last asked for, in seconds (None when it did not say)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unavailable(RegistryError):
    """The registry could not be reached or failed (connection refused, 5xx, timeout)."""

    retryable = True


class BadAnswer(RegistryError):
    """The registry answered something this client cannot trust: bad JSON, a malformed digest
    header, a digest that does not match, an oversized body, a pagination link elsewhere."""
