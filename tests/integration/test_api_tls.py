"""The API over TLS: a real `ApiServer` given a certificate the test's own CA signed.

A client that trusts that CA gets answers on gRPC, REST and the UI (whose cookies are then
Secure); one that trusts only the system store is refused at the handshake with a
verification error; a plain-text client gets nothing from the TLS ports. The pair itself is
checked at start: unreadable, non-PEM, encrypted or mismatched files are refused before
anything listens. Every test here fails against a plain-text server.
"""

from __future__ import annotations

import re
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest

from cli import transport
from eventstore.errors import InvalidInput
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, api_pb2_grpc
from services.api.tls import ServerTls
from services.api.ui import session as ui_session
from tests.integration.test_api_support import Running, bearer, running_api
from tests.tlscerts import Pki, make_ca, make_pki, make_server_cert


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def tls_api(pg_store: PostgresEventStore, tmp_path: Path, pki: Pki) -> AsyncIterator[Running]:
    tls = ServerTls.load(pki.server_cert, pki.server_key)
    async with running_api(pg_store, tmp_path / "state", tls=tls) as running:
        yield running


def https(api: Running) -> str:
    return api.base_url.replace("http://", "https://", 1)


def trusting(pki: Pki) -> transport.Trust:
    return transport.ca_file_trust(pki.ca_cert, "the test")


async def list_applications(target: str, credentials: grpc.ChannelCredentials | None, admin: str) -> int:
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        stub = api_pb2_grpc.ApplicationServiceStub(channel)
        answer = await stub.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(admin), timeout=10)
    return len(answer.applications)


async def test_grpc_answers_over_tls_to_a_client_trusting_the_ca_and_by_name_too(tls_api: Running, pki: Pki) -> None:
    assert await list_applications(tls_api.grpc_target, trusting(pki).grpc_credentials(), tls_api.admin) == 0
    port = tls_api.grpc_target.rpartition(":")[2]
    assert await list_applications(f"localhost:{port}", trusting(pki).grpc_credentials(), tls_api.admin) == 0


async def test_grpc_refuses_a_client_that_does_not_trust_the_ca(tls_api: Running, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    for trust in (transport.system_trust(), transport.ca_file_trust(other_ca, "the test")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_applications(tls_api.grpc_target, trust.grpc_credentials(), tls_api.admin)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert transport.failure_kind(refused.value.details() or "") == "verify", refused.value.details()


async def test_grpc_refuses_a_certificate_for_another_name(
    pg_store: PostgresEventStore, tmp_path: Path, pki: Pki
) -> None:
    cert, key = make_server_cert(pki.ca_cert.parent, pki.ca_cert, pki.ca_key, name="elsewhere", hosts=("elsewhere.test",))
    async with running_api(pg_store, tmp_path / "state", tls=ServerTls.load(cert, key)) as api:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_applications(api.grpc_target, trusting(pki).grpc_credentials(), api.admin)
        assert transport.failure_kind(refused.value.details() or "") == "verify", refused.value.details()


async def test_a_plain_text_grpc_client_gets_nothing_from_the_tls_port(tls_api: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_applications(tls_api.grpc_target, None, tls_api.admin)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rest_answers_over_https_to_a_client_trusting_the_ca(tls_api: Running, pki: Pki) -> None:
    context = trusting(pki).ssl_context()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{https(tls_api)}/healthz", ssl=context) as r:
            assert r.status == 200
        async with s.get(f"{https(tls_api)}/v1/applications", headers=dict(bearer(tls_api.admin)), ssl=context) as r:
            assert r.status == 200, await r.text()
            assert (await r.json()).get("applications", []) == []


async def test_rest_refuses_a_client_that_does_not_trust_the_ca_and_plain_http(tls_api: Running) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with s.get(f"{https(tls_api)}/healthz", ssl=transport.system_trust().ssl_context()):
                pass
        with pytest.raises(aiohttp.ClientError):  # plain text to the TLS port: no HTTP answer at all
            async with s.get(f"{tls_api.base_url}/healthz"):
                pass


async def test_rest_refuses_tls_below_1_2(tls_api: Running, pki: Pki) -> None:
    async with aiohttp.ClientSession() as s:  # TLS 1.2 or later is served...
        async with s.get(f"{https(tls_api)}/healthz", ssl=trusting(pki).ssl_context()) as r:
            assert r.status == 200
    context = trusting(pki).ssl_context()  # ...and an outdated client is refused
    with warnings.catch_warnings():  # the client is meant to be outdated
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{https(tls_api)}/healthz", ssl=context):
                pass


async def test_ui_sign_in_over_tls_sets_secure_cookies(tls_api: Running, pki: Pki) -> None:
    context = trusting(pki).ssl_context()
    base = https(tls_api)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{base}/ui/login", ssl=context) as r:
            nonce = re.search(r'name="nonce" value="([^"]+)"', await r.text())
            login_cookie = next(c for c in r.headers.getall("Set-Cookie") if c.startswith(ui_session.LOGIN_COOKIE + "="))
        assert nonce is not None
        assert "Secure" in login_cookie
        async with s.post(
            f"{base}/ui/login", data={"token": tls_api.admin, "nonce": nonce.group(1), "next": "/ui/fleet"},
            allow_redirects=False, ssl=context,
        ) as r:
            assert r.status == 303, await r.text()
            cookies = r.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith(ui_session.SESSION_COOKIE + "="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie


# -- the pair is checked at start ----------------------------------------------------


def test_the_pair_loads_and_its_secrets_stay_out_of_its_repr(pki: Pki) -> None:
    tls = ServerTls.load(pki.server_cert, pki.server_key)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "PRIVATE" not in repr(tls)


def test_unreadable_or_empty_files_are_refused_with_their_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(InvalidInput, match=r"cannot read the TLS certificate file .*missing\.pem"):
        ServerTls.load(missing, pki.server_key)
    with pytest.raises(InvalidInput, match=r"cannot read the TLS key file .*missing\.pem"):
        ServerTls.load(pki.server_cert, missing)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(InvalidInput, match="is empty"):
        ServerTls.load(pki.server_cert, empty)


def test_files_that_are_not_pem_are_refused(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidInput, match="not a PEM certificate"):
        ServerTls.load(junk, pki.server_key)
    with pytest.raises(InvalidInput, match="not a PEM private key"):
        ServerTls.load(pki.server_cert, junk)
    with pytest.raises(InvalidInput, match="not a PEM certificate"):  # the two swapped
        ServerTls.load(pki.server_key, pki.server_cert)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidInput, match="holds no valid certificate"):
        ServerTls.load(broken, pki.server_key)


def test_a_key_of_another_certificate_or_an_encrypted_key_is_refused(pki: Pki) -> None:
    with pytest.raises(InvalidInput, match="does not belong to the certificate"):
        ServerTls.load(pki.server_cert, pki.ca_key)
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted = pki.server_key.with_name("encrypted.key")
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    with pytest.raises(InvalidInput, match="is encrypted"):
        ServerTls.load(pki.server_cert, encrypted)
