"""The emulator's clock: POST /_emulator/clock moves its time, so tokens expire without sleeping."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import msal
import pytest
from emulator_support import (
    ALICE,
    ALL_SCOPES,
    CONTROL_HEADERS,
    REDIRECT_URI,
    messages_path,
    query_of,
    refresh,
    token_url,
)

from tracecat.emulator.server import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")

Graph = Callable[..., httpx.Response]
Control = Callable[..., httpx.Response]
HOUR = 3600
NINETY_DAYS = 90 * 24 * HOUR


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def advance(control: Control, seconds: float) -> dict[str, Any]:
    return control("POST", "/clock", json={"advance_seconds": seconds}).json()


def test_an_access_token_expires_when_the_clock_passes_its_lifetime(
    emulator: EmulatorServer,
    http: httpx.Client,
    graph: Graph,
    control: Control,
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    signed_in = sign_in(ALICE)
    token = signed_in["access_token"]
    assert graph("GET", "/me", token).status_code == 200
    assert control("GET", "/clock").json()["offset_seconds"] == 0

    clock = advance(control, HOUR)
    assert clock["offset_seconds"] == HOUR
    assert clock["now"] == pytest.approx(time.time() + HOUR, abs=5)
    assert clock["now_iso"].endswith("Z")
    expired = graph("GET", "/me", token)
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "expired" in expired.json()["error"]["message"]

    # The refresh token is still good, and what it brings is valid from the emulator's now.
    renewed = refresh(http, emulator, signed_in["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    new_claims = claims(body["access_token"])
    assert new_claims["iat"] == pytest.approx(time.time() + HOUR, abs=5)
    assert new_claims["exp"] - new_claims["iat"] == body["expires_in"] == 3599
    assert claims(body["id_token"])["iat"] == new_claims["iat"]
    assert graph("GET", "/me", body["access_token"]).status_code == 200

    # Messages are stamped by the same clock.
    sent = graph("POST", messages_path(), body["access_token"], json={"body": {"content": "hi"}})
    assert sent.status_code == 201, sent.text
    assert int(sent.json()["id"]) / 1000 == pytest.approx(time.time() + HOUR, abs=5)
    created = dt.datetime.fromisoformat(sent.json()["createdDateTime"].replace("Z", "+00:00"))
    assert created.timestamp() == pytest.approx(time.time() + HOUR, abs=5)


def test_a_token_just_inside_its_lifetime_still_works(
    graph: Graph, control: Control, sign_in: Callable[..., dict[str, Any]]
) -> None:
    control("PATCH", "/config", json={"access_token_lifetime": 600})
    token = sign_in(ALICE)["access_token"]
    advance(control, 540)
    assert graph("GET", "/me", token).status_code == 200
    advance(control, 61)
    assert graph("GET", "/me", token).status_code == 401


def test_an_authorization_code_expires_by_the_clock(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Control,
    msal_app: msal.ConfidentialClientApplication,
    browse: httpx.Client,
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI, login_hint=ALICE)
    code = query_of(browse.get(flow["auth_uri"]).headers["location"])["code"]
    advance(control, 601)  # the default code lifetime is 600 s
    expired = http.post(
        token_url(emulator),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": flow["code_verifier"],
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
        },
    )
    assert expired.status_code == 400
    assert expired.json()["error_codes"] == [70008]


def test_a_refresh_token_expires_after_ninety_days_unused(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Control,
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    refresh_token = sign_in(ALICE)["refresh_token"]
    advance(control, NINETY_DAYS - HOUR)
    renewed = refresh(http, emulator, refresh_token)
    assert renewed.status_code == 200, renewed.text

    advance(control, HOUR + 1)
    inactive = refresh(http, emulator, refresh_token)
    assert inactive.status_code == 400
    assert inactive.json()["error"] == "invalid_grant"
    assert inactive.json()["error_codes"] == [700082]
    assert re.search(r"was inactive for 90\.00:00:0\d", inactive.json()["error_description"])
    # The one issued later is younger, so it still works.
    assert refresh(http, emulator, renewed.json()["refresh_token"]).status_code == 200


def test_reset_puts_the_clock_back(emulator: EmulatorServer, http: httpx.Client) -> None:
    url = f"{emulator.authority_host}/_emulator/clock"
    assert http.post(url, json={"advance_seconds": 10}, headers=CONTROL_HEADERS).status_code == 200
    assert http.post(url, json={"advance_seconds": 5.5}, headers=CONTROL_HEADERS).json()[
        "offset_seconds"
    ] == pytest.approx(15.5)
    reset = http.post(f"{emulator.authority_host}/_emulator/reset", headers=CONTROL_HEADERS)
    assert reset.status_code == 200
    assert http.get(url).json()["offset_seconds"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"advance_seconds": -1},
        {"advance_seconds": "60"},
        {"advance_seconds": True},
        {"advance_seconds": 1e12},
        {"offset_seconds": 60},
        {"advance_seconds": 60, "extra": 1},
        {},
    ],
)
def test_invalid_clock_changes_are_refused(
    emulator: EmulatorServer, http: httpx.Client, body: dict[str, Any]
) -> None:
    url = f"{emulator.authority_host}/_emulator/clock"
    refused = http.post(url, json=body, headers=CONTROL_HEADERS)
    assert refused.status_code == 400, refused.text
    assert set(refused.json()) == {"error"}
    assert http.get(url).json()["offset_seconds"] == 0


def test_the_clock_is_guarded_like_every_state_change(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    url = f"{emulator.authority_host}/_emulator/clock"
    as_text = http.post(
        url, content=b'{"advance_seconds": 60}', headers={"Content-Type": "text/plain"}
    )
    assert as_text.status_code == 415
    foreign = http.post(
        url, json={"advance_seconds": 60}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert http.get(url).json()["offset_seconds"] == 0
