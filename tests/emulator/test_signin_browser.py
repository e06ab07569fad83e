"""The sign-in page in a real Chromium (Debian's, as tests/test_browser.py uses): one click on a
demo account, Enter in the email field, Cancel, and the names a screen reader announces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msal
import pytest
from emulator_support import ALICE, ALL_SCOPES, REDIRECT_URI, query_of
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.state import describe_user

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EMAIL_LABEL = "Or sign in as any email address"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Chromium at {CHROMIUM}"),
    pytest.mark.filterwarnings("ignore:response_mode:UserWarning"),
]


def at_callback(url: str) -> bool:
    return url.startswith(REDIRECT_URI)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)

    # Nothing listens on the redirect URI; answering it here leaves its URL in page.url.
    def callback(route: Route) -> None:
        route.fulfill(status=200, content_type="text/plain", body="callback")

    page.route(at_callback, callback)
    yield page
    context.close()


@pytest.fixture
def start(msal_app: msal.ConfidentialClientApplication, page: Page) -> Callable[[], dict]:
    def run() -> dict[str, Any]:
        flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
        page.goto(flow["auth_uri"])
        page.get_by_role("heading", name="Pick an account").wait_for()
        return flow

    return run


def signed_in_as(msal_app: msal.ConfidentialClientApplication, flow: dict, page: Page) -> str:
    page.wait_for_url(at_callback)
    result = msal_app.acquire_token_by_auth_code_flow(flow, query_of(page.url))
    assert "access_token" in result, result
    return result["id_token_claims"]["preferred_username"]


def test_one_click_on_a_demo_account_signs_in(
    msal_app: msal.ConfidentialClientApplication, page: Page, start: Callable[[], dict]
) -> None:
    flow = start()
    page.get_by_role("button", name=f"Alice {ALICE}", exact=True).click()
    assert signed_in_as(msal_app, flow, page) == ALICE


def test_enter_in_the_email_field_signs_in_as_the_typed_address(
    msal_app: msal.ConfidentialClientApplication, page: Page, start: Callable[[], dict]
) -> None:
    flow = start()
    page.get_by_label(EMAIL_LABEL).fill("dave@example.com")
    page.get_by_label(EMAIL_LABEL).press("Enter")
    assert signed_in_as(msal_app, flow, page) == "dave@example.com"


def test_cancel_with_a_half_typed_email_declines(page: Page, start: Callable[[], dict]) -> None:
    flow = start()
    page.get_by_label(EMAIL_LABEL).fill("half@")
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.wait_for_url(at_callback)
    params = query_of(page.url)
    assert params["error"] == "access_denied" and params["state"] == flow["state"]
    assert params["error_description"].startswith("AADSTS65004: ")


def test_accessible_names(page: Page, start: Callable[[], dict]) -> None:
    start()
    accounts = page.get_by_role("group", name="Pick an account")
    for mail in DEMO_USERS:
        name = f"{describe_user(mail).display_name} {mail}"
        assert accounts.get_by_role("button", name=name, exact=True).count() == 1
    assert page.get_by_role("textbox", name=EMAIL_LABEL, exact=True).get_attribute("id") == "email"
    assert page.get_by_role("button", name="Sign in", exact=True).count() == 1
