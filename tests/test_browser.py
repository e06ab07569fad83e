"""A newcomer's first run: `serve --emulator` with no settings, then connect from the page at /
in a real Chromium (Debian's, driven by Playwright), with no certificate warning on the way."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.test_cli import run_cli
from tests.utils.browser import launch_chromium
from tests.utils.flows import ApiUser, connect
from tests.utils.server import ServeProcess


@pytest.fixture
def emulator_service(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`tracecat-integrations serve --emulator` exactly as the README starts it: no settings."""
    env = {"TRACECAT_DATA_DIR": str(tmp_path / "data")}
    service = ServeProcess(env, "--emulator").wait_ready()
    yield service.url, env
    service.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context()  # no ignore_https_errors: an untrusted certificate fails
        yield context.new_page()
        browser.close()


def test_newcomer_connects_from_the_page(
    emulator_service: tuple[str, dict[str, str]], page: Page
) -> None:
    url, env = emulator_service
    created = run_cli("users", "create", "newcomer@example.com", env=env, process=True)
    api_key = json.loads(created.stdout.strip().splitlines()[-1])["api_key"]

    _sign_in(page, url, api_key)
    expect(page.get_by_text("Not connected")).to_be_visible()
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    page.get_by_label("Email").fill("newcomer@contoso.example")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Microsoft Teams connected")).to_be_visible()
    expect(page.get_by_text("newcomer@contoso.example")).to_be_visible()

    page.get_by_role("link", name="Back to the connect page").click()
    expect(page.get_by_text("Connected", exact=True)).to_be_visible()
    expect(page.get_by_text("newcomer@contoso.example")).to_be_visible()

    # The same connection through the API, then Teams as the README shows it.
    api = httpx.Client(
        base_url=f"{url}/auth/integrations/microsoft",
        headers={"Authorization": f"Bearer {api_key}"},
    )
    status = api.get("/status").json()
    assert status["connected"] is True
    assert status["account"]["username"] == "newcomer@contoso.example"
    teams = api.get("/teams").json()
    assert teams and all(team["displayName"] for team in teams)
    channels = api.get(f"/teams/{teams[0]['id']}/channels").json()
    general = next(c for c in channels if c["displayName"] == "General")
    sent = api.post(
        f"/teams/{teams[0]['id']}/channels/{general['id']}/messages",
        json={"content": "<b>SEV2</b>: disk full", "content_type": "html", "subject": "Alert"},
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["body"]["content"] == "<b>SEV2</b>: disk full"

    page.get_by_role("button", name="Disconnect").click()
    page.get_by_role("button", name="Disconnect").click()  # confirmed on the page
    expect(page.get_by_role("status")).to_contain_text("disconnected")

    # Embedded defaults: the database and a generated key, readable by the owner only.
    data_dir = Path(env["TRACECAT_DATA_DIR"])
    assert (data_dir / "tracecat.db").is_file()
    assert (data_dir / "encryption.key").stat().st_mode & 0o777 == 0o600


def test_newcomer_sends_a_message_and_sees_its_webhook_with_only_the_browser(
    emulator_service: tuple[str, dict[str, str]], page: Page
) -> None:
    """The README's first run to its end: no receiver of their own and no setting, the
    emulator's demo receiver and the read permission `serve --emulator` asks for itself."""
    url, env = emulator_service
    _start_connecting(page, url, _api_key(env, "newcomer@example.com"))
    page.get_by_role("button", name=re.compile("@")).first.click()
    page.get_by_role("link", name="Back to the connect page").click()
    expect(page.get_by_text("ChannelMessage.Read.All")).to_be_visible()  # among the scopes

    page.get_by_role("navigation").get_by_role("link", name="Subscriptions").click()
    target = page.get_by_label("Target URL")
    expect(target).to_have_value(f"{url}/demo/receiver")  # filled in for them
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Subscribed")).to_be_visible()

    page.get_by_role("navigation").get_by_role("link", name="Teams").click()
    page.get_by_role("link", name="Security Operations").click()
    page.get_by_role("link", name="General").click()
    page.get_by_label("Message", exact=True).fill("SEV2: disk full on db-01")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("heading", name="Sent")).to_be_visible()

    page.get_by_role("navigation").get_by_role("link", name="Demo receiver").click()
    row = page.get_by_role("row").filter(has_text="SEV2: disk full on db-01")
    expect(row).to_be_visible(timeout=30_000)  # the table reloads itself
    expect(row.get_by_text("valid", exact=True)).to_be_visible()
    expect(row).to_contain_text("message.created")


def _api_key(env: dict[str, str], email: str) -> str:
    created = run_cli("users", "create", email, env=env, process=True)
    return json.loads(created.stdout.strip().splitlines()[-1])["api_key"]


def _sign_in(page: Page, url: str, api_key: str) -> None:
    page.goto(f"{url}/")
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Connection")).to_be_visible()


def _start_connecting(page: Page, url: str, api_key: str) -> None:
    """As a person: open the page, sign in with the key, press Connect, reach the sign-in
    page."""
    _sign_in(page, url, api_key)
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()


def test_one_click_on_a_demo_account_connects(
    emulator_service: tuple[str, dict[str, str]], page: Page
) -> None:
    url, env = emulator_service
    _start_connecting(page, url, _api_key(env, "newcomer@example.com"))
    first_demo_account = page.get_by_role("button", name=re.compile("@")).first
    account = first_demo_account.inner_text().split()[-1]
    first_demo_account.click()
    expect(page.get_by_role("heading", name="Microsoft Teams connected")).to_be_visible()
    expect(page.get_by_text(account)).to_be_visible()
    page.get_by_role("link", name="Back to the connect page").click()
    expect(page.get_by_text("Connected", exact=True)).to_be_visible()
    expect(page.get_by_text(account)).to_be_visible()


def test_cancel_on_the_sign_in_page_comes_back_as_a_page(
    emulator_service: tuple[str, dict[str, str]], page: Page
) -> None:
    url, env = emulator_service
    _start_connecting(page, url, _api_key(env, "newcomer@example.com"))
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name="Microsoft Teams was not connected")).to_be_visible()
    expect(page.get_by_text("cancelled")).to_be_visible()
    page.get_by_role("link", name="Back to the connect page").click()
    expect(page.get_by_text("Not connected")).to_be_visible()


def test_restarting_serve_emulator_keeps_users_connected(tmp_path: Path) -> None:
    env = {"TRACECAT_DATA_DIR": str(tmp_path / "data")}
    created = run_cli("users", "create", "returning@example.com", env=env, process=True)
    user = ApiUser(**json.loads(created.stdout.splitlines()[-1]))
    headers = user.headers
    first = ServeProcess(env, "--emulator").wait_ready()
    try:
        with httpx.Client() as browser:
            assert connect(browser, first.url, user, "returning@contoso.example").status_code == 200
        assert httpx.get(
            f"{first.url}/auth/integrations/microsoft/teams", headers=headers
        ).is_success
    finally:
        first.stop()
    second = ServeProcess(env, "--emulator").wait_ready()
    try:
        teams = httpx.get(f"{second.url}/auth/integrations/microsoft/teams", headers=headers)
        assert teams.status_code == 200, teams.text
        status = httpx.get(f"{second.url}/auth/integrations/microsoft/status", headers=headers)
        assert status.json()["status"] == "connected"
    finally:
        second.stop()
