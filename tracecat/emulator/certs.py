"""A private CA and a loopback server certificate for the emulator's HTTPS listener.

MSAL only accepts https authorities, so the emulator needs a certificate that
clients can trust without touching the system store: they point their CA
bundle (MICROSOFT_CA_BUNDLE) at `ca.pem`.

Validity is judged by the real time, not the emulator's clock (clock.py): TLS
clients check these certificates against their own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tracecat.emulator.files import ensure_private_dir, write_private

SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = ("127.0.0.1", "::1")
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)  # the longest lifetime browsers accept
# Reissue a bit before expiry so a long test run never straddles the deadline.
RENEW_BEFORE = dt.timedelta(days=1)


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path
    cert: Path
    key: Path


def ensure_certificates(directory: Path) -> CertificatePaths:
    """Create the CA and server certificate once; reuse them while they are valid."""
    ensure_private_dir(directory)
    paths = CertificatePaths(
        ca_cert=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server-key.pem",
    )
    ca_key_path = directory / "ca-key.pem"
    now = dt.datetime.now(dt.UTC)

    ca = _load_ca(paths.ca_cert, ca_key_path, now)
    if ca is None:
        ca = _create_ca(now)
        write_private(ca_key_path, _private_pem(ca[1]))
        write_private(paths.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
    elif _server_cert_usable(paths, ca[0], now):
        return paths

    cert, key = _create_server_cert(ca, now)
    write_private(paths.key, _private_pem(key))
    write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(
    cert_path: Path, key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    if not (cert_path.exists() and key_path.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        return None
    public_key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        public_key, ec.EllipticCurvePublicKey
    ):
        return None
    if public_key.public_numbers() != key.public_key().public_numbers():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return None
    return cert, key


def _server_cert_usable(
    paths: CertificatePaths, ca_cert: x509.Certificate, now: dt.datetime
) -> bool:
    if not (paths.cert.exists() and paths.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return False
    expected = set(_server_sans())
    return expected <= set(sans) and cert.not_valid_after_utc - RENEW_BEFORE > now


def _server_sans() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IP_ADDRESSES]
    return names


def _create_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tracecat Microsoft Emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tracecat Microsoft Emulator Local CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _create_server_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_server_sans()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key
