"""Acting in Teams through our API, against the emulator's Graph as a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import ApiUser, connect

BASE = "/auth/integrations/microsoft"


@pytest.fixture
def connected(api: Api) -> Iterator[tuple[httpx.Client, ApiUser]]:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
        yield browser, user


def test_lists_every_team_and_channel_across_pages(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    api.control("PATCH", "/config", json={"page_sizes": {"joined_teams": 1, "channels": 1}})
    teams = browser.get(f"{BASE}/teams", headers=user.headers)
    assert teams.status_code == 200
    assert len(teams.json()) >= 2
    assert all({"id", "displayName"} <= set(team) for team in teams.json())
    assert len({team["id"] for team in teams.json()}) == len(teams.json())
    for team in teams.json():
        channels = browser.get(f"{BASE}/teams/{team['id']}/channels", headers=user.headers)
        assert channels.status_code == 200
        names = [c["displayName"] for c in channels.json()]
        assert "General" in names and len(names) >= 2
        assert all(c["membershipType"] for c in channels.json())
    graph = api.control("GET", "/stats").json()["graph_requests"]
    assert any("joinedTeams" in route for route in graph)  # we really paged through Graph


def _first_channel(browser: httpx.Client, user: ApiUser) -> tuple[str, str]:
    team = browser.get(f"{BASE}/teams", headers=user.headers).json()[0]
    channel = browser.get(f"{BASE}/teams/{team['id']}/channels", headers=user.headers).json()[0]
    return team["id"], channel["id"]


def test_send_and_reply(api: Api, connected: tuple[httpx.Client, ApiUser]) -> None:
    browser, user = connected
    team_id, channel_id = _first_channel(browser, user)
    sent = browser.post(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages",
        headers=user.headers,
        json={"content": "Alert: <b>disk full</b>", "content_type": "html", "subject": "SEV2"},
    )
    assert sent.status_code == 201, sent.text
    message = sent.json()
    assert message["id"] and message["createdDateTime"] and message["webUrl"]
    assert message["body"]["contentType"] == "html"
    assert message["subject"] == "SEV2"

    reply = browser.post(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages/{message['id']}/replies",
        headers=user.headers,
        json={"content": "Investigating"},
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["replyToId"] == message["id"]
    stored = api.control("GET", "/messages").json()["messages"]
    assert len(stored) == 2


def test_mentions_and_adaptive_cards_are_delivered(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    team_id, channel_id = _first_channel(browser, user)
    me = browser.get(f"{BASE}/status", headers=user.headers).json()["account"]
    card = {
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [{"type": "TextBlock", "text": "Alert"}],
    }
    sent = browser.post(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages",
        headers=user.headers,
        json={
            "content": "Please look",
            "mentions": [{"id": me["id"], "display_name": "Alice"}],
            "adaptive_card": card,
        },
    )
    assert sent.status_code == 201, sent.text
    message = sent.json()
    assert message["mentions"][0]["mentioned"]["user"]["id"] == me["id"]
    assert '<at id="0">Alice</at>' in message["body"]["content"]
    attachment = message["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert f'<attachment id="{attachment["id"]}"></attachment>' in message["body"]["content"]


def test_bad_bodies_get_422(api: Api, connected: tuple[httpx.Client, ApiUser]) -> None:
    browser, user = connected
    path = f"{BASE}/teams/t/channels/c/messages"
    for body in (
        {},
        {"content": ""},
        {"content": "x", "content_type": "xml"},
        {"content": "x", "bogus": 1},
    ):
        response = browser.post(path, headers=user.headers, json=body)
        assert response.status_code == 422, body
        assert "detail" in response.json()
    response = browser.post(
        path,
        headers=user.headers,
        content=b"not json",
    )
    assert response.status_code == 422
    assert api.control("GET", "/messages").json()["messages"] == []


def test_graph_errors_keep_their_status(api: Api, connected: tuple[httpx.Client, ApiUser]) -> None:
    browser, user = connected
    missing = browser.get(
        f"{BASE}/teams/00000000-0000-0000-0000-000000000000/channels", headers=user.headers
    )
    assert missing.status_code in (403, 404)
    detail = missing.json()["detail"]
    assert set(detail) == {"code", "message", "request_id"}
    assert detail["code"] and detail["request_id"]


def test_listing_messages_needs_the_extra_scope(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    team_id, channel_id = _first_channel(browser, user)
    response = browser.get(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages", headers=user.headers
    )
    assert response.status_code == 403
    assert "ChannelMessage.Read.All" in response.json()["detail"]
    assert "MICROSOFT_EXTRA_SCOPES" in response.json()["detail"]


def test_listing_messages_with_the_extra_scope(api: Api) -> None:
    user = api.user("reader@example.com")
    with (
        api.another_server(microsoft_extra_scopes=["ChannelMessage.Read.All"]) as url,
        httpx.Client(base_url=url) as browser,
    ):
        assert connect(browser, url, user, "alice@contoso.example").status_code == 200
        team_id, channel_id = _first_channel(browser, user)
        path = f"{BASE}/teams/{team_id}/channels/{channel_id}/messages"
        for text in ("one", "two", "three"):
            sent = browser.post(path, headers=user.headers, json={"content": text})
            assert sent.status_code == 201
        listed = browser.get(path, headers=user.headers, params={"top": 2})
        assert listed.status_code == 200, listed.text
        assert [m["body"]["content"] for m in listed.json()] == ["three", "two"]
        assert browser.get(path, headers=user.headers, params={"top": 0}).status_code == 422


def test_not_connected_says_how_to_connect(api: Api) -> None:
    user = api.user("new@example.com")
    response = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers)
    assert response.status_code == 404
    assert "/auth/integrations/microsoft/connect" in response.json()["detail"]


def test_rejected_token_is_refreshed_once_and_retried(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    before = api.refreshes()
    api.control("POST", "/users/alice@contoso.example/expire-tokens")
    teams = browser.get(f"{BASE}/teams", headers=user.headers)
    assert teams.status_code == 200, teams.text
    assert api.refreshes() == before + 1
    assert browser.get(f"{BASE}/teams", headers=user.headers).status_code == 200
    assert api.refreshes() == before + 1  # the new token is stored and reused


def test_revoked_grant_asks_to_reconnect(api: Api, connected: tuple[httpx.Client, ApiUser]) -> None:
    browser, user = connected
    api.control("POST", "/users/alice@contoso.example/revoke")
    response = browser.get(f"{BASE}/teams", headers=user.headers)
    assert response.status_code == 401
    assert "GET /auth/integrations/microsoft/connect" in response.json()["detail"]
    status = browser.get(f"{BASE}/status", headers=user.headers).json()
    assert status["status"] == "reauthorization_required" and status["connected"] is False
    assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    assert browser.get(f"{BASE}/status", headers=user.headers).json()["status"] == "connected"
    assert browser.get(f"{BASE}/teams", headers=user.headers).status_code == 200


def test_throttled_send_is_delivered_exactly_once(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    team_id, channel_id = _first_channel(browser, user)
    api.control(
        "POST",
        "/faults",
        json={"target": "graph", "status": 429, "count": 1, "retry_after": 1},
    )
    sent = browser.post(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages",
        headers=user.headers,
        json={"content": "once"},
    )
    assert sent.status_code == 201, sent.text
    stored = [m for m in api.control("GET", "/messages").json()["messages"] if "once" in str(m)]
    assert len(stored) == 1


def test_send_with_unknown_outcome_is_not_repeated(
    api: Api, connected: tuple[httpx.Client, ApiUser]
) -> None:
    browser, user = connected
    team_id, channel_id = _first_channel(browser, user)
    api.control("POST", "/faults", json={"target": "graph", "status": 504, "count": 1})
    sent = browser.post(
        f"{BASE}/teams/{team_id}/channels/{channel_id}/messages",
        headers=user.headers,
        json={"content": "maybe"},
    )
    assert sent.status_code == 504
    assert "may or may not" in sent.json()["detail"]["message"]


def test_users_see_only_their_own_teams(api: Api) -> None:
    alice, bob = api.user("alice@example.com"), api.user("bob@example.com")
    with api.browser() as browser_a, api.browser() as browser_b:
        connect(browser_a, api.url, alice, "alice@contoso.example")
        connect(browser_b, api.url, bob, "bob@contoso.example")
        teams_a = {t["id"] for t in browser_a.get(f"{BASE}/teams", headers=alice.headers).json()}
        teams_b = {t["id"] for t in browser_b.get(f"{BASE}/teams", headers=bob.headers).json()}
        assert teams_a and teams_b
        me_a = browser_a.get(f"{BASE}/status", headers=alice.headers).json()["account"]["username"]
        assert me_a == "alice@contoso.example"
