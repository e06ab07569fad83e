"""The RS256 key that signs id tokens and access tokens, published as a JWKS.

Persisted on disk so tokens issued before a restart still validate after it.
Like Microsoft's keys it carries a self-signed certificate (x5c) and kid == x5t.
The certificate's validity is real time, not the emulator's clock: clients that
look at it compare it with their own.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tracecat.emulator.encoding import b64url
from tracecat.emulator.files import ensure_private_dir, write_private


def _uint_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class SigningKey:
    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._public = key.public_key()
        self._cert = cert
        self.kid = b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1 by spec

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, _self_signed(key))

    @classmethod
    def load_or_create(cls, directory: Path) -> SigningKey:
        ensure_private_dir(directory)
        key_path, cert_path = directory / "signing-key.pem", directory / "signing-cert.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if isinstance(key, rsa.RSAPrivateKey):
                return cls(key, cert)
        signing_key = cls.generate()
        write_private(
            key_path,
            signing_key._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_private(cert_path, signing_key._cert.public_bytes(serialization.Encoding.PEM))
        return signing_key

    def jwk(self, issuer: str) -> dict[str, Any]:
        numbers = self._public.public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _uint_b64url(numbers.n),
            "e": _uint_b64url(numbers.e),
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
            "issuer": issuer,
        }

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def verify(self, token: str, audiences: list[str], now: float) -> dict[str, Any]:
        """Raise jwt.PyJWTError when the signature, audience or lifetime is wrong.

        PyJWT would judge the lifetime by the real time; the emulator's clock (`now`)
        may be ahead of it, so the time claims are checked here, as PyJWT checks them.
        """
        claims: dict[str, Any] = jwt.decode(
            token,
            self._public,
            algorithms=["RS256"],
            audience=audiences,
            options={
                "require": ["exp", "iat", "aud"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        if _int_claim(claims, "iat", jwt.InvalidIssuedAtError) > now:
            raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
        if "nbf" in claims and _int_claim(claims, "nbf", jwt.DecodeError) > now:
            raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
        if _int_claim(claims, "exp", jwt.DecodeError) <= now:
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims


def _int_claim(claims: dict[str, Any], name: str, error: type[jwt.PyJWTError]) -> int:
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError):
        raise error(f"The {name} claim must be an integer.") from None


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tracecat Emulator Token Signing")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
