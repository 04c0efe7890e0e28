"""`{{.Name}}` placeholders in programs and checks, filled in where the values are known.

Configuration is written before anything runs, so it cannot know the local port a process
gets or the namespace a channel deploys to; it names them (`{{.Port}}`, `{{.Namespace}}`,
`{{.Params.region}}`) and the agent substitutes them when it starts a process or a check.
An unknown name is an error, not an empty string: a URL with a hole in it would probe the
wrong thing silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from schemas.convoy.v1 import convergence_pb2

PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


class TemplateError(ValueError):
    """A placeholder names a value that does not exist here; fix the configuration."""


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace every `{{.Name}}` (or `{{ .Params.name }}`) in `text` with `values[Name]`."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            return values[name]
        except KeyError:
            known = ", ".join(f"{{{{.{k}}}}}" for k in sorted(values)) or "none"
            raise TemplateError(f"unknown placeholder {match.group(0)} in {text!r} (known here: {known})") from None

    return PLACEHOLDER.sub(substitute, text)


def render_all(texts: list[str] | tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    return [render(text, values) for text in texts]


def workload_values(
    spec: convergence_pb2.WorkloadSpec,
    *,
    namespace: str,
    ports: Mapping[str, int] | None = None,
    replica: int | None = None,
) -> dict[str, str]:
    """The values a workload's programs and checks may use.

    `ports` maps each declared port's name to the local port it got (in declaration
    order); the first one is also `{{.Port}}`."""
    values = {
        "Application": spec.application,
        "Service": spec.service,
        "Channel": spec.channel,
        "Namespace": namespace,
        "Version": spec.version,
        "Release": spec.release_id,
    }
    for name, value in spec.parameters.items():
        values[f"Params.{name}"] = value
    if ports:
        values["Port"] = str(next(iter(ports.values())))
        for name, port in ports.items():
            if name:
                values[f"Ports.{name}"] = str(port)
    if replica is not None:
        values["Replica"] = str(replica)
    return values
