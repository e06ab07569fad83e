"""The identity platform side, driven by real MSAL and real HTTP."""

from __future__ import annotations

import base64
import json
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
    BOB,
    GRAPH,
    REDIRECT_URI,
    query_of,
    refresh,
    token_url,
)

from tracecat.emulator.constants import TENANT_DOMAIN, TENANT_ID
from tracecat.emulator.server import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")

AADSTS_BODY_KEYS = {
    "error",
    "error_description",
    "error_codes",
    "timestamp",
    "trace_id",
    "correlation_id",
    "error_uri",
}


def assert_aadsts(response: httpx.Response, status: int, error: str, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == AADSTS_BODY_KEYS
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert (
        f"\r\nTrace ID: {body['trace_id']}\r\nCorrelation ID: {body['correlation_id']}"
        in (body["error_description"])
    )
    return body


def test_discovery_document_is_usable_by_msal(
    emulator: EmulatorServer, http: httpx.Client, msal_app: msal.ConfidentialClientApplication
) -> None:
    doc = http.get(f"{emulator.authority_host}/common/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{emulator.authority_host}/{{tenantid}}/v2.0"
    assert doc["token_endpoint"] == f"{emulator.authority_host}/common/oauth2/v2.0/token"
    assert doc["jwks_uri"].startswith("https://")
    # The browser-facing endpoint lives on the plain-HTTP listener.
    assert doc["authorization_endpoint"] == f"{emulator.http_url}/common/oauth2/v2.0/authorize"
    flow = msal_app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    assert flow["auth_uri"].startswith(f"{emulator.http_url}/common/oauth2/v2.0/authorize?")

    by_domain = http.get(
        f"{emulator.authority_host}/{TENANT_DOMAIN}/v2.0/.well-known/openid-configuration"
    ).json()
    assert by_domain["issuer"] == f"{emulator.authority_host}/{TENANT_ID}/v2.0"
    assert by_domain["token_endpoint"] == token_url(emulator, TENANT_ID)

    unknown = http.get(
        f"{emulator.authority_host}/nope.example/v2.0/.well-known/openid-configuration"
    )
    assert_aadsts(unknown, 400, "invalid_tenant", 90002)


def test_auth_code_flow_issues_documented_token_response(
    emulator: EmulatorServer, http: httpx.Client, sign_in: Callable[..., dict[str, Any]]
) -> None:
    result = sign_in(ALICE)
    assert result["token_type"] == "Bearer"
    assert result["scope"] == (
        "Channel.ReadBasic.All ChannelMessage.Read.All ChannelMessage.Send Team.ReadBasic.All "
        "User.Read profile openid email"
    )
    assert result["expires_in"] == result["ext_expires_in"] == 3599
    assert result["refresh_token"]
    client_info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert client_info["utid"] == TENANT_ID

    keys = http.get(f"{emulator.authority_host}/common/discovery/v2.0/keys").json()["keys"]
    jwk = jwt.PyJWK(keys[0])
    header = jwt.get_unverified_header(result["id_token"])
    assert header["kid"] == keys[0]["kid"]
    id_claims = jwt.decode(
        result["id_token"], jwk.key, algorithms=["RS256"], audience=emulator.client_id
    )
    assert id_claims["preferred_username"] == ALICE
    assert id_claims["iss"] == f"{emulator.authority_host}/{TENANT_ID}/v2.0"
    assert id_claims["oid"] == client_info["uid"]
    assert id_claims["nonce"] and id_claims["ver"] == "2.0"

    access = jwt.decode(result["access_token"], jwk.key, algorithms=["RS256"], audience=GRAPH)
    assert access["scp"] == result["scope"]
    assert access["upn"] == ALICE and access["tid"] == TENANT_ID
    assert access["exp"] - access["iat"] == 3599


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "code"),
    [
        ("11111111-2222-3333-4444-555555555555", REDIRECT_URI, "AADSTS700016"),
        (None, "https://attacker.example/callback", "AADSTS50011"),
    ],
)
def test_bad_client_or_redirect_shows_an_error_page_instead_of_redirecting(
    emulator: EmulatorServer,
    browse: httpx.Client,
    client_id: str | None,
    redirect_uri: str,
    code: str,
) -> None:
    response = browse.get(
        f"{emulator.http_url}/common/oauth2/v2.0/authorize",
        params={
            "client_id": client_id or emulator.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": "openid User.Read",
            "login_hint": ALICE,
        },
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert code in response.text


def test_registered_app_only_accepts_its_redirect_uris(
    emulator: EmulatorServer, control: Callable[..., httpx.Response], browse: httpx.Client
) -> None:
    app = control("POST", "/apps", json={"redirect_uris": ["https://app.example/callback"]}).json()
    params = {
        "client_id": app["client_id"],
        "response_type": "code",
        "scope": "User.Read",
        "login_hint": ALICE,
    }
    url = f"{emulator.http_url}/common/oauth2/v2.0/authorize"
    ok = browse.get(url, params={**params, "redirect_uri": "https://app.example/callback"})
    assert ok.status_code == 302 and ok.headers["location"].startswith(
        "https://app.example/callback?code="
    )
    bad = browse.get(url, params={**params, "redirect_uri": "http://localhost:9/cb"})
    assert bad.status_code == 400 and "AADSTS50011" in bad.text


def test_pkce_verifier_mismatch_is_rejected(
    msal_app: msal.ConfidentialClientApplication, browse: httpx.Client
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI, login_hint=ALICE)
    params = query_of(browse.get(flow["auth_uri"]).headers["location"])
    flow["code_verifier"] = "x" * 43
    result = msal_app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [501481]


def test_authorization_code_is_single_use_and_expires(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    msal_app: msal.ConfidentialClientApplication,
    browse: httpx.Client,
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI, login_hint=ALICE)
    params = query_of(browse.get(flow["auth_uri"]).headers["location"])
    redeem = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": flow["code_verifier"],
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
    }
    assert http.post(token_url(emulator), data=redeem).status_code == 200
    assert_aadsts(http.post(token_url(emulator), data=redeem), 400, "invalid_grant", 54005)

    control("PATCH", "/config", json={"authorization_code_lifetime": 1})
    params = query_of(browse.get(flow["auth_uri"]).headers["location"])
    time.sleep(1.1)
    expired = http.post(token_url(emulator), data={**redeem, "code": params["code"]})
    assert_aadsts(expired, 400, "invalid_grant", 70008)


def test_redeeming_with_another_redirect_uri_fails(
    emulator: EmulatorServer,
    http: httpx.Client,
    msal_app: msal.ConfidentialClientApplication,
    browse: httpx.Client,
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI, login_hint=ALICE)
    params = query_of(browse.get(flow["auth_uri"]).headers["location"])
    response = http.post(
        token_url(emulator),
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": "http://localhost:1/other",
            "code_verifier": flow["code_verifier"],
        },
        auth=(emulator.client_id, emulator.client_secret),
    )
    assert_aadsts(response, 400, "invalid_grant", 500112)


def test_wrong_or_missing_client_secret_is_invalid_client(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    wrong = msal.ConfidentialClientApplication(
        emulator.client_id,
        client_credential="not-the-secret",
        authority=f"{emulator.authority_host}/common",
        instance_discovery=False,
        http_client=http,
    )
    result = wrong.acquire_token_by_refresh_token("whatever", scopes=["User.Read"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]

    basic = http.post(
        token_url(emulator),
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        auth=(emulator.client_id, "not-the-secret"),
    )
    assert_aadsts(basic, 401, "invalid_client", 7000215)
    missing = http.post(
        token_url(emulator),
        data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": emulator.client_id},
    )
    assert_aadsts(missing, 401, "invalid_client", 7000218)


def test_malformed_token_requests_get_aadsts_bodies(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    creds = {"client_id": emulator.client_id, "client_secret": emulator.client_secret}
    unsupported = http.post(token_url(emulator), data={"grant_type": "password", **creds})
    assert_aadsts(unsupported, 400, "unsupported_grant_type", 70003)
    missing = http.post(
        token_url(emulator), data=creds, headers={"client-request-id": "my-correlation-id"}
    )
    body = assert_aadsts(missing, 400, "invalid_request", 900144)
    assert "'grant_type'" in body["error_description"]
    assert body["correlation_id"] == "my-correlation-id"
    garbage = http.post(
        token_url(emulator), data={"grant_type": "refresh_token", "refresh_token": "nope", **creds}
    )
    assert_aadsts(garbage, 400, "invalid_grant", 9002313)
    assert_aadsts(http.get(token_url(emulator)), 400, "invalid_request", 900561)


def test_silent_authorize_without_a_hint_needs_login(
    emulator: EmulatorServer, browse: httpx.Client
) -> None:
    response = browse.get(
        f"{emulator.http_url}/organizations/oauth2/v2.0/authorize",
        params={
            "client_id": emulator.client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "scope": "openid User.Read",
            "state": "xyz",
            "prompt": "none",
        },
    )
    assert response.status_code == 302
    params = query_of(response.headers["location"])
    assert params["error"] == "login_required" and params["state"] == "xyz"
    assert params["error_description"].startswith("AADSTS50058: ")


def test_refresh_issues_new_tokens_and_old_token_stays_valid_when_lenient(
    emulator: EmulatorServer, http: httpx.Client, sign_in: Callable[..., dict[str, Any]]
) -> None:
    first = sign_in(ALICE)
    rotated = refresh(http, emulator, first["refresh_token"])
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    assert "id_token" in body
    again = refresh(http, emulator, first["refresh_token"])
    assert again.status_code == 200


def test_strict_rotation_rejects_a_used_refresh_token(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    control("PATCH", "/config", json={"refresh_token_rotation": "strict"})
    first = sign_in(ALICE)
    second = refresh(http, emulator, first["refresh_token"])
    assert second.status_code == 200
    assert_aadsts(refresh(http, emulator, first["refresh_token"]), 400, "invalid_grant", 70000)
    assert refresh(http, emulator, second.json()["refresh_token"]).status_code == 200


def test_refresh_cannot_widen_consented_scopes(
    emulator: EmulatorServer, http: httpx.Client, sign_in: Callable[..., dict[str, Any]]
) -> None:
    token = sign_in(ALICE, scopes=[f"{GRAPH}/User.Read"])["refresh_token"]
    narrower = refresh(http, emulator, token, scope="User.Read offline_access")
    assert narrower.json()["scope"] == "User.Read"
    wider = refresh(http, emulator, token, scope=f"{GRAPH}/ChannelMessage.Send offline_access")
    assert_aadsts(wider, 400, "invalid_grant", 65001)


@pytest.mark.parametrize("code", [50173, 700082])
def test_revoked_user_gets_invalid_grant_on_refresh(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    sign_in: Callable[..., dict[str, Any]],
    code: int,
) -> None:
    control("PATCH", "/config", json={"revoked_error_code": code})
    alice, bob = sign_in(ALICE), sign_in(BOB)
    control("POST", f"/users/{ALICE}/revoke")
    assert_aadsts(refresh(http, emulator, alice["refresh_token"]), 400, "invalid_grant", code)
    assert refresh(http, emulator, bob["refresh_token"]).status_code == 200
    stats = control("GET", "/stats").json()
    assert stats["token_requests_by_user"][ALICE]["refresh_token"] == {"invalid_grant": 1}
    assert stats["token_requests"]["refresh_token"] == {"invalid_grant": 1, "success": 1}


def test_injected_fault_fails_the_next_token_request_only(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    token = sign_in(ALICE)["refresh_token"]
    control("POST", "/faults", json={"target": "token", "status": 503, "retry_after": 7})
    failed = refresh(http, emulator, token)
    assert_aadsts(failed, 503, "temporarily_unavailable", 90033)
    assert failed.headers["retry-after"] == "7"
    assert refresh(http, emulator, token).status_code == 200


def test_form_post_response_mode_posts_the_code(
    emulator: EmulatorServer, browse: httpx.Client
) -> None:
    page = browse.get(
        f"{emulator.http_url}/common/oauth2/v2.0/authorize",
        params={
            "client_id": emulator.client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "response_mode": "form_post",
            "scope": "openid User.Read",
            "state": "s1",
            "login_hint": ALICE,
        },
    )
    assert page.status_code == 200
    assert f'action="{REDIRECT_URI}"' in page.text
    assert 'name="code"' in page.text and 'name="state" value="s1"' in page.text


def test_access_token_lifetime_is_configurable(
    control: Callable[..., httpx.Response], sign_in: Callable[..., dict[str, Any]]
) -> None:
    control("PATCH", "/config", json={"access_token_lifetime": 120})
    assert sign_in(ALICE)["expires_in"] == 120


def test_invalid_config_is_refused(emulator: EmulatorServer, http: httpx.Client) -> None:
    url = f"{emulator.authority_host}/_emulator/config"
    refused = http.patch(url, json={"refresh_token_rotation": "sometimes"})
    assert refused.status_code == 400 and "refresh_token_rotation" in refused.json()["error"]
    assert http.get(url).json()["refresh_token_rotation"] == "lenient"
