"""Constants and helpers shared by the emulator tests (a uniquely named module, not conftest)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import msal

from tracecat.emulator.constants import DEMO_APP_SCOPES, DEMO_USERS, GRAPH_RESOURCE
from tracecat.emulator.demo_data import channel_id_for, team_id_for
from tracecat.emulator.server import EmulatorServer

GRAPH = GRAPH_RESOURCE
ALL_SCOPES = [f"{GRAPH}/{scope}" for scope in DEMO_APP_SCOPES]
ALICE, BOB = DEMO_USERS[0], DEMO_USERS[1]
REDIRECT_URI = "http://localhost:8400/auth/callback"
# The control API refuses state changes without it, even bodiless ones (cross-site guard).
CONTROL_HEADERS = {"Content-Type": "application/json"}
SECOPS = team_id_for("Security Operations")
GENERAL = channel_id_for(SECOPS, "General")


def messages_path(team: str = SECOPS, channel: str = GENERAL) -> str:
    return f"/teams/{team}/channels/{quote(channel, safe='')}/messages"


def token_url(emulator: EmulatorServer, tenant: str = "common") -> str:
    return f"{emulator.authority_host}/{tenant}/oauth2/v2.0/token"


def refresh(
    http: httpx.Client, emulator: EmulatorServer, token: str, **extra: str
) -> httpx.Response:
    return http.post(
        token_url(emulator),
        data={
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "scope": " ".join([*ALL_SCOPES, "offline_access", "openid", "profile"]),
            **extra,
        },
    )


def msal_sign_in(
    msal_app: msal.ConfidentialClientApplication,
    browser: httpx.Client,
    email: str = ALICE,
    scopes: list[str] | None = None,
) -> dict[str, Any]:
    """The whole auth code flow through MSAL, the browser step done with login_hint."""
    flow = msal_app.initiate_auth_code_flow(
        scopes or ALL_SCOPES, redirect_uri=REDIRECT_URI, login_hint=email
    )
    response = browser.get(flow["auth_uri"])
    assert response.status_code == 302, response.text
    result = msal_app.acquire_token_by_auth_code_flow(flow, query_of(response.headers["location"]))
    assert "access_token" in result, result
    return result


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
