"""Signing in to the web UI, over HTTP: the key is exchanged once for a session cookie
(HttpOnly, SameSite=Lax, expiring), every change carries the CSRF token, a sign-in posted by
another site is refused, revoking the key or time passing ends the session, and every page
carries the browser headers and no inline script (both databases)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api
from tests.utils.dump import raw_dump
from tests.utils.flows import ApiUser, connect
from tests.web.test_pages import BROWSER_ACCEPT, assert_html_headers
from tracecat.auth.service import UserService
from tracecat.db import Database

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def signed_in(api: Api, user: ApiUser, browser: httpx.Client) -> str:
    """Sign `browser` in with the user's key; the CSRF token its pages carry."""
    answer = browser.post("/sign-in", data={"api_key": user.api_key})
    assert answer.status_code == 303 and answer.headers["location"] == "/connection"
    page = browser.get("/connection")
    assert page.status_code == 200
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def new_browser(api: Api, **cookies: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Accept": BROWSER_ACCEPT}, cookies=cookies)


@pytest.fixture
def browser(api: Api) -> Iterator[httpx.Client]:
    with new_browser(api) as client:
        yield client


def test_the_key_becomes_an_http_only_lax_cookie_and_nothing_usable_is_stored(
    api: Api, browser: httpx.Client
) -> None:
    user = api.user("analyst@example.com")
    answer = browser.post("/sign-in", data={"api_key": user.api_key})
    cookie = answer.headers["set-cookie"]
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    assert "Path=/" in cookie and user.api_key not in cookie
    assert token.encode() not in raw_dump(api.database_url)
    assert browser.get("/").headers["location"] == "/connection"  # signed in: on to it
    assert "Secure" not in cookie  # served over plain http here


def test_behind_https_the_cookie_is_secure(api: Api) -> None:
    user = api.user("analyst@example.com")
    https = "https://tracecat.example/auth/integrations/microsoft/callback"
    with api.another_server(microsoft_redirect_uri=https) as url:
        answer = httpx.post(f"{url}/sign-in", data={"api_key": user.api_key})
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


def test_a_wrong_key_is_a_page_saying_so(api: Api, browser: httpx.Client) -> None:
    answer = browser.post("/sign-in", data={"api_key": "tci_nope"})
    assert answer.status_code == 401 and "not valid" in answer.text
    assert "set-cookie" not in answer.headers
    too_long = browser.post("/sign-in", data={"api_key": "x" * 500})
    assert too_long.status_code == 422 and too_long.headers["content-type"].startswith("text/html")
    assert "x" * 500 not in too_long.text


def test_pages_without_a_session_send_the_browser_to_sign_in(
    api: Api, browser: httpx.Client
) -> None:
    for path in ("/connection", "/teams", "/subscriptions", "/teams/x/channels/y"):
        answer = browser.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/", path
    with new_browser(api, tracecat_session="forged") as forger:
        assert forger.get("/connection").status_code == 303


def test_every_change_needs_the_csrf_token(api: Api, browser: httpx.Client) -> None:
    user = api.user("analyst@example.com")
    csrf = signed_in(api, user, browser)
    for path in ("/connection/connect", "/sign-out", "/subscriptions"):
        for data in ({}, {"csrf_token": "0" * 64}):
            answer = browser.post(path, data=data)
            assert answer.status_code == 403, (path, data)
            assert answer.headers["content-type"].startswith("text/html")
            assert "reload the page" in answer.text
    connecting = browser.post("/connection/connect", data={"csrf_token": csrf})
    assert connecting.status_code == 200 and "Continue to Microsoft" in connecting.text
    assert_html_headers(connecting)


def test_a_sign_in_posted_by_another_site_is_refused(api: Api, browser: httpx.Client) -> None:
    user = api.user("analyst@example.com")
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        answer = browser.post("/sign-in", data={"api_key": user.api_key}, headers=headers)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers
    # Our own page under Referrer-Policy: no-referrer posts with `Origin: null`.
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}
    assert browser.post("/sign-in", data={"api_key": user.api_key}, headers=own).status_code == 303


def test_sign_out_ends_the_session(api: Api, browser: httpx.Client) -> None:
    user = api.user("analyst@example.com")
    csrf = signed_in(api, user, browser)
    token = browser.cookies["tracecat_session"]
    answer = browser.post("/sign-out", data={"csrf_token": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert "tracecat_session" not in browser.cookies
    # The old cookie, replayed, opens nothing.
    with new_browser(api, tracecat_session=token) as replay:
        assert replay.get("/connection").status_code == 303


def test_revoking_the_key_or_twelve_hours_end_the_session(api: Api) -> None:
    user = api.user("analyst@example.com")
    with new_browser(api) as first, new_browser(api) as second:
        signed_in(api, user, first)
        signed_in(api, user, second)

        async def rotate() -> None:
            database = Database.from_settings(api.settings)
            try:
                async with database.session() as session:
                    await UserService(session).rotate_key(user.email)
            finally:
                await database.dispose()

        asyncio.run(rotate())
        assert first.get("/connection").status_code == 303
        assert second.get("/connection").status_code == 303

    renewed = api.user("later@example.com")
    with new_browser(api) as browser:
        signed_in(api, renewed, browser)
        api.clock.advance(11 * 3600)
        assert browser.get("/connection").status_code == 200
        api.clock.advance(3600)
        assert browser.get("/connection").status_code == 303


def test_every_page_has_the_browser_headers_and_no_inline_script(
    api: Api, browser: httpx.Client
) -> None:
    user = api.user("analyst@example.com")
    signed_in(api, user, browser)
    assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    teams = browser.get("/auth/integrations/microsoft/teams", headers=user.headers).json()
    team = teams[0]["id"]
    channel = browser.get(
        f"/auth/integrations/microsoft/teams/{team}/channels", headers=user.headers
    ).json()[0]["id"]
    for path in (
        "/connection",
        "/teams",
        f"/teams/{team}",
        f"/teams/{team}/channels/{channel}",
        "/subscriptions",
        "/demo/receiver",
    ):
        page = browser.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert_html_headers(page)
        assert page.headers["cache-control"] == "no-store"
    assert browser.get("/teams/%2e%2e/channels/x").status_code == 400
    assert browser.get(f"/teams/{team}/channels/{channel}?sent=..").status_code == 400
    assert browser.get("/subscriptions/not-a-uuid/deliveries").status_code == 404
