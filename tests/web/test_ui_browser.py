"""The web UI as a person uses it, in Debian's Chromium: only labels, roles and names.

The app is served on `localhost` and the emulator's sign-in page on 127.0.0.1: different
sites to the browser, so the session cookie must survive a redirect chain another site
started. Every page is checked with axe-core (no serious or critical violation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import Api, truncate_all
from tests.utils.browser import launch_chromium
from tests.utils.flows import ApiUser, create_user
from tests.utils.polling import eventually
from tests.utils.server import ServeProcess, free_port
from tests.utils.webhook import Receiver, running_receiver

CARD = {
    "type": "AdaptiveCard",
    "version": "1.4",
    "body": [{"type": "TextBlock", "text": "Disk full on db-01", "weight": "Bolder"}],
    "actions": [{"type": "Action.OpenUrl", "title": "Runbook", "url": "https://example.com"}],
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        running.default_status = 204
        yield running


@pytest.fixture
def app_url(api: Api, upgraded_url: str) -> Iterator[str]:
    """`serve` on localhost, against the session's emulator (its demo app: the pages say
    it is the emulator), reachable by the emulator's notifications. On a database of its
    own: the session's test app would otherwise claim its deliveries."""
    port = free_port()
    env = api.serve_environment(upgraded_url) | {
        "MICROSOFT_EXTRA_SCOPES": "ChannelMessage.Read.All",
        "MICROSOFT_REDIRECT_URI": f"http://localhost:{port}/auth/integrations/microsoft/callback",
        "TRACECAT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TRACECAT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "TRACECAT_WEBHOOK_RETRY_SECONDS": "0.2",  # one quick retry, then `failed`
        "TRACECAT_LOG_LEVEL": "WARNING",
    }
    service = ServeProcess(env, "--host", "localhost", port=port).wait_ready()
    yield f"http://localhost:{port}"
    service.stop()
    truncate_all(upgraded_url)


@pytest.fixture
def user(app_url: str, upgraded_url: str) -> ApiUser:
    return create_user(upgraded_url, "analyst@example.com")


@pytest.fixture
def page(user: ApiUser) -> Iterator[Page]:
    """A phone-sized Chromium page; after `user`, whose creation runs its own event loop
    (sync Playwright keeps one running in this thread)."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 390, "height": 844})
        yield context.new_page()
        browser.close()


def accessible(page: Page) -> None:
    """axe-core finds no serious or critical violation on the page as it is now, and the
    page fits the phone's width (nothing to scroll sideways)."""
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide on a {width[1]} px screen"
    results = Axe().run(page)
    bad = [
        (v["id"], v["help"], [n["target"] for n in v["nodes"]])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad


def sign_in(page: Page, url: str, user: ApiUser) -> None:
    page.goto(f"{url}/")
    accessible(page)
    page.get_by_label("API key").fill(user.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Connection")).to_be_visible()


def connect_with_one_click(page: Page) -> None:
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    page.get_by_role("button", name=re.compile("@")).first.click()
    expect(page.get_by_role("heading", name="Microsoft Teams connected")).to_be_visible()
    page.get_by_role("link", name="Back to the connect page").click()
    expect(page.get_by_text("Connected", exact=True)).to_be_visible()


def open_first_channel(page: Page) -> tuple[str, str]:
    page.get_by_role("navigation").get_by_role("link", name="Teams").click()
    expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    accessible(page)
    page.get_by_role("link", name="Security Operations").click()
    page.get_by_role("link", name="General").click()
    expect(page.get_by_role("heading", name="General", exact=True)).to_be_visible()
    accessible(page)
    team_id, channel_id = page.url.split("/teams/", 1)[1].split("/channels/")
    return team_id, channel_id


def stored_messages(api: Api) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = api.control("GET", "/messages").json()["messages"]
    return messages


def test_a_person_connects_sends_subscribes_and_watches_deliveries(
    api: Api, app_url: str, user: ApiUser, page: Page, receiver: Receiver
) -> None:
    sign_in(page, app_url, user)
    expect(page.get_by_text("Emulator", exact=True)).to_be_visible()
    expect(page.get_by_text("Not connected")).to_be_visible()
    accessible(page)
    connect_with_one_click(page)
    accessible(page)

    open_first_channel(page)
    page.get_by_label("Subject").fill("Alert")
    page.get_by_label("Message", exact=True).fill("SEV2: disk full on db-01")
    page.get_by_label("Adaptive Card (JSON)").fill(json.dumps(CARD))
    preview = page.locator("#card-preview")
    expect(preview.get_by_text("Disk full on db-01")).to_be_visible()  # the live preview
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("heading", name="Sent")).to_be_visible()
    result = page.get_by_role("region", name="Sent")
    expect(result).to_contain_text("SEV2: disk full on db-01")  # read back from Teams
    expect(page.get_by_role("link", name="Open in Teams")).to_have_attribute(
        "href", re.compile(r"^https://teams\.microsoft\.com/")
    )
    accessible(page)
    (stored,) = stored_messages(api)
    sent = stored["chat_message"]
    assert sent["subject"] == "Alert" and "SEV2: disk full" in sent["body"]["content"]
    (attachment,) = sent["attachments"]
    assert json.loads(attachment["content"]) == CARD

    # A card that is not JSON is said next to the form, and nothing is sent.
    page.get_by_label("Message", exact=True).fill("second")
    page.get_by_label("Adaptive Card (JSON)").fill("{not json")
    expect(page.get_by_role("alert").filter(has_text="JSON")).to_be_visible()
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("alert").filter(has_text="The Adaptive Card is not")).to_be_visible()
    assert len(stored_messages(api)) == 1

    # Subscribe a local receiver to the channel, through the page's pickers.
    page.get_by_role("navigation").get_by_role("link", name="Subscriptions").click()
    page.get_by_label("Team").select_option(label="Security Operations")
    page.get_by_label("Channel").select_option(label="General")
    page.get_by_label("Target URL").fill(receiver.url + "/hook")
    accessible(page)
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Subscribed")).to_be_visible()
    secret = page.get_by_label("Signing secret").input_value()
    assert secret.startswith("whsec_")
    accessible(page)

    # Someone else posts; the delivery appears in the live table without a reload.
    page.get_by_role("link", name="Deliveries").click()
    expect(page.get_by_text("No delivery yet")).to_be_visible()
    accessible(page)
    receiver.default_status = 500  # the target fails: the first delivery ends `failed`
    post_from_someone_else(api, page)
    expect(page.get_by_text("failed", exact=True)).to_be_visible(timeout=30_000)
    receiver.default_status = 204
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_text("delivered", exact=True)).to_be_visible(timeout=30_000)
    accessible(page)
    webhooks = [w for w in receiver.received() if w.path == "/hook"]
    assert len({w.headers["webhook-id"] for w in webhooks}) == 1 and len(webhooks) >= 3

    # Disconnect is confirmed on the page itself.
    page.get_by_role("navigation").get_by_role("link", name="Connection").click()
    page.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_role("heading", name="Disconnect Microsoft Teams?")).to_be_visible()
    accessible(page)
    page.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_role("status")).to_contain_text("disconnected")
    expect(page.get_by_text("Not connected")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.goto(f"{app_url}/connection")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def post_from_someone_else(api: Api, page: Page) -> None:
    """The channel page's emulator button, opened in a second tab so the table stays."""
    deliveries_url = page.url
    other = page.context.new_page()
    other.goto(deliveries_url.split("/subscriptions/")[0] + "/teams")
    other.get_by_role("link", name="Security Operations").click()
    other.get_by_role("link", name="General").click()
    other.get_by_role("button", name="Post a test message from someone else").click()
    expect(other.get_by_role("status").filter(has_text="someone else")).to_be_visible()
    other.close()
    eventually(lambda: len(stored_messages(api)) == 2)


def test_a_wrong_key_is_said_on_the_page(api: Api, app_url: str, page: Page) -> None:
    page.goto(f"{app_url}/")
    page.get_by_label("API key").fill("tci_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    accessible(page)
