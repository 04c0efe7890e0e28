"""How a service's resources become its programs' environment — one rule for the API
(refusing collisions at declaration) and the planner (rendering the spec), so the two
can never disagree.

A library shared by the services (like services.principals), pure: no I/O.

The rule. For every resource a service names (`Service.resources`), each attribute
becomes `CONVOY_RESOURCE_<NAME>_<ATTRIBUTE>`: the resource name and the attribute name
upper-cased, every character outside [A-Z0-9] replaced by `_` (so `orders-db` /
`host` is `CONVOY_RESOURCE_ORDERS_DB_HOST`). `Service.resource_env` adds explicit names
(`{env: DATABASE_URL, resource: orders-db, attribute: url}`). A plain attribute becomes a
plain value; a secret attribute (`Resource.secret_attributes`) becomes a reference in
`Program.secret_env`, resolved only where the workload runs.

Collisions are refused, never resolved by an order: two attributes whose names map to
the same variable (`db_host` and `db-host`), an explicit name equal to an automatic one or
to another explicit one, or a resource variable that a program (or a channel override)
also sets itself. The API refuses them at ApplyService and LinkResource; the planner
refuses to render them (the channel's deployment fails with the reason).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from schemas.convoy.v1 import resources_pb2

PREFIX: Final = "CONVOY_RESOURCE_"
_OTHER: Final = re.compile(r"[^A-Z0-9]")

Lookup = Callable[[str, str], "resources_pb2.Resource | None"]
"""(application, resource name) -> the resource that application sees, or None."""


def env_name(resource: str, attribute: str) -> str:
    """`CONVOY_RESOURCE_<NAME>_<ATTRIBUTE>`, upper-cased, non [A-Z0-9] → `_`."""
    return PREFIX + _OTHER.sub("_", resource.upper()) + "_" + _OTHER.sub("_", attribute.upper())


def visible(
    resources: Mapping[tuple[int, str, str], resources_pb2.Resource], application: str, name: str
) -> resources_pb2.Resource | None:
    """The resource `name` as `application` sees it: its own application's resource of that
    name (which shadows an infrastructure one), else the infrastructure one, else None.
    Another application's resource is never visible. `resources` is keyed by
    (scope, application, name), as both catalogs keep them."""
    own = resources.get((resources_pb2.RESOURCE_SCOPE_APPLICATION, application, name))
    if own is not None:
        return own
    return resources.get((resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE, "", name))


@dataclass(slots=True)
class ResourceEnvironment:
    """What a service's resources add to every program's environment, or why they cannot."""

    plain: dict[str, str] = field(default_factory=dict)
    secret: dict[str, resources_pb2.SecretRef] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Variable -> "resource/attribute" it comes from (for messages)."""
    invisible: list[tuple[str, str]] = field(default_factory=list)
    """(field path, message) per named resource the application does not see."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(field path, message) per other problem: an unknown attribute, a collision."""

    @property
    def names(self) -> set[str]:
        return set(self.plain) | set(self.secret)


def environment(service: resources_pb2.Service, lookup: Lookup) -> ResourceEnvironment:
    """The variables `service`'s resources give its programs, with every problem found:
    a resource not visible to the service's application, an unknown attribute in an
    explicit mapping, a collision."""
    out = ResourceEnvironment()
    seen: dict[str, resources_pb2.Resource] = {}
    for i, name in enumerate(service.resources):
        resource = lookup(service.application, name)
        if resource is None:
            out.invisible.append((
                f"service.resources[{i}]",
                f"resource {name!r} is not visible to application {service.application!r} (not linked to it "
                "nor at infrastructure level)",
            ))
            continue
        seen[name] = resource
        for attribute in sorted(set(resource.attributes) | set(resource.secret_attributes)):
            _add(out, f"service.resources[{i}]", env_name(name, attribute), resource, attribute)
    for i, mapping in enumerate(service.resource_env):
        at = f"service.resource_env[{i}]"
        resource = seen.get(mapping.resource)
        if resource is None:
            if mapping.resource not in service.resources:
                out.problems.append((
                    f"{at}.resource",
                    f"resource {mapping.resource!r} is not one the service uses; add it to service.resources",
                ))
            continue  # named but not visible: reported above
        if mapping.attribute not in resource.attributes and mapping.attribute not in resource.secret_attributes:
            known = sorted(set(resource.attributes) | set(resource.secret_attributes))
            out.problems.append((
                f"{at}.attribute",
                f"resource {mapping.resource!r} has no attribute {mapping.attribute!r} (it has: "
                f"{', '.join(known) or 'none'})",
            ))
            continue
        _add(out, at, mapping.env, resource, mapping.attribute)
    return out


def _add(out: ResourceEnvironment, at: str, variable: str, resource: resources_pb2.Resource, attribute: str) -> None:
    source = f"{resource.name}/{attribute}"
    if variable in out.sources:
        out.problems.append((
            at,
            f"environment variable {variable} would come from both {out.sources[variable]} and {source}; "
            f"rename one attribute or map one explicitly (service.resource_env) to another name",
        ))
        return
    out.sources[variable] = source
    if attribute in resource.secret_attributes:
        ref = resources_pb2.SecretRef()
        ref.CopyFrom(resource.secret_attributes[attribute])
        out.secret[variable] = ref
    else:
        out.plain[variable] = resource.attributes[attribute]


def clashes_with_programs(
    service: resources_pb2.Service, variables: Iterable[str], sources: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Resource variables that a program or a channel override of `service` also sets."""
    wanted = set(variables)
    found: list[tuple[str, str]] = []
    for i, program in enumerate(service.programs):
        for key in sorted((set(program.env) | set(program.secret_env)) & wanted):
            found.append((
                f"service.programs[{i}].env[{key!r}]",
                f"{key} is also set by resource attribute {sources[key]}; remove one of them",
            ))
    for i, override in enumerate(service.overrides):
        for key in sorted(set(override.env) & wanted):
            found.append((
                f"service.overrides[{i}].env[{key!r}]",
                f"{key} is also set by resource attribute {sources[key]}; remove one of them",
            ))
    return found
