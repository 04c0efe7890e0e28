"""Secret attributes as references, resource environment collisions refused at declaration,
and the Convoy-kept secret commands (SetSecret, DeleteSecret, RotateSecretKey)."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import BadCommandContext, FailedPrecondition, InvalidArgument, Minted, NotFound, decide
from services.api.domain.commands import SealedSecret
from tests.unit.domain.builders import apply_service, command, run, shop

R = resources_pb2
INFRA, APP = R.RESOURCE_SCOPE_INFRASTRUCTURE, R.RESOURCE_SCOPE_APPLICATION


def link(name: str = "db", *, app: str = "", plain: dict[str, str] | None = None,
         secret: dict[str, R.SecretRef] | None = None) -> api_pb2.LinkResourceRequest:
    r = R.Resource(name=name, scope=APP if app else INFRA, application=app, kind="database", attributes=plain or {})
    for key, ref in (secret or {}).items():
        r.secret_attributes[key].CopyFrom(ref)
    return api_pb2.LinkResourceRequest(resource=r)


def test_a_secret_attribute_is_recorded_as_its_reference() -> None:
    request = link(plain={"host": "db"}, secret={"password": R.SecretRef(env="DB_PASSWORD"),
                                                 "tls": R.SecretRef(file="/run/secrets/tls"),
                                                 "k8s": R.SecretRef(kubernetes=R.KubernetesSecretKey(name="db", key="pw")),
                                                 "kept": R.SecretRef(convoy="db-password")})
    decision, state = run(shop(), request)
    assert decision.events == (("resource/infra/db", events_pb2.ResourceLinked(resource=request.resource)),)
    assert state.resources[(INFRA, "", "db")].secret_attributes["password"].env == "DB_PASSWORD"


@pytest.mark.parametrize(
    ("secret", "plain", "error"),
    [
        ({"password": R.SecretRef()}, {}, "resource.secret_attributes[\"password\"]: names no source"),
        ({"password": R.SecretRef(env="1BAD")}, {}, "is not an environment variable name"),
        ({"password": R.SecretRef(file="relative/path")}, {}, "is not an absolute path"),
        ({"password": R.SecretRef(kubernetes=R.KubernetesSecretKey(name="Bad_Name", key="k"))}, {}, "not a Kubernetes Secret name"),
        ({"password": R.SecretRef(kubernetes=R.KubernetesSecretKey(name="db", key=""))}, {}, "not a Kubernetes Secret key"),
        ({"password": R.SecretRef(convoy="Not Valid")}, {}, "is not a secret name"),
        ({"password": R.SecretRef(env="PW")}, {"password": "plain"}, "is also a plain attribute"),
        ({"bad key!": R.SecretRef(env="PW")}, {}, "resource.secret_attributes"),
    ],
)
def test_bad_secret_attributes_are_refused_naming_the_field(
    secret: dict[str, R.SecretRef], plain: dict[str, str], error: str
) -> None:
    with pytest.raises(InvalidArgument, match=None) as refused:
        decide(shop(), command(link(plain=plain, secret=secret)))
    assert error in str(refused.value)


def test_apply_service_refuses_two_attributes_that_make_one_variable() -> None:
    state = run(shop(), link(plain={"db_host": "a", "db-host": "b"}))[1]
    with pytest.raises(InvalidArgument, match="CONVOY_RESOURCE_DB_DB_HOST would come from both db/db-host and db/db_host"):
        decide(state, command(apply_service("shop", "api", resources=["db"])))


def test_apply_service_refuses_a_mapping_to_an_unknown_attribute_or_unused_resource() -> None:
    state = run(shop(), link(plain={"host": "a"}))[1]
    mapping = [R.ResourceEnv(env="DB", resource="db", attribute="port")]
    with pytest.raises(InvalidArgument, match="resource 'db' has no attribute 'port'"):
        decide(state, command(apply_service("shop", "api", resources=["db"], resource_env=mapping)))
    with pytest.raises(InvalidArgument, match="resource 'db' is not one the service uses"):
        decide(state, command(apply_service("shop", "api", resource_env=mapping)))


def test_apply_service_refuses_a_program_setting_a_resource_variable() -> None:
    state = run(shop(), link(plain={"host": "a"}))[1]
    request = apply_service("shop", "api", resources=["db"])
    request.service.programs[0].env["CONVOY_RESOURCE_DB_HOST"] = "mine"
    with pytest.raises(InvalidArgument, match="CONVOY_RESOURCE_DB_HOST is also set by resource attribute db/host"):
        decide(state, command(request))


def test_relinking_with_an_attribute_that_collides_for_a_user_is_refused_naming_the_service() -> None:
    state = run(shop(), link(plain={"host": "a"}))[1]
    state = run(state, apply_service("shop", "api", resources=["db"]))[1]
    with pytest.raises(InvalidArgument, match="service shop/api: environment variable CONVOY_RESOURCE_DB_HOST"):
        decide(state, command(link(plain={"host": "a"}, secret={"HOST": R.SecretRef(env="X")})))


def test_a_program_secret_env_is_validated_and_exclusive_with_env() -> None:
    request = apply_service("shop", "api")
    request.service.programs[0].env["PW"] = "plain"
    request.service.programs[0].secret_env["PW"].CopyFrom(R.SecretRef(env="PW"))
    with pytest.raises(InvalidArgument, match="PW is also set in env"):
        decide(shop(), command(request))


# -- Convoy-kept secrets ---------------------------------------------------------------


def sealed(name: str, key: str = "k1", data: bytes = b"cipher") -> SealedSecret:
    return SealedSecret(name, key, b"n" * 12, data)


def test_set_secret_records_only_the_ciphertext() -> None:
    request = api_pb2.SetSecretRequest(name="db-password", value="hunter2")
    decision, state = run(shop(), request, minted=Minted(sealed=(sealed("db-password"),)))
    [(stream, event)] = decision.events
    assert stream == "secret/db-password"
    assert event == events_pb2.SecretSet(name="db-password", key_id="k1", nonce=b"n" * 12, ciphertext=b"cipher", cause="set")
    assert b"hunter2" not in event.SerializeToString()
    assert state.secrets["db-password"].key_id == "k1"


def test_set_secret_without_the_sealed_value_is_a_shell_bug_and_bad_input_is_named() -> None:
    with pytest.raises(BadCommandContext):
        decide(shop(), command(api_pb2.SetSecretRequest(name="db", value="x")))
    with pytest.raises(InvalidArgument, match="value: required"):
        decide(shop(), command(api_pb2.SetSecretRequest(name="db")))
    with pytest.raises(InvalidArgument, match="name: \"Bad Name\" is not a secret name") as refused:
        decide(shop(), command(api_pb2.SetSecretRequest(name="Bad Name", value="hunter2")))
    assert "hunter2" not in str(refused.value)
    with pytest.raises(InvalidArgument, match="larger than 65536 bytes") as too_big:
        decide(shop(), command(api_pb2.SetSecretRequest(name="db", value="v" * 70000)))
    assert "vvvv" not in str(too_big.value)


def test_delete_secret() -> None:
    state = run(shop(), api_pb2.SetSecretRequest(name="db", value="x"), minted=Minted(sealed=(sealed("db"),)))[1]
    decision, state = run(state, api_pb2.DeleteSecretRequest(name="db"))
    assert decision.events == (("secret/db", events_pb2.SecretDeleted(name="db")),)
    with pytest.raises(NotFound, match="secret \"db\" does not exist"):
        decide(state, command(api_pb2.DeleteSecretRequest(name="db")))


def test_rotation_re_encrypts_every_secret_under_the_new_key() -> None:
    state = shop()
    for name in ("a", "b"):
        state = run(state, api_pb2.SetSecretRequest(name=name, value="x"), minted=Minted(sealed=(sealed(name),)))[1]
    minted = Minted(sealed=(sealed("b", "k2", b"B"), sealed("a", "k2", b"A")), secret_key_id="k2",
                    previous_key_id="", retired_key_ids=("k1",))
    decision, state = run(state, api_pb2.RotateSecretKeyRequest(retire_old_keys=True), minted=minted)
    assert [stream for stream, _ in decision.events] == ["secret/a", "secret/b", "keyring"]
    assert decision.events[-1].event == events_pb2.SecretKeyRotated(key_id="k2", retired_key_ids=["k1"])
    assert {n: (r.key_id, r.cause) for n, r in state.secrets.items()} == {"a": ("k2", "rotated"), "b": ("k2", "rotated")}
    assert state.secret_key_id == "k2"


def test_a_rotation_missing_a_secret_is_refused() -> None:
    state = run(shop(), api_pb2.SetSecretRequest(name="a", value="x"), minted=Minted(sealed=(sealed("a"),)))[1]
    with pytest.raises(BadCommandContext, match="every current secret re-encrypted"):
        decide(state, command(api_pb2.RotateSecretKeyRequest(), minted=Minted(secret_key_id="k2")))


def test_nothing_is_unlinked_while_a_service_needs_it() -> None:
    state = run(shop(), link(plain={"host": "a"}))[1]
    state = run(state, apply_service("shop", "api", resources=["db"]))[1]
    with pytest.raises(FailedPrecondition):
        decide(state, command(api_pb2.UnlinkResourceRequest(name="db", scope=INFRA)))
