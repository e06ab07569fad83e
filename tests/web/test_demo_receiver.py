"""The demo receiver of `serve --emulator`, over HTTP (both databases): it shows the webhooks
naming the person's own subscriptions, checks their signatures as a receiver would, refuses
what is not a webhook, and does not exist when Microsoft is not the emulator."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import Api
from tests.notifications.conftest import make_subscription, open_database
from tests.utils.flows import ApiUser
from tests.web.test_page_words import words
from tests.web.test_sessions import new_browser, signed_in
from tracecat.notifications.signing import new_secret, webhook_headers


@pytest.fixture
def browser(api: Api) -> Iterator[httpx.Client]:
    with new_browser(api) as client:
        yield client


def subscribe_in_db(api: Api, user: ApiUser, secret: str) -> str:
    async def insert() -> str:
        database = open_database(api.database_url)
        try:
            row = await make_subscription(
                database,
                "http://127.0.0.1/demo/receiver",
                uuid.UUID(user.id),
                client_state="client-state-" + uuid.uuid4().hex,
                secret=secret,
            )
            return str(row.id)
        finally:
            await database.dispose()

    return asyncio.run(insert())


def webhook(subscription_id: str, text: str, secret: str) -> tuple[str, dict[str, str]]:
    body = json.dumps(
        {
            "type": "message.created",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "subscription_id": subscription_id,
                "message": {
                    "id": "1",
                    "from": {"user": {"displayName": "Bob"}},
                    "body": {"contentType": "html", "content": f"<p>{text}</p>"},
                },
            },
        }
    )
    return body, webhook_headers(f"msg_{uuid.uuid4().hex}", body, [secret], datetime.now(UTC))


def post(api: Api, body: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{api.url}/demo/receiver", content=body, headers=headers)


def test_signed_webhooks_are_shown_checked_and_only_to_their_owner(
    api: Api, browser: httpx.Client
) -> None:
    user, other = api.user("analyst@example.com"), api.user("other@example.com")
    secret = new_secret()
    mine = subscribe_in_db(api, user, secret)
    theirs = subscribe_in_db(api, other, new_secret())
    assert post(api, *webhook(mine, "ack from Bob", secret)).status_code == 204
    assert post(api, *webhook(mine, "forged", new_secret())).status_code == 204
    assert post(api, *webhook(theirs, "not for you", secret)).status_code == 204

    signed_in(api, user, browser)
    page = browser.get("/demo/receiver")
    assert page.status_code == 200
    body = page.text.split("<tbody>", 1)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    said = [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in rows]
    assert len(said) == 2  # newest first; the other user's webhook is not shown
    assert "forged" in said[0] and "not valid" in said[0]
    assert "ack from Bob" in said[1] and "Bob" in said[1] and " valid " in f" {said[1]} "
    assert "not valid" not in said[1]
    table = browser.get("/demo/receiver/table")
    assert table.status_code == 200 and "ack from Bob" in table.text


def test_what_is_not_a_webhook_is_refused(api: Api) -> None:
    assert post(api, "{}", {"Content-Type": "application/json"}).status_code == 400
    huge = "x" * (300 * 1024)
    answer = post(api, huge, {"webhook-id": "msg_1", "Content-Type": "application/json"})
    assert answer.status_code == 413 and "detail" in answer.json()


def test_there_is_no_demo_receiver_without_the_emulator(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.another_server(microsoft_client_id="11111111-2222-3333-4444-555555555555") as url:
        answer = httpx.post(f"{url}/demo/receiver", content="{}", headers={"webhook-id": "m"})
        assert answer.status_code == 404
        with httpx.Client(base_url=url, headers={"Accept": "text/html"}) as browser:
            assert browser.post("/sign-in", data={"api_key": user.api_key}).status_code == 303
            page = browser.get("/demo/receiver")
            assert page.status_code == 404 and "text/html" in page.headers["content-type"]
            assert "Demo receiver" not in words(browser.get("/subscriptions"))
