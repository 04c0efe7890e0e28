"""The declarative config loader: every kind of mistake is reported with its file, document
and field; valid configs become the right messages and requests in dependency order; render
and load are inverse; and no input, however broken, makes the loader crash."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from cli import config
from cli.config import ConfigError, Document, Problem, Source
from eventstore.errors import InvalidInput
from schemas.convoy.v1 import api_pb2, resources_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def problems_of(root: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        config.load(root)
    return caught.value.problems


# ---------------------------------------------------------------------------------------
# Errors: (files, expected problems as (file, document index, field path, message fragment))

ERROR_CASES = {
    "yaml syntax error with its line": (
        {"a.yaml": "application:\n  name: shop\n  labels: {team: [x\n"},
        [("a.yaml", 0, "", "invalid YAML at line 4")],
    ),
    "syntax error in a later document keeps the index": (
        {"a.yaml": "runtime: {name: r, kind: exec}\n---\nruntime: x: y\n"},
        [("a.yaml", 1, "", "invalid YAML at line 3, column 11: mapping values are not allowed here")],
    ),
    "duplicate key in one mapping": (
        {"a.yaml": "runtime:\n  name: r\n  kind: exec\n  name: s\n"},
        [("a.yaml", 0, "", "duplicate key 'name' at line 4, column 3")],
    ),
    "document is not a mapping": (
        {"a.yaml": "- application\n- service\n"},
        [("a.yaml", 0, "", "must be a mapping with one kind key")],
    ),
    "document has no kind key": (
        {"a.yaml": "{}\n"},
        [("a.yaml", 0, "", "has no kind key; expected one of: application, protection")],
    ),
    "document has several kind keys": (
        {"a.yaml": "runtime: {name: r, kind: exec}\nprotection: {name: p, command: {command: [t]}}\n"},
        [("a.yaml", 0, "", "has several kind keys (runtime, protection)")],
    ),
    "unknown kind, with a suggestion and the kinds that exist": (
        {"a.yaml": "---\n---\naplication: {name: shop}\n"},  # the first --- opens document 0
        [("a.yaml", 1, "aplication", "unknown kind 'aplication'; did you mean 'application'? (kinds are: application, protection, registry, resource, runtime, service)")],
    ),
    "unknown field with the closest valid one": (
        {"a.yaml": "application: {name: shop, relaseChannels: []}\n"},
        [("a.yaml", 0, "application.relaseChannels", "unknown field 'relaseChannels'; did you mean 'releaseChannels'?")],
    ),
    "unknown field deep inside, nothing close": (
        {"a.yaml": "application: {name: shop, releaseChannels: [{name: s, preconditions: [{channelStable: {zzz: 1}}]}]}\n"},
        [
            ("a.yaml", 0, "application.releaseChannels[0].preconditions[0].channelStable.zzz", "unknown field 'zzz' (valid: channel)"),
            ("a.yaml", 0, "application.releaseChannels[0].preconditions[0].channelStable.channel", "is required"),
        ],
    ),
    "same field in both spellings": (
        {"a.yaml": "application: {name: shop, release_channels: [], releaseChannels: []}\n"},
        [("a.yaml", 0, "application.releaseChannels", "given twice (as 'release_channels' and 'releaseChannels')")],
    ),
    "string expected": (
        {"a.yaml": "runtime: {name: r, kind: exec, exec: {apply: [run, 8080]}}\n"},
        [("a.yaml", 0, "runtime.exec.apply[1]", "must be a string, not the number 8080; quote it")],
    ),
    "number expected": (
        {"a.yaml": "service: {application: shop, name: web, replicas: two}\n"},
        [("a.yaml", 0, "service.replicas", "must be a whole number, not the string 'two'")],
    ),
    "negative number": (
        {"a.yaml": "service: {application: shop, name: web, replicas: -1}\n"},
        [("a.yaml", 0, "service.replicas", "must not be negative (got -1)")],
    ),
    "port out of range": (
        {"a.yaml": "service: {application: shop, name: web, programs: [{ports: [{port: 70000}]}]}\n"},
        [("a.yaml", 0, "service.programs[0].ports[0].port", "must be between 1 and 65535, not 70000")],
    ),
    "port name Kubernetes refuses": (
        {"a.yaml": "service: {application: shop, name: web, programs: [{ports: [{name: '8080', port: 8080}, {name: a--b, port: 81}, {name: http, port: 80}]}]}\n"},
        [
            ("a.yaml", 0, "service.programs[0].ports[0].name", "'8080' must be a port name: at most 15 lower-case letters, digits and '-', with at least one letter, no '-' at either end or twice in a row (Kubernetes requires an IANA service name)"),
            ("a.yaml", 0, "service.programs[0].ports[1].name", "'a--b' must be a port name: at most 15 lower-case letters, digits and '-', with at least one letter, no '-' at either end or twice in a row (Kubernetes requires an IANA service name)"),
        ],
    ),
    "boolean expected": (
        {"a.yaml": "runtime: {name: r, kind: exec, autoRollbackDisabled: yes}\n"},
        [("a.yaml", 0, "runtime.autoRollbackDisabled", "must be true or false, not the string 'yes'")],
    ),
    "list expected": (
        {"a.yaml": "application: {name: shop, releaseChannels: {name: staging}}\n"},
        [("a.yaml", 0, "application.releaseChannels", "must be a list, not a mapping")],
    ),
    "mapping expected": (
        {"a.yaml": "application: {name: shop, releaseChannels: [staging]}\n"},
        [("a.yaml", 0, "application.releaseChannels[0]", "must be a mapping of ReleaseChannel fields, not the string 'staging'")],
    ),
    "map value must be a string": (
        {"a.yaml": "application: {name: shop, labels: {tier: 1}}\n"},
        [("a.yaml", 0, "application.labels.tier", "must be a string, not the number 1; quote it")],
    ),
    "kind value missing": (
        {"a.yaml": "application:\n"},
        [("a.yaml", 0, "application", "is empty; expected the application's fields")],
    ),
    "unknown enum value": (
        {"a.yaml": "runtime: {name: r, kind: kubernets}\n"},
        [("a.yaml", 0, "runtime.kind", "unknown value 'kubernets'; did you mean 'kubernetes'? (one of: kubernetes, exec)")],
    ),
    "enum given as a number": (
        {"a.yaml": "runtime: {name: r, kind: 1}\n"},
        [("a.yaml", 0, "runtime.kind", "must be one of kubernetes, exec, not the number 1")],
    ),
    "bad duration": (
        {"a.yaml": "protection: {name: p, command: {command: [t]}, interval: 5 minutes}\n"},
        [("a.yaml", 0, "protection.interval", "'5 minutes' is not a duration such as \"30s\"")],
    ),
    "duration without a unit": (
        {"a.yaml": "protection: {name: p, command: {command: [t]}, interval: 30}\n"},
        [("a.yaml", 0, "protection.interval", "not the number 30 (a number needs a unit)")],
    ),
    "two members of a oneof": (
        {"a.yaml": "protection: {name: p, command: {command: [t]}, httpProbe: {url: 'http://x'}}\n"},
        [("a.yaml", 0, "protection", "set only one of httpProbe, command, agentHealth, externalApproval (got httpProbe, command)")],
    ),
    "no member of a required oneof": (
        {"a.yaml": "protection: {name: p}\n"},
        [("a.yaml", 0, "protection", "must set one of httpProbe, command, agentHealth")],
    ),
    "required names": (
        {"a.yaml": "service: {programs: []}\n---\nruntime: {kind: exec}\n---\nruntime: {name: r}\n"},
        [
            ("a.yaml", 0, "service.application", "is required"),
            ("a.yaml", 0, "service.name", "is required"),
            ("a.yaml", 1, "runtime.name", "is required"),
            ("a.yaml", 2, "runtime.kind", "is required (one of: kubernetes, exec)"),
        ],
    ),
    "empty name": (
        {"a.yaml": "---\n---\napplication:\n  name: shop\n  releaseChannels:\n  - name: staging\n  - name: ''\n"},
        [("a.yaml", 1, "application.releaseChannels[1].name", "must not be empty")],
    ),
    "application name is a DNS label": (
        {"a.yaml": "application: {name: My_Shop}\n"},
        [("a.yaml", 0, "application.name", "'My_Shop' must be a DNS label")],
    ),
    "duplicate channel": (
        {"a.yaml": "application: {name: shop, releaseChannels: [{name: prod}, {name: prod}]}\n"},
        [("a.yaml", 0, "application.releaseChannels[1].name", "duplicate channel 'prod' (also releaseChannels[0])")],
    ),
    "precondition on an unknown channel": (
        {"a.yaml": """\
            application:
              name: shop
              releaseChannels:
                - name: staging
                - name: prod
                  preconditions: [{channelStable: {channel: stagin}}]
            """},
        [("a.yaml", 0, "application.releaseChannels[1].preconditions[0].channelStable.channel", "unknown channel 'stagin'; did you mean 'staging'?")],
    ),
    "channels waiting for each other": (
        {"a.yaml": """\
            application:
              name: shop
              releaseChannels:
                - {name: a, preconditions: [{channelStable: {channel: b}}]}
                - {name: b, preconditions: [{channelStable: {channel: a}}]}
            """},
        [("a.yaml", 0, "application.releaseChannels", "in a cycle: a -> b -> a")],
    ),
    "deploy window": (
        {"a.yaml": """\
            application:
              name: shop
              releaseChannels:
                - {name: prod, preconditions: [{deployWindow: {days: [mon, fry], start: "17:00", end: "09:00"}}]}
            """},
        [
            ("a.yaml", 0, "application.releaseChannels[0].preconditions[0].deployWindow.days[1]", "unknown day 'fry'; did you mean 'fri'?"),
            ("a.yaml", 0, "application.releaseChannels[0].preconditions[0].deployWindow.end", "must be later than start (17:00)"),
        ],
    ),
    "application resource without its application": (
        {"a.yaml": "resource: {name: db, scope: application}\n"},
        [("a.yaml", 0, "resource.application", "is required when scope is application")],
    ),
    "duplicate across files": (
        {"a.yaml": "application: {name: shop}\n", "sub/b.yml": "runtime: {name: r, kind: exec}\n---\napplication: {name: shop}\n"},
        [("sub/b.yml", 1, "application.name", "duplicate application 'shop': already defined in {root}/a.yaml: document 0")],
    ),
    "duplicate service in the same application": (
        {"a.yaml": "service: {application: shop, name: web}\n---\nservice: {application: blog, name: web}\n---\nservice: {application: shop, name: web}\n"},
        [("a.yaml", 2, "service.name", "duplicate service 'shop/web': already defined in {root}/a.yaml: document 0")],
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_each_kind_of_error_names_file_document_and_field(tmp_path: Path, case: str) -> None:
    files, expected = ERROR_CASES[case]
    root = write(tmp_path, files)
    problems = problems_of(root)
    got = [(p.file.relative_to(root).as_posix(), p.document_index, p.field_path, p.message) for p in problems]
    assert len(got) == len(expected), got
    for (file, index, path, message), (want_file, want_index, want_path, fragment) in zip(got, expected, strict=True):
        assert (file, index, path) == (want_file, want_index, want_path), got
        assert fragment.replace("{root}", str(root)) in message, got


def test_all_problems_of_all_files_are_reported_in_file_order(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "b.yaml": "runtime: {name: r, kind: exc}\n---\nservice: {application: shop, name: web, replicas: x}\n",
            "a/z.yaml": "application: {name: shop, releaseChannels: [{name: ''}], descripton: x}\n",
            "c.yml": "protection: {name: [\n",
            "ignored.txt": "not: [config\n",
            ".hidden/x.yaml": "not: [config\n",
        },
    )
    with pytest.raises(ConfigError) as caught:
        config.load(root)
    assert isinstance(caught.value, InvalidInput)
    assert [(p.file.relative_to(root).as_posix(), p.document_index) for p in caught.value.problems] == [
        ("a/z.yaml", 0),
        ("a/z.yaml", 0),
        ("b.yaml", 0),
        ("b.yaml", 1),
        ("c.yml", 0),
    ]
    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    assert f"{root}/a/z.yaml: document 0: application.releaseChannels[0].name: must not be empty" in lines
    assert lines[2] == (
        f"{root}/b.yaml: document 0: runtime.kind: unknown value 'exc'; did you mean 'exec'? "
        "(one of: kubernetes, exec)"
    )


def test_problem_string_form() -> None:
    problem = Problem(Path("path/to/file.yaml"), 2, "application.releaseChannels[1].name", "must not be empty")
    assert str(problem) == "path/to/file.yaml: document 2: application.releaseChannels[1].name: must not be empty"
    assert str(Problem(Path("d"), None, "", "no such file or directory")) == "d: no such file or directory"


def test_missing_path_and_directory_without_configs(tmp_path: Path) -> None:
    assert [str(p) for p in problems_of(tmp_path / "nope")] == [f"{tmp_path}/nope: no such file or directory"]
    (tmp_path / "empty").mkdir()
    assert "no *.yaml or *.yml files" in problems_of(tmp_path / "empty")[0].message


def test_undecodable_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"application: {name: \xff}\n")
    (problem,) = problems_of(tmp_path)
    assert (problem.file, problem.document_index) == (tmp_path / "a.yaml", None)
    assert "not UTF-8" in problem.message


# ---------------------------------------------------------------------------------------
# Valid input


def test_empty_documents_are_skipped_but_counted(tmp_path: Path) -> None:
    # A comment alone is no document; the first --- opens document 0, which is empty.
    root = write(tmp_path, {"a.yaml": "# just a comment\n---\n---\nruntime: {name: r, kind: exec}\n---\n"})
    (document,) = config.load(root / "a.yaml")
    assert document.source == Source(root / "a.yaml", 1)
    assert config.load(write(tmp_path, {"empty.yaml": ""}) / "empty.yaml") == []


def test_field_spellings_friendly_enums_and_durations() -> None:
    (document,) = config.loads(
        """
        application:
          name: shop
          description:            # no value: not set
          release_channels:
            - name: staging
            - name: prod
              max_concurrent_runtimes: 2
              preconditions:
                - channel_stable: {channel: staging}
                - manualApproval: {name: prod-signoff, min_approvers: 2}
                - deployWindow: {days: [mon, fri], start: 09:00, end: 17:30, timezone: Europe/Berlin}
              protections:
                - protection: a
                  lifecycle: [post_deployment, Deployment, PRE-APPROVAL, LIFECYCLE_POST_APPROVAL, postApproval]
                  failure_behavior: block
                  delay: 1m30s
                  duration: 1h30m
                  parameters: {country: no, flag: "true"}
        """
    )
    L = resources_pb2.Lifecycle
    expected = resources_pb2.Application(
        name="shop",
        release_channels=[
            resources_pb2.ReleaseChannel(name="staging"),
            resources_pb2.ReleaseChannel(
                name="prod",
                max_concurrent_runtimes=2,
                preconditions=[
                    resources_pb2.Precondition(channel_stable=resources_pb2.ChannelStable(channel="staging")),
                    resources_pb2.Precondition(
                        manual_approval=resources_pb2.ManualApproval(name="prod-signoff", min_approvers=2)
                    ),
                    resources_pb2.Precondition(
                        deploy_window=resources_pb2.DeployWindow(
                            days=["mon", "fri"], start="09:00", end="17:30", timezone="Europe/Berlin"
                        )
                    ),
                ],
                protections=[
                    resources_pb2.ProtectionAttachment(
                        protection="a",
                        lifecycle=[
                            L.LIFECYCLE_POST_DEPLOYMENT,
                            L.LIFECYCLE_DEPLOYMENT,
                            L.LIFECYCLE_PRE_APPROVAL,
                            L.LIFECYCLE_POST_APPROVAL,
                            L.LIFECYCLE_POST_APPROVAL,
                        ],
                        failure_behavior=resources_pb2.FAILURE_BEHAVIOR_BLOCK,
                        delay={"seconds": 90},
                        duration={"seconds": 5400},
                        parameters={"country": "no", "flag": "true"},
                    )
                ],
            ),
        ],
    )
    assert document.kind == "application"
    assert document.message == expected


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("30s", 30 * 10**9),
        ("5m", 300 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("1.5h", 5400 * 10**9),
        ("1.5s", 1_500_000_000),
        ("500ms", 500_000_000),
        ("2us", 2000),
        ("7ns", 7),
        ("0", 0),
        ("0s", 0),
    ],
)
def test_durations(text: str, nanos: int) -> None:
    assert config.parse_duration(text) == nanos
    assert config.parse_duration(config.format_duration(nanos)) == nanos


@pytest.mark.parametrize("text", ["", "5", "m", "-5s", "5 m", "1.5.5s", "1d", "0.1ns", "99999999999999h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_friendly_duration_becomes_proto_duration() -> None:
    (document,) = config.loads("protection: {name: p, command: {command: [t], timeout: 250ms}, interval: 5m}")
    assert document.message.interval.ToSeconds() == 300
    assert document.message.command.timeout.ToMilliseconds() == 250


def test_resource_scope_is_inferred_from_application() -> None:
    infra, app = config.loads("resource: {name: registry}\n---\nresource: {name: db, application: shop}\n")
    assert infra.message.scope == resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE
    assert app.message.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION


def test_directory_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    """Sorted by path components (a directory's files come where its name sorts), like
    kubectl's walk of a directory."""
    root = write(
        tmp_path,
        {
            "b.yaml": "runtime: {name: b, kind: exec}\n",
            "a/z.yml": "runtime: {name: az, kind: exec}\n",
            "a.yaml": "runtime: {name: a, kind: exec}\n---\nruntime: {name: a2, kind: exec}\n",
            "notes.md": "runtime: {name: ignored}\n",
        },
    )
    assert [d.message.name for d in config.load(root)] == ["az", "a", "a2", "b"]
    assert [d.source for d in config.load(str(root))][:2] == [Source(root / "a" / "z.yml", 0), Source(root / "a.yaml", 0)]


def test_examples_load() -> None:
    documents = config.load(EXAMPLES)
    by_kind = {(d.kind, d.message.name) for d in documents}
    assert by_kind == {
        ("runtime", "local"),
        ("protection", "http-ok"),
        ("application", "shop"),
        ("resource", "shop-db"),
        ("service", "web"),
        ("service", "api"),
    }
    (app,) = [d.message for d in documents if d.kind == "application"]
    staging, prod = app.release_channels
    assert staging.name == "staging" and prod.name == "prod"
    assert prod.preconditions[0].channel_stable.channel == "staging"
    assert prod.preconditions[1].manual_approval.name == "prod-signoff"
    assert prod.preconditions[1].manual_approval.min_approvers == 1
    (soak,) = prod.protections
    assert soak.protection == "http-ok"
    assert list(soak.lifecycle) == [resources_pb2.LIFECYCLE_POST_DEPLOYMENT]
    assert soak.duration.ToSeconds() == 30
    (runtime,) = [d.message for d in documents if d.kind == "runtime"]
    assert runtime.kind == resources_pb2.RUNTIME_KIND_EXEC


# ---------------------------------------------------------------------------------------
# Requests


def test_requests_come_in_dependency_order(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "1-services.yaml": "service: {application: shop, name: web}\n---\nservice: {application: shop, name: api}\n",
            "2-resources.yaml": (
                "resource: {name: db, application: shop}\n---\nresource: {name: registry, scope: infrastructure}\n"
            ),
            "3-application.yaml": "application: {name: shop}\n",
            "4-protections.yaml": "protection: {name: p, command: {command: [t]}}\n",
            "5-runtimes.yaml": "runtime: {name: r1, kind: exec}\n---\nruntime: {name: r2, kind: kubernetes}\n",
        },
    )
    pairs = config.to_requests(config.load(root))
    assert [(type(r).__name__, d.message.name) for d, r in pairs] == [
        ("ApplyRuntimeRequest", "r1"),
        ("ApplyRuntimeRequest", "r2"),
        ("ApplyProtectionRequest", "p"),
        ("LinkResourceRequest", "registry"),
        ("ApplyApplicationRequest", "shop"),
        ("LinkResourceRequest", "db"),
        ("ApplyServiceRequest", "web"),
        ("ApplyServiceRequest", "api"),
    ]
    document, request = pairs[4]
    assert request == api_pb2.ApplyApplicationRequest(application=document.message)
    assert isinstance(document, Document)


def test_examples_requests() -> None:
    kinds = [type(r).__name__ for _, r in config.to_requests(config.load(EXAMPLES))]
    assert kinds == [
        "ApplyRuntimeRequest",
        "ApplyProtectionRequest",
        "ApplyApplicationRequest",
        "LinkResourceRequest",
        "ApplyServiceRequest",
        "ApplyServiceRequest",
    ]


# ---------------------------------------------------------------------------------------
# Render


def test_render_round_trips_the_examples() -> None:
    for document in config.load(EXAMPLES):
        text = config.render(document.message)
        (again,) = config.loads(text)
        assert again.kind == document.kind
        assert again.message == document.message
        assert config.render(again.message) == text


def test_render_is_friendly() -> None:
    (document,) = [d for d in config.load(EXAMPLES) if d.kind == "application"]
    text = config.render(document.message)
    assert text.startswith("application:\n  name: shop\n")
    assert "releaseChannels:" in text
    assert "- post_deployment" in text
    assert "failureBehavior: fail" in text
    assert "duration: 30s" in text
    assert "LIFECYCLE_" not in text


def test_render_quotes_strings_that_read_as_other_types() -> None:
    labels = {"a": "no", "b": "1e3", "c": "17:30", "d": "true", "e": "08", "f": "~", "g": "2024-01-01", "h": "=", "i": ""}
    runtime = resources_pb2.Runtime(name="r", kind=resources_pb2.RUNTIME_KIND_EXEC, labels=labels)
    (document,) = config.loads(config.render(runtime))
    assert document.message == runtime
    assert yaml.safe_load(config.render(runtime))["runtime"]["labels"] == labels  # YAML 1.1 readers too


def test_render_rejects_other_messages() -> None:
    with pytest.raises(TypeError):
        config.render(resources_pb2.Release())


# ---------------------------------------------------------------------------------------
# Fuzz: anything in -> documents or ConfigError out


FRAGMENTS = [
    "application:", "service:", "runtime:", "protection:", "resource:", "name:", " shop", "releaseChannels:",
    "release_channels:", "preconditions:", "channelStable:", "kind:", " exec", " kubernetes", "lifecycle:",
    "duration:", " 5m", " 30s", "\n", "\n  ", "\n    ", "- ", "---\n", "[", "]", "{", "}", ", ", ":", " ",
    "&a ", "*a", "!!int ", "!!bool ", "!!float ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!foo ",
    "'", '"', "#", "? ", "<<: ", "~", "1", "-1", "1e999", "true", "09:00", "\t", "\x00", "%YAML 1.1\n",
    "|\n", ">-\n", "labels:", "{name: x}", "ports: [{port: 0}]",
]


def _fields(desc: Descriptor, seen: set[str] | None = None) -> Iterator[FieldDescriptor]:
    """Every field reachable from `desc`, so random trees use real field names."""
    seen = set() if seen is None else seen
    if desc.full_name in seen:
        return
    seen.add(desc.full_name)
    for f in desc.fields:
        yield f
        if f.message_type is not None:
            yield from _fields(f.message_type, seen)


KEYS = sorted(
    {f.json_name for cls in config.KINDS.values() for f in _fields(cls.DESCRIPTOR)}
    | {f.name for cls in config.KINDS.values() for f in _fields(cls.DESCRIPTOR)}
    | set(config.KINDS)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["exec", "kubernetes", "post_deployment", "block", "30s", "1h30m", "shop", "infrastructure"])
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(), children, max_size=5),
    max_leaves=30,
)


def assert_documents_or_config_error(text: str) -> None:
    try:
        documents = config.loads(text)
    except ConfigError as e:
        assert e.problems
        assert all(isinstance(p, Problem) and str(p) for p in e.problems)
        return
    for document in documents:
        assert document.kind in config.KINDS
        (again,) = config.loads(config.render(document.message))
        assert again.message == document.message
    config.to_requests(documents)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join))
def test_fuzz_yamlish_text(text: str) -> None:
    assert_documents_or_config_error(text)


@FUZZ
@given(st.text())
def test_fuzz_any_text(text: str) -> None:
    assert_documents_or_config_error(text)


@FUZZ
@given(st.sampled_from(sorted(config.KINDS)), TREES)
def test_fuzz_nested_values(kind: str, tree: object) -> None:
    assert_documents_or_config_error(yaml.safe_dump({kind: tree}))


@FUZZ
@given(st.lists(TREES, max_size=3))
def test_fuzz_documents(trees: list[object]) -> None:
    assert_documents_or_config_error(yaml.safe_dump_all(trees))


@given(st.integers(0, 315_576_000_000 * 10**9))
def test_format_duration_round_trips(nanos: int) -> None:
    assert config.parse_duration(config.format_duration(nanos)) == nanos


EXAMPLE_TEXTS = [config.render(d.message) for d in config.load(EXAMPLES)]


@st.composite
def mutated_examples(draw: st.DrawFn) -> object:
    """A valid example with one subtree replaced or one key dropped: reaches the deep and
    cross-field checks that random trees rarely get to."""
    tree = yaml.safe_load(draw(st.sampled_from(EXAMPLE_TEXTS)))
    node = tree
    for _ in range(draw(st.integers(1, 6))):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        if not children:
            break
        key, child = draw(st.sampled_from(children))
        if not isinstance(child, (dict, list)) or draw(st.booleans()):
            if isinstance(node, dict) and draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(TREES)
            break
        node = child
    return tree


@FUZZ
@given(mutated_examples())
def test_fuzz_mutated_examples(tree: object) -> None:
    assert_documents_or_config_error(yaml.safe_dump(tree))


def test_secret_attributes_take_every_kind_of_reference_and_services_map_attributes() -> None:
    resource, service = config.loads(textwrap.dedent(
        """
        resource:
          name: orders-db
          secretAttributes:
            password: {env: DB_PASSWORD}
            tls: {file: /run/secrets/db}
            k8s: {kubernetes: {name: db, key: password}}
            kept: {convoy: db-password}
        ---
        service:
          application: shop
          name: web
          resources: [orders-db]
          resource_env: [{env: PGPASSWORD, resource: orders-db, attribute: password}]
          programs: [{name: web, command: [web], secretEnv: {TOKEN: {env: WEB_TOKEN}}}]
        """
    ))
    R = resources_pb2
    refs = resource.message.secret_attributes
    assert (refs["password"].env, refs["tls"].file, refs["kept"].convoy) == ("DB_PASSWORD", "/run/secrets/db", "db-password")
    assert refs["k8s"].kubernetes == R.KubernetesSecretKey(name="db", key="password")
    assert list(service.message.resource_env) == [R.ResourceEnv(env="PGPASSWORD", resource="orders-db", attribute="password")]
    assert service.message.programs[0].secret_env["TOKEN"].env == "WEB_TOKEN"
