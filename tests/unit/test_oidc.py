"""SSO token verification against a JWKS file: every check refuses what it must, by the injected clock."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from schemas.convoy.v1 import options_pb2
from services.api.domain import PermissionDenied
from services.api.errors import Unauthenticated
from services.api.oidc import SsoVerifier
from services.api.oidc_config import OidcConfigError, load, parse
from tests.sso_keys import AUDIENCE, ISSUER, KeyedIssuer, config_yaml, hs256_signed, unsigned

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def issuer() -> KeyedIssuer:
    return KeyedIssuer()


@pytest.fixture
async def verifier(issuer: KeyedIssuer, tmp_path: Path) -> SsoVerifier:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    (tmp_path / "oidc.yaml").write_text(config_yaml(str(jwks)))
    return SsoVerifier(load(tmp_path / "oidc.yaml"), clock=lambda: NOW)


async def check(verifier: SsoVerifier, token: str):  # type: ignore[no-untyped-def]
    await verifier.prepare(token)
    return verifier.verify(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_a_good_token_is_its_issuer_and_subject(verifier: SsoVerifier, issuer: KeyedIssuer, alg: str) -> None:
    identity = await check(verifier, issuer.token("Alice-123", alg=alg, now=NOW))
    assert identity.principal == "sso:corp:Alice-123"
    assert identity.role == options_pb2.ROLE_APPROVER and not identity.scope.restricted


async def test_groups_map_to_the_highest_role_and_its_scope(verifier: SsoVerifier, issuer: KeyedIssuer) -> None:
    identity = await check(verifier, issuer.token(groups=["viewers", "shop-team"], now=NOW))
    assert identity.role == options_pb2.ROLE_DEPLOYER and identity.scope.applications == {"shop"}


async def test_no_mapped_group_is_refused(verifier: SsoVerifier, issuer: KeyedIssuer) -> None:
    with pytest.raises(PermissionDenied, match="in no group mapped to a Convoy role"):
        await check(verifier, issuer.token(groups=["marketing"], now=NOW))


def _refusals(issuer: KeyedIssuer) -> list[tuple[str, str, str]]:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": int(NOW), "exp": int(NOW) + 600, "groups": ["approvers"]}
    return [
        ("expired", issuer.token(now=NOW - 3600, lifetime=600), "SSO token expired at"),
        ("expired past the leeway", issuer.token(now=NOW - 631, lifetime=600), "expired"),
        ("not yet valid", issuer.token(now=NOW, nbf=int(NOW) + 300), "not valid yet"),
        ("issued in the future", issuer.token(now=NOW + 600), "not valid yet"),
        ("wrong audience", issuer.token(now=NOW, aud="someone-else"), "audience (aud) is not 'convoy'"),
        ("wrong issuer", issuer.token(now=NOW, iss="https://evil.example/"), "issuer (iss) is not configured"),
        ("unknown kid", issuer.token(now=NOW, kid="rsa-9"), "key (kid) is not among"),
        ("alg none", unsigned(base, {"alg": "none", "kid": "rsa-1"}), "algorithm 'none' is not accepted"),
        ("HS256 with the public key", hs256_signed(base, issuer.public_pem()), "algorithm 'HS256' is not accepted"),
        ("RS256 header on the EC key", issuer.token(now=NOW, kid="ec-1"), "is not an RS256 key"),
        ("forged signature", issuer.token(now=NOW)[:-6] + "AAAAAA", "signature does not verify"),
        ("no sub", issuer.token(now=NOW, sub=""), "`sub` must be"),
    ]


REFUSAL_IDS = [r[0] for r in _refusals(KeyedIssuer())]


@pytest.mark.parametrize("index", range(len(REFUSAL_IDS)), ids=REFUSAL_IDS)
async def test_bad_tokens_are_refused(verifier: SsoVerifier, issuer: KeyedIssuer, index: int) -> None:
    _, token, message = _refusals(issuer)[index]
    with pytest.raises(Unauthenticated, match=re.escape(message)):
        await check(verifier, token)


async def test_leeway_accepts_a_token_just_expired(verifier: SsoVerifier, issuer: KeyedIssuer) -> None:
    assert (await check(verifier, issuer.token(now=NOW - 620, lifetime=600))).principal == "sso:corp:alice-123"


async def test_the_clock_is_the_apis(issuer: KeyedIssuer, tmp_path: Path) -> None:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    now = [time.time()]
    verifier = SsoVerifier(parse({"issuers": [{"alias": "corp", "issuer": ISSUER, "audience": AUDIENCE,
                                               "jwks": str(jwks), "groups": [{"group": "approvers", "role": "approver"}]}]}),
                           clock=lambda: now[0])
    token = issuer.token(now=now[0], lifetime=60)
    assert (await check(verifier, token)).principal == "sso:corp:alice-123"
    now[0] += 60 + 31
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "issuers: required"),
        ({"issuers": [{"alias": "Corp", "issuer": "x", "audience": "a", "jwks": "k", "groups": []}]}, "alias"),
        ({"issuers": [{"alias": "c", "issuer": "x", "audience": "a", "jwks": "http://idp.example/k",
                       "groups": [{"group": "g", "role": "admin"}]}]}, "https://"),
        ({"issuers": [{"alias": "c", "issuer": "x", "audience": "a", "jwks": "k",
                       "groups": [{"group": "g", "role": "owner"}]}]}, "groups\\[0\\].role"),
        ({"issuers": [{"alias": "c", "issuer": "x", "audience": "a", "jwks": "k",
                       "groups": [{"group": "g", "role": "admin", "scope": {"applications": ["Shop"]}}]}]}, "scope.applications"),
    ],
)
def test_bad_configuration_names_the_field(data: object, message: str) -> None:
    with pytest.raises(OidcConfigError, match=message):
        parse(data)


def test_the_documented_configuration_and_limits_are_what_the_code_reads() -> None:
    import yaml

    from services.api.limits import DEFAULT_LIMITS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    block = doc.split("## SSO", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse(yaml.safe_load(block))
    assert [i.alias for i in config.issuers] == ["corp"] and config.jwks_cache_seconds == 300
    grant = config.issuers[0].grant_for(["shop-team"])
    assert grant is not None and grant[1].applications == {"shop"}
    for kind, limit in DEFAULT_LIMITS.items():
        assert f"| {kind} | {limit.concurrent} | {limit.rate:g} ({limit.burst}) |" in doc


async def test_an_unreachable_issuer_is_an_outage_and_cached_keys_outlive_a_failed_refresh(issuer: KeyedIssuer) -> None:
    import json

    from eventstore.errors import Unavailable

    now = [NOW]
    up = [True]
    calls: list[str] = []

    async def fetch(url: str) -> bytes:
        calls.append(url)
        if not up[0]:
            raise Unavailable("issuer down")
        return json.dumps(issuer.jwks()).encode()

    config = parse({"issuers": [{"alias": "corp", "issuer": ISSUER, "audience": AUDIENCE,
                                 "jwks": "https://login.example.test/jwks", "groups": [{"group": "approvers", "role": "approver"}]}],
                    "jwksCacheSeconds": 300})
    verifier = SsoVerifier(config, clock=lambda: now[0], fetch=fetch)
    up[0] = False
    with pytest.raises(Unavailable):
        await check(verifier, issuer.token(now=now[0]))
    up[0] = True
    assert (await check(verifier, issuer.token(now=now[0]))).role == options_pb2.ROLE_APPROVER
    now[0] += 301  # the cache expired, and the issuer is down: the keys we have still verify
    up[0] = False
    assert (await check(verifier, issuer.token(now=now[0]))).role == options_pb2.ROLE_APPROVER
    tries = len(calls)
    await check(verifier, issuer.token(now=now[0]))
    assert len(calls) == tries  # not retried on every call
    now[0] += 31
    await check(verifier, issuer.token(now=now[0]))
    assert len(calls) == tries + 1
