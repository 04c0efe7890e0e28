"""GitHub deployment statuses, the pure part: from convergence events to GitHub calls.

Why here and not in services/notifier: the notifier only reads the bus, while this
integration must remember what it did — the deployment GitHub created for a (release,
channel), and which statuses it posted — as events, so a restart neither creates a second
deployment nor posts a status twice. The gatekeeper already reads and appends to the log
for change-ticket gates; GitHub statuses live with it.

`DeploymentBook` folds the application declarations (their `github_deployments`), the
planner's channel-level status changes and the reporter's own GitHubDeploymentCreated /
GitHubDeploymentStatusPosted, and `due` says what to call next: create the deployment
(once per release and channel), then post each state it has not posted, in order —
queued (waiting for preconditions or approval), in_progress (deploying, verifying),
success (converged), failure (failed), inactive (replaced by a newer release). Pure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.gatekeeper.polls import TemplateError, render

S = convergence_pb2
DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"
MAX_DESCRIPTION = 140
"""GitHub truncates a status description at 140 characters."""

STATES: dict[int, str] = {
    S.INSTANCE_STATUS_PENDING: "queued",
    S.INSTANCE_STATUS_WAITING_PRECONDITIONS: "queued",
    S.INSTANCE_STATUS_WAITING_APPROVAL: "queued",
    S.INSTANCE_STATUS_DEPLOYING: "in_progress",
    S.INSTANCE_STATUS_VERIFYING: "in_progress",
    S.INSTANCE_STATUS_CONVERGED: "success",
    S.INSTANCE_STATUS_FAILED: "failure",
    S.INSTANCE_STATUS_REPLACED: "inactive",
}
"""Paused, rolling back and rolled back post nothing: the deployment already says
in_progress or failure, and a rollback restores an earlier release's deployment."""

_NAMESPACE = uuid.UUID("0f5e7c1e-2f42-4a57-8d7e-5b1f0e6b9a10")

Key = tuple[str, str, str, str]
"""(application, service, channel, release_id)."""


def github_stream(application: str, service: str, channel: str) -> str:
    return f"github/{application}/{service}/{channel}"


def created_event_id(key: Key) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "created/" + "/".join(key))


def posted_event_id(key: Key, state: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "posted/" + "/".join(key) + "/" + state)


@dataclass(slots=True)
class Deployment:
    key: Key
    version: str
    environment: str = ""
    deployment_id: int = 0
    states: list[tuple[str, str]] = field(default_factory=list)
    """(state, description) wanted, in order, each state once."""
    posted: set[str] = field(default_factory=set)

    def wants(self, state: str, description: str) -> None:
        if state not in (s for s, _ in self.states):
            self.states.append((state, description))

    def next_state(self) -> tuple[str, str] | None:
        for state, description in self.states:
            if state not in self.posted:
                return state, description
        return None


@dataclass(frozen=True, slots=True)
class Create:
    """POST /repos/{owner}/{repo}/deployments (after looking for one made before)."""

    key: Key
    config: resources_pb2.GitHubDeployments
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Post:
    """POST /repos/{owner}/{repo}/deployments/{id}/statuses."""

    key: Key
    config: resources_pb2.GitHubDeployments
    deployment_id: int
    state: str
    body: dict[str, Any]


@dataclass(slots=True)
class DeploymentBook:
    configs: dict[str, resources_pb2.GitHubDeployments] = field(default_factory=dict)
    deployments: dict[Key, Deployment] = field(default_factory=dict)

    def fold(self, message: Message) -> Key | None:
        """Apply one event; return the deployment it touched."""
        if isinstance(message, events_pb2.ApplicationCreated | events_pb2.ApplicationUpdated):
            app = message.application
            if app.HasField("github_deployments"):
                self.configs[app.name] = app.github_deployments
            else:
                self.configs.pop(app.name, None)
            return None
        if isinstance(message, events_pb2.ApplicationDeleted):
            self.configs.pop(message.name, None)
            return None
        if isinstance(message, events_pb2.InstanceStatusChanged):
            state = STATES.get(message.new_status)
            if message.target.runtime or state is None or not message.release_id:
                return None
            key = (message.application, message.service, message.channel, message.release_id)
            deployment = self.deployments.get(key)
            if deployment is None:
                if message.application not in self.configs or state == "inactive":
                    return None  # not reported, or replaced before anyone told GitHub about it
                deployment = self.deployments[key] = Deployment(key, message.version)
            deployment.wants(state, _description(message))
            return key
        if isinstance(message, events_pb2.GitHubDeploymentCreated):
            key = (message.application, message.service, message.channel, message.release_id)
            deployment = self.deployments.setdefault(key, Deployment(key, ""))
            deployment.deployment_id = message.deployment_id
            deployment.environment = message.environment
            return key
        if isinstance(message, events_pb2.GitHubDeploymentStatusPosted):
            key = (message.application, message.service, message.channel, message.release_id)
            deployment = self.deployments.setdefault(key, Deployment(key, ""))
            deployment.posted.add(message.state)
            return key
        return None

    def due(self, key: Key) -> Create | Post | None:
        """The next call for one deployment, or None when GitHub is up to date."""
        deployment = self.deployments.get(key)
        config = self.configs.get(key[0])
        if deployment is None or config is None:
            return None
        wanted = deployment.next_state()
        if wanted is None:
            return None
        if not deployment.deployment_id:
            return Create(key, config, create_body(config, deployment))
        state, description = wanted
        return Post(key, config, deployment.deployment_id, state, status_body(config, deployment, state, description))

    def pending(self) -> list[Key]:
        return [k for k in self.deployments if self.due(k) is not None]


def environment_of(config: resources_pb2.GitHubDeployments, channel: str) -> str:
    return config.environments.get(channel) or channel


def values_of(deployment: Deployment) -> dict[str, str]:
    app, service, channel, release_id = deployment.key
    return {"Application": app, "Service": service, "Channel": channel, "ReleaseId": release_id,
            "Version": deployment.version}


def create_body(config: resources_pb2.GitHubDeployments, deployment: Deployment) -> dict[str, Any]:
    app, service, channel, release_id = deployment.key
    values = values_of(deployment)
    return {
        "ref": render(config.ref or "{{.Version}}", values),
        "task": "deploy",
        "auto_merge": False,
        "required_contexts": [],
        "environment": environment_of(config, channel),
        "description": f"{app}/{service} {deployment.version} to {channel} (Convoy)"[:MAX_DESCRIPTION],
        "transient_environment": channel in config.transient_channels,
        "production_environment": channel in config.production_channels,
        "payload": {"convoy": {"application": app, "service": service, "channel": channel,
                               "release_id": release_id, "version": deployment.version}},
    }


def status_body(config: resources_pb2.GitHubDeployments, deployment: Deployment, state: str,
                description: str) -> dict[str, Any]:
    values = values_of(deployment)
    body: dict[str, Any] = {"state": state, "description": description[:MAX_DESCRIPTION]}
    for name in ("log_url", "environment_url"):
        template = getattr(config, name)
        if template:
            body[name] = render(template, values)
    return body


def matches(found: Any, key: Key) -> bool:
    """A deployment GitHub lists is the one we created for `key` (a crash lost our record)."""
    if not isinstance(found, dict):
        return False
    payload = found.get("payload")
    convoy = payload.get("convoy") if isinstance(payload, dict) else None
    if not isinstance(convoy, dict):
        return False
    app, service, channel, release_id = key
    return (convoy.get("application"), convoy.get("service"), convoy.get("channel"), convoy.get("release_id")) == (
        app, service, channel, release_id)


def _description(message: events_pb2.InstanceStatusChanged) -> str:
    status = S.InstanceStatus.Name(message.new_status).removeprefix("INSTANCE_STATUS_").lower()
    return f"{message.version} {status}: {message.reason}" if message.reason else f"{message.version} {status}"


__all__ = ["TemplateError", "DeploymentBook", "Create", "Post", "Key"]
