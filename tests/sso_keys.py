"""Test SSO issuers: keys the tests generate, JWKS documents and signed tokens (no tests here)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://login.example.test/"
AUDIENCE = "convoy"


@dataclass
class KeyedIssuer:
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def jwks(self, *, rsa_kid: str = "rsa-1", ec_kid: str = "ec-1") -> dict[str, Any]:
        r = json.loads(RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        e = json.loads(ECAlgorithm.to_jwk(self.ec_key.public_key()))
        r.update(kid=rsa_kid, alg="RS256", use="sig")
        e.update(kid=ec_kid, alg="ES256", use="sig")
        return {"keys": [r, e]}

    def write_jwks(self, path: Path, **kids: str) -> Path:
        path.write_text(json.dumps(self.jwks(**kids)))
        return path

    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(
        self,
        sub: str = "alice-123",
        *,
        groups: list[str] | None = None,
        alg: str = "RS256",
        kid: str | None = None,
        now: float | None = None,
        lifetime: float = 600,
        **claims: Any,
    ) -> str:
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": int(issued), "exp": int(issued + lifetime),
            "groups": ["approvers"] if groups is None else groups,
        }
        payload.update(claims)
        if alg == "RS256":
            return jwt.encode(payload, self.rsa_key, algorithm="RS256", headers={"kid": kid or "rsa-1"})
        if alg == "ES256":
            return jwt.encode(payload, self.ec_key, algorithm="ES256", headers={"kid": kid or "ec-1"})
        raise ValueError(alg)


def config_yaml(jwks: str, *, alias: str = "corp") -> str:
    return f"""
issuers:
  - alias: {alias}
    issuer: {ISSUER}
    audience: {AUDIENCE}
    jwks: {jwks}
    groups:
      - group: viewers
        role: viewer
      - group: approvers
        role: approver
      - group: shop-team
        role: deployer
        scope: {{applications: [shop]}}
jwksCacheSeconds: 300
leewaySeconds: 30
"""


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with alg none (no signature)."""
    import base64

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}."


def hs256_signed(payload: dict[str, Any], secret: bytes, kid: str = "rsa-1") -> str:
    """A JWT signed HS256 with `secret` (the classic attack: the issuer's public key as the HMAC key)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"
