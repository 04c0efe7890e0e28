"""Secret environment in the process runtimes: resolved at apply time on the agent's
machine, handed only to processes — the local runtime's service processes, the exec
runtime's apply command (CONVOY_SECRET_<NAME>, never in the stdin document) — never
written to the runtimes' state; an unresolvable reference refuses the apply naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes.base import ApplyRejected, WorkloadKey
from services.agent.runtimes.exec import ExecRuntime, ExecSettings
from services.agent.runtimes.local import LocalRuntime, LocalSettings
from tests.conftest import eventually
from tests.contract.runtime_suite import make_workload

KEY = WorkloadKey(namespace="convoy-shop-staging", application="shop", service="web")
VALUE = "s3cret-value-for-the-test"

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w')); import time; time.sleep(3600)"
APPLY = (
    "import json, os, sys; doc = sys.stdin.read(); "
    "json.dump({'stdin': doc, 'env': dict(os.environ)}, open(os.environ['OUT'], 'w'))"
)


def spec(command: list[str], **refs: resources_pb2.SecretRef) -> convergence_pb2.WorkloadSpec:
    program = resources_pb2.Program(name="web", command=command, env={"PLAIN": "p"})
    for name, ref in refs.items():
        program.secret_env[name].CopyFrom(ref)
    return convergence_pb2.WorkloadSpec(application="shop", service="web", channel="staging", version="v1",
                                        replicas=1, programs=[program])


def everything_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


async def test_the_local_runtime_gives_the_value_to_the_process_only(tmp_path: Path) -> None:
    out, secret_file = tmp_path / "env.json", tmp_path / "pw"
    secret_file.write_text(VALUE + "-file\n")
    runtime = await LocalRuntime.open(settings=LocalSettings(state_dir=tmp_path / "state",
                                                            base_env={"PATH": "/usr/bin:/bin", "AGENT_PW": VALUE}))
    try:
        workload = make_workload(KEY, spec([sys.executable, "-c", DUMP_ENV, str(out)],
                                           DB_PASSWORD=resources_pb2.SecretRef(env="AGENT_PW"),
                                           TLS_KEY=resources_pb2.SecretRef(file=str(secret_file))), generation=1)
        await runtime.apply(workload)
        await eventually(out.exists, timeout=20, message="the process wrote its environment")
        env = json.loads(out.read_text())
        assert (env["DB_PASSWORD"], env["TLS_KEY"], env["PLAIN"]) == (VALUE, VALUE + "-file", "p")
    finally:
        await runtime.close()
    state = everything_under(tmp_path / "state")
    assert b"AGENT_PW" in state  # the reference is kept …
    assert VALUE.encode() not in state  # … the value is not


async def test_the_local_runtime_refuses_an_unresolvable_reference_naming_it(tmp_path: Path) -> None:
    runtime = await LocalRuntime.open(settings=LocalSettings(state_dir=tmp_path / "state", base_env={"PATH": "/usr/bin:/bin"}))
    try:
        for ref, error in [
            (resources_pb2.SecretRef(env="NOT_SET_HERE"), "DB_PASSWORD: secret env:NOT_SET_HERE: the variable is not set "
             "on this machine (retryable: provide it on the agent's machine and deploy again)"),
            (resources_pb2.SecretRef(file=str(tmp_path / "missing")), "no such file on this machine (retryable"),
            (resources_pb2.SecretRef(convoy="db-password"), "this runtime was started without a way to ask the control "
             "plane for one — retrying will not help"),
            (resources_pb2.SecretRef(kubernetes=resources_pb2.KubernetesSecretKey(name="db", key="pw")),
             "only a Kubernetes runtime can resolve it"),
        ]:
            workload = make_workload(KEY, spec(["sleep", "60"], DB_PASSWORD=ref), generation=1)
            with pytest.raises(ApplyRejected) as refused:
                await runtime.apply(workload)
            assert error in str(refused.value)
        assert runtime.pids(KEY) == []  # nothing started
    finally:
        await runtime.close()


async def test_the_exec_apply_command_gets_secrets_as_environment_never_in_its_document(tmp_path: Path) -> None:
    out = tmp_path / "apply.json"
    config = resources_pb2.ExecRuntimeConfig(apply=[sys.executable, "-c", APPLY], fetch=["true"], delete=["true"])
    runtime = ExecRuntime(settings=ExecSettings(name="edge", config=config, state_dir=tmp_path / "state",
                                                base_env={"PATH": "/usr/bin:/bin", "OUT": str(out), "AGENT_PW": VALUE}))
    try:
        workload = make_workload(KEY, spec(["web"], DB_PASSWORD=resources_pb2.SecretRef(env="AGENT_PW")), generation=1)
        await runtime.apply(workload)
        seen = json.loads(out.read_text())
        assert seen["env"]["CONVOY_SECRET_DB_PASSWORD"] == VALUE
        assert VALUE not in seen["stdin"]
        document = json.loads(seen["stdin"])
        assert document["spec"]["programs"][0]["secretEnv"] == {"DB_PASSWORD": {"env": "AGENT_PW"}}
        with pytest.raises(ApplyRejected, match="secret env:MISSING: the variable is not set"):
            await runtime.apply(make_workload(KEY, spec(["web"], DB_PASSWORD=resources_pb2.SecretRef(env="MISSING")), generation=2))
    finally:
        await runtime.close()
    assert VALUE.encode() not in everything_under(tmp_path / "state")


async def test_convoy_references_go_through_the_callback_and_its_refusals_name_them(tmp_path: Path) -> None:
    """The agent's SecretClient is the `convoy` callback (tests/integration/test_secret_delivery.py
    runs it against the real responder); here: the value reaches the process only, and a
    refusal becomes an apply failure that names the reference and says whether to retry."""
    from services.secrets.references import SecretUnavailable

    asked: list[tuple[str, str]] = []

    async def convoy(workload, name: str) -> str:  # type: ignore[no-untyped-def]
        asked.append((workload.key.service, name))
        if name == "missing":
            raise SecretUnavailable("secret convoy:missing: not set", retryable=True)
        if name == "foreign":
            raise SecretUnavailable("secret convoy:foreign: not referenced", retryable=False)
        return VALUE + "-convoy"

    out = tmp_path / "env.json"
    runtime = await LocalRuntime.open(settings=LocalSettings(state_dir=tmp_path / "state", convoy_secrets=convoy,
                                                            base_env={"PATH": "/usr/bin:/bin"}))
    try:
        for name, error in [("missing", "DB_PASSWORD: secret convoy:missing: not set (retryable: deploy again once"),
                            ("foreign", "secret convoy:foreign: not referenced (retrying will not help)")]:
            with pytest.raises(ApplyRejected) as refused:
                await runtime.apply(make_workload(KEY, spec(["sleep", "60"], DB_PASSWORD=resources_pb2.SecretRef(convoy=name)),
                                                  generation=1))
            assert error in str(refused.value)
        assert runtime.pids(KEY) == []
        workload = make_workload(KEY, spec([sys.executable, "-c", DUMP_ENV, str(out)],
                                           DB_PASSWORD=resources_pb2.SecretRef(convoy="db-password")), generation=2)
        await runtime.apply(workload)
        await eventually(out.exists, timeout=20, message="the process wrote its environment")
        assert json.loads(out.read_text())["DB_PASSWORD"] == VALUE + "-convoy"
        assert ("web", "db-password") in asked
    finally:
        await runtime.close()
    state = everything_under(tmp_path / "state")
    assert b"db-password" in state and (VALUE + "-convoy").encode() not in state


async def test_the_exec_apply_command_gets_a_convoy_secret_as_environment_only(tmp_path: Path) -> None:
    out = tmp_path / "apply.json"

    async def convoy(workload, name: str) -> str:  # type: ignore[no-untyped-def]
        assert name == "db-password"
        return VALUE + "-convoy"

    config = resources_pb2.ExecRuntimeConfig(apply=[sys.executable, "-c", APPLY], fetch=["true"], delete=["true"])
    runtime = ExecRuntime(settings=ExecSettings(name="edge", config=config, state_dir=tmp_path / "state",
                                                base_env={"PATH": "/usr/bin:/bin", "OUT": str(out)}, convoy_secrets=convoy))
    try:
        ref = resources_pb2.SecretRef(convoy="db-password")
        await runtime.apply(make_workload(KEY, spec(["web"], DB_PASSWORD=ref), generation=1))
        seen = json.loads(out.read_text())
        assert seen["env"]["CONVOY_SECRET_DB_PASSWORD"] == VALUE + "-convoy"
        assert VALUE not in seen["stdin"]
        assert json.loads(seen["stdin"])["spec"]["programs"][0]["secretEnv"] == {"DB_PASSWORD": {"convoy": "db-password"}}
    finally:
        await runtime.close()
    assert VALUE.encode() not in everything_under(tmp_path / "state")
