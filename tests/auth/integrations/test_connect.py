"""Connecting a Microsoft account through the API, as a browser and a user would."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from tests.conftest import Api
from tests.utils.flows import connect, query, sign_in, start_connect
from tracecat.auth.integrations.models import OAuthState
from tracecat.db import Database

STATUS_KEYS = {"provider", "connected", "status", "expires_at", "is_expired", "scopes", "account"}


def test_full_flow_connects_and_disconnects(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        auth_url = start_connect(browser, api.url, user)
        params = query(auth_url)
        assert auth_url.startswith(api.emulator.http_url)
        assert params["code_challenge_method"] == "S256" and params["code_challenge"]
        assert params["state"] and params["nonce"]
        assert "offline_access" in params["scope"].split()
        assert "ChannelMessage.Send" in params["scope"]

        callback = browser.get(sign_in(auth_url, "alice@contoso.example"))
        assert callback.status_code == 200
        assert "alice@contoso.example" in callback.text

        status = browser.get("/auth/integrations/microsoft/status", headers=user.headers).json()
        assert set(status) >= STATUS_KEYS
        assert status["provider"] == "microsoft-teams"
        assert status["connected"] is True and status["status"] == "connected"
        assert status["is_expired"] is False
        expires_at = datetime.fromisoformat(status["expires_at"])
        assert expires_at.utcoffset() == timedelta(0)
        assert expires_at > datetime.now(UTC) + timedelta(minutes=30)
        assert {
            "Team.ReadBasic.All",
            "Channel.ReadBasic.All",
            "ChannelMessage.Send",
            "User.Read",
        } <= set(status["scopes"])
        assert status["account"]["username"] == "alice@contoso.example"
        assert "token" not in str(status).lower().replace("expires", "")

        listed = browser.get("/auth/integrations/integrations", headers=user.headers).json()
        assert [i["provider"] for i in listed] == ["microsoft-teams"]
        assert {"provider", "status", "expires_at", "scopes", "account"} <= set(listed[0])

        assert (
            browser.delete(
                "/auth/integrations/microsoft/disconnect", headers=user.headers
            ).status_code
            == 204
        )
        status = browser.get("/auth/integrations/microsoft/status", headers=user.headers).json()
        assert status["status"] == "not_connected" and status["connected"] is False
        assert browser.get("/auth/integrations/integrations", headers=user.headers).json() == []
        again = browser.delete("/auth/integrations/microsoft/disconnect", headers=user.headers)
        assert again.status_code == 404 and "detail" in again.json()


def test_forged_state_is_refused(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        callback_url = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
        forged = callback_url.replace(f"state={query(callback_url)['state']}", "state=forged")
        response = browser.get(forged)
        assert response.status_code == 400
        assert "state" in response.json()["detail"]
        assert _status(api, browser, user)["connected"] is False


def test_replayed_callback_is_refused(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        callback_url = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
        assert browser.get(callback_url).status_code == 200
        replay = browser.get(callback_url)
        assert replay.status_code == 400
        assert "already used" in replay.json()["detail"]


def test_expired_state_is_refused(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        callback_url = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
        _age_pending_flows(api.database_url, minutes=11)
        response = browser.get(callback_url)
        assert response.status_code == 400
        assert "expired" in response.json()["detail"]
        assert _status(api, browser, user)["connected"] is False


def test_flow_cannot_be_finished_in_another_browser(api: Api) -> None:
    victim = api.user("victim@example.com")
    attacker = api.user("attacker@example.com")
    with api.browser() as attacker_browser, api.browser() as victim_browser:
        # The attacker starts a flow and lures the victim into finishing it.
        callback_url = sign_in(
            start_connect(attacker_browser, api.url, attacker), "victim@contoso.example"
        )
        start_connect(victim_browser, api.url, victim)  # the victim's browser has its own cookie
        response = victim_browser.get(callback_url)
        assert response.status_code == 400
        assert "another browser" in response.json()["detail"]
        assert _status(api, victim_browser, victim)["connected"] is False
        assert _status(api, attacker_browser, attacker)["connected"] is False
        # A browser with no cookie at all is refused too.
        assert httpx.get(callback_url).status_code == 400
        # The browser that started the flow can still finish it: the refusal did not burn it.
        assert attacker_browser.get(callback_url).status_code == 200


def test_declined_consent_is_reported(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        auth_url = start_connect(browser, api.url, user)
        state = query(auth_url)["state"]
        response = browser.get(
            "/auth/integrations/microsoft/callback",
            params={
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": state,
            },
        )
        assert response.status_code == 400
        assert "access_denied" in response.json()["detail"]
        assert "declined" in response.json()["detail"]
        assert _status(api, browser, user)["status"] == "not_connected"


def test_two_users_are_isolated(api: Api) -> None:
    alice, bob = api.user("alice@example.com"), api.user("bob@example.com")
    with api.browser() as browser_a, api.browser() as browser_b:
        assert connect(browser_a, api.url, alice, "alice@contoso.example").status_code == 200
        assert connect(browser_b, api.url, bob, "bob@contoso.example").status_code == 200
        assert _status(api, browser_a, alice)["account"]["username"] == "alice@contoso.example"
        assert _status(api, browser_b, bob)["account"]["username"] == "bob@contoso.example"
        assert (
            browser_b.delete(
                "/auth/integrations/microsoft/disconnect", headers=bob.headers
            ).status_code
            == 204
        )
        assert _status(api, browser_a, alice)["connected"] is True
        assert _status(api, browser_b, bob)["connected"] is False


def test_reconnecting_replaces_the_grant(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
        assert connect(browser, api.url, user, "bob@contoso.example").status_code == 200
        listed = browser.get("/auth/integrations/integrations", headers=user.headers).json()
        assert len(listed) == 1
        assert listed[0]["account"]["username"] == "bob@contoso.example"


def test_api_key_is_required(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        for method, path in [
            ("GET", "/auth/integrations/microsoft/connect"),
            ("GET", "/auth/integrations/microsoft/status"),
            ("DELETE", "/auth/integrations/microsoft/disconnect"),
            ("GET", "/auth/integrations/integrations"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer tci_wrong"},
                {"Authorization": "Basic abc"},
            ):
                response = browser.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert isinstance(response.json()["detail"], str)
        assert (
            browser.get("/auth/integrations/microsoft/status", headers=user.headers).status_code
            == 200
        )


def test_bad_callbacks_get_400_not_500(api: Api) -> None:
    with api.browser() as browser:
        for params in (
            {},
            {"code": "x"},
            {"state": ""},
            {"state": "x" * 5000, "code": "y"},
            {"error": "x"},
        ):
            response = browser.get("/auth/integrations/microsoft/callback", params=params)
            assert response.status_code == 400, params
            assert isinstance(response.json()["detail"], str)
        assert browser.get("/healthz").status_code == 200
        missing = browser.get("/no/such/route")
        assert missing.status_code == 404 and "detail" in missing.json()


def test_the_page_is_served(api: Api) -> None:
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert 'action="/sign-in"' in page.text and "API key" in page.text
    assert "<script>" not in page.text  # scripts are files of ours, never inline
    for source in re.findall(r'<script src="([^"]+)"', page.text):
        assert httpx.get(f"{api.url}{source}").status_code == 200, source


def _status(api: Api, browser: httpx.Client, user) -> dict:  # noqa: ANN001
    response = browser.get("/auth/integrations/microsoft/status", headers=user.headers)
    assert response.status_code == 200
    return response.json()


def _age_pending_flows(database_url: str, minutes: int) -> None:
    async def age() -> None:
        database = Database(database_url)
        try:
            async with database.session() as session:
                past = datetime.now(UTC) - timedelta(minutes=minutes)
                await session.execute(
                    update(OAuthState).values(expires_at=past + timedelta(minutes=10))
                )
                await session.commit()
        finally:
            await database.dispose()

    asyncio.run(age())


def test_racing_callbacks_connect_once(api: Api) -> None:
    """The same callback sent twice at once (a double click, a retrying proxy): one wins."""
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        callback_url = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
        cookies = dict(browser.cookies)

        def finish(_: int) -> int:
            return httpx.get(callback_url, cookies=cookies, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = sorted(pool.map(finish, range(4)))
        assert codes == [200, 400, 400, 400]
        assert _status(api, browser, user)["status"] == "connected"


def test_a_flow_cookie_we_did_not_mint_is_replaced(api: Api) -> None:
    user = api.user("analyst@example.com")
    url = f"{api.url}/auth/integrations/microsoft/connect"
    for planted in ("planted", "x" * 43 + "!", "a" * 4000, "%C3%A9" * 7 + "x"):
        with httpx.Client(cookies={"tracecat_oauth_browser": planted}) as client:
            answer = client.get(url, headers=user.headers)
            assert answer.status_code == 200
            minted = answer.cookies["tracecat_oauth_browser"]
            assert minted != planted and re.fullmatch(r"[A-Za-z0-9_-]{43}", minted)
    with httpx.Client() as client:  # one of ours is kept: the browser's flows stay its own
        first = client.get(url, headers=user.headers).cookies["tracecat_oauth_browser"]
        again = client.get(url, headers=user.headers).cookies["tracecat_oauth_browser"]
        assert again == first
