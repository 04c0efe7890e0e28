"""Rendering a release for one channel: the `WorkloadSpec` an agent applies.

A release is immutable (config + parameter values); a channel may override replicas,
environment and parameters. The rendered spec is everything a runtime needs and nothing
it must look up, and its hash — SHA-256 of the deterministic protobuf serialization — is
what agents compare live workloads against to detect drift. Parameter values fill
`{{.Parameters.NAME}}` placeholders in images, commands, arguments and environment
values; runtime-owned placeholders (`{{.Port}}`) are left for the runtime. An image
the release pinned (`Release.images`, resolved by the API at deploy time) is rendered as
its `host/repository@sha256:…` reference.
"""

from __future__ import annotations

import hashlib
import re

from schemas.convoy.v1 import convergence_pb2, resources_pb2

_PARAMETER = re.compile(r"\{\{\s*\.Parameters\.([A-Za-z0-9_-]+)\s*\}\}")


def default_namespace(application: str, channel: str) -> str:
    """Kubernetes namespace names are DNS labels of at most 63 characters."""
    return f"convoy-{application}-{channel}"[:63].rstrip("-")


def substitute(text: str, parameters: dict[str, str]) -> str:
    return _PARAMETER.sub(lambda m: parameters.get(m.group(1), m.group(0)), text)


def render(release: resources_pb2.Release, channel: str) -> convergence_pb2.WorkloadSpec:
    config = release.config
    override = next((o for o in config.overrides if o.channel == channel), None)
    parameters = dict(release.parameters)
    replicas = config.replicas or 1
    extra_env: dict[str, str] = {}
    if override is not None:
        parameters.update(override.parameters)
        replicas = override.replicas or replicas
        extra_env = dict(override.env)
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
        rendered.env.clear()
        rendered.env.update(env)
    return spec


def spec_hash(spec: convergence_pb2.WorkloadSpec) -> str:
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
