"""Validation of the declarations that reach systems outside the clusters: change-ticket
gates (`Protection.external_approval`) and GitHub deployment statuses
(`Application.github_deployments`).

Both are run later by the gatekeeper, unattended; whatever can be wrong in them is found
here, when someone declares them, with the field named: an expression that does not parse
(with its column), a URL that is not http(s), a secret header given without a source, a
poll interval of zero. Secrets are references (SecretRef) only; a declaration carrying a
Kubernetes Secret reference is refused, as the gatekeeper runs on the control plane and
cannot read a cluster's Secrets.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.validation import MAX_VALUE, check_duration, check_name
from services.expressions import check as check_expression

METHODS = ("GET", "POST", "PUT", "PATCH")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_GITHUB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MAX_BODY = 16 * 1024


def check_external_approval(problems: Problems, field: str, approval: resources_pb2.ExternalApproval) -> None:
    if approval.method and approval.method.upper() not in METHODS:
        problems.add(f"{field}.method", f"{approval.method!r} is not one of {', '.join(METHODS)}")
    _check_url(problems, f"{field}.url", approval.url, required=True)
    if len(approval.body) > MAX_BODY:
        problems.add(f"{field}.body", f"longer than {MAX_BODY} bytes")
    for name in approval.headers:
        if not _HEADER.fullmatch(name):
            problems.add(f"{field}.headers", f"{name!r} is not an HTTP header name")
    for name, ref in approval.secret_headers.items():
        if not _HEADER.fullmatch(name):
            problems.add(f"{field}.secret_headers", f"{name!r} is not an HTTP header name")
        elif name in approval.headers:
            problems.add(f"{field}.secret_headers.{name}", "is also in headers; give it once")
        _check_secret(problems, f"{field}.secret_headers.{name}", ref)
    if not approval.success:
        problems.add(f"{field}.success", 'required: when the change counts as approved, e.g. body.result[0].approval == "approved"')
    for name in ("success", "failure", "ticket"):
        source = getattr(approval, name)
        if source:
            error = check_expression(source)
            if error:
                problems.add(f"{field}.{name}", f"{error} (in {source!r})")
    for name in ("poll_interval", "timeout", "request_timeout"):
        if check_duration(problems, field, approval, name) and approval.HasField(name):
            if getattr(approval, name).ToTimedelta().total_seconds() < 1:
                problems.add(f"{field}.{name}", "must be at least 1s")


def check_github_deployments(problems: Problems, field: str, github: resources_pb2.GitHubDeployments,
                             channels: set[str]) -> None:
    _check_url(problems, f"{field}.api_url", github.api_url, required=False)
    for name in ("owner", "repo"):
        value = getattr(github, name)
        if not _GITHUB_NAME.fullmatch(value):
            problems.add(f"{field}.{name}", f"required: the repository's {name} (letters, digits, '-', '_', '.')")
    if not github.HasField("token"):
        problems.add(f"{field}.token", "required: a SecretRef (env or file) to a token with deployments: write")
    else:
        _check_secret(problems, f"{field}.token", github.token)
    for channel in (*github.environments, *github.production_channels, *github.transient_channels):
        if channel not in channels:
            problems.add(f"{field}", f"names channel {channel!r}, which the application does not have")
    for name, environment in github.environments.items():
        if not environment or len(environment) > 255:
            problems.add(f"{field}.environments.{name}", "must be a GitHub environment name (1-255 characters)")
    for name in ("ref", "log_url", "environment_url"):
        if len(getattr(github, name)) > MAX_VALUE:
            problems.add(f"{field}.{name}", f"longer than {MAX_VALUE} characters")


def _check_url(problems: Problems, field: str, url: str, *, required: bool) -> None:
    if not url:
        if required:
            problems.add(field, "required: an http:// or https:// URL (may use {{.Service}}, {{.Params.name}} …)")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(ch.isspace() for ch in url) or len(url) > MAX_VALUE:
        problems.add(field, "must be an http:// or https:// URL with a host and without spaces")


def _check_secret(problems: Problems, field: str, ref: resources_pb2.SecretRef) -> None:
    source = ref.WhichOneof("source")
    if source is None:
        problems.add(field, "set where the secret lives: env or file")
    elif source == "kubernetes":
        problems.add(field, "a Kubernetes Secret cannot be read by the control plane's gatekeeper; use env or file")
    elif source in ("env", "file") and not getattr(ref, source):
        problems.add(f"{field}.{source}", "required: the variable's name or the file's path")
    elif source == "convoy":
        check_name(problems, f"{field}.convoy", ref.convoy, what="secret name")
