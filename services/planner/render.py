"""Rendering a release for one channel: the `WorkloadSpec` an agent applies.

A release is immutable (config + parameter values); a channel may override replicas,
environment and parameters. The rendered spec is everything a runtime needs and nothing
it must look up, and its hash — SHA-256 of the deterministic protobuf serialization — is
what agents compare live workloads against to detect drift. Parameter values fill
`{{.Parameters.NAME}}` placeholders in images, commands, arguments and environment
values; runtime-owned placeholders (`{{.Port}}`) are left for the runtime. An image
the release pinned (`Release.images`, resolved by the API at deploy time) is rendered as
its `host/repository@sha256:…` reference.
values; runtime-owned placeholders (`{{.Port}}`) are left for the runtime.

Resources. A service that names resources gets their attributes in every program's
environment by the rule of `services.resourceenv` (`CONVOY_RESOURCE_<NAME>_<ATTRIBUTE>`,
plus the service's explicit `resource_env` names): plain attributes as plain `env`,
secret attributes as references in `secret_env` — the spec goes on the bus and into agent
state, so it never carries a secret value; the runtime resolves references where the
workload runs. Names resolve against the planner's own catalog with the API's visibility
rule: the release's application's resource shadows an infrastructure one of the same
name, another application's resource is never visible. A name that is not visible, an
attribute an explicit mapping names that the resource lacks, or two values for one
variable make `render` raise `RenderError`; the engine fails that channel's deployment
with the reason instead of deploying without the resource.

Attributes are read at render time from the current catalog, not frozen into the
release: a rollback to an old release gets today's database endpoint. The spec hash
covers the rendered environment, so a re-linked resource changes the hash of the *next*
render only — workloads already running are compared by their agents against the hash of
the intent they applied, and do not drift because a resource changed. Rendering stays a
pure function of the log (the catalog is folded from it), so replay renders the same.
"""

from __future__ import annotations

import hashlib
import re

import services.resourceenv as resourceenv
from schemas.convoy.v1 import convergence_pb2, resources_pb2

_PARAMETER = re.compile(r"\{\{\s*\.Parameters\.([A-Za-z0-9_-]+)\s*\}\}")


class RenderError(Exception):
    """The release cannot be rendered for this channel with the catalog as it is; the
    message says what to fix (link the resource, rename an attribute …)."""


def _no_resources(application: str, name: str) -> resources_pb2.Resource | None:
    return None


def default_namespace(application: str, channel: str) -> str:
    """Kubernetes namespace names are DNS labels of at most 63 characters."""
    return f"convoy-{application}-{channel}"[:63].rstrip("-")


def substitute(text: str, parameters: dict[str, str]) -> str:
    return _PARAMETER.sub(lambda m: parameters.get(m.group(1), m.group(0)), text)


def render(
    release: resources_pb2.Release, channel: str, resources: resourceenv.Lookup = _no_resources
) -> convergence_pb2.WorkloadSpec:
    """`resources(application, name)` is the resource that application sees (the
    planner's catalog); raises `RenderError` when the service's resources cannot be
    rendered."""
    config = release.config
    override = next((o for o in config.overrides if o.channel == channel), None)
    parameters = dict(release.parameters)
    replicas = config.replicas or 1
    extra_env: dict[str, str] = {}
    if override is not None:
        parameters.update(override.parameters)
        replicas = override.replicas or replicas
        extra_env = dict(override.env)
    linked = resourceenv.environment(config, resources)
    found = linked.invisible + linked.problems + resourceenv.clashes_with_programs(config, linked.names, linked.sources)
    if found:
        raise RenderError(
            f"cannot render {release.service} {release.version} for channel {channel}: "
            + "; ".join(message for _, message in found)
        )
    spec = convergence_pb2.WorkloadSpec(
        application=release.application,
        service=release.service,
        channel=channel,
        release_id=release.id,
        version=release.version,
        replicas=replicas,
        parameters=parameters,
        resources=list(config.resources),
    )
    if config.HasField("progress_deadline"):
        spec.progress_deadline.CopyFrom(config.progress_deadline)
    pinned = {pin.program: pin.reference for pin in release.images}
    for program in config.programs:
        rendered = spec.programs.add()
        rendered.CopyFrom(program)
        # A pinned image runs by digest (the release recorded it): a tag moved since
        # changes nothing here.
        rendered.image = pinned.get(program.name) or substitute(program.image, parameters)
        rendered.command[:] = [substitute(c, parameters) for c in program.command]
        rendered.args[:] = [substitute(a, parameters) for a in program.args]
        env = {k: substitute(v, parameters) for k, v in program.env.items()}
        env.update(extra_env)
        env.update(linked.plain)
        rendered.env.clear()
        rendered.env.update(env)
        for name, ref in linked.secret.items():
            rendered.secret_env[name].CopyFrom(ref)
    return spec


def spec_hash(spec: convergence_pb2.WorkloadSpec) -> str:
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
