"""What the pages say, over HTTP (both databases): the connection's state in words,
Microsoft's refusals as sentences next to the form with the matching status, and a send
that a reload cannot repeat. The journey in Chromium is `test_ui_browser.py`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from urllib.parse import unquote

import httpx
import pytest

from tests.auth.integrations.test_refresh import MS_USER, connect_inside_margin
from tests.conftest import Api
from tests.utils.flows import ApiUser, connect
from tests.web.test_sessions import new_browser, signed_in

BASE = "/auth/integrations/microsoft"


@pytest.fixture
def browser(api: Api) -> Iterator[httpx.Client]:
    with new_browser(api) as client:
        yield client


def words(page: httpx.Response) -> str:
    """The page's text as a person reads it: tags dropped, whitespace folded."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def general_channel(api: Api, user: ApiUser) -> str:
    """The channel page of Security Operations / General, found through the API."""
    teams = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).json()
    team = next(t for t in teams if t["displayName"] == "Security Operations")
    channels = httpx.get(f"{api.url}{BASE}/teams/{team['id']}/channels", headers=user.headers)
    channel = next(c for c in channels.json() if c["displayName"] == "General")
    return f"/teams/{team['id']}/channels/{channel['id']}"


def connected_user(api: Api) -> ApiUser:
    user = api.user("analyst@example.com")
    with httpx.Client() as client:
        assert connect(client, api.url, user, MS_USER).status_code == 200
    return user


def send(browser: httpx.Client, channel: str, csrf: str, **fields: str) -> httpx.Response:
    return browser.post(f"{channel}/messages", data={"csrf_token": csrf, **fields})


def test_the_connection_page_says_the_state_and_what_to_do(api: Api, browser: httpx.Client) -> None:
    newcomer = api.user("newcomer@example.com")
    signed_in(api, newcomer, browser)
    assert "Status: Not connected" in words(browser.get("/connection"))

    user = connect_inside_margin(api)  # the access token lasts 200 s
    signed_in(api, user, browser)
    said = words(browser.get("/connection"))
    assert "Status: Connected" in said and MS_USER in said
    assert "Access token expires in 3 minutes" in said and "Last refresh never" in said
    assert "Refresh failures 0" in said and "ChannelMessage.Read.All" not in said

    # Renewal fails for a passing reason: the badge warns, the advice says it retries.
    api.control("POST", "/faults", json={"target": "token", "status": 503, "count": 100})
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    said = words(browser.get("/connection"))
    assert "Status: Expiring soon" in said and "retried on its own" in said
    assert "Refresh failures 1" in said
    api.control("DELETE", "/faults")

    # Microsoft refuses the grant: a banner says so and offers Reconnect.
    api.control("POST", f"/users/{MS_USER}/revoke")
    teams_page = browser.get("/teams")
    assert "press Reconnect" in words(teams_page)
    page = browser.get("/connection")
    banner = re.search(r'<div class="banner bad" role="alert">(.*?)</div>', page.text, re.S)
    assert banner is not None and "no longer accepts this connection" in banner.group(1)
    assert '<button type="submit">Reconnect</button>' in banner.group(1)
    assert "Status: Reauthorization required" in words(page)


def test_a_send_is_shown_once_and_a_reload_does_not_send_it_again(
    api: Api, browser: httpx.Client
) -> None:
    user = connected_user(api)
    csrf = signed_in(api, user, browser)
    channel = general_channel(api, user)
    answer = send(browser, channel, csrf, content="<b>SEV2</b> disk full", content_type="html")
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert unquote(location).startswith(f"{channel}?sent=")
    for _ in range(2):  # the result page, then the same page reloaded
        result = browser.get(location)
        assert result.status_code == 200
        # Without ChannelMessage.Read.All the message cannot be read back: the link only.
        assert "Sent Open in Teams" in words(result)
    (stored,) = api.control("GET", "/messages").json()["messages"]
    assert stored["chat_message"]["body"] == {
        "contentType": "html",
        "content": "<b>SEV2</b> disk full",
    }


def test_a_mention_by_id_and_name_reaches_teams(api: Api, browser: httpx.Client) -> None:
    user = connected_user(api)
    csrf = signed_in(api, user, browser)
    fields = {"content": "please look", "mention_id": "00000000-0000-0000-0000-0000000000b0"}
    answer = send(browser, general_channel(api, user), csrf, mention_name="Bob", **fields)
    assert answer.status_code == 303
    (stored,) = api.control("GET", "/messages").json()["messages"]
    (mention,) = stored["chat_message"]["mentions"]
    assert mention["mentionText"] == "Bob"
    assert mention["mentioned"]["user"]["id"] == fields["mention_id"]
    assert '<at id="0">Bob</at>' in stored["chat_message"]["body"]["content"]


@pytest.mark.parametrize(
    ("fault", "sentence"),
    [
        ({"status": 403}, "Microsoft refused: your account may not post in this channel."),
        ({"status": 404}, "Microsoft Teams did not find it"),
        ({"status": 429, "retry_after": 120, "count": 10}, "try again in 120 seconds"),
    ],
    ids=["403", "404", "429"],
)
def test_microsofts_refusal_is_a_sentence_next_to_the_form(
    api: Api, browser: httpx.Client, fault: dict[str, int], sentence: str
) -> None:
    user = connected_user(api)
    csrf = signed_in(api, user, browser)
    channel = general_channel(api, user)
    api.control("POST", "/faults", json={"target": "graph", "method": "POST", **fault})
    answer = send(browser, channel, csrf, content="SEV2: disk full", subject="Alert")
    assert answer.status_code == fault["status"]
    alert = re.search(r'<p class="error" role="alert" id="send-error">(.*?)</p>', answer.text)
    assert alert is not None and sentence in unescape(alert.group(1))
    # What the person typed is still in the form, and nothing was posted.
    assert ">SEV2: disk full</textarea>" in answer.text and 'value="Alert"' in answer.text
    assert api.control("GET", "/messages").json()["messages"] == []


def test_a_form_problem_is_422_and_said_by_the_field(api: Api, browser: httpx.Client) -> None:
    user = connected_user(api)
    csrf = signed_in(api, user, browser)
    answer = send(browser, general_channel(api, user), csrf, content="x", content_type="pdf")
    assert answer.status_code == 422
    assert "Format:" in words(answer)
    assert api.control("GET", "/messages").json()["messages"] == []


def test_without_the_read_permission_the_channel_says_how_to_add_it(
    api: Api, browser: httpx.Client
) -> None:
    user = connected_user(api)  # the test app asks for the base scopes only
    signed_in(api, user, browser)
    said = words(browser.get(general_channel(api, user)))
    assert "MICROSOFT_EXTRA_SCOPES=ChannelMessage.Read.All" in said and "Reconnect" in said
