"""The emulator's CA, server certificate and token-signing key on disk."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import httpx
from cryptography import x509

from tracecat.emulator.certs import ensure_certificates
from tracecat.emulator.server import EmulatorServer


def test_certificates_are_private_reused_and_cover_loopback(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path)
    first = (paths.ca_cert.read_bytes(), paths.cert.read_bytes())
    for path in (paths.ca_cert, paths.cert, paths.key, tmp_path / "ca-key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_certificates(tmp_path) == paths
    assert (paths.ca_cert.read_bytes(), paths.cert.read_bytes()) == first

    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }

    # A lost server certificate is reissued under the same CA, so clients keep trusting it.
    paths.cert.unlink()
    ensure_certificates(tmp_path)
    assert paths.ca_cert.read_bytes() == first[0]
    assert paths.cert.read_bytes() != first[1]


def test_signing_key_survives_a_restart(tmp_path: Path) -> None:
    kids = []
    for _ in range(2):
        with EmulatorServer(tmp_path) as server:
            tls = ssl.create_default_context(cafile=str(server.ca_bundle))
            with httpx.Client(verify=tls) as client:
                keys = client.get(f"{server.authority_host}/common/discovery/v2.0/keys").json()
            kids.append(keys["keys"][0]["kid"])
            # The browser-facing listener answers plain HTTP with the same app.
            with httpx.Client() as browser:
                assert browser.get(f"{server.http_url}/_emulator").status_code == 200
    assert kids[0] == kids[1]
