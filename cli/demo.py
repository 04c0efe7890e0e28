"""`convoy up --demo`: apply the example application and deploy its first release.

Runs once the control plane is ready, as an ordinary API client (the same calls `convoy
apply` and `convoy deploy` make — one ApplyDeclarations for the whole folder, all or
nothing — with the local admin token), so the demo shows the real
path: declarations become events, the planner rolls v1 through staging, and prod waits
for the approval the README asks for. A service that already has a release is left
alone, so restarting with `--demo` deploys nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cli import config, localstate
from cli.client import Client, CliError, Target
from cli.commands.configs import load
from schemas.convoy.v1 import api_pb2

DEMO_VERSION = "v1"


def run(state_dir: Path, directory: Path, *, echo: Callable[[str], object]) -> list[str]:
    """Apply `directory` and deploy v1 of each of its services that has no release yet;
    returns the services deployed."""
    if not directory.is_dir():
        raise CliError(f"demo folder {directory} not found: run `convoy up --demo` from the repository root "
                       "or pass --demo-dir PATH")
    documents = load(directory)
    deployed: list[str] = []
    endpoint, token = localstate.read_endpoint(state_dir), localstate.read_admin_token(state_dir)
    if endpoint is None or token is None:
        raise CliError(f"the demo needs the local API's endpoint and admin token in {state_dir}")
    target = Target(grpc=endpoint.grpc, token=token, source=str(state_dir / localstate.ENDPOINT_FILE))
    with Client(target) as client:
        declarations = [d for _, d in config.to_declarations(documents)]
        client.write(client.declarations.ApplyDeclarations, api_pb2.ApplyDeclarationsRequest(declarations=declarations))
        echo(f"demo: applied {len(documents)} documents from {directory}")
        services = [d.message for d in documents if d.kind == "service"]
        for service in services:
            releases = client.pages(
                client.releases.ListReleases,
                api_pb2.ListReleasesRequest(application=service.application, service=service.name),
                "releases",
            )
            if releases:
                continue
            answer = client.write(
                client.releases.Deploy,
                api_pb2.DeployRequest(application=service.application, service=service.name, version=DEMO_VERSION),
            )
            deployed.append(f"{service.application}/{service.name}")
            echo(f"demo: deployed {service.application}/{service.name} {DEMO_VERSION} (release {answer.release.id})")
    return deployed
