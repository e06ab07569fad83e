"""Pages for people, headers for browsers: what a person's browser gets from the app."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import connect, query, sign_in, start_connect

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CALLBACK = "/auth/integrations/microsoft/callback"


class _Page(HTMLParser):
    """What a page carries that a CSP without 'unsafe-inline' would block, and its links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.inline_scripts += 1
        self.inline_handlers += [n for n in names if n.startswith("on") or n == "style"]
        if tag == "a" and names.get("href"):
            self.links.append(names["href"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_html_headers(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["script-src"] == "'self'"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = _Page(response.text)
    assert page.inline_scripts == 0 and page.inline_handlers == []


def test_the_connect_page_has_browser_headers(api: Api) -> None:
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200
    assert_html_headers(page)
    for asset in ("/static/follow.js", "/static/app.css"):
        response = httpx.get(f"{api.url}{asset}")
        assert response.status_code == 200 and response.headers["x-content-type-options"]


def test_json_answers_say_nosniff_and_account_data_is_not_stored(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        connected = connect(browser, api.url, user, "alice@contoso.example")
        assert connected.status_code == 200
        assert_html_headers(connected)
        assert connected.headers["cache-control"] == "no-store"  # it names the account
        for path in ("status", "teams", "connect"):
            response = browser.get(f"/auth/integrations/microsoft/{path}", headers=user.headers)
            assert response.status_code == 200
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store"
        for unauthenticated in ("/auth/integrations/microsoft/status", "/healthz", "/nope"):
            response = browser.get(unauthenticated)
            assert response.headers["content-type"] == "application/json"
            assert response.headers["x-content-type-options"] == "nosniff"


def _failures(api: Api, browser: httpx.Client) -> dict[str, dict[str, str]]:
    """Callback parameters for each way a sign-in can fail, in this browser."""
    user = api.user(f"{len(browser.cookies)}-analyst@example.com")
    declined_state = query(start_connect(browser, api.url, user))["state"]
    used = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
    assert browser.get(used).status_code == 200
    return {
        "declined": {
            "error": "access_denied",
            "error_description": "AADSTS65004: User declined <b>to</b> consent.\r\nTrace ID: x",
            "state": declined_state,
        },
        "forged": {"code": "abc", "state": "forged-state"},
        "replayed": query(used),
        "no state": {"code": "abc"},
    }


@pytest.mark.parametrize("case", ["declined", "forged", "replayed", "no state"])
def test_failed_callback_is_a_page_for_a_browser_and_json_for_an_api(api: Api, case: str) -> None:
    with api.browser() as browser:
        params = _failures(api, browser)[case]
        page = browser.get(CALLBACK, params=params, headers={"Accept": BROWSER_ACCEPT})
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert_html_headers(page)
        parsed = _Page(page.text)
        assert "/" in parsed.links  # back to the connect page
        words = " ".join(parsed.text)
        assert "was not connected" in words and "press Connect" in words
        assert "<b>" not in page.text  # what Microsoft sent is shown, escaped, never markup
        if case == "declined":
            assert "declined" in words and "&lt;b&gt;to&lt;/b&gt;" in page.text
        for accept in ("application/json", None, "*/*"):
            headers = {"Accept": accept} if accept else {}
            if accept is None:
                browser.headers.pop("accept", None)
            api_answer = browser.get(CALLBACK, params=params, headers=headers)
            assert api_answer.status_code == 400
            assert isinstance(api_answer.json()["detail"], str)


def test_callback_started_in_another_browser_says_what_to_do(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as starter:
        callback_url = sign_in(start_connect(starter, api.url, user), "alice@contoso.example")
    page = httpx.get(callback_url, headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 400
    words = " ".join(_Page(page.text).text)
    assert "another browser" in words and "address bar" in words
