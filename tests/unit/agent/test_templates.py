"""`{{.Name}}` substitution: known values filled in, unknown ones refused."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.templates import TemplateError, render, render_all, workload_values


def test_placeholders_are_replaced_with_or_without_spaces() -> None:
    values = {"Port": "41234", "Params.region": "eu"}
    assert render("python3 -m http.server {{.Port}}", values) == "python3 -m http.server 41234"
    assert render("http://127.0.0.1:{{ .Port }}/{{.Params.region}}", values) == "http://127.0.0.1:41234/eu"
    assert render_all(["a", "{{.Port}}{{.Port}}"], values) == ["a", "4123441234"]


def test_text_without_placeholders_is_unchanged() -> None:
    for text in ["", "plain", "{{ not a placeholder }}", "{.Port}", "{{Port}}"]:
        assert render(text, {"Port": "1"}) == text


def test_an_unknown_placeholder_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{\{.Prot\}\}.*\{\{.Port\}\}"):
        render("{{.Prot}}", {"Port": "1"})
    with pytest.raises(TemplateError, match="known here: none"):
        render("{{.Port}}", {})


def test_workload_values() -> None:
    spec = convergence_pb2.WorkloadSpec(
        application="shop", service="web", channel="prod", version="1.2", release_id="r1", parameters={"region": "eu"}
    )
    values = workload_values(spec, namespace="shop-prod", ports={"http": 41234, "admin": 41235}, replica=1)
    assert values == {
        "Application": "shop",
        "Service": "web",
        "Channel": "prod",
        "Namespace": "shop-prod",
        "Version": "1.2",
        "Release": "r1",
        "Params.region": "eu",
        "Port": "41234",
        "Ports.http": "41234",
        "Ports.admin": "41235",
        "Replica": "1",
    }
    assert "Port" not in workload_values(spec, namespace="n")
