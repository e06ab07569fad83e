"""A demo user's Graph access token from the emulator, through MSAL's auth code flow."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import httpx
import msal

from tracecat.emulator.constants import DEMO_APP_SCOPES, GRAPH_RESOURCE
from tracecat.emulator.server import EmulatorServer


def graph_token(
    emulator: EmulatorServer, email: str, scopes: Sequence[str] = DEMO_APP_SCOPES
) -> str:
    """Sign `email` in for `scopes` (Graph's, without the resource prefix); the browser step
    is answered by login_hint."""
    tls = ssl.create_default_context(cafile=str(emulator.ca_bundle))
    with httpx.Client(verify=tls, timeout=10) as http:
        app = msal.ConfidentialClientApplication(
            emulator.client_id,
            client_credential=emulator.client_secret,
            authority=f"{emulator.authority_host}/common",
            instance_discovery=False,
            http_client=http,
        )
        wanted = [f"{GRAPH_RESOURCE}/{scope}" for scope in scopes]
        redirect_uri = "http://localhost:8400/auth/callback"
        flow = app.initiate_auth_code_flow(wanted, redirect_uri=redirect_uri, login_hint=email)
        location = httpx.get(flow["auth_uri"], follow_redirects=False).headers["location"]
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    token: str = result["access_token"]
    return token
