"""Declaring change-ticket gates and GitHub deployments: what ApplyProtection and
ApplyApplication accept, and the field-named error for each thing they refuse."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import InvalidArgument, decide
from tests.unit.domain.builders import command, run, shop

R = resources_pb2


def gate(**fields: object) -> api_pb2.ApplyProtectionRequest:
    approval = R.ExternalApproval(url="https://snow.example/api/now/table/change_request?number={{.Params.ticket}}",
                                  success='body.result[0].approval == "approved"',
                                  secret_headers={"Authorization": R.SecretRef(env="SNOW_AUTH")})
    for name, value in fields.items():
        if isinstance(value, dict):
            target = getattr(approval, name)
            target.clear()
            for key, item in value.items():
                if isinstance(item, str):
                    target[key] = item
                else:
                    target[key].CopyFrom(item)
        else:
            setattr(approval, name, value)
    return api_pb2.ApplyProtectionRequest(protection=R.Protection(name="change", external_approval=approval))


def test_an_external_approval_applies_declaratively() -> None:
    request = gate(failure='body.result[0].approval == "rejected"', ticket="body.result[0].number", method="GET")
    decision, state = run(shop(), request)
    assert decision.events == (("protection/change", events_pb2.ProtectionConfigured(protection=request.protection)),)
    assert decide(state, command(request)).events == ()


INVALID = [
    ("bad method", gate(method="DELETE"), "protection.external_approval.method: 'DELETE' is not one of GET, POST, PUT, PATCH"),
    ("no url", gate(url=""), "protection.external_approval.url: required: an http:// or https:// URL"),
    ("ftp url", gate(url="ftp://x/y"), "protection.external_approval.url: must be an http:// or https:// URL"),
    ("no success", gate(success=""), "protection.external_approval.success: required: when the change counts as approved"),
    ("bad success", gate(success='body.approval = "approved"'),
     "protection.external_approval.success: at column 15: unexpected character '='"),
    ("bad failure", gate(failure="body.state in ["),
     "protection.external_approval.failure: at column 16: the expression ends too early (in 'body.state in [')"),
    ("bad ticket", gate(ticket="ticket.number"), "protection.external_approval.ticket: at column 1: unknown name 'ticket'"),
    ("kubernetes secret", gate(secret_headers={"Authorization": R.SecretRef(kubernetes=R.KubernetesSecretKey(name="s", key="k"))}),
     "protection.external_approval.secret_headers.Authorization: a Kubernetes Secret cannot be read"),
    ("empty secret", gate(secret_headers={"Authorization": R.SecretRef()}),
     "protection.external_approval.secret_headers.Authorization: set where the secret lives: env or file"),
    ("bad header", gate(headers={"Bad Header": "x"}), "protection.external_approval.headers: 'Bad Header' is not an HTTP header name"),
]


@pytest.mark.parametrize(("case", "request_", "error"), INVALID, ids=[c[0] for c in INVALID])
def test_a_bad_external_approval_is_refused_naming_the_field(case: str, request_: api_pb2.ApplyProtectionRequest, error: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        decide(shop(), command(request_))
    assert error in str(raised.value), str(raised.value)


def test_zero_poll_interval_is_refused() -> None:
    request = gate()
    request.protection.external_approval.poll_interval.FromSeconds(0)
    with pytest.raises(InvalidArgument, match=r"poll_interval: must be at least 1s"):
        decide(shop(), command(request))


def with_github(state_app: R.Application, **fields: object) -> api_pb2.ApplyApplicationRequest:
    app = R.Application()
    app.CopyFrom(state_app)
    app.github_deployments.CopyFrom(R.GitHubDeployments(owner="acme", repo="shop", token=R.SecretRef(env="GH_TOKEN"), **fields))  # type: ignore[arg-type]
    return api_pb2.ApplyApplicationRequest(application=app)


def test_github_deployments_apply_and_name_unknown_channels() -> None:
    state = shop()
    app = state.applications["shop"]
    decision, _ = run(state, with_github(app, environments={"prod": "production"}, production_channels=["prod"]))
    assert decision.events[0][1].application.github_deployments.environments["prod"] == "production"
    with pytest.raises(InvalidArgument, match="names channel 'qa', which the application does not have"):
        decide(state, command(with_github(app, transient_channels=["qa"])))
    request = with_github(app)
    request.application.github_deployments.ClearField("token")
    with pytest.raises(InvalidArgument, match="github_deployments.token: required: a SecretRef"):
        decide(state, command(request))
